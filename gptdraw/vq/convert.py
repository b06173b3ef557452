"""Load the pretrained VQGANs people use and turn them into gptdraw image tokenizers.

Sources, all mapped onto diffusers' VQModel (gptdraw.vq.model.ImageTokenizer):

    taming-transformers .ckpt   Lightning pickle, taming key names        (e.g. vqgan_imagenet_f16_16384)
    ai-forever MoVQGAN .ckpt    plain pickled state dict, taming names     (movqgan_67M / 102M / 270M)
                                with MoVQ's spatially-conditioned decoder norms
    dalle-mini Flax VQGAN       flax_model.msgpack + config.json           (dalle-mini/vqgan_imagenet_f16_16384)
    diffusers VQModel           config.json + diffusion_pytorch_model.*    (amused's vqvae, Kandinsky 2.2's movq)

Pickles are never trusted: `load_restricted_checkpoint` admits tensors and plain
containers only (torch's weights-only unpickler), replaces the Lightning objects a
checkpoint carries (callbacks, hyper-parameter containers) by inert placeholders
without importing them, and refuses anything else before unpickling starts. Every
conversion ends in a strict load: a missing, unexpected or misshapen key is an
error that names it.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import msgpack
import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file

from gptdraw.repo_id import is_repo_id
from gptdraw.runtime import check_torch_is_safe
from gptdraw.vq.model import ImageTokenizer, VQConfig, load_state_dict_strict

# Pixel ranges the published models were trained with.
TAMING_INPUT_RANGE = (-1.0, 1.0)  # taming-transformers and ai-forever MoVQGAN: x / 127.5 - 1
# dalle-mini feeds its Flax VQGAN torchvision ToTensor() output ([0, 1]) and clips the decoded
# images to [0, 1] (dalle-mini's encoding notebooks and inference pipeline).
DALLE_MINI_INPUT_RANGE = (0.0, 1.0)
# amused's pipelines build their VaeImageProcessor with do_normalize=False: [0, 1] pixels.
AMUSED_INPUT_RANGE = (0.0, 1.0)
# Kandinsky 2.2 decodes MoVQ output with `image * 0.5 + 0.5`: [-1, 1] pixels.
KANDINSKY_INPUT_RANGE = (-1.0, 1.0)

DEFAULT_IMAGE_SIZE = 256  # every model above was trained on 256 px crops

# Checkpoint entries that only training needs: the perceptual/GAN loss networks, and
# MoVQGAN's EMA shadows (its own loader ignores them and uses the raw weights).
TRAINING_ONLY_PREFIXES = ("loss.", "ema_")

# Objects that Lightning checkpoints carry beside the weights (callback state, hyper-parameter
# containers). They are replaced by an inert placeholder, never imported or constructed.
SKIPPABLE_GLOBAL_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.")
SKIPPABLE_GLOBALS = {"argparse.Namespace", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path"}

FLAX_WEIGHTS_FILE = "flax_model.msgpack"
DIFFUSERS_SAFETENSORS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
DIFFUSERS_PICKLE_FILES = ("diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


@dataclass
class ConvertedVQ:
    """A pretrained VQGAN mapped onto gptdraw's tokenizer: architecture plus diffusers-named weights."""

    config: VQConfig  # the architecture, with input range and provenance
    state_dict: dict[str, torch.Tensor]  # diffusers VQModel key names, float32
    source_format: str  # "taming", "movqgan", "flax" or "diffusers"
    dropped: dict[str, int] = field(default_factory=dict)  # training-only key prefix → keys dropped
    notes: list[str] = field(default_factory=list)  # what was decided and why, for the user

    def to_tokenizer(self) -> ImageTokenizer:
        """Build the ImageTokenizer and load the weights strictly (errors name every bad key)."""
        tokenizer = ImageTokenizer(self.config)
        load_state_dict_strict(tokenizer.model, self.state_dict, source=self.config.source)
        return tokenizer.eval()


# ---- safe checkpoint reading -------------------------------------------------------------------


