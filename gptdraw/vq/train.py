"""Train an image tokenizer (a VQGAN, its GAN and perceptual parts optional) from scratch: `gptdraw vq train`.

By default the loss is what a VQ-VAE needs and no more: a pixel reconstruction loss and
the commitment loss (encoder outputs stay near their codes, weighted by β = 0.25). The
adversarial and perceptual losses of a full VQGAN are optional (`adversarial_weight`, a
patch discriminator, gptdraw.vq.discriminator; `perceptual_weight`, LPIPS from local weight
files, gptdraw.vq.perceptual): they matter for photographs, cost more than the rest of the
network on a CPU, and flat-colour data does not need them.

The codebook follows the encoder by exponential moving averages (VQ-VAE-2): each code is
the running mean of the encoder outputs assigned to it. With a few hundred steps of
budget that matters: a gradient-trained codebook moves about `lr` per step under Adam,
far slower than the encoder outputs it has to track. ("gradient", the codebook loss of
taming-transformers, is still available.)

Four more things make a small tokenizer train in minutes on a CPU (bench/vq_train.py
measures each):
- every residual block starts as the identity (its last convolution zeroed), so the
  untrained network is shallow and learns fast;
- the first half of the steps trains a plain autoencoder (no quantisation); then the
  codebook is set to k-means centroids of the trained encoder's outputs, so codes start
  on features that already describe the images;
- dead-code restarts move each code unused over the last `restart_every` steps onto a
  random encoder output of the current batch, so the codebook stays alive;
- pixels that are not white background weigh more in the reconstruction loss
  (`foreground_weight`): on the shapes data objects are a few percent of the pixels, and
  their colours and edges are what matters.

Read top to bottom: the result type, the data sources, the codebook helpers, the losses,
then `VQTrainingRun` (one run's state and its steps) and `train_vq`, the loop that walks it
through them, and the evaluation and saving it ends with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from gptdraw.files import replace_directory, staging_directory
from gptdraw.images import make_grid, tensor_to_pil, uint8_to_tensor
from gptdraw.runtime import resolve_precision
from gptdraw.schedule import learning_rate
from gptdraw.vq.metrics import codebook_stats, psnr_of_mse
from gptdraw.vq.config import VQTrainConfig  # noqa: F401  (re-exported: the config lives in a torch-free module)
from gptdraw.vq.discriminator import PatchDiscriminator, adaptive_weight, generator_loss, hinge_discriminator_loss
from gptdraw.vq.perceptual import LPIPS
from gptdraw.vq.model import CONFIG_FILE, ImageTokenizer, read_config

# A batch source: (batch_size, rng) → uint8 (B, H, W, 3) or float (B, 3, H, W) in [0, 1].
BatchSource = Callable[[int, np.random.Generator], "np.ndarray | torch.Tensor"]


@dataclass
class VQTrainResult:
    """What a training run achieved, measured on held-out images with encode → decode."""

    psnr: float  # dB, reconstructions of the held-out images (pixels in [0, 1])
    codebook_usage: float  # fraction of codebook entries used by the held-out images
    perplexity: float  # exp(entropy) of the held-out code histogram: the effective number of codes
    steps: int  # optimiser steps taken
    seconds: float  # wall-clock training time (without evaluation and saving)
    steps_per_second: float
    median_step_seconds: float  # median wall time of one step: robust to pauses when other work shares the CPU
    precision: str  # "bf16" or "fp32", as resolved from the config
    restarted_codes: int  # codes moved by dead-code restarts, in total
    final_loss: float  # training loss of the last step
    out_dir: str | None  # where the tokenizer was saved, if anywhere
    history: list[dict] = field(default_factory=list, repr=False)  # {"step", "loss", "reconstruction", "psnr", "used"} per log interval
    tokenizer: ImageTokenizer | None = field(default=None, repr=False, compare=False)  # the trained tokenizer, eval mode

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (no tokenizer, no history)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("tokenizer", "history")}


# ---- data --------------------------------------------------------------------------------------


def _as_float_images(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A source's batch as float32 (B, 3, H, W) in [0, 1]."""
    if isinstance(batch, np.ndarray):
        return uint8_to_tensor(batch)
    if isinstance(batch, torch.Tensor) and batch.is_floating_point() and batch.ndim == 4 and batch.shape[1] == 3:
        return batch.float()
    raise ValueError(
        "an image source must give uint8 arrays (B, H, W, 3) or float tensors (B, 3, H, W) in [0, 1], "
        f"got {type(batch).__name__} {getattr(batch, 'dtype', '')} {tuple(getattr(batch, 'shape', ()))}"
    )


