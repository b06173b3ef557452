"""Configs of the image tokenizer and of its training, with the named presets.

These are plain dataclasses with no torch import, so that the command line can show
their defaults and preset names without loading torch (gptdraw.vq.model builds the network
from a VQConfig; gptdraw.vq.train trains it from a VQTrainConfig).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from gptdraw.runtime import Precision, canonical_precision


SIZE_LIMITS = {
    "image_size": 4096, "block_out_channels": 4096, "layers_per_block": 16, "latent_channels": 4096,
    "vq_embed_dim": 4096, "num_vq_embeddings": 2**20, "norm_num_groups": 4096,
}
"""The largest value of each size field a VQConfig accepts: far above any published VQGAN."""

CODE_NORMS = ("none", "l2")
"""VQConfig.code_norm's values: plain codes matched by distance, or unit-length codes matched by cosine."""


@dataclass
class VQConfig:
    """Architecture of a VQGAN in diffusers' VQModel terms, plus how gptdraw uses it."""

    image_size: int
    """The resolution the tokenizer is used at by default (pixels, square)."""
    block_out_channels: tuple[int, ...]
    """Channels of each encoder/decoder stage; each stage but the last halves the resolution."""
    down_block_types: tuple[str, ...]
    """The diffusers encoder block per stage, e.g. "DownEncoderBlock2D" / "AttnDownEncoderBlock2D"."""
    up_block_types: tuple[str, ...]
    """The diffusers decoder block per stage, from the lowest resolution up."""
    layers_per_block: int
    """Resnet layers per encoder stage (the decoder has one more)."""
    latent_channels: int
    """Channels of the encoder output / decoder input."""
    vq_embed_dim: int
    """Dimension of each codebook vector."""
    num_vq_embeddings: int
    """Codebook size: codes are integers in [0, num_vq_embeddings)."""
    norm_num_groups: int = 32
    """GroupNorm groups; must divide every entry of block_out_channels."""
    norm_type: str = "group"
    """Either "group" (taming) or "spatial" (MoVQ: decoder norms are conditioned on the codes)."""
    mid_block_add_attention: bool = True
    """Self-attention in the middle blocks of encoder and decoder."""
    input_range: tuple[float, float] = (-1.0, 1.0)
    """Pixel range the network expects; taming uses [-1, 1]."""
    code_norm: str = "none"
    """"none" (taming), or "l2": encoder outputs and codes are unit vectors, matched by cosine (ViT-VQGAN, LlamaGen)."""
    source: str = ""
    """Provenance, e.g. "trained by gptdraw train-vq" or a checkpoint path."""

    def __post_init__(self) -> None:
        # A config may come from an untrusted file: whole numbers in sane ranges before any
        # network is built from it (a codebook of 1e10 entries would exhaust memory first).
        for name, most in SIZE_LIMITS.items():
            value = getattr(self, name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ValueError(f"{name} must be whole number(s), got {value!r}")
            if max(values) > most:
                raise ValueError(f"{name} {max(values)} is over the limit of {most}: not a VQGAN gptdraw can build")
        # JSON gives lists; keep tuples so configs compare equal and stay hashable.
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        self.input_range = (float(self.input_range[0]), float(self.input_range[1]))
        stages = len(self.block_out_channels)
        if stages == 0:
            raise ValueError("block_out_channels must name at least one stage")
        if len(self.down_block_types) != stages or len(self.up_block_types) != stages:
            raise ValueError(
                f"block_out_channels has {stages} stages but down_block_types has "
                f"{len(self.down_block_types)} and up_block_types {len(self.up_block_types)}"
            )
        for channels in self.block_out_channels:
            if channels <= 0 or channels % self.norm_num_groups:
                raise ValueError(
                    f"every block_out_channels entry must be a positive multiple of "
                    f"norm_num_groups={self.norm_num_groups}; got {self.block_out_channels}"
                )
        for name in ("layers_per_block", "latent_channels", "vq_embed_dim", "num_vq_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.code_norm not in CODE_NORMS:
            raise ValueError(f"code_norm must be one of {CODE_NORMS}, got {self.code_norm!r}")
        if self.norm_type not in ("group", "spatial"):
            raise ValueError(f"norm_type must be 'group' or 'spatial', got {self.norm_type!r}")
        if self.norm_type == "spatial":
            # diffusers' SpatialNorm has 32 groups built in and is conditioned on the codes
            # through a layer sized for latent_channels.
            if any(channels % 32 for channels in self.block_out_channels):
                raise ValueError(f"norm_type 'spatial' needs block_out_channels that are multiples of 32, got {self.block_out_channels}")
            if self.vq_embed_dim != self.latent_channels:
                raise ValueError(
                    f"norm_type 'spatial' needs vq_embed_dim == latent_channels, got {self.vq_embed_dim} and {self.latent_channels}"
                )
        low, high = self.input_range
        if not low < high:
            raise ValueError(f"input_range must be (low, high) with low < high, got {self.input_range}")
        if self.image_size <= 0 or self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {self.image_size} must be a positive multiple of the downsample "
                f"factor {self.downsample_factor}"
            )

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each axis: every stage but the last halves the resolution."""
        return 2 ** (len(self.block_out_channels) - 1)

    def grid_size(self, image_size: int | None = None) -> tuple[int, int]:
        """(rows, columns) of the code grid for a square image of `image_size` pixels."""
        size = self.image_size if image_size is None else image_size
        if size <= 0 or size % self.downsample_factor:
            raise ValueError(
                f"image size {size} is not a positive multiple of the downsample factor "
                f"{self.downsample_factor}"
            )
        side = size // self.downsample_factor
        return (side, side)

    def vqmodel_kwargs(self) -> dict:
        """Keyword arguments for `diffusers.VQModel` that build this architecture."""
        return dict(
            in_channels=3,
            out_channels=3,
            down_block_types=self.down_block_types,
            up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            act_fn="silu",
            latent_channels=self.latent_channels,
            sample_size=self.image_size,
            num_vq_embeddings=self.num_vq_embeddings,
            norm_num_groups=self.norm_num_groups,
            vq_embed_dim=self.vq_embed_dim,
            norm_type=self.norm_type,
            mid_block_add_attention=self.mid_block_add_attention,
            # decode() receives code indices, not latents, so look them up in the codebook.
            lookup_from_codebook=True,
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "VQConfig":
        """Build from `to_dict()` output; unknown or missing fields raise ValueError naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown VQConfig fields: {', '.join(unknown)}")
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"missing VQConfig fields: {', '.join(missing)}")
        return cls(**data)