class SkippedObject:
    """Stands in for a Lightning object inside a checkpoint: accepts any state, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _is_skippable_global(name: str) -> bool:
    return name in SKIPPABLE_GLOBALS or name.startswith(SKIPPABLE_GLOBAL_PREFIXES)


def load_restricted_checkpoint(path: str | Path) -> object:
    """Unpickle a PyTorch/Lightning checkpoint without running code from it.

    torch's weights-only unpickler admits tensors and plain containers. Lightning objects
    (e.g. a ModelCheckpoint callback) become `SkippedObject`s; any other global (a function
    or class that unpickling would call) makes the whole file refused, naming it.
    """
    check_torch_is_safe()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    placeholders: list[tuple[type, str]] = []
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        # Scans the pickle opcodes only; nothing is imported or called.
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as error:  # a truncated or foreign zip
            raise ValueError(f"cannot read checkpoint {path}: {error}") from error
        refused = sorted(name for name in unsafe if not _is_skippable_global(name))
        if refused:
            raise ValueError(
                f"refusing to load {path}: its pickle references {', '.join(refused)}, which could run "
                f"code; only tensors, plain containers and Lightning metadata are admitted"
            )
        placeholders = [(SkippedObject, name) for name in unsafe]
    # The legacy (pre-zip) format cannot be scanned first: each Lightning global the unpickler
    # stops at is added as a placeholder and the load retried.
    for _ in range(32):
        try:
            with torch.serialization.safe_globals(placeholders):
                # mmap keeps a 1 GB Lightning checkpoint (optimizer state included) out of memory.
                return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except Exception as error:
            refused = re.search(r"GLOBAL ([\w.]+)", str(error))
            if refused and _is_skippable_global(refused[1]) and not is_zip:
                placeholders.append((SkippedObject, refused[1]))
                continue
            if refused:
                raise ValueError(f"refusing to load {path}: its pickle references {refused[1]}, which could "
                                 f"run code") from error
            # Skip torch's boilerplate ("Weights only load failed…") and keep the specific reason.
            boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
            lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith(boilerplate)]
            reason = lines[0][:300] if lines else type(error).__name__
            raise ValueError(f"cannot load {path} as a weights-only PyTorch checkpoint: {reason}") from error
    raise ValueError(f"refusing to load {path}: too many distinct Lightning objects")


def _tensor_state_dict(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: its "state_dict" entry, or the object itself."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{source} holds no state dict (expected a dict of tensors or a dict with 'state_dict')")
    not_tensors = [str(key) for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        shown = ", ".join(not_tensors[:5])
        raise ValueError(f"{source}: state dict entries that are not tensors: {shown}")
    return dict(obj)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A dict of tensors from a .safetensors file, or from a pickled one through the restricted
    loader (load_restricted_checkpoint); a file that is neither is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise ValueError(f"cannot read {path}: {error}") from error
    return _tensor_state_dict(load_restricted_checkpoint(path), str(path))


def _drop_training_only(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    kept, dropped = {}, {}
    for key, value in state_dict.items():
        prefix = next((p for p in TRAINING_ONLY_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            kept[key] = value
        else:
            dropped[prefix] = dropped.get(prefix, 0) + 1
    return kept, dropped


# ---- taming layout → diffusers layout ----------------------------------------------------------

_RESNET_RENAMES = (("nin_shortcut.", "conv_shortcut."),)
_ATTENTION_RENAMES = (
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
)


def _rename_attention_tail(tail: str) -> str:
    # MoVQ's decoder attention norms are SpatialNorms (norm.norm_layer / conv_y / conv_b).
    if tail.startswith("norm."):
        rest = tail[len("norm."):]
        spatial = rest.startswith(("norm_layer.", "conv_y.", "conv_b."))
        return ("spatial_norm." if spatial else "group_norm.") + rest
    for old, new in _ATTENTION_RENAMES:
        if tail.startswith(old):
            return new + tail[len(old):]
    return tail


def _rename_resnet_tail(tail: str) -> str:
    for old, new in _RESNET_RENAMES:
        if tail.startswith(old):
            return new + tail[len(old):]
    return tail


def taming_key_to_diffusers(key: str, num_levels: int) -> str:
    """One taming-transformers parameter name → its diffusers VQModel name.

    taming numbers decoder stages by resolution level (up.0 is the full-resolution stage);
    diffusers numbers them in execution order, so up.i becomes up_blocks.(num_levels-1-i).
    """
    if match := re.match(r"encoder\.down\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key):
        level, kind, index, tail = match.groups()
        if kind == "block":
            return f"encoder.down_blocks.{level}.resnets.{index}.{_rename_resnet_tail(tail)}"
        return f"encoder.down_blocks.{level}.attentions.{index}.{_rename_attention_tail(tail)}"
    if match := re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.+)", key):
        return f"encoder.down_blocks.{match[1]}.downsamplers.0.conv.{match[2]}"
    if match := re.match(r"decoder\.up\.(\d+)\.(block|attn)\.(\d+)\.(.+)", key):
        level, kind, index, tail = match.groups()
        block = num_levels - 1 - int(level)
        if kind == "block":
            return f"decoder.up_blocks.{block}.resnets.{index}.{_rename_resnet_tail(tail)}"
        return f"decoder.up_blocks.{block}.attentions.{index}.{_rename_attention_tail(tail)}"
    if match := re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.+)", key):
        return f"decoder.up_blocks.{num_levels - 1 - int(match[1])}.upsamplers.0.conv.{match[2]}"
    if match := re.match(r"(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(.+)", key):
        side, part, tail = match.groups()
        if part == "attn_1":
            return f"{side}.mid_block.attentions.0.{_rename_attention_tail(tail)}"
        index = 0 if part == "block_1" else 1
        return f"{side}.mid_block.resnets.{index}.{_rename_resnet_tail(tail)}"
    if match := re.match(r"(encoder|decoder)\.norm_out\.(.+)", key):
        return f"{match[1]}.conv_norm_out.{match[2]}"
    # conv_in, conv_out, quant_conv, post_quant_conv, quantize.embedding keep their names.
    return key


def taming_to_diffusers_state_dict(
    state_dict: dict[str, torch.Tensor], num_levels: int
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a taming-layout state dict to diffusers names.

    Returns the converted dict and, for error messages, a map new name → original name.
    Attention projections are 1×1 convolutions in taming and linear layers in diffusers:
    their weights go from (C, C, 1, 1) to (C, C).
    """
    converted: dict[str, torch.Tensor] = {}
    original: dict[str, str] = {}
    for key, value in state_dict.items():
        new_key = taming_key_to_diffusers(key, num_levels)
        if new_key in converted:
            raise ValueError(f"checkpoint keys {original[new_key]} and {key} both map to {new_key}")
        if re.search(r"\.attentions\.\d+\.to_(q|k|v|out\.0)\.weight$", new_key) and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])  # (C, C, 1, 1) → (C, C)
        converted[new_key] = value
        original[new_key] = key
    return converted, original


