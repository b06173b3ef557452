"""LPIPS, the perceptual loss of the VQGAN recipe, from weight files on disk.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric") compares two pictures through VGG16: at five depths the features of each picture are
unit-normalised over channels at every position, their squared difference is weighed per channel
by a learnt 1×1 layer, averaged over positions, and the five are summed. Pixel losses pull every
pixel to the mean of what it could be; LPIPS rewards the right texture and edges instead.

Two files, neither downloadable here, so both are given by path:
- the VGG16 backbone trained on ImageNet (torchvision's `vgg16-397923af.pth`, keys `features.N.*`);
- LPIPS's linear layers (the lpips package's `lpips/weights/v0.1/vgg.pth`, keys `linK.model.1.weight`).
Both are pickled torch files; they are read as every pickled weights file in gptdraw is, by the
restricted loader of gptdraw.vq.convert (`read_state_dict`: torch's weights-only unpickler, tensors
and nothing else). `.safetensors` files with the same keys are read too.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptdraw.vq.convert import read_state_dict

VGG16_LAYERS = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool", 512, 512, 512, "pool", 512, 512, 512)
"""VGG16's convolutions (output channels) and max-pools, in torchvision's order."""
TAPS = (3, 8, 15, 22, 29)
"""Indices in torchvision's `features` of the ReLUs LPIPS reads: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""
TAP_CHANNELS = (64, 128, 256, 512, 512)
# The input scaling LPIPS's VGG was used with (pictures in [-1, 1]).
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """torchvision's vgg16().features up to relu5_3, built here (no torchvision): the same indices,
    so its state dict's `features.N.weight` keys load as they are."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG16_LAYERS:
        if entry == "pool":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=False)]
            channels = entry
    return nn.Sequential(*layers)


def _take(weights: dict[str, torch.Tensor], module: nn.Module, prefix: str, path: str | Path) -> None:
    """Loads the `prefix`-ed tensors of `weights` into `module`, refusing any missing or misshapen one."""
    wanted = module.state_dict()
    found = {name[len(prefix):]: tensor for name, tensor in weights.items() if name.startswith(prefix)}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} of the weights it should hold, e.g. {prefix}{missing[0]}")
    for name, tensor in wanted.items():
        if found[name].shape != tensor.shape:
            raise ValueError(f"{path}: {prefix}{name} has shape {tuple(found[name].shape)}, not {tuple(tensor.shape)}")
    module.load_state_dict({name: found[name] for name in wanted}, strict=True)


class LPIPS(nn.Module):
    """The LPIPS distance between two batches of pictures in [0, 1]: (B, 3, H, W) × 2 → (B,).
    Frozen: it is a loss, never trained."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.linear = nn.ModuleList(nn.Conv2d(channels, 1, 1, bias=False) for channels in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg: str | Path, linear: str | Path) -> "LPIPS":
        """LPIPS from the VGG16 backbone file and the linear-layers file (see the module doc)."""
        model = cls()
        _take(read_state_dict(vgg), model.features, "features.", vgg)
        linear_weights = read_state_dict(linear)
        for index, layer in enumerate(model.linear):
            _take(linear_weights, layer, f"lin{index}.model.1.", linear)
        return model

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = ((images * 2 - 1) - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAPS:
                taps.append(x)
            if index == TAPS[-1]:
                break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = 0
        for linear, fa, fb in zip(self.linear, self._taps(a), self._taps(b)):
            # Unit length over channels at each position, as LPIPS normalises them.
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            distance = distance + linear((fa - fb).pow(2)).mean(dim=(1, 2, 3))  # (B,)
        return distance