def _taming_f16_16384() -> VQConfig:
    # taming-transformers vqgan_imagenet_f16_16384: ch 128, ch_mult (1,1,2,2,4), attention
    # at resolution 16 (the last stage), z_channels = embed_dim = 256.
    return VQConfig(
        image_size=256,
        block_out_channels=(128, 128, 256, 256, 512),
        down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=256,
        vq_embed_dim=256,
        num_vq_embeddings=16384,
        norm_num_groups=32,
        mid_block_add_attention=True,
        input_range=(-1.0, 1.0),
        source="architecture of taming-transformers vqgan_imagenet_f16_16384",
    )


def _shapes_f8() -> VQConfig:
    # A small f8 tokenizer for the built-in shapes data (48 px → a 6×6 grid), sized to
    # train to clean reconstructions in about two minutes on a 2-core CPU; bench/vq_train.py
    # measures it. Flat-colour shapes need no attention; 8-dimensional codes (projected
    # from 32 latent channels) keep the codebook well used.
    return VQConfig(
        image_size=48,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=32,
        vq_embed_dim=8,
        num_vq_embeddings=1024,
        norm_num_groups=4,
        mid_block_add_attention=False,
        input_range=(-1.0, 1.0),
        source="preset shapes-f8",
    )


def _shapes_f4() -> VQConfig:
    # The quickstart's tokenizer: 32 px → an 8×8 grid of 4×4-pixel codes. Less compression
    # than f8 makes colours and edges learnable in the few hundred steps a 2-core CPU
    # affords in the quickstart's time budget (measured: f8 at 48 px kept colours muddy).
    return VQConfig(
        image_size=32,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=16,
        vq_embed_dim=16,
        num_vq_embeddings=256,
        norm_num_groups=8,
        mid_block_add_attention=False,
        input_range=(-1.0, 1.0),
        source="preset shapes-f4",
    )