def _refuse_unexpected(
    config: VQConfig, state_dict: dict[str, torch.Tensor], original: dict[str, str], source: str
) -> None:
    """Name checkpoint keys the architecture has no place for, in the checkpoint's own names."""
    with torch.device("meta"):
        expected = ImageTokenizer(config).model.state_dict().keys()
    unexpected = [original.get(key, key) for key in state_dict if key not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (", ..." if len(unexpected) > 8 else "")
        hint = ""
        if any(key.startswith("quantize.embed.") or key.startswith("quantize.proj.") for key in unexpected):
            hint = " (this looks like a Gumbel-softmax VQGAN, which gptdraw does not support)"
        raise ValueError(f"{source}: {len(unexpected)} unexpected keys: {shown}{hint}")


# ---- taming configs ----------------------------------------------------------------------------


def taming_config_from_ddconfig(
    ddconfig: dict,
    embed_dim: int,
    n_embed: int,
    norm_type: str,
    input_range: tuple[float, float],
    source: str,
    image_size: int | None = None,
) -> VQConfig:
    """Translate taming's `ddconfig` (+ codebook size and dimension) into a VQConfig."""
    try:
        ch = int(ddconfig["ch"])
        ch_mult = [int(m) for m in ddconfig["ch_mult"]]
        num_res_blocks = int(ddconfig["num_res_blocks"])
        attn_resolutions = {int(r) for r in ddconfig.get("attn_resolutions", [])}
        resolution = int(ddconfig.get("resolution", DEFAULT_IMAGE_SIZE))
        z_channels = int(ddconfig["z_channels"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{source}: ddconfig lacks or mistypes a field: {error}") from error
    if ddconfig.get("double_z", False):
        raise ValueError(f"{source}: double_z is true (a KL autoencoder, not a VQGAN)")
    if int(ddconfig.get("in_channels", 3)) != 3 or int(ddconfig.get("out_ch", 3)) != 3:
        raise ValueError(f"{source}: only RGB models are supported (in_channels and out_ch must be 3)")
    if not ddconfig.get("resamp_with_conv", True):
        raise ValueError(f"{source}: resamp_with_conv=false (pooling resamplers) has no diffusers equivalent")
    if ddconfig.get("attn_type", "vanilla") != "vanilla":
        raise ValueError(f"{source}: attn_type {ddconfig['attn_type']!r} is not supported (only 'vanilla')")
    # Level i of the encoder works at resolution / 2**i; taming puts attention in every
    # block of a level whose resolution is listed in attn_resolutions.
    attention = [resolution // 2**level in attn_resolutions for level in range(len(ch_mult))]
    return VQConfig(
        image_size=image_size or resolution,
        block_out_channels=tuple(ch * m for m in ch_mult),
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in attention),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(attention)),
        layers_per_block=num_res_blocks,
        latent_channels=z_channels,
        vq_embed_dim=int(embed_dim),
        num_vq_embeddings=int(n_embed),
        norm_num_groups=32,  # taming's Normalize() is hard-wired to 32 groups
        norm_type=norm_type,
        mid_block_add_attention=True,
        input_range=input_range,
        source=source,
    )


def taming_config_from_yaml(path: str | Path, image_size: int | None = None) -> VQConfig:
    """Read a taming/MoVQGAN `model.yaml` (model.params.{ddconfig, embed_dim, n_embed})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config not found: {path}")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    model = document.get("model") if isinstance(document, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict) or not isinstance(params.get("ddconfig"), dict):
        raise ValueError(f"{path} has no model.params.ddconfig (is it a taming-transformers model.yaml?)")
    target = str(model.get("target", ""))
    if "Gumbel" in target:
        raise ValueError(f"{path}: {target} is a Gumbel-softmax VQGAN, which gptdraw does not support")
    for name in ("embed_dim", "n_embed"):
        if name not in params:
            raise ValueError(f"{path}: model.params.{name} is missing")
    # MoVQGAN's MOVQ class conditions every decoder norm on the codes (diffusers: spatial norm).
    norm_type = "spatial" if target.rsplit(".", 1)[-1] == "MOVQ" else "group"
    return taming_config_from_ddconfig(
        params["ddconfig"],
        embed_dim=params["embed_dim"],
        n_embed=params["n_embed"],
        norm_type=norm_type,
        input_range=TAMING_INPUT_RANGE,
        source=str(path),
        image_size=image_size,
    )


def infer_taming_config(state_dict: dict[str, torch.Tensor], source: str, image_size: int | None = None) -> VQConfig:
    """Read the architecture of a taming-layout checkpoint from its key names and shapes.

    Used when no model.yaml is given (MoVQGAN ships none). The image size is not stored
    in the weights: it defaults to 256, the training resolution of every released model.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise ValueError(f"{source}: key {key} is missing (not a taming-layout VQGAN checkpoint?)")
        return tuple(state_dict[key].shape)

    levels = 0
    while f"encoder.down.{levels}.block.0.conv1.weight" in state_dict:
        levels += 1
    if levels == 0:
        shape("encoder.down.0.block.0.conv1.weight")  # raises, naming the key
    blocks = 0
    while f"encoder.down.0.block.{blocks}.conv1.weight" in state_dict:
        blocks += 1
    channels = tuple(shape(f"encoder.down.{level}.block.0.conv1.weight")[0] for level in range(levels))
    down_attention = [f"encoder.down.{level}.attn.0.q.weight" in state_dict for level in range(levels)]
    up_attention = [f"decoder.up.{level}.attn.0.q.weight" in state_dict for level in range(levels)]
    latent_channels = shape("encoder.conv_out.weight")[0]
    num_codes, embed_dim = shape("quantize.embedding.weight")
    spatial = "decoder.norm_out.norm_layer.weight" in state_dict
    return VQConfig(
        image_size=image_size or DEFAULT_IMAGE_SIZE,
        block_out_channels=channels,
        down_block_types=tuple("AttnDownEncoderBlock2D" if a else "DownEncoderBlock2D" for a in down_attention),
        up_block_types=tuple("AttnUpDecoderBlock2D" if a else "UpDecoderBlock2D" for a in reversed(up_attention)),
        layers_per_block=blocks,
        latent_channels=latent_channels,
        vq_embed_dim=embed_dim,
        num_vq_embeddings=num_codes,
        norm_num_groups=32,
        norm_type="spatial" if spatial else "group",
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in state_dict,
        input_range=TAMING_INPUT_RANGE,
        source=source,
    )


def _find_taming_yaml(checkpoint: Path) -> Path | None:
    # taming's released log folders: <name>/checkpoints/last.ckpt beside <name>/configs/model.yaml.
    for candidate in (checkpoint.parent / "model.yaml", checkpoint.parent.parent / "configs" / "model.yaml"):
        if candidate.is_file():
            return candidate
    return None


def convert_taming_checkpoint(
    path: str | Path,
    config_path: str | Path | None = None,
    image_size: int | None = None,
    input_range: tuple[float, float] | None = None,
) -> ConvertedVQ:
    """A taming-transformers or MoVQGAN `.ckpt` → ConvertedVQ.

    The architecture comes from `config_path` (a model.yaml), else from a model.yaml found
    beside the checkpoint in taming's log layout, else from the weights themselves.
    """
    path = Path(path)
    state_dict = _tensor_state_dict(load_restricted_checkpoint(path), str(path))
    state_dict, dropped = _drop_training_only(state_dict)
    notes = [f"dropped {count} training-only '{prefix}*' keys" for prefix, count in dropped.items()]
    if config_path is None and (found := _find_taming_yaml(path)) is not None:
        config_path = found
        notes.append(f"architecture from {found} (found beside the checkpoint)")
    if config_path is not None:
        config = replace(taming_config_from_yaml(config_path, image_size=image_size), source=str(path))
    else:
        config = infer_taming_config(state_dict, source=str(path), image_size=image_size)
        notes.append("architecture read from the checkpoint's keys and shapes (no model.yaml)")
    if input_range is not None:
        config = replace(config, input_range=tuple(input_range))
    if config.norm_type == "spatial" and config.latent_channels != config.vq_embed_dim:
        # diffusers feeds the spatial norms the codes through a layer sized by latent_channels.
        raise ValueError(
            f"{path}: MoVQ with z_channels {config.latent_channels} != embed_dim {config.vq_embed_dim} "
            f"cannot be expressed by diffusers' VQModel"
        )
    converted, original = taming_to_diffusers_state_dict(state_dict, len(config.block_out_channels))
    _refuse_unexpected(config, converted, original, str(path))
    source_format = "movqgan" if config.norm_type == "spatial" else "taming"
    return ConvertedVQ(config, _as_float32(converted), source_format, dropped, notes)


# ---- dalle-mini's Flax VQGAN -------------------------------------------------------------------


FLAX_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
               "uint32", "uint64", "bool"}
"""The array dtypes a Flax checkpoint may hold: numbers only (no strings, no objects)."""
MAX_NESTING = 64
"""Deepest a checkpoint's tree of names may go: real ones are a few levels deep."""


def _ndarray_from_flax_bytes(data: bytes) -> np.ndarray:
    # flax.serialization stores an array as a nested msgpack (shape, dtype name, C-order bytes).
    try:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
    except (msgpack.UnpackException, ValueError, TypeError) as error:
        raise ValueError(f"an array entry is not (shape, dtype, bytes): {error}") from None
    dtype_name = dtype_name.decode(errors="replace") if isinstance(dtype_name, bytes) else str(dtype_name)
    if dtype_name not in FLAX_DTYPES:
        raise ValueError(f"an array has dtype {dtype_name[:40]!r}, not a number type")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                       for n in shape):
        raise ValueError(f"an array's shape {str(shape)[:60]} is not a list of sizes")
    if not isinstance(buffer, bytes):
        raise ValueError("an array's data is not bytes")
    itemsize = 2 if dtype_name == "bfloat16" else np.dtype(dtype_name).itemsize
    if math.prod(shape) * itemsize != len(buffer):
        raise ValueError(f"an array of shape {tuple(shape)} and dtype {dtype_name} holds {len(buffer)} bytes")
    if dtype_name == "bfloat16":
        # numpy has no bfloat16: widen the 16 stored bits to the top half of a float32.
        bits = np.frombuffer(buffer, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(buffer, dtype=np.dtype(dtype_name)).reshape(shape).copy()


def _flax_ext_hook(code: int, data: bytes):
    if code == 1:  # ndarray
        return _ndarray_from_flax_bytes(data)
    if code == 3:  # numpy scalar, stored as a 0-d array
        return _ndarray_from_flax_bytes(data)[()]
    raise ValueError(f"unsupported msgpack extension type {code} in a Flax checkpoint")


def _unchunk_flax_arrays(tree, depth: int = 0):
    # flax splits arrays over 1 GiB into {"__msgpack_chunked_array__": True, "shape": …, "chunks": …}.
    if depth > MAX_NESTING:
        raise ValueError(f"its names are nested more than {MAX_NESTING} levels deep")
    if isinstance(tree, dict):
        if tree.get("__msgpack_chunked_array__"):
            try:
                shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
                chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
                return np.concatenate(chunks).reshape(shape)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"a chunked array is malformed: {type(error).__name__}: {error}") from None
        return {key: _unchunk_flax_arrays(value, depth + 1) for key, value in tree.items()}
    return tree


