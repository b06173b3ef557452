"""LPIPS from weight files on disk: torchvision's and lpips's key layouts load (restricted unpickler or
safetensors), bad files are refused by name, the distance behaves as one, and the tokenizer trains with it."""

import pytest
import torch
from safetensors.torch import save_file

from gptdraw.vq.config import VQTrainConfig
from gptdraw.vq.perceptual import LPIPS, TAP_CHANNELS, vgg16_features
from gptdraw.vq.train import shapes_images, train_vq


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights in the two files' own layouts: torchvision's vgg16 (features + a classifier, which
    is ignored) as a pickled .pth, and lpips's linear layers."""
    folder = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    vgg = {f"features.{name}": tensor for name, tensor in vgg16_features().state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)
    torch.save(vgg, folder / "vgg16-397923af.pth")
    linear = {f"lin{index}.model.1.weight": torch.rand(1, channels, 1, 1) for index, channels in enumerate(TAP_CHANNELS)}
    torch.save(linear, folder / "vgg.pth")
    save_file(linear, folder / "vgg.safetensors")
    return folder


def test_lpips_is_a_distance_between_pictures(weight_files):
    lpips = LPIPS.from_files(weight_files / "vgg16-397923af.pth", weight_files / "vgg.safetensors")
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.allclose(lpips(a, a), torch.zeros(2), atol=1e-6)
    assert (lpips(a, b) > 0).all() and torch.allclose(lpips(a, b), lpips(b, a))
    # A slightly changed picture is nearer than an unrelated one.
    assert (lpips(a, (a + 0.05 * b).clamp(0, 1)) < lpips(a, b)).all()
    assert not any(p.requires_grad for p in lpips.parameters())


def test_bad_weight_files_are_refused_by_name(weight_files, tmp_path):
    good_vgg, good_linear = weight_files / "vgg16-397923af.pth", weight_files / "vgg.pth"
    with pytest.raises(FileNotFoundError, match="not found"):
        LPIPS.from_files(tmp_path / "missing.pth", good_linear)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lacks .* e.g. features"):
        LPIPS.from_files(tmp_path / "short.pth", good_linear)
    torch.save({f"lin{i}.model.1.weight": torch.zeros(1, 3, 1, 1) for i in range(5)}, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match="has shape"):
        LPIPS.from_files(good_vgg, tmp_path / "narrow.pth")
    # A pickle that would build an object rather than tensors is refused by the restricted loader.
    torch.save({"lin0.model.1.weight": torch.nn.Linear(1, 1)}, tmp_path / "object.pth")
    with pytest.raises(ValueError, match="refusing to load .*object.pth: its pickle references torch.nn"):
        LPIPS.from_files(good_vgg, tmp_path / "object.pth")
    (tmp_path / "cut.pth").write_bytes(good_linear.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot load .*cut.pth as a weights-only PyTorch checkpoint"):
        LPIPS.from_files(good_vgg, tmp_path / "cut.pth")
    (tmp_path / "cut.safetensors").write_bytes((weight_files / "vgg.safetensors").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read .*cut.safetensors"):
        LPIPS.from_files(good_vgg, tmp_path / "cut.safetensors")


def test_the_tokenizer_trains_with_the_perceptual_loss(weight_files):
    images = shapes_images(16, 32, seed=0)
    common = dict(preset="shapes-f4", image_size=32, steps=3, batch_size=4, eval_images=4, log_every=1, precision="fp32",
                  restart_every=0)
    plain = train_vq(VQTrainConfig(**common), images, None, progress=False)
    perceptual = train_vq(VQTrainConfig(**common, perceptual_weight=1.0, lpips_vgg=str(weight_files / "vgg16-397923af.pth"),
                                        lpips_linear=str(weight_files / "vgg.pth")), images, None, progress=False)
    assert all(row["perceptual"] > 0 for row in perceptual.history)
    # The same first batch and weights: the loss differs by the perceptual term alone.
    assert perceptual.history[0]["loss"] == pytest.approx(plain.history[0]["loss"] + perceptual.history[0]["perceptual"], rel=1e-5)
    with pytest.raises(ValueError, match="--lpips-vgg"):
        VQTrainConfig(**common, perceptual_weight=1.0)
