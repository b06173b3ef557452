"""Training the image tokenizer: the loss falls, dead codes come back, the CLI writes a loadable tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gptdraw.cli
from gptdraw.vq.train import (
    CodebookEMA,
    VQTrainConfig,
    evaluate_tokenizer,
    kmeans,
    restart_dead_codes,
    shapes_images,
    train_vq,
    zero_init_residuals,
)
from gptdraw.vq.model import ImageTokenizer, vq_preset

SIZE = 32
# A 3-stage f4 network small enough for a few dozen CPU steps in seconds.
TINY = dict(
    image_size=SIZE, block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
    num_vq_embeddings=64, norm_num_groups=4, mid_block_add_attention=False,
)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return shapes_images(120, SIZE, seed=0)


def tiny_tokenizer(seed: int = 0, **overrides) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer(vq_preset("shapes-f8", **{**TINY, **overrides}))


def test_shapes_images_are_deterministic_uint8(images):
    assert images.shape == (120, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert np.array_equal(shapes_images(3, SIZE, seed=0), images[:3])
    assert (images == 255).mean() > 0.5  # mostly white background, as SHAPES.md draws it


def test_training_lowers_the_reconstruction_loss(images):
    config = VQTrainConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=5, eval_images=16, restart_every=10,
                           reconstruction_loss="mse", log_every=1, seed=0)
    untrained = evaluate_tokenizer(tiny_tokenizer().eval(), torch.from_numpy(images[-16:]).permute(0, 3, 1, 2) / 255)
    result = train_vq(config, images, out_dir=None, tokenizer=tiny_tokenizer(), progress=False)
    first = np.mean([record["reconstruction"] for record in result.history[:5]])
    last = np.mean([record["reconstruction"] for record in result.history[-5:]])
    assert last < 0.5 * first
    assert result.psnr > untrained["psnr"] + 3.0
    assert result.steps == 40 and result.seconds > 0 and result.precision in ("bf16", "fp32")
    assert 0 < result.codebook_usage <= 1 and result.perplexity >= 1
    assert not result.tokenizer.training


def test_l2_codes_train_and_load_with_their_norm(images, tmp_path):
    config = VQTrainConfig(preset="shapes-f4", steps=30, batch_size=8, lr=3e-3, warmup_steps=5, eval_images=16,
                           restart_every=10, log_every=1, seed=0, vq_embed_dim=4, code_norm="l2")
    assert config.architecture().vq_embed_dim == 4 and config.architecture().code_norm == "l2"
    result = train_vq(config, images, out_dir=tmp_path / "vq", progress=False)
    loaded = ImageTokenizer.from_pretrained(tmp_path / "vq")
    assert loaded.config.code_norm == "l2" and loaded.codebook.shape[1] == 4
    assert result.psnr > 12 and result.codebook_usage > 0.2
    pictures = torch.from_numpy(images[-4:]).permute(0, 3, 1, 2) / 255
    assert torch.equal(loaded.encode(pictures), result.tokenizer.encode(pictures))


def test_training_from_a_batch_source(images):
    calls = []

    def source(batch_size: int, rng: np.random.Generator) -> torch.Tensor:
        calls.append(batch_size)
        picks = rng.integers(0, len(images), batch_size)
        return torch.from_numpy(images[picks]).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W)

    config = VQTrainConfig(steps=3, batch_size=4, eval_images=8, precision="fp32")
    result = train_vq(config, source, None, tokenizer=tiny_tokenizer(), progress=False)
    assert calls[0] == 8 and calls.count(4) >= 3  # held-out images first, then training batches
    assert result.steps == 3 and np.isfinite(result.psnr)
    with pytest.raises(ValueError, match="image source must give"):
        train_vq(config, lambda size, rng: [0] * size, None, tokenizer=tiny_tokenizer(), progress=False)


def test_training_is_deterministic(images):
    config = VQTrainConfig(steps=4, batch_size=4, eval_images=8, restart_every=2, precision="fp32", seed=3)
    first = train_vq(config, images, None, tokenizer=tiny_tokenizer(), progress=False)
    second = train_vq(config, images, None, tokenizer=tiny_tokenizer(), progress=False)
    for (name, a), (_, b) in zip(first.tokenizer.state_dict().items(), second.tokenizer.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.history == second.history


def test_restart_dead_codes_moves_unused_codes_onto_encoder_outputs():
    tokenizer = tiny_tokenizer()
    latents = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        tokenizer.codebook.fill_(100.0)  # far from every encoder output
        tokenizer.codebook[0] = 0.0  # the one code anything maps to
    assert tokenizer.nearest_codes(latents).unique().tolist() == [0]
    usage = torch.zeros(64, dtype=torch.long)
    usage[0] = 32
    moved = restart_dead_codes(tokenizer, usage, latents, torch.Generator().manual_seed(0))
    assert moved == 63
    assert torch.equal(tokenizer.codebook[0], torch.zeros(8))  # a used code stays put
    assert tokenizer.nearest_codes(latents).unique().numel() > 10


def test_restarts_revive_a_collapsed_codebook(images):
    # diffusers' initial codebook is uniform in ±1/K: tiny next to encoder outputs, so the
    # whole batch maps onto a handful of codes and the rest never get a gradient.
    config = VQTrainConfig(steps=12, batch_size=8, eval_images=16, codebook_init="keep", autoencoder_warmup=0.0, precision="fp32", seed=0)
    without = train_vq(dataclass_replace(config, restart_every=0), images, None, tokenizer=tiny_tokenizer(), progress=False)
    with_restarts = train_vq(dataclass_replace(config, restart_every=4), images, None, tokenizer=tiny_tokenizer(), progress=False)
    assert with_restarts.restarted_codes > 0 and without.restarted_codes == 0
    assert with_restarts.codebook_usage >= 2 * without.codebook_usage
    assert with_restarts.codebook_usage > 0.1


def dataclass_replace(config: VQTrainConfig, **changes) -> VQTrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_codebook_ema_moves_codes_to_the_mean_of_their_outputs():
    codebook = torch.zeros(3, 2)
    ema = CodebookEMA(codebook, decay=0.5)
    codes = torch.tensor([0, 0, 1])
    latents = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    for _ in range(30):
        ema.update(codebook, codes, latents)
    assert torch.allclose(codebook[0], torch.tensor([3.0, 0.0]), atol=1e-3)
    assert torch.allclose(codebook[1], torch.tensor([0.0, 6.0]), atol=1e-3)
    assert torch.equal(codebook[2], torch.zeros(2))  # never chosen: stays put (until a restart)
    codebook[2] = torch.tensor([9.0, 9.0])
    ema.reset(codebook, torch.tensor([2]))
    ema.update(codebook, torch.tensor([2]), torch.tensor([[9.0, 9.0]]))
    assert torch.allclose(codebook[2], torch.tensor([9.0, 9.0]), atol=1e-3)


def test_zero_init_residuals_makes_every_block_start_as_identity():
    from diffusers.models.resnet import ResnetBlock2D

    tokenizer = tiny_tokenizer(mid_block_add_attention=True)
    assert zero_init_residuals(tokenizer.model) > 0
    blocks = [m for m in tokenizer.model.modules() if isinstance(m, ResnetBlock2D) and m.conv_shortcut is None]
    hidden = torch.randn(1, blocks[0].in_channels, 8, 8)
    assert torch.allclose(blocks[0](hidden, None), hidden)
    attention = tokenizer.model.encoder.mid_block.attentions[0]
    hidden = torch.randn(1, attention.to_out[0].out_features, 4, 4)
    assert torch.allclose(attention(hidden), hidden)


def test_kmeans_finds_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([centre + 0.1 * torch.randn(50, 2, generator=generator) for centre in centres])
    found = kmeans(points, 3, iterations=10, generator=generator)
    assert torch.cdist(centres, found).min(dim=1).values.max() < 0.5


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown VQ preset"):
        VQTrainConfig(preset="nope")
    with pytest.raises(ValueError, match="steps must be positive"):
        VQTrainConfig(steps=0)
    with pytest.raises(ValueError, match="reconstruction_loss"):
        VQTrainConfig(reconstruction_loss="huber")
    with pytest.raises(ValueError, match="multiple of the downsample factor 8"):
        VQTrainConfig(image_size=36)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        VQTrainConfig(precision="fp8")


def test_config_speaks_the_one_precision_vocabulary():
    assert VQTrainConfig(precision="bfloat16").precision == "bf16"
    assert VQTrainConfig(precision="float32").precision == VQTrainConfig(precision="no").precision == "fp32"
    # fp16 would need a loss scaler, which VQ training has not: refused, by its long name too.
    for name in ("fp16", "float16"):
        with pytest.raises(ValueError, match="fp16 is not supported .*no loss scaler.*use bf16 or fp32"):
            VQTrainConfig(precision=name)


def test_train_vq_refuses_a_foreign_output_directory(images, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no image tokenizer"):
        train_vq(VQTrainConfig(steps=1), images, tmp_path, tokenizer=tiny_tokenizer(), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture
def cli():
    return gptdraw.cli.main


def test_cli_writes_a_loadable_tokenizer(cli, tmp_path, capsys):
    out = tmp_path / "vq"
    argv = ["train-vq", "--out", str(out), "--steps", "3", "--batch-size", "4", "--shapes-count", "24",
            "--image-size", "32"]
    assert cli(argv) == 0
    assert "saved image tokenizer" in capsys.readouterr().out
    tokenizer = ImageTokenizer.from_pretrained(out)
    assert tokenizer.config.image_size == 32 and "train-vq" in tokenizer.config.source
    assert tokenizer.encode(torch.rand(2, 3, 32, 32)).shape == (2, 4, 4)
    assert Image.open(out / "reconstructions.png").width > 0
    report = json.loads((out / "train_vq.json").read_text())
    assert report["result"]["steps"] == 3 and report["config"]["batch_size"] == 4
    # Training again into the same directory replaces the tokenizer and leaves no temporary folders.
    assert cli(argv + ["--seed", "1"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vq"]


def test_cli_trains_on_an_image_folder_and_skips_broken_files(cli, tmp_path, caplog):
    folder = tmp_path / "pictures"
    (folder / "nested").mkdir(parents=True)
    for index in range(6):
        Image.new("RGB", (40, 36), (40 * index, 100, 200)).save(folder / f"{index}.png")
    Image.new("L", (32, 32), 128).save(folder / "nested" / "grey.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "readme.txt").write_text("ignored")
    out = tmp_path / "vq"
    assert cli(["train-vq", "--out", str(out), "--steps", "2", "--batch-size", "2", "--images", str(folder),
                "--image-size", "32"]) == 0
    assert "skipped 1 undecodable" in caplog.text
    assert ImageTokenizer.from_pretrained(out).config.image_size == 32


def test_cli_reports_bad_input_in_one_line(cli, tmp_path, capsys):
    assert cli(["train-vq", "--out", str(tmp_path / "vq"), "--images", str(tmp_path / "missing")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert cli(["train-vq", "--out", str(tmp_path / "vq"), "--steps", "0"]) == 2
    assert "steps must be positive, got 0" in capsys.readouterr().err
    assert cli(["train-vq", "--out", str(tmp_path / "vq"), "--precision", "float16"]) == 2
    assert "fp16 is not supported" in capsys.readouterr().err