def read_flax_msgpack(path: str | Path) -> dict[str, np.ndarray]:
    """Read a Flax `msgpack` checkpoint with msgpack + numpy only → {"a.b.c": array}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Flax weights not found: {path}")
    try:
        tree = msgpack.unpackb(path.read_bytes(), ext_hook=_flax_ext_hook, raw=False, strict_map_key=False)
        tree = _unchunk_flax_arrays(tree)
    except (msgpack.UnpackException, ValueError, TypeError, RecursionError) as error:
        raise ValueError(f"cannot read {path} as a Flax msgpack checkpoint: {error}") from None
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]  # a raw `variables` dict rather than transformers' params

    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise ValueError(f"{path}: entry {prefix} is a {type(node).__name__}, not an array")

    walk(tree, "")
    return flat


def flax_vqgan_to_taming_state_dict(flat: dict[str, np.ndarray], source: str) -> dict[str, torch.Tensor]:
    """dalle-mini/vqgan-jax parameter names → taming names (and PyTorch layouts).

    vqgan-jax wrote its names from taming's by turning "down.0" into "down_0" (likewise
    up/block/attn); mid.block_1 / attn_1 / block_2 were already underscored. Flax convs
    store kernels (kH, kW, in, out), norms a "scale", the codebook an "embedding".
    """
    state_dict: dict[str, torch.Tensor] = {}
    for key, array in flat.items():
        parts = key.split(".")
        renamed = []
        for index, part in enumerate(parts):
            indexed = re.fullmatch(r"(down|up|block|attn)_(\d+)", part)
            inside_mid = index > 0 and parts[index - 1] == "mid"
            if indexed and not inside_mid:
                renamed.extend(indexed.groups())
            else:
                renamed.append(part)
        leaf = renamed[-1]
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if leaf == "kernel":
            if tensor.ndim == 4:
                tensor = tensor.permute(3, 2, 0, 1)  # (kH, kW, in, out) → (out, in, kH, kW)
            elif tensor.ndim == 2:
                tensor = tensor.t()  # Dense (in, out) → Linear (out, in)
            renamed[-1] = "weight"
        elif leaf == "scale":
            tensor = tensor.reshape(-1)
            renamed[-1] = "weight"
        elif leaf == "embedding" and renamed[:-1] == ["quantize", "embedding"]:
            renamed[-1] = "weight"
        elif leaf == "bias":
            tensor = tensor.reshape(-1)
        else:
            raise ValueError(f"{source}: unexpected Flax parameter {key}")
        state_dict[".".join(renamed)] = tensor.contiguous()
    return state_dict


def convert_flax_vqgan(
    directory: str | Path, image_size: int | None = None, input_range: tuple[float, float] | None = None
) -> ConvertedVQ:
    """dalle-mini's VQGAN (flax_model.msgpack + config.json) → ConvertedVQ, without flax or jax."""
    directory = Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory} has {FLAX_WEIGHTS_FILE} but no config.json")
    try:
        hub_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from error
    weights = directory / FLAX_WEIGHTS_FILE
    # vqgan-jax's VQGANConfig uses taming's ddconfig field names at the top level.
    config = taming_config_from_ddconfig(
        hub_config,
        embed_dim=hub_config.get("embed_dim", 256),
        n_embed=hub_config.get("n_embed", 1024),
        norm_type="group",
        input_range=tuple(input_range) if input_range is not None else DALLE_MINI_INPUT_RANGE,
        source=str(weights),
        image_size=image_size,
    )
    taming = flax_vqgan_to_taming_state_dict(read_flax_msgpack(weights), str(weights))
    converted, original = taming_to_diffusers_state_dict(taming, len(config.block_out_channels))
    _refuse_unexpected(config, converted, original, str(weights))
    notes = [] if input_range is not None else [
        "input range [0, 1]: dalle-mini encodes [0, 1] pixels and clips its decoder output to [0, 1]"]
    return ConvertedVQ(config, _as_float32(converted), "flax", {}, notes)