def _emoji_f8() -> VQConfig:
    # shapes-f8 with wider low-resolution stages: real pictures (emoji drawn in five styles) have
    # outlines, gradients and faces that the shapes' 32-channel 8×8 stage blurs away; 64 px → 8×8.
    # The full-resolution stage stays at 16 channels: it is where a CPU spends its time (32 there
    # made a step about three times slower).
    return dataclasses.replace(_shapes_f8(), image_size=64, block_out_channels=(16, 32, 64, 64), norm_num_groups=8,
                               source="preset emoji-f8")


def _emoji_f4() -> VQConfig:
    # shapes-f4 with twice the channels, for real pictures at 32 px (8×8 codes), 48 px (12×12)
    # or 64 px (16×16): more codes a picture, as strong tokenizers use, at more GPT tokens.
    return dataclasses.replace(_shapes_f4(), image_size=48, block_out_channels=(32, 64, 64), latent_channels=32,
                               vq_embed_dim=8, num_vq_embeddings=1024, norm_num_groups=8, source="preset emoji-f4")


VQ_PRESETS = {
    "taming-f16-16384": _taming_f16_16384,
    "shapes-f8": _shapes_f8,
    "shapes-f4": _shapes_f4,
    "emoji-f8": _emoji_f8,
    "emoji-f4": _emoji_f4,
}


def vq_preset(name: str, **overrides) -> VQConfig:
    """A named VQConfig; keyword overrides replace fields (and are checked like any config)."""
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {name!r}; known presets: {', '.join(sorted(VQ_PRESETS))}")
    config = VQ_PRESETS[name]()
    return dataclasses.replace(config, **overrides) if overrides else config


RECONSTRUCTION_LOSSES = ("l1", "mse", "l1+mse")
CODEBOOK_INITS = ("kmeans", "keep")
CODEBOOK_UPDATES = ("ema", "gradient")


