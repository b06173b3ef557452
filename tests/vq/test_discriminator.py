"""The adversarial part of the VQGAN recipe: hinge losses, the adaptive weight, and its switch-on step."""

import pytest
import torch

from gptdraw.vq.discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_discriminator_loss
from gptdraw.vq.train import VQTrainConfig, shapes_images, train_vq


def test_hinge_losses():
    sure = hinge_discriminator_loss(torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0))
    unsure = hinge_discriminator_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    assert sure.item() == 0.0 and unsure.item() == 1.0
    assert generator_loss(torch.full((1, 1, 2, 2), 3.0)).item() == -3.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    layer = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    reconstruction = (layer * 3).sum()  # gradient 3 everywhere: norm 6
    adversarial = (layer**2).sum()  # gradient 2·layer: norm 2·√30
    weight = adaptive_weight(reconstruction, adversarial, layer)
    assert weight.item() == pytest.approx(6 / (2 * 30**0.5 + 1e-4))
    assert not weight.requires_grad


def test_patch_discriminator_scores_patches_of_small_images():
    scores = PatchDiscriminator(channels=8, layers=3)(torch.zeros(2, 3, 32, 32))
    assert scores.shape[:2] == (2, 1) and scores.shape[-1] >= 2  # several patches per image, one score each


def test_the_discriminator_starts_at_its_step_and_then_changes_training():
    images = shapes_images(64, 32, seed=0)
    common = dict(preset="shapes-f4", image_size=32, steps=10, batch_size=4, eval_images=8, log_every=1,
                  precision="fp32", restart_every=0)
    plain = train_vq(VQTrainConfig(**common), images, None, progress=False)
    adversarial = train_vq(VQTrainConfig(**common, adversarial_weight=0.8, adversarial_start=0.5), images, None,
                           progress=False)
    # Steps 0–4 are the same run; step 5 reconstructs alike (the weights are still the same) but adds the
    # adversarial loss, and from step 6 on the weights differ.
    assert [row["loss"] for row in plain.history[:5]] == [row["loss"] for row in adversarial.history[:5]]
    assert plain.history[5]["reconstruction"] == adversarial.history[5]["reconstruction"]
    assert plain.history[5]["loss"] != adversarial.history[5]["loss"]
    assert "discriminator_loss" not in adversarial.history[4] and "discriminator_loss" in adversarial.history[5]
    assert plain.history[6]["reconstruction"] != adversarial.history[6]["reconstruction"]
    assert all(row["adversarial_weight"] > 0 for row in adversarial.history[5:])