# ---- diffusers VQModel directories -------------------------------------------------------------


def _is_amused_vq(config: dict) -> bool:
    # amused's VQGAN (from open-muse): 5 attention-free stages, 64 latent channels, 8,192 codes.
    return (
        config.get("num_vq_embeddings") == 8192
        and config.get("latent_channels") == 64
        and config.get("mid_block_add_attention") is False
    )


def find_diffusers_vqmodel(directory: str | Path) -> Path | None:
    """The VQModel folder of a diffusers model or pipeline directory (e.g. amused's vqvae/, Kandinsky's movq/)."""
    directory = Path(directory)

    def is_vqmodel(folder: Path) -> bool:
        try:
            return json.loads((folder / "config.json").read_text()).get("_class_name") == "VQModel"
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return False

    if is_vqmodel(directory):
        return directory
    if (directory / "model_index.json").is_file():
        found = [child for child in sorted(directory.iterdir()) if child.is_dir() and is_vqmodel(child)]
        if len(found) == 1:
            return found[0]
    return None


def convert_diffusers_vqmodel(
    directory: str | Path, image_size: int | None = None, input_range: tuple[float, float] | None = None
) -> ConvertedVQ:
    """A diffusers VQModel folder (config.json + diffusion_pytorch_model.*) → ConvertedVQ."""
    directory = Path(directory)
    config_file = directory / "config.json"
    try:
        hub_config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {config_file}: {error}") from error
    if hub_config.get("_class_name") != "VQModel":
        raise ValueError(f"{config_file} describes a {hub_config.get('_class_name')!r}, not a VQModel")
    if hub_config.get("in_channels", 3) != 3 or hub_config.get("out_channels", 3) != 3:
        raise ValueError(f"{config_file}: only RGB models are supported (in_channels and out_channels must be 3)")
    if hub_config.get("act_fn", "silu") != "silu":
        raise ValueError(f"{config_file}: act_fn {hub_config['act_fn']!r} is not supported (only 'silu')")

    notes = []
    if input_range is None:
        if _is_amused_vq(hub_config):
            input_range = AMUSED_INPUT_RANGE
            notes.append("recognised amused's VQGAN: input range [0, 1] (amused does not normalise pixels)")
        else:
            input_range = KANDINSKY_INPUT_RANGE
            notes.append("input range [-1, 1], as Kandinsky's MoVQ (not recorded in diffusers configs; "
                         "--input-range overrides)")
    weights_path, state_dict = _read_diffusers_weights(directory)
    latent_channels = int(hub_config.get("latent_channels", 3))
    try:
        config = VQConfig(
            image_size=image_size or DEFAULT_IMAGE_SIZE,
            block_out_channels=tuple(hub_config["block_out_channels"]),
            down_block_types=tuple(hub_config["down_block_types"]),
            up_block_types=tuple(hub_config["up_block_types"]),
            layers_per_block=int(hub_config.get("layers_per_block", 1)),
            latent_channels=latent_channels,
            vq_embed_dim=int(hub_config.get("vq_embed_dim") or latent_channels),
            num_vq_embeddings=int(hub_config.get("num_vq_embeddings", 256)),
            norm_num_groups=int(hub_config.get("norm_num_groups", 32)),
            norm_type=hub_config.get("norm_type", "group"),
            mid_block_add_attention=bool(hub_config.get("mid_block_add_attention", True)),
            input_range=tuple(input_range),
            source=str(weights_path),
        )
    except KeyError as error:
        raise ValueError(f"{config_file} lacks the field {error}") from error
    _refuse_unexpected(config, state_dict, {}, str(weights_path))
    return ConvertedVQ(config, _as_float32(state_dict), "diffusers", {}, notes)


