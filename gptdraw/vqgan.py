"""The image tokenizer: a VQGAN (diffusers' VQModel) that turns images into grids of codes and back.

    images (B, 3, H, W) in [0, 1] ──encode──▶ codes (B, H/f, W/f) int64 ──decode──▶ images

The network is diffusers' `VQModel`, which reproduces the taming-transformers VQGAN
(and MoVQ with `norm_type="spatial"`) exactly, so pretrained checkpoints load into it
after a key rename (see gptdraw/vq_convert.py). This file adds what gptdraw needs on
top: a typed config with named presets, encode/decode with the public [0, 1] image
convention and clear input checks, a training forward with separate VQ losses, and a
safetensors save/load with strict key checks.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import VQModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_NAME = "gptdraw-vq"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Nearest-code search works on row chunks so the (rows, codebook) distance matrix stays
# below this many elements (64 MiB in float32) whatever the batch and codebook size.
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class VQConfig:
    """Architecture of a VQGAN in diffusers' VQModel terms, plus how gptdraw uses it."""

    image_size: int  # the resolution the tokenizer is used at by default (pixels, square)
    block_out_channels: tuple[int, ...]  # channels of each encoder/decoder stage; each stage but the last halves the resolution
    down_block_types: tuple[str, ...]  # diffusers encoder block per stage, e.g. "DownEncoderBlock2D" / "AttnDownEncoderBlock2D"
    up_block_types: tuple[str, ...]  # diffusers decoder block per stage, from the lowest resolution up
    layers_per_block: int  # resnet layers per encoder stage (the decoder has one more)
    latent_channels: int  # channels of the encoder output / decoder input
    vq_embed_dim: int  # dimension of each codebook vector
    num_vq_embeddings: int  # codebook size: codes are integers in [0, num_vq_embeddings)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every entry of block_out_channels
    norm_type: str = "group"  # "group" (taming) or "spatial" (MoVQ: decoder norms are conditioned on the codes)
    mid_block_add_attention: bool = True  # self-attention in the middle blocks of encoder and decoder
    input_range: tuple[float, float] = (-1.0, 1.0)  # pixel range the network expects; taming uses [-1, 1]
    source: str = ""  # provenance, e.g. "trained by gptdraw train-vq" or a checkpoint path

    def __post_init__(self) -> None:
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


VQ_PRESETS = {
    "taming-f16-16384": _taming_f16_16384,
    "shapes-f8": _shapes_f8,
    "shapes-f4": _shapes_f4,
}


def vq_preset(name: str, **overrides) -> VQConfig:
    """A named VQConfig; keyword overrides replace fields (and are checked like any config)."""
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown VQ preset {name!r}; known presets: {', '.join(sorted(VQ_PRESETS))}")
    config = VQ_PRESETS[name]()
    return dataclasses.replace(config, **overrides) if overrides else config


@dataclass
class VQOutput:
    """What a training forward pass returns."""

    reconstruction: torch.Tensor  # (B, 3, H, W) in the [0, 1] scale, not clamped (for the loss)
    codes: torch.Tensor  # (B, h, w) int64 nearest codebook entries
    commitment_loss: torch.Tensor  # mean squared distance encoder output → its code (encoder side)
    codebook_loss: torch.Tensor  # mean squared distance code → encoder output (codebook side)
    latents: torch.Tensor = field(repr=False)  # (B, vq_embed_dim, h, w) encoder output before quantisation


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load `state_dict` into `module`, or raise ValueError listing every disagreement.

    The message names missing keys, unexpected keys and shape mismatches (the first few of
    each, with counts) and `source` (a file or checkpoint name), so a wrong or truncated
    checkpoint is explained rather than half-loaded.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (", ..." if len(items) > 5 else "")
            problems.append(f"{len(items)} {label} ({shown})")
    if problems:
        raise ValueError(f"weights from {source} do not fit the model: " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True, assign=assign)