@dataclass
class VQTrainConfig:
    """How to train an image tokenizer; the defaults are the tested shapes-f8 recipe."""

    preset: str = "shapes-f8"
    """VQ architecture preset (gptdraw.vq.model.vq_preset)."""
    image_size: int | None = None
    """Training resolution; None: the preset's image_size."""
    vq_embed_dim: int | None = None
    """Dimension of each codebook vector; None: the preset's."""
    code_norm: Literal["none", "l2"] | None = None
    """"l2": unit-length codes matched by cosine; "none": plain codes; None: the preset's."""
    steps: int = 800
    """Optimiser steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr × this."""
    weight_decay: float = 0.0
    """AdamW weight decay (never applied to the codebook)."""
    reconstruction_loss: Literal["l1", "mse", "l1+mse"] = "mse"
    """The pixel loss, on pixels in [0, 1]: "l1", "mse" or "l1+mse"."""
    foreground_weight: float = 4.0
    """Extra loss weight on pixels that are not pure white (0: every pixel alike)."""
    commitment_weight: float = 0.25
    """β: pulls encoder outputs towards their codes."""
    codebook_update: Literal["ema", "gradient"] = "ema"
    """How codes learn. "ema": codes are running means of their encoder outputs; "gradient": codebook loss."""
    ema_decay: float = 0.9
    """Decay of those running means (per step)."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss when codebook_update is "gradient"."""
    autoencoder_warmup: float = 0.5
    """Fraction of the steps trained without quantisation before the codebook starts."""
    codebook_init: Literal["kmeans", "keep"] = "kmeans"
    """The codebook's start. "kmeans": k-means of encoder outputs when quantisation starts; "keep": as it is."""
    zero_init_residuals: bool = True
    """Start each residual block as the identity (new tokenizers only)."""
    adversarial_weight: float = 0.0
    """Weight of a patch discriminator's loss, times the adaptive weight (0: off; taming used 0.8)."""
    adversarial_start: float = 0.6
    """Fraction of the steps trained before the discriminator starts."""
    discriminator_channels: int = 64
    """Width of the discriminator's first layer."""
    discriminator_layers: int = 3
    """The discriminator's stride-2 layers (each doubles the patch a score sees)."""
    perceptual_weight: float = 0.0
    """Weight of the LPIPS perceptual loss (0: off; taming used 1.0); needs lpips_vgg and lpips_linear."""
    lpips_vgg: str | None = None
    """VGG16 ImageNet weights for LPIPS (torchvision's vgg16-397923af.pth or .safetensors)."""
    lpips_linear: str | None = None
    """LPIPS's linear layers (the lpips package's weights/v0.1/vgg.pth or .safetensors)."""
    kmeans_iterations: int = 10
    """Lloyd iterations of the k-means initialisation."""
    restart_every: int = 50
    """Every N steps, codes unused over those N steps move onto encoder outputs; 0: never."""
    eval_images: int = 256
    """Images held out for the final PSNR / codebook usage."""
    precision: Precision = "auto"
    """Autocast precision: bf16, fp32, or auto (bf16 where the CPU/GPU runs it natively, else fp32). fp16 is
    refused: it needs a loss scaler, which this loop does not have."""
    seed: int = 0
    """Seeds initialisation, batch order and restarts."""
    log_every: int = 10
    """Progress-bar refresh interval in steps."""
    preview_images: int = 8
    """Originals vs reconstructions in reconstructions.png."""

    def __post_init__(self) -> None:
        if self.preset not in VQ_PRESETS:
            raise ValueError(f"unknown VQ preset {self.preset!r}; known presets: {', '.join(sorted(VQ_PRESETS))}")
        for name in ("steps", "batch_size", "kmeans_iterations", "log_every", "eval_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup_steps", "restart_every", "preview_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.adversarial_weight < 0 or not 0 <= self.adversarial_start < 1:
            raise ValueError("adversarial_weight must be non-negative and adversarial_start in [0, 1)")
        if self.perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be non-negative, got {self.perceptual_weight}")
        if self.perceptual_weight > 0 and not (self.lpips_vgg and self.lpips_linear):
            raise ValueError("the perceptual loss needs its weight files: --lpips-vgg (VGG16) and --lpips-linear "
                             "(LPIPS's linear layers)")
        if self.discriminator_channels < 4 or not 1 <= self.discriminator_layers <= 6:
            raise ValueError("discriminator_channels must be at least 4 and discriminator_layers in 1..6")
        if not 0 <= self.autoencoder_warmup < 1:
            raise ValueError(f"autoencoder_warmup must be in [0, 1), got {self.autoencoder_warmup}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"reconstruction_loss must be one of {RECONSTRUCTION_LOSSES}, got {self.reconstruction_loss!r}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook_update must be one of {CODEBOOK_UPDATES}, got {self.codebook_update!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.foreground_weight < 0:
            raise ValueError(f"foreground_weight must be non-negative, got {self.foreground_weight}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {CODEBOOK_INITS}, got {self.codebook_init!r}")
        self.precision = canonical_precision(self.precision)
        if self.precision == "fp16":
            raise ValueError("precision fp16 is not supported for image-tokenizer training (no loss scaler); "
                             "use bf16 or fp32")
        self.architecture()  # raises if the overrides do not fit the preset

    def architecture(self) -> VQConfig:
        """The preset's VQConfig with this config's image_size, vq_embed_dim and code_norm where they are set."""
        overrides = {name: getattr(self, name) for name in ("image_size", "vq_embed_dim", "code_norm")
                     if getattr(self, name) is not None}
        return vq_preset(self.preset, **overrides)