def _read_diffusers_weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    # safetensors first; a pickle only through the restricted loader, which refuses anything but tensors.
    for name in DIFFUSERS_SAFETENSORS_FILES + DIFFUSERS_PICKLE_FILES:
        path = directory / name
        if path.is_file():
            return path, read_state_dict(path)
    if any(directory.glob("*.index.json")):
        raise ValueError(f"{directory}: sharded weights are not supported for VQ models")
    raise FileNotFoundError(
        f"{directory} has a VQModel config.json but no {DIFFUSERS_SAFETENSORS_FILES[0]} or {DIFFUSERS_PICKLE_FILES[0]}"
    )


# ---- one entry point ---------------------------------------------------------------------------


def _as_float32(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}


def _download_hub_model(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.yaml", "*.msgpack", "*.safetensors", "*.ckpt"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # offline, unknown repo, gated repo: all the user's to fix
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({reason}); download it where the "
            f"network allows and pass the local directory instead"
        ) from error


def detect_source(source: str | Path, allow_download: bool = True) -> tuple[str, Path]:
    """What `source` is: ("ckpt", file) | ("flax", dir) | ("diffusers", dir); hub ids are downloaded."""
    path = Path(source)
    if path.is_file():
        if path.suffix in (".ckpt", ".pt", ".pth"):
            return "ckpt", path
        if path.name == FLAX_WEIGHTS_FILE:
            return "flax", path.parent
        if path.suffix == ".safetensors" or path.suffix == ".bin":
            return "diffusers", path.parent
        raise ValueError(f"{path}: unknown VQGAN file type (expected a .ckpt, {FLAX_WEIGHTS_FILE} or a diffusers folder)")
    if path.is_dir():
        if (path / FLAX_WEIGHTS_FILE).is_file():
            return "flax", path
        if (folder := find_diffusers_vqmodel(path)) is not None:
            return "diffusers", folder
        checkpoints = sorted(path.glob("*.ckpt")) or sorted(path.glob("checkpoints/last.ckpt"))
        if len(checkpoints) == 1:
            return "ckpt", checkpoints[0]
        raise ValueError(
            f"{path}: not a VQGAN folder (no {FLAX_WEIGHTS_FILE}, no diffusers VQModel config.json, "
            f"{'several' if checkpoints else 'no'} .ckpt files)"
        )
    if path.parts and Path(path.parts[0]).exists():
        # "runs/vq" where runs/ exists is a local path with a typo, not a hub id to download.
        raise FileNotFoundError(f"VQGAN source not found: {source} does not exist")
    if is_repo_id(str(source)) and not str(source).startswith((".", "/")):
        if not allow_download:
            raise ValueError(
                f"{source} is neither a local file nor a folder, and downloading it from the Hub is switched off"
            )
        return detect_source(_download_hub_model(str(source)), allow_download=False)
    raise FileNotFoundError(f"VQGAN source not found: {source}")