def _split_sources(
    images: np.ndarray | BatchSource, config: VQTrainConfig
) -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """(next training batch, held-out images) from an array of images or a batch source.

    From an array, the last images (up to `eval_images`, at most a fifth) are held out
    and the rest are visited in a fresh random order every epoch. A source is asked
    for the held-out images once, with its own random generator.
    """
    rng = np.random.default_rng(config.seed)
    if callable(images):
        source = images
        heldout = _as_float_images(source(config.eval_images, np.random.default_rng([config.seed, 1])))
        return (lambda: _as_float_images(source(config.batch_size, rng))), heldout

    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"images must be a uint8 array (N, H, W, 3) or a batch source, got "
            f"{type(images).__name__} {getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}"
        )
    count = images.shape[0]
    if count == 0:
        raise ValueError("no training images")
    held = min(config.eval_images, count // 5)
    train, heldout = (images[: count - held], images[count - held :]) if held else (images, images)

    def epochs() -> Iterator[int]:
        while True:
            yield from rng.permutation(len(train))

    order = epochs()

    def next_batch() -> torch.Tensor:
        indices = [next(order) for _ in range(config.batch_size)]
        return uint8_to_tensor(train[indices])

    return next_batch, uint8_to_tensor(heldout)


def shapes_images(count: int, image_size: int, seed: int = 0) -> np.ndarray:
    """`count` built-in shapes images (SHAPES.md) as uint8 (count, S, S, 3), the same for the same seed."""
    from gptdraw.data.shapes import generate_examples

    examples = generate_examples(count, image_size, seed=seed, heldout=None)
    return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image, _ in examples])


# ---- the codebook ------------------------------------------------------------------------------


