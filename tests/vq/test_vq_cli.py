"""`gptdraw vq convert | encode | decode | eval`, and the reconstruction metrics behind `eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import VQModel
from PIL import Image

import gptdraw.cli
from gptdraw.images import pil_to_tensor, tensor_to_pil
from gptdraw.vq.metrics import codebook_stats, frechet_distance, gaussian_window, psnr, ssim
from gptdraw.vq.model import ImageTokenizer, VQConfig


@pytest.fixture
def cli():
    def run(*argv: str) -> int:
        return gptdraw.cli.main(["vq", *map(str, argv)])

    return run


@pytest.fixture
def tokenizer_dir(tmp_path):
    torch.manual_seed(0)
    config = VQConfig(image_size=32, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
                      num_vq_embeddings=64, norm_num_groups=8, mid_block_add_attention=False)
    ImageTokenizer(config).save_pretrained(tmp_path / "vq")
    return tmp_path / "vq"


def write_images(folder, count, size=(40, 36), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


# ---- encode / decode ---------------------------------------------------------------------------


def test_encode_then_decode(cli, tokenizer_dir, tmp_path, capsys):
    paths = write_images(tmp_path / "images", 3)
    assert cli("encode", "--vq", tokenizer_dir, "--out", tmp_path / "codes.npy", "--batch-size", 2, *paths) == 0
    codes = np.load(tmp_path / "codes.npy")
    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir)
    expected = tokenizer.encode(pil_to_tensor([Image.open(p) for p in paths], size=32))
    assert codes.dtype == np.int64 and codes.shape == (3, 16, 16)
    assert np.array_equal(codes, expected.numpy())
    assert (tmp_path / "codes.txt").read_text().split() == [str(p) for p in paths]

    assert cli("decode", "--vq", tokenizer_dir, "--out", tmp_path / "decoded", tmp_path / "codes.npy") == 0
    written = sorted((tmp_path / "decoded").glob("*.png"))
    assert [p.name for p in written] == ["000000.png", "000001.png", "000002.png"]
    for path, image in zip(written, tensor_to_pil(tokenizer.decode(torch.from_numpy(codes)))):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))


def test_encode_skips_unreadable_images(cli, tokenizer_dir, tmp_path, capsys):
    paths = write_images(tmp_path / "images", 2)
    broken = tmp_path / "images" / "broken.png"
    broken.write_bytes(b"not a png")
    assert cli("encode", "--vq", tokenizer_dir, "--out", tmp_path / "c.npy", paths[0], broken, paths[1]) == 0
    assert np.load(tmp_path / "c.npy").shape[0] == 2
    assert (tmp_path / "c.txt").read_text().split() == [str(paths[0]), str(paths[1])]
    assert "skipped unreadable image" in capsys.readouterr().out


def test_bad_input_is_one_clear_error(cli, tokenizer_dir, tmp_path, capsys):
    np.save(tmp_path / "float.npy", np.zeros((1, 4, 4), dtype=np.float32))
    assert cli("decode", "--vq", tokenizer_dir, "--out", tmp_path / "d", tmp_path / "float.npy") == 2
    assert "codes must be integers" in capsys.readouterr().err

    np.save(tmp_path / "big.npy", np.full((1, 4, 4), 64, dtype=np.int64))
    assert cli("decode", "--vq", tokenizer_dir, "--out", tmp_path / "d", tmp_path / "big.npy") == 2
    assert "codes must be in [0, 64)" in capsys.readouterr().err

    paths = write_images(tmp_path / "images", 1)
    assert cli("encode", "--vq", tokenizer_dir, "--out", tmp_path / "codes.bin", *paths) == 2
    assert "--out must be a .npy file" in capsys.readouterr().err
    assert cli("encode", "--vq", tmp_path / "nowhere", "--out", tmp_path / "c.npy", *paths) == 2
    assert "image tokenizer directory not found" in capsys.readouterr().err


# ---- convert -----------------------------------------------------------------------------------


def test_convert_a_diffusers_folder(cli, tmp_path, capsys):
    torch.manual_seed(1)
    model = VQModel(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                    num_vq_embeddings=32, norm_num_groups=32, lookup_from_codebook=True).eval()
    model.save_pretrained(tmp_path / "movq")
    assert cli("convert", tmp_path / "movq", "--out", tmp_path / "out", "--image-size", 64,
               "--input-range=0,1") == 0
    out = capsys.readouterr().out
    assert "converted diffusers VQGAN" in out and "64 px → 32×32 = 1,024 codes" in out
    tokenizer = ImageTokenizer.from_pretrained(tmp_path / "out")
    assert tokenizer.config.input_range == (0.0, 1.0) and tokenizer.grid_size() == (32, 32)
    for key, value in model.state_dict().items():
        assert torch.equal(tokenizer.model.state_dict()[key], value), key


def test_convert_errors_name_the_problem(cli, tmp_path, capsys):
    assert cli("convert", tmp_path / "missing.ckpt", "--out", tmp_path / "out") == 2
    assert "VQGAN source not found" in capsys.readouterr().err
    assert cli("convert", "dalle-mini/vqgan_imagenet_f16_16384", "--out", tmp_path / "out", "--local-only") == 2
    error = capsys.readouterr().err
    assert error.startswith("gptdraw vq: error:") and "downloading it from the Hub is switched off" in error
    (tmp_path / "empty").mkdir()
    assert cli("convert", tmp_path / "empty", "--out", tmp_path / "out") == 2
    assert "not a VQGAN folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- eval --------------------------------------------------------------------------------------


def test_eval_reports_metrics_and_writes_the_grid(cli, tokenizer_dir, tmp_path, capsys):
    paths = write_images(tmp_path / "images", 5)
    (tmp_path / "images" / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    grid, report_file = tmp_path / "grid.png", tmp_path / "report.json"
    assert cli("eval", "--vq", tokenizer_dir, tmp_path / "images", "--batch-size", 2, "--grid", grid,
               "--grid-images", 3, "--json", report_file) == 0
    out = capsys.readouterr().out
    assert "PSNR:" in out and "SSIM:" in out and "perplexity:" in out
    assert "rFID:            skipped: no Inception weights given" in out
    report = json.loads(report_file.read_text())
    assert report["images"] == 5 and report["skipped"] == 1 and report["rfid"] is None

    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir)
    originals = pil_to_tensor([Image.open(p) for p in paths], size=32)
    codes = tokenizer.encode(originals)
    reconstructions = tokenizer.decode(codes)
    assert report["psnr"] == pytest.approx(psnr(originals, reconstructions).mean().item(), rel=1e-5)
    assert report["ssim"] == pytest.approx(ssim(originals, reconstructions).mean().item(), rel=1e-5)
    assert report["codes_used"] == len(torch.unique(codes))
    sheet = Image.open(grid)
    assert sheet.width > 2 * 32 and sheet.height > 3 * 32  # 2 columns × 3 labelled rows


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_eval_rfid_with_a_local_torchscript_inception(cli, tokenizer_dir, tmp_path):
    class TinyInception(torch.nn.Module):
        """Same calling convention as inception-2015-12-05.pt: uint8 in, (B, features) out."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return self.conv(x.float() / 255).mean(dim=(2, 3))

    torch.manual_seed(2)
    torch.jit.save(torch.jit.script(TinyInception()), str(tmp_path / "inception.pt"))
    write_images(tmp_path / "images", 8)  # more images than the 6 feature dimensions
    assert cli("eval", "--vq", tokenizer_dir, tmp_path / "images", "--inception", tmp_path / "inception.pt",
               "--grid", tmp_path / "g.png", "--json", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rfid"] is not None and math.isfinite(report["rfid"]) and report["rfid"] > 0
    assert "fewer images than feature dimensions" not in report["rfid_note"]


# ---- metrics -----------------------------------------------------------------------------------


def naive_ssim(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5) -> float:
    """SSIM of two (H, W) arrays, window by window, straight from the definition."""
    window = gaussian_window(size, sigma).numpy()
    values = []
    for top in range(x.shape[0] - size + 1):
        for left in range(x.shape[1] - size + 1):
            a, b = x[top:top + size, left:left + size], y[top:top + size, left:left + size]
            mu_a, mu_b = (window * a).sum(), (window * b).sum()
            var_a = (window * (a - mu_a) ** 2).sum()
            var_b = (window * (b - mu_b) ** 2).sum()
            cov = (window * (a - mu_a) * (b - mu_b)).sum()
            c1, c2 = 0.01**2, 0.03**2
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition():
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 16, 18, generator=generator)
    y = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    values = ssim(x, y)
    for index in range(2):
        expected = np.mean([naive_ssim(x[index, c].double().numpy(), y[index, c].double().numpy()) for c in range(3)])
        assert values[index].item() == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    assert (ssim(x, y) > ssim(x, torch.rand(x.shape, generator=generator))).all()


def test_psnr_codebook_stats_and_frechet_distance():
    x = torch.zeros(1, 3, 4, 4)
    assert psnr(x, x + 0.1).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(x, x).item() == 100.0

    stats = codebook_stats(np.array([[0, 0], [1, 3]]), codebook_size=8)
    assert stats.codes_used == 3 and stats.usage == 3 / 8
    assert stats.perplexity == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))

    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 5))
    sigma = a @ a.T + np.eye(5)
    assert frechet_distance(np.ones(5), sigma, np.ones(5), sigma) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(d, 4I) in k dims: |d|² + k (1 + 4 - 2·2)
    assert frechet_distance(np.zeros(3), np.eye(3), np.full(3, 2.0), 4 * np.eye(3)) == pytest.approx(12.0 + 3.0)