def convert_vq(
    source: str | Path,
    config_path: str | Path | None = None,
    image_size: int | None = None,
    input_range: tuple[float, float] | None = None,
    allow_download: bool = True,
) -> ConvertedVQ:
    """Any supported VQGAN (file, folder or hub id) → ConvertedVQ; see the module docstring."""
    kind, path = detect_source(source, allow_download=allow_download)
    if config_path is not None and kind != "ckpt":
        raise ValueError(f"--config (a taming model.yaml) only applies to .ckpt sources, not to a {kind} folder")
    if kind == "ckpt":
        return convert_taming_checkpoint(path, config_path=config_path, image_size=image_size, input_range=input_range)
    if kind == "flax":
        return convert_flax_vqgan(path, image_size=image_size, input_range=input_range)
    return convert_diffusers_vqmodel(path, image_size=image_size, input_range=input_range)


def convert_to_directory(
    source: str | Path,
    out_dir: str | Path,
    config_path: str | Path | None = None,
    image_size: int | None = None,
    input_range: tuple[float, float] | None = None,
    allow_download: bool = True,
) -> tuple[ImageTokenizer, ConvertedVQ]:
    """Convert `source` and write a gptdraw image-tokenizer directory to `out_dir`."""
    converted = convert_vq(source, config_path, image_size, input_range, allow_download)
    tokenizer = converted.to_tokenizer()
    tokenizer.save_pretrained(out_dir)
    return tokenizer, converted