class ImageTokenizer(torch.nn.Module):
    """A VQGAN image tokenizer: `encode` images to codes, `decode` codes to images."""

    def __init__(self, config: VQConfig):
        super().__init__()
        self.config = config
        self.model = VQModel(**config.vqmodel_kwargs())

    @property
    def codebook_size(self) -> int:
        return self.config.num_vq_embeddings

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def grid_size(self, image_size: int | None = None) -> tuple[int, int]:
        return self.config.grid_size(image_size)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook weights, (num_vq_embeddings, vq_embed_dim)."""
        return self.model.quantize.embedding.weight

    # ---- pixels ↔ network range -------------------------------------------------------------

    def _to_network_range(self, images: torch.Tensor) -> torch.Tensor:
        low, high = self.config.input_range
        return images * (high - low) + low

    def _from_network_range(self, pixels: torch.Tensor) -> torch.Tensor:
        low, high = self.config.input_range
        return (pixels.float() - low) / (high - low)

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, 3, H, W) in [0, 1], got {type(images).__name__} "
                             f"{getattr(images, 'dtype', '')}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        factor = self.downsample_factor
        height, width = images.shape[-2:]
        if height % factor or width % factor or height == 0 or width == 0:
            raise ValueError(
                f"image height and width must be positive multiples of the downsample factor "
                f"{factor}, got {height}x{width}"
            )
        # A little slack for resampling overshoot; 0–255 input is the mistake this catches.
        low, high = images.min().item(), images.max().item()
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(f"image values must be in [0, 1], got values in [{low:.3f}, {high:.3f}]")

    # ---- quantisation --------------------------------------------------------------------------

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each position: (B, C, h, w) → (B, h, w) int64."""
        batch, channels, height, width = latents.shape
        # Distances in float32 even under autocast: bf16 would tie or swap near codes.
        with torch.autocast(device_type=latents.device.type, enabled=False):
            flat = latents.permute(0, 2, 3, 1).reshape(-1, channels).float()  # (B*h*w, C)
            codebook = self.codebook.float()  # (K, C)
            codebook_sq = codebook.pow(2).sum(dim=1)  # (K,)
            rows = max(1, _DISTANCE_CHUNK_ELEMENTS // codebook.shape[0])
            # |z - e|² = |z|² - 2 z·e + |e|²; |z|² is the same for every code, so it is dropped.
            codes = torch.cat([
                torch.addmm(codebook_sq, chunk, codebook.t(), alpha=-2.0).argmin(dim=1)
                for chunk in flat.split(rows)
            ])
        return codes.view(batch, height, width)

    def _decode_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        # As VQModel.decode does after its lookup: MoVQ's spatial norms also see the codes.
        model = self.model
        hidden = model.post_quant_conv(quantized)
        return model.decoder(hidden, quantized if self.config.norm_type == "spatial" else None)

    # ---- public API ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) float in [0, 1] → codes (B, H/f, W/f) int64."""
        self._check_images(images)
        parameter = self.codebook
        pixels = self._to_network_range(images.to(device=parameter.device, dtype=parameter.dtype))
        latents = self.model.encode(pixels).latents  # (B, vq_embed_dim, h, w)
        return self.nearest_codes(latents)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) integers in [0, codebook_size) → images (B, 3, h·f, w·f) float32 in [0, 1]."""
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be an integer tensor (B, h, w), got {type(codes).__name__} "
                             f"{getattr(codes, 'dtype', '')}")
        if codes.ndim != 3 or codes.numel() == 0:
            raise ValueError(f"codes must have shape (B, h, w), got {tuple(codes.shape)}")
        low, high = codes.min().item(), codes.max().item()
        if low < 0 or high >= self.codebook_size:
            raise ValueError(
                f"codes must be in [0, {self.codebook_size}) for this codebook, got values in [{low}, {high}]"
            )
        batch, height, width = codes.shape
        codes = codes.to(device=self.codebook.device, dtype=torch.long)
        shape = (batch, height, width, self.config.vq_embed_dim)
        # force_not_quantize + lookup_from_codebook: VQModel looks the codes up in its codebook.
        pixels = self.model.decode(codes.reshape(-1), force_not_quantize=True, shape=shape).sample
        return self._from_network_range(pixels).clamp_(0.0, 1.0)

    def forward(self, images: torch.Tensor, quantize: bool = True) -> VQOutput:
        """Training pass: encode, quantise with a straight-through gradient, decode.

        The two VQ losses are returned separately (unweighted) so the trainer picks the
        commitment weight β; diffusers' quantizer would fold them with fixed weights.
        With quantize=False the decoder sees the encoder outputs themselves (a plain
        autoencoder, for warming up) and both VQ losses are zero.
        """
        pixels = self._to_network_range(images)
        latents = self.model.encode(pixels).latents  # (B, C, h, w)
        codes = self.nearest_codes(latents.detach())
        if quantize:
            quantized = self.model.quantize.embedding(codes).permute(0, 3, 1, 2)  # (B, C, h, w)
            latents_f32, quantized_f32 = latents.float(), quantized.float()
            commitment_loss = F.mse_loss(latents_f32, quantized_f32.detach())
            codebook_loss = F.mse_loss(quantized_f32, latents_f32.detach())
            # Straight-through: the decoder sees the code, the encoder gets the decoder's gradient.
            decoder_input = latents + (quantized.to(latents.dtype) - latents).detach()
        else:
            commitment_loss = codebook_loss = latents.new_zeros((), dtype=torch.float32)
            decoder_input = latents
        reconstruction = self._from_network_range(self._decode_quantized(decoder_input))
        return VQOutput(
            reconstruction=reconstruction,
            codes=codes,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            latents=latents,
        )

    # ---- persistence ---------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors (diffusers VQModel key names) to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "config": self.config.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        state = {key: value.detach().contiguous().cpu() for key, value in self.model.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT_NAME})

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> "ImageTokenizer":
        """Load a tokenizer written by `save_pretrained` (or by a converter), in eval mode."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"image tokenizer directory not found: {directory}")
        config = read_config(directory / CONFIG_FILE)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"image tokenizer weights not found: {weights_path}")
        try:
            state_dict = load_file(str(weights_path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"cannot read image tokenizer weights {weights_path}: {error}") from error
        dtype = dtype or torch.float32
        state_dict = {
            key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()
        }
        # Build on the meta device (no wasted random init) and take the loaded tensors as-is.
        with torch.device("meta"):
            tokenizer = cls(config)
        load_state_dict_strict(tokenizer.model, state_dict, source=str(weights_path), assign=True)
        left_on_meta = [name for name, tensor in tokenizer.state_dict(keep_vars=True).items() if tensor.is_meta]
        if left_on_meta:
            raise ValueError(f"{weights_path}: tensors left uninitialised after loading: {left_on_meta[:5]}")
        if device is not None:
            tokenizer.to(device)
        return tokenizer.eval()


def read_config(path: str | Path) -> VQConfig:
    """Read a tokenizer config.json, with errors that name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image tokenizer config not found: {path}")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} config (its \"format\" field is not {FORMAT_NAME!r})")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has {FORMAT_NAME} version {document.get('version')!r}; this gptdraw reads version {FORMAT_VERSION}")
    if not isinstance(document.get("config"), dict):
        raise ValueError(f"{path} has no \"config\" object")
    try:
        return VQConfig.from_dict(document["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid config: {error}") from error
