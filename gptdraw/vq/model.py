"""The image tokenizer: a VQGAN (diffusers' VQModel) that turns images into grids of codes and back.

    images (B, 3, H, W) in [0, 1] ──encode──▶ codes (B, H/f, W/f) int64 ──decode──▶ images

The network is diffusers' `VQModel`, which reproduces the taming-transformers VQGAN
(and MoVQ with `norm_type="spatial"`) exactly, so pretrained checkpoints load into it
after a key rename (see gptdraw/vq/convert.py). This file adds what gptdraw needs on
top: a typed config with named presets, encode/decode with the public [0, 1] image
convention and clear input checks, a training forward with separate VQ losses, and a
safetensors save/load with strict key checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import VQModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

# The configs and presets live in a torch-free module; they are re-exported here.
from gptdraw.untrusted_files import TensorEntry, check_finite, check_tensors, read_json_object, safetensors_header
from gptdraw.vq.config import VQ_PRESETS, VQConfig, vq_preset  # noqa: F401

FORMAT_NAME = "gptdraw-vq"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Nearest-code search works on row chunks so the (rows, codebook) distance matrix stays
# below this many elements (64 MiB in float32) whatever the batch and codebook size.
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class VQOutput:
    """What a training forward pass returns."""

    reconstruction: torch.Tensor  # (B, 3, H, W) in the [0, 1] scale, not clamped (for the loss)
    codes: torch.Tensor  # (B, h, w) int64 nearest codebook entries
    commitment_loss: torch.Tensor  # mean squared distance encoder output → its code (encoder side)
    codebook_loss: torch.Tensor  # mean squared distance code → encoder output (codebook side)
    # (B, vq_embed_dim, h, w) encoder output before quantisation (unit vectors with l2 codes)
    latents: torch.Tensor = field(repr=False)


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Load `state_dict` into `module`, or raise ValueError listing every disagreement.

    The message names missing keys, unexpected keys and shape mismatches (the first few of
    each, with counts) and `source` (a file or checkpoint name), so a wrong or truncated
    checkpoint is explained rather than half-loaded.
    """
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_tensors(source, {key: TensorEntry(None, tuple(value.shape)) for key, value in state_dict.items()}, expected)
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

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """The encoder's outputs for pixels in the network's range: (B, 3, H, W) → (B, C, h, w),
        unit vectors along C when the codes are l2-normalised."""
        latents = self.model.encode(pixels).latents
        return F.normalize(latents, dim=1) if self.config.code_norm == "l2" else latents

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """The vectors the decoder sees for codes: (B, h, w) int64 → (B, C, h, w)."""
        vectors = self.model.quantize.embedding(codes)  # (B, h, w, C)
        if self.config.code_norm == "l2":
            # The codebook's rows are stored as they learn (running means shrink them); the
            # decoder always sees them at unit length, as the encoder's outputs are.
            vectors = F.normalize(vectors, dim=-1)
        return vectors.permute(0, 3, 1, 2).contiguous()

    def nearest_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector for each position: (B, C, h, w) → (B, h, w) int64.

        With l2-normalised codes the nearest is by cosine: the codebook's rows are normalised first."""
        batch, channels, height, width = latents.shape
        # Distances in float32 even under autocast: bf16 would tie or swap near codes.
        with torch.autocast(device_type=latents.device.type, enabled=False):
            flat = latents.permute(0, 2, 3, 1).reshape(-1, channels).float()  # (B*h*w, C)
            codebook = self.codebook.float()  # (K, C)
            if self.config.code_norm == "l2":
                codebook = F.normalize(codebook, dim=1)
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
        return self.nearest_codes(self.latents(pixels))

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
        codes = codes.to(device=self.codebook.device, dtype=torch.long)
        pixels = self._decode_quantized(self.code_vectors(codes))
        return self._from_network_range(pixels).clamp_(0.0, 1.0)

    def forward(self, images: torch.Tensor, quantize: bool = True) -> VQOutput:
        """Training pass: encode, quantise with a straight-through gradient, decode.

        The two VQ losses are returned separately (unweighted) so the trainer picks the
        commitment weight β; diffusers' quantizer would fold them with fixed weights.
        With quantize=False the decoder sees the encoder outputs themselves (a plain
        autoencoder, for warming up) and both VQ losses are zero.
        """
        pixels = self._to_network_range(images)
        latents = self.latents(pixels)  # (B, C, h, w)
        codes = self.nearest_codes(latents.detach())
        if quantize:
            quantized = self.code_vectors(codes)  # (B, C, h, w)
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
        *,
        config: VQConfig | None = None,
        within: Sequence[Path] | None = None,
    ) -> "ImageTokenizer":
        """Load a tokenizer written by `save_pretrained` (or by a converter), in eval mode.

        The folder is untrusted: its config (`config`, or read from config.json) is checked, then
        the weights' header against the tensors that config makes, before any weights are read;
        NaN or infinite weights are refused by name. `within`: the folders its files may resolve into.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"image tokenizer directory not found: {directory}")
        config = config or read_config(directory / CONFIG_FILE, within=within)
        weights_path = directory / WEIGHTS_FILE
        if not weights_path.exists():
            raise FileNotFoundError(f"image tokenizer weights not found: {weights_path}")
        # Build on the meta device (no allocation, no wasted random init) to learn the tensors it needs.
        with torch.device("meta"):
            tokenizer = cls(config)
        expected = {key: tuple(value.shape) for key, value in tokenizer.model.state_dict().items()}
        check_tensors(weights_path, safetensors_header(weights_path, within=within), expected)
        try:
            state_dict = load_file(str(weights_path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"cannot read image tokenizer weights {weights_path}: {error}") from None
        check_finite(weights_path, state_dict.items())
        dtype = dtype or torch.float32
        state_dict = {
            key: value.to(dtype) if value.is_floating_point() else value for key, value in state_dict.items()
        }
        load_state_dict_strict(tokenizer.model, state_dict, source=str(weights_path), assign=True)
        left_on_meta = [name for name, tensor in tokenizer.state_dict(keep_vars=True).items() if tensor.is_meta]
        if left_on_meta:
            raise ValueError(f"{weights_path}: tensors left uninitialised after loading: {left_on_meta[:5]}")
        if device is not None:
            tokenizer.to(device)
        return tokenizer.eval()


def read_config(path: str | Path, *, within: Sequence[Path] | None = None) -> VQConfig:
    """Read a tokenizer config.json (a regular file under gptdraw.untrusted_files.JSON_LIMIT), with
    errors that name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image tokenizer config not found: {path}")
    document = read_json_object(path, within=within, what="image tokenizer config")
    if document.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} config (its \"format\" field is not {FORMAT_NAME!r})")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has {FORMAT_NAME} version {document.get('version')!r}; this gptdraw reads version {FORMAT_VERSION}")
    if not isinstance(document.get("config"), dict):
        raise ValueError(f"{path} has no \"config\" object")
    try:
        return VQConfig.from_dict(document["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid config: {error}") from None
