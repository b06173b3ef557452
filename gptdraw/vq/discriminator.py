"""The adversarial part of a VQGAN: a patch discriminator, the hinge losses, the adaptive weight.

A reconstruction loss alone makes a tokenizer's pictures blurry: every pixel is pulled to the
mean of what it could be. The VQGAN recipe (Esser et al. 2021, "Taming Transformers") adds a
discriminator that judges overlapping patches as real or reconstructed, and weighs its loss
against the reconstruction loss by the ratio of their gradients at the decoder's last layer, so
that neither drowns the other. It starts after a warm-up, once reconstructions are roughly right.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Strided 4×4 convolutions down to a map of real/fake scores, one per overlapping patch.

    channels: width of the first layer, doubled at each stride-2 layer (at most 8×).
    layers: stride-2 layers; each doubles the patch a score sees.
    GroupNorm instead of BatchNorm, so that a score does not depend on the rest of the batch.
    """

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for index in range(1, layers + 1):
            wider = channels * min(2**index, 8)
            stride = 2 if index < layers else 1
            blocks += [nn.Conv2d(width, wider, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(32, wider // 4), wider), nn.LeakyReLU(0.2)]
            width = wider
        blocks.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [-1, 1] → scores (B, 1, h, w)."""
        return self.net(images)


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real scores pushed above 1, fake ones below −1."""
    return 0.5 * (torch.relu(1.0 - real_scores).mean() + torch.relu(1.0 + fake_scores).mean())


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The tokenizer's adversarial loss: make the discriminator score its reconstructions high."""
    return -fake_scores.mean()


def adaptive_weight(reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor,
                    limit: float = 1e4) -> torch.Tensor:
    """‖∇ reconstruction‖ / ‖∇ adversarial‖ at the decoder's last layer (detached, at most `limit`)."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    return (reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)).clamp(max=limit).detach()