def kmeans(vectors: torch.Tensor, clusters: int, *, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means: (N, C) float32 → (clusters, C) centroids.

    Starts from random data points; a cluster that empties is re-seeded on a random point,
    so every centroid sits on data. With fewer points than clusters, points repeat (plus a
    little noise so the copies can separate later).
    """
    count = vectors.shape[0]
    picks = torch.randperm(count, generator=generator)[:clusters]
    if count < clusters:
        picks = torch.cat([picks, torch.randint(count, (clusters - count,), generator=generator)])
    centroids = vectors[picks].clone()
    scale = vectors.std().clamp_min(1e-6)
    centroids += 1e-3 * scale * torch.randn(centroids.shape, generator=generator)
    for _ in range(iterations):
        assignment = torch.cdist(vectors, centroids).argmin(dim=1)  # (N,)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, vectors)
        sizes = torch.bincount(assignment, minlength=clusters).float()
        empty = sizes == 0
        centroids = torch.where(empty[:, None], centroids, sums / sizes.clamp_min(1)[:, None])
        if empty.any():
            refill = torch.randint(count, (int(empty.sum()),), generator=generator)
            centroids[empty] = vectors[refill] + 1e-3 * scale * torch.randn(
                (int(empty.sum()), vectors.shape[1]), generator=generator
            )
    return centroids


def flat_latents(latents: torch.Tensor) -> torch.Tensor:
    """Encoder outputs (B, C, h, w) → float32 rows (B·h·w, C), detached."""
    return latents.detach().float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


class CodebookEMA:
    """Codes as running means of the encoder outputs assigned to them (the VQ-VAE-2 update).

    Keeps, per code, a decayed count and a decayed sum of its assigned encoder outputs;
    the code is their ratio. Laplace smoothing keeps codes that nothing chose from
    dividing by zero (they stay put until a restart moves them).
    """

    def __init__(self, codebook: torch.Tensor, decay: float, epsilon: float = 1e-5):
        self.decay = decay
        self.epsilon = epsilon
        self.sums = codebook.detach().float().clone()  # (K, C)
        self.counts = torch.ones(codebook.shape[0], device=codebook.device)  # (K,)

    @torch.no_grad()
    def update(self, codebook: torch.Tensor, codes: torch.Tensor, latents: torch.Tensor) -> None:
        """Fold one batch in: `codes` (N,) chosen for `latents` (N, C); rewrite `codebook` in place."""
        size = codebook.shape[0]
        counts = torch.bincount(codes, minlength=size).float()  # (K,)
        sums = torch.zeros_like(self.sums).index_add_(0, codes, latents.float())  # (K, C)
        self.counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.counts.sum()
        smoothed = (self.counts + self.epsilon) / (total + size * self.epsilon) * total
        codebook.copy_((self.sums / smoothed[:, None]).to(codebook.dtype))

    @torch.no_grad()
    def reset(self, codebook: torch.Tensor, indices: torch.Tensor) -> None:
        """Restart the running means of `indices` from the codebook's current rows."""
        self.sums[indices] = codebook[indices].float()
        self.counts[indices] = 1.0


@torch.no_grad()
def restart_dead_codes(
    tokenizer: ImageTokenizer,
    usage_counts: torch.Tensor,
    latents: torch.Tensor,
    generator: torch.Generator,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    ema: CodebookEMA | None = None,
) -> int:
    """Move every code with a zero usage count onto a random encoder output; return how many moved.

    `latents` are encoder outputs (B, C, h, w) of the current batch. The optimizer's
    running moments (or the EMA's running means) for the moved rows are reset so that
    stale history does not drag a restarted code away from its new place.
    """
    dead = (usage_counts == 0).nonzero().squeeze(1)
    if dead.numel() == 0:
        return 0
    candidates = flat_latents(latents)  # (B*h*w, C)
    picks = torch.randint(candidates.shape[0], (dead.numel(),), generator=generator)
    # Several dead codes may land on the same output; a little noise lets them separate.
    noise = 1e-2 * candidates.std().clamp_min(1e-6) * torch.randn((dead.numel(), candidates.shape[1]), generator=generator)
    codebook = tokenizer.codebook
    codebook[dead] = (candidates[picks] + noise).to(codebook.dtype)
    if optimizer is not None:
        for value in optimizer.state.get(codebook, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == codebook.shape:
                value[dead] = 0
    if ema is not None:
        ema.reset(codebook, dead)
    return int(dead.numel())


@torch.no_grad()
def zero_init_residuals(model: torch.nn.Module) -> int:
    """Zero the last layer of every residual branch, so each block starts as the identity; return how many.

    An untrained VQModel is then conv_in → resamplers → conv_out, shallow enough to learn
    colours and positions in the first few dozen steps; the branches grow from zero.
    """
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    zeroed = 0
    for module in model.modules():
        if isinstance(module, ResnetBlock2D):
            last = module.conv2
        elif isinstance(module, Attention) and module.residual_connection:
            last = module.to_out[0]
        else:
            continue
        torch.nn.init.zeros_(last.weight)
        if last.bias is not None:
            torch.nn.init.zeros_(last.bias)
        zeroed += 1
    return zeroed


# ---- numerics ----------------------------------------------------------------------------------


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero while training on a CPU, then restore the default.

    Tiny gradients and Adam moments turn into denormals after a few steps; x86 CPUs
    process those many times slower, which made CPU training steps 5–10× slower.
    """
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def _learning_rate(step: int, config: VQTrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr × min_lr_ratio (gptdraw.schedule)."""
    return learning_rate(step, config.lr, config.warmup_steps, config.steps, "cosine", config.min_lr_ratio)


def _reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, config: VQTrainConfig) -> torch.Tensor:
    """Per-pixel L1 and/or squared error, with non-white pixels weighted 1 + foreground_weight."""
    difference = reconstruction.float() - target
    if config.reconstruction_loss == "l1":
        error = difference.abs()
    elif config.reconstruction_loss == "mse":
        error = difference.square()
    else:
        error = difference.abs() + difference.square()
    if config.foreground_weight:
        foreground = (target < 1.0 - 1e-3).any(dim=1, keepdim=True)  # (B, 1, H, W)
        error = error * (1.0 + config.foreground_weight * foreground)
    return error.mean()


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of a batch of images in [0, 1] (reconstruction clamped first)."""
    return float(psnr_of_mse(F.mse_loss(reconstruction.detach().float().clamp(0.0, 1.0), target.float())))


# ---- training ------------------------------------------------------------------------------------


def _new_tokenizer(config: VQTrainConfig) -> ImageTokenizer:
    """A fresh tokenizer of the config's preset, noting in its config how it was made."""
    vq_config = config.architecture()
    vq_config.source = f"trained by gptdraw train-vq (preset {config.preset}, {config.steps} steps, seed {config.seed})"
    tokenizer = ImageTokenizer(vq_config)
    if config.zero_init_residuals:
        zero_init_residuals(tokenizer.model)
    return tokenizer


def _check_image_size(images: torch.Tensor, tokenizer: ImageTokenizer) -> None:
    """Refuse images (B, 3, H, W) that are not square or whose side the tokenizer cannot divide into codes."""
    side = images.shape[-1]
    if images.shape[-2] != side or side % tokenizer.downsample_factor:
        raise ValueError(
            f"training images are {images.shape[-2]}x{side}; the tokenizer needs square images "
            f"whose side is a multiple of {tokenizer.downsample_factor}"
        )


def _optimizer(tokenizer: ImageTokenizer, config: VQTrainConfig) -> torch.optim.Optimizer:
    """AdamW over the network, and over the codebook too unless an EMA keeps the codebook."""
    codebook = tokenizer.codebook
    groups = [{"params": [p for p in tokenizer.parameters() if p is not codebook], "weight_decay": config.weight_decay}]
    if config.codebook_update != "ema":
        groups.append({"params": [codebook], "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.99))


def _discriminator(
    config: VQTrainConfig, device: torch.device
) -> tuple[PatchDiscriminator | None, torch.optim.Optimizer | None]:
    """The patch discriminator and its optimiser, or (None, None) when adversarial_weight is 0."""
    if config.adversarial_weight == 0:
        return None, None
    discriminator = PatchDiscriminator(config.discriminator_channels, config.discriminator_layers).to(device).train()
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.lr, betas=(0.5, 0.9), weight_decay=0.0)
    return discriminator, optimizer


@dataclass
class StepLosses:
    """The losses of one training step, kept until the step is logged."""

    loss: torch.Tensor
    """The total the tokenizer's optimiser stepped on."""
    reconstruction: torch.Tensor
    """The weighted pixel loss (`_reconstruction_loss`)."""
    perceptual: torch.Tensor | None = None
    """The mean LPIPS distance, when the perceptual loss is on."""
    adversarial_weight: torch.Tensor | None = None
    """adversarial_weight × the adaptive weight, on steps where the discriminator trains."""
    discriminator: torch.Tensor | None = None
    """The discriminator's hinge loss, on the same steps."""


class VQTrainingRun:
    """One training run of an image tokenizer, set up and ready to step: the data, the tokenizer
    and its optimiser, the optional discriminator and perceptual loss, and the codebook's upkeep.

    `train_vq()` makes one and walks it through the steps; each step is `take_step` (the
    tokenizer's step, the discriminator's, then codebook upkeep) then `log` (a history record
    every log_every steps). The steps before `quantize_from` train a plain autoencoder.
    """

    def __init__(self, config: VQTrainConfig, images: np.ndarray | BatchSource, *,
                 tokenizer: ImageTokenizer | None = None, device: torch.device):
        # Everything random below (data order, initial weights, k-means, restarts) follows from
        # the seed, in this order: a run is repeatable to the bit on the same machine.
        self.config, self.device = config, device
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)  # k-means and restarts
        self.next_batch, self.heldout = _split_sources(images, config)
        self.tokenizer = (tokenizer or _new_tokenizer(config)).to(device).train()
        _check_image_size(self.heldout, self.tokenizer)

        self.precision = resolve_precision(config.precision, device, purpose="image-tokenizer training")
        self.autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")
        self.optimizer = _optimizer(self.tokenizer, config)
        self.discriminator, self.discriminator_optimizer = _discriminator(config, device)
        self.adversarial_from = round(config.adversarial_start * config.steps)
        self.last_layer = self.tokenizer.model.decoder.conv_out.weight  # where the adaptive weight compares gradients
        # The perceptual part (off unless perceptual_weight > 0): LPIPS from the user's weight files.
        self.lpips = None
        if config.perceptual_weight > 0:
            self.lpips = LPIPS.from_files(config.lpips_vgg, config.lpips_linear).to(device)

        # Steps before this one train a plain autoencoder; the codebook starts here, on trained features.
        self.quantize_from = round(config.autoencoder_warmup * config.steps)
        self.ema: CodebookEMA | None = None  # made when quantisation starts, if codebook_update is "ema"
        self.usage_counts = torch.zeros(self.tokenizer.codebook_size, dtype=torch.long, device=device)
        self.restarted = 0
        self.history: list[dict] = []
        self.step_seconds: list[float] = []
        # The last step's batch, tokenizer output and losses, for `log`.
        self.batch, self.output, self.losses = None, None, None

    def take_step(self, step: int) -> float:
        """Training step `step` (0-based): the tokenizer's optimiser step, the discriminator's, and
        the codebook's upkeep; returns the tokenizer's loss."""
        started = time.perf_counter()
        quantizing = step >= self.quantize_from
        if step == self.quantize_from:
            self._start_quantizing()
        for group in self.optimizer.param_groups:
            group["lr"] = _learning_rate(step, self.config)
        self.batch = self.next_batch().to(self.device)
        with self.autocast:
            self.output = self.tokenizer(self.batch, quantize=quantizing)
        self.losses = self._losses(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.loss.backward()
        self.optimizer.step()
        if self.losses.adversarial_weight is not None:
            self.losses.discriminator = self._discriminator_step()
        if quantizing:
            self._maintain_codebook(step)
        loss = self.losses.loss.item()
        self.step_seconds.append(time.perf_counter() - started)
        return loss

    def _start_quantizing(self) -> None:
        """Set the codebook onto the trained encoder's outputs (k-means) and start its running means."""
        if self.config.codebook_init == "kmeans":
            self._kmeans_init()
        if self.config.codebook_update == "ema":
            self.ema = CodebookEMA(self.tokenizer.codebook, self.config.ema_decay)

    @torch.no_grad()
    def _kmeans_init(self) -> None:
        """Set the codebook to k-means centroids of the current encoder's outputs on a few batches."""
        tokenizer = self.tokenizer
        # About four outputs per code, so that k-means has something to average.
        wanted = 4 * tokenizer.codebook_size
        vectors, total = [], 0
        with self.autocast:
            while total < wanted:
                pixels = tokenizer._to_network_range(self.next_batch().to(self.device))
                vectors.append(flat_latents(tokenizer.latents(pixels)).cpu())  # (B*h*w, C)
                total += vectors[-1].shape[0]
        centroids = kmeans(torch.cat(vectors)[:wanted], tokenizer.codebook_size,
                           iterations=self.config.kmeans_iterations, generator=self.generator)
        tokenizer.codebook.copy_(centroids.to(tokenizer.codebook))

    def _losses(self, step: int) -> StepLosses:
        """The tokenizer's loss on this step's batch: pixels (+ perceptual), commitment, codebook
        (when it learns by gradient), and from adversarial_from on, fooling the discriminator."""
        config, batch, output = self.config, self.batch, self.output
        reconstruction = _reconstruction_loss(output.reconstruction, batch, config)
        # The recipe's "negative log-likelihood", pixel and perceptual: what the discriminator's
        # weight is measured against.
        nll, perceptual, weight = reconstruction, None, None
        if self.lpips is not None:
            with self.autocast:
                perceptual = self.lpips(output.reconstruction, batch).float().mean()
            nll = reconstruction + config.perceptual_weight * perceptual
        loss = nll + config.commitment_weight * output.commitment_loss
        if config.codebook_update != "ema":
            loss = loss + config.codebook_weight * output.codebook_loss
        if self.discriminator is not None and step >= self.adversarial_from:
            with self.autocast:
                fake_scores = self.discriminator(output.reconstruction * 2 - 1)  # the discriminator sees [-1, 1]
            fooling = generator_loss(fake_scores.float())
            weight = config.adversarial_weight * adaptive_weight(nll, fooling, self.last_layer)
            loss = loss + weight * fooling
        return StepLosses(loss=loss, reconstruction=reconstruction, perceptual=perceptual, adversarial_weight=weight)

    def _discriminator_step(self) -> torch.Tensor:
        """The discriminator's own step, on the batch against its (fixed) reconstruction; returns its loss."""
        with self.autocast:
            real_scores = self.discriminator(self.batch * 2 - 1)
            fake_scores = self.discriminator(self.output.reconstruction.detach() * 2 - 1)
        loss = hinge_discriminator_loss(real_scores.float(), fake_scores.float())
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.discriminator_optimizer.step()
        return loss

    def _maintain_codebook(self, step: int) -> None:
        """After a quantised step: the EMA update, usage counts, and every restart_every quantised
        steps (but the last) the restart of codes unused since the previous restart."""
        config, tokenizer, output = self.config, self.tokenizer, self.output
        codes = output.codes.reshape(-1)  # (B*h*w,)
        if self.ema is not None:
            self.ema.update(tokenizer.codebook, codes, flat_latents(output.latents))
        self.usage_counts += torch.bincount(codes, minlength=tokenizer.codebook_size)
        steps_quantized = step + 1 - self.quantize_from
        if config.restart_every and steps_quantized % config.restart_every == 0 and step + 1 < config.steps:
            self.restarted += restart_dead_codes(tokenizer, self.usage_counts, output.latents, self.generator,
                                                 optimizer=self.optimizer, ema=self.ema)
            self.usage_counts.zero_()

    def log(self, step: int) -> dict | None:
        """The history record of step `step`, every log_every steps and at the last (kept in
        `history`); None on other steps."""
        config, losses, output = self.config, self.losses, self.output
        if step % config.log_every != 0 and step + 1 != config.steps:
            return None
        record = {
            "step": step,
            "loss": round(losses.loss.item(), 6),
            "reconstruction": round(losses.reconstruction.item(), 6),
            "psnr": round(psnr(output.reconstruction, self.batch), 3),
            "used": int(output.codes.unique().numel()) if step >= self.quantize_from else 0,
        }
        if losses.adversarial_weight is not None:
            record["discriminator_loss"] = round(losses.discriminator.item(), 6)
            record["adversarial_weight"] = round(float(losses.adversarial_weight), 6)
        if losses.perceptual is not None:
            record["perceptual"] = round(losses.perceptual.item(), 6)
        self.history.append(record)
        return record

    def result(self, *, seconds: float, out_dir: Path | None) -> VQTrainResult:
        """The trained tokenizer (switched to eval mode) and its figures on the held-out images."""
        self.tokenizer.eval()
        figures = evaluate_tokenizer(self.tokenizer, self.heldout)
        steps = self.config.steps
        return VQTrainResult(
            psnr=figures["psnr"],
            codebook_usage=figures["codebook_usage"],
            perplexity=figures["perplexity"],
            steps=steps,
            seconds=round(seconds, 3),
            steps_per_second=round(steps / seconds, 3),
            median_step_seconds=round(float(np.median(self.step_seconds)), 4),
            precision=self.precision,
            restarted_codes=self.restarted,
            final_loss=self.losses.loss.item() if self.losses is not None else float("nan"),
            out_dir=str(out_dir) if out_dir is not None else None,
            history=self.history,
            tokenizer=self.tokenizer,
        )


def train_vq(
    config: VQTrainConfig,
    images: np.ndarray | BatchSource,
    out_dir: str | Path | None,
    *,
    tokenizer: ImageTokenizer | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> VQTrainResult:
    """Train an image tokenizer on `images` and save it to `out_dir` (None: do not save).

    `images` is a uint8 array (N, H, W, 3) or a batch source `(batch_size, rng) → batch`.
    Pass `tokenizer` to continue training one (its architecture wins over config.preset).
    The result carries the trained tokenizer and the held-out figures.
    """
    device = torch.device(device)
    out_path = _check_out_dir(out_dir) if out_dir is not None else None
    run = VQTrainingRun(config, images, tokenizer=tokenizer, device=device)
    with flush_denormals() if device.type == "cpu" else contextlib.nullcontext():
        bar = tqdm(range(config.steps), desc="train-vq", unit="step", disable=not progress, dynamic_ncols=True)
        start = time.perf_counter()
        for step in bar:
            loss = run.take_step(step)
            record = run.log(step)
            if record is not None:
                bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{record['psnr']:.1f}", codes=record["used"], refresh=False)
        bar.close()
        result = run.result(seconds=time.perf_counter() - start, out_dir=out_path)
    if out_path is not None:
        _save_run(run.tokenizer, run.heldout[: config.preview_images], result, config, out_path)
    return result


@torch.no_grad()
def evaluate_tokenizer(tokenizer: ImageTokenizer, images: torch.Tensor, batch_size: int = 64) -> dict:
    """PSNR of encode → decode, codebook usage and code perplexity on `images` (B, 3, H, W)."""
    device = tokenizer.codebook.device
    squared_error, codes = 0.0, []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        chunk_codes = tokenizer.encode(chunk)
        reconstruction = tokenizer.decode(chunk_codes)
        squared_error += F.mse_loss(reconstruction, chunk, reduction="sum").item()
        codes.append(chunk_codes.reshape(-1).cpu())
    stats = codebook_stats(torch.cat(codes), tokenizer.codebook_size)
    return {
        "psnr": round(float(psnr_of_mse(torch.tensor(squared_error / images.numel()))), 3),
        "codebook_usage": round(stats.usage, 4),
        "perplexity": round(stats.perplexity, 2),
    }


# ---- saving --------------------------------------------------------------------------------------


def _check_out_dir(out_dir: str | Path) -> Path:
    """Refuse an output directory that holds something other than a previous tokenizer."""
    path = Path(out_dir)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"output path {path} exists and is not a directory")
        if any(path.iterdir()):
            try:
                read_config(path / CONFIG_FILE)
            except (FileNotFoundError, ValueError):
                raise ValueError(
                    f"output directory {path} is not empty and holds no image tokenizer; "
                    "choose a new or empty directory"
                ) from None
    return path


def _save_run(
    tokenizer: ImageTokenizer, preview: torch.Tensor, result: VQTrainResult, config: VQTrainConfig, out_path: Path
) -> None:
    """Write the tokenizer, a preview PNG and the run's figures to a temporary directory, then swap it in.

    A crash while saving leaves either the old directory or the new one, never half of each.
    """
    staging = staging_directory(out_path)
    try:
        tokenizer.save_pretrained(staging)
        if len(preview):
            save_preview(tokenizer, preview, staging / "reconstructions.png")
        report = {"result": result.to_dict(), "config": dataclasses.asdict(config), "history": result.history}
        (staging / "train_vq.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_directory(staging, out_path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def save_preview(tokenizer: ImageTokenizer, images: torch.Tensor, path: str | Path, min_tile: int = 96) -> None:
    """A PNG with the originals on the top row and their reconstructions below, enlarged to `min_tile` px."""
    device = tokenizer.codebook.device
    reconstructions = tokenizer.decode(tokenizer.encode(images.to(device))).cpu()
    tiles = tensor_to_pil(images) + tensor_to_pil(reconstructions)
    scale = max(1, math.ceil(min_tile / images.shape[-1]))
    tiles = [tile.resize((tile.width * scale, tile.height * scale), Image.Resampling.NEAREST) for tile in tiles]
    labels = ["original"] * len(images) + ["reconstruction"] * len(images)
    make_grid(tiles, columns=len(images), labels=labels).save(path)
