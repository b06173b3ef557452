"""Loading pretrained VQGANs: taming .ckpt, MoVQGAN .ckpt, dalle-mini msgpack, diffusers folders.

Each checkpoint is written here in its real layout from a small *independent* reference
implementation of the taming VQGAN (and MoVQ's spatially-conditioned decoder), built
with taming's own module names; the converted gptdraw tokenizer must hold the same
tensors and give the same latents, codes and images as that reference.
"""

from __future__ import annotations

import json
import re
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from diffusers import VQModel
from torch import nn

from gptdraw.vq.convert import (
    FLAX_WEIGHTS_FILE,
    convert_to_directory,
    convert_vq,
    infer_taming_config,
    load_restricted_checkpoint,
    read_flax_msgpack,
)
from gptdraw.vq.model import ImageTokenizer

# A tiny taming architecture: ch 32, ch_mult (1, 1, 2), attention at the lowest level (8 px
# for 32 px images), z_channels 8, a 64-entry codebook of 8-dim vectors. taming's norms are
# 32-group GroupNorms, so every width is a multiple of 32.
TINY = dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, resolution=32, attn_resolutions=(8,), z_channels=8,
            embed_dim=8, n_embed=64)
# A tiny MoVQ: f8 (four levels), attention at the lowest level, z_channels = embed_dim = 4.
TINY_MOVQ = dict(ch=32, ch_mult=(1, 2, 2, 4), num_res_blocks=1, resolution=64, attn_resolutions=(8,),
                 z_channels=4, embed_dim=4, n_embed=64)


# ---- an independent taming-layout reference ----------------------------------------------------


class GroupNormRef(nn.GroupNorm):
    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-6)

    def forward(self, x, zq=None):
        return super().forward(x)


class SpatialNormRef(nn.Module):
    """MoVQ: GroupNorm(f) · conv_y(zq) + conv_b(zq), zq resized to f by nearest neighbour."""

    def __init__(self, channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(32, channels, eps=1e-6)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, x, zq):
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


def make_norm(channels, zq_channels):
    return GroupNormRef(channels) if zq_channels is None else SpatialNormRef(channels, zq_channels)


class ResnetRef(nn.Module):
    def __init__(self, cin, cout, zq_channels=None):
        super().__init__()
        self.norm1 = make_norm(cin, zq_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = make_norm(cout, zq_channels)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, zq=None):
        h = self.conv1(F.silu(self.norm1(x, zq)))
        h = self.conv2(F.silu(self.norm2(h, zq)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnRef(nn.Module):
    def __init__(self, channels, zq_channels=None):
        super().__init__()
        self.norm = make_norm(channels, zq_channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x, zq=None):
        h = self.norm(x, zq)
        b, c, height, width = h.shape
        q = self.q(h).reshape(b, c, -1)
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, dim=2)  # (b, query, key)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)
        return x + self.proj_out(out)


class EncoderRef(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, resolution, attn_resolutions, z_channels, **_):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin, res = ch, resolution
        for level, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetRef(cin, ch * mult))
                cin = ch * mult
                if res in attn_resolutions:
                    stage.attn.append(AttnRef(cin))
            if level != len(ch_mult) - 1:
                stage.downsample = nn.Module()
                stage.downsample.conv = nn.Conv2d(cin, cin, 3, stride=2)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetRef(cin, cin), AttnRef(cin), ResnetRef(cin, cin)
        self.norm_out = GroupNormRef(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for stage in self.down:
            for index, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[index](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample.conv(F.pad(h, (0, 1, 0, 1)))  # taming's asymmetric padding
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class DecoderRef(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, resolution, attn_resolutions, z_channels, zq_channels=None, **_):
        super().__init__()
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (len(ch_mult) - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetRef(cin, cin, zq_channels)
        self.mid.attn_1 = AttnRef(cin, zq_channels)
        self.mid.block_2 = ResnetRef(cin, cin, zq_channels)
        stages = {}
        for level in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetRef(cin, ch * ch_mult[level], zq_channels))
                cin = ch * ch_mult[level]
                if res in attn_resolutions:
                    stage.attn.append(AttnRef(cin, zq_channels))
            if level != 0:
                stage.upsample = nn.Module()
                stage.upsample.conv = nn.Conv2d(cin, cin, 3, padding=1)
                res *= 2
            stages[level] = stage
        self.up = nn.ModuleList(stages[level] for level in range(len(ch_mult)))  # up.0 = full resolution
        self.norm_out = make_norm(cin, zq_channels)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z, zq=None):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, zq), zq), zq)
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for index, block in enumerate(stage.block):
                h = block(h, zq)
                if len(stage.attn):
                    h = stage.attn[index](h, zq)
            if hasattr(stage, "upsample"):
                h = stage.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h, zq)))


class TamingRef(nn.Module):
    """taming.models.vqgan.VQModel (or MoVQGAN's MOVQ when spatial=True), with a stand-in loss."""

    def __init__(self, arch: dict, spatial: bool = False):
        super().__init__()
        self.arch, self.spatial = arch, spatial
        self.encoder = EncoderRef(**arch)
        self.decoder = DecoderRef(**arch, zq_channels=arch["embed_dim"] if spatial else None)
        self.quantize = nn.Module()
        self.quantize.embedding = nn.Embedding(arch["n_embed"], arch["embed_dim"])
        self.quant_conv = nn.Conv2d(arch["z_channels"], arch["embed_dim"], 1)
        self.post_quant_conv = nn.Conv2d(arch["embed_dim"], arch["z_channels"], 1)
        self.loss = nn.Module()  # taming checkpoints carry the LPIPS/discriminator weights
        self.loss.discriminator = nn.Conv2d(3, 4, 3)
        with torch.no_grad():  # every tensor distinct, so they can be matched one to one
            for parameter in self.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))

    def latents(self, pixels):
        return self.quant_conv(self.encoder(pixels))

    def codes(self, pixels):
        latents = self.latents(pixels)
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()  # (B*h*w, C)
        distances = torch.cdist(flat, self.quantize.embedding.weight.double())
        return distances.argmin(dim=1).view(latents.shape[0], *latents.shape[2:]), latents

    def decode_codes(self, codes):
        quant = self.quantize.embedding(codes).permute(0, 3, 1, 2)  # (B, C, h, w)
        return self.decoder(self.post_quant_conv(quant), quant if self.spatial else None)

    def weights(self) -> OrderedDict:
        return OrderedDict((key, value.detach().clone()) for key, value in self.state_dict().items())


def ddconfig(arch: dict) -> dict:
    return dict(double_z=False, z_channels=arch["z_channels"], resolution=arch["resolution"], in_channels=3,
                out_ch=3, ch=arch["ch"], ch_mult=list(arch["ch_mult"]), num_res_blocks=arch["num_res_blocks"],
                attn_resolutions=list(arch["attn_resolutions"]), dropout=0.0)


def write_model_yaml(path: Path, arch: dict, target="taming.models.vqgan.VQModel") -> Path:
    document = {"model": {"base_learning_rate": 4.5e-6, "target": target, "params": {
        "embed_dim": arch["embed_dim"], "n_embed": arch["n_embed"], "monitor": "val/rec_loss",
        "ddconfig": ddconfig(arch),
        "lossconfig": {"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
                       "params": {"disc_start": 0, "disc_weight": 0.75, "codebook_weight": 1.0}}}}}
    path.write_text(yaml.safe_dump(document))
    return path


# A Lightning callback, saved under pytorch_lightning's module path as real checkpoints do.
CALLBACK_CALLS: list[str] = []


class ModelCheckpoint:
    def __init__(self):
        self.dirpath = "logs/checkpoints"
        self.best_model_score = torch.tensor(0.25)

    def __setstate__(self, state):
        CALLBACK_CALLS.append("setstate")  # would show that the loader rebuilt the real class
        self.__dict__.update(state)


def write_lightning_checkpoint(path: Path, state_dict: dict, legacy_format: bool = False) -> Path:
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    original_module = ModelCheckpoint.__module__
    ModelCheckpoint.__module__ = names[-1]
    sys.modules.update(modules)  # only while pickling: the loader must not need them
    try:
        torch.save({
            "epoch": 3, "global_step": 12345, "pytorch-lightning_version": "1.0.8",
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.25)}, "instance": ModelCheckpoint()},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0, 1]}]}],
            "lr_schedulers": [],
            "state_dict": state_dict,
        }, path, _use_new_zipfile_serialization=not legacy_format)
    finally:
        for name in names:
            del sys.modules[name]
        ModelCheckpoint.__module__ = original_module
    return path


# ---- comparisons -------------------------------------------------------------------------------


def images(count=3, size=32, seed=0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def assert_same_tensors(reference: dict, converted: dict) -> None:
    """Every reference weight appears in the converted state dict with the same values (one to one)."""
    by_content = {}
    for key, value in converted.items():
        by_content.setdefault((value.numel(), round(value.double().sum().item(), 6)), []).append((key, value))
    assert len(reference) == len(converted)
    for key, value in reference.items():
        candidates = by_content.get((value.numel(), round(value.double().sum().item(), 6)), [])
        match = [name for name, tensor in candidates if torch.equal(tensor.reshape(-1), value.reshape(-1).float())]
        assert len(match) == 1, f"{key}: {len(match)} converted tensors hold its values"


def assert_codes_match(codes, reference_codes, latents, codebook) -> None:
    """Equal codes, except where two codebook entries are equally near (float rounding may pick either)."""
    differ = codes != reference_codes
    if differ.any():
        flat = latents.permute(0, 2, 3, 1)[differ].double()  # (n, C)
        distances = torch.cdist(flat, codebook.double())
        gap = (distances.gather(1, codes[differ][:, None]) - distances.gather(1, reference_codes[differ][:, None]))
        assert gap.abs().max() < 1e-5, f"{int(differ.sum())} codes differ by more than a rounding tie"


def check_against_reference(tokenizer: ImageTokenizer, reference: TamingRef, low: float, high: float, size=32):
    x = images(size=size)
    pixels = x * (high - low) + low
    with torch.no_grad():
        reference_codes, reference_latents = reference.codes(pixels)
        latents = tokenizer.model.encode(pixels).latents
        torch.testing.assert_close(latents, reference_latents, rtol=1e-4, atol=1e-4)
        codes = tokenizer.encode(x)
        assert codes.dtype == torch.int64 and codes.shape == reference_codes.shape
        assert_codes_match(codes, reference_codes, reference_latents, reference.quantize.embedding.weight)
        decoded = tokenizer.decode(reference_codes)
        expected = ((reference.decode_codes(reference_codes) - low) / (high - low)).clamp(0, 1)
        torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)


# ---- taming .ckpt ------------------------------------------------------------------------------


def test_taming_lightning_checkpoint_with_model_yaml(tmp_path):
    torch.manual_seed(0)
    reference = TamingRef(TINY).eval()
    ckpt = write_lightning_checkpoint(tmp_path / "last.ckpt", reference.weights())
    yaml_path = write_model_yaml(tmp_path / "vq.yaml", TINY)
    CALLBACK_CALLS.clear()

    converted = convert_vq(ckpt, config_path=yaml_path)

    assert CALLBACK_CALLS == [] and "pytorch_lightning" not in sys.modules
    assert converted.source_format == "taming"
    assert converted.dropped == {"loss.": 2}  # the discriminator's weight and bias
    config = converted.config
    assert config.block_out_channels == (32, 32, 64)
    assert config.down_block_types == ("DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D")
    assert config.up_block_types == ("AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D")
    assert config.input_range == (-1.0, 1.0) and config.image_size == 32
    tokenizer = converted.to_tokenizer()
    non_loss = {k: v for k, v in reference.weights().items() if not k.startswith("loss.")}
    assert_same_tensors(non_loss, tokenizer.model.state_dict())
    check_against_reference(tokenizer, reference, -1.0, 1.0)
    assert tokenizer.codebook_size == 64 and tokenizer.grid_size(32) == (8, 8)


def test_taming_checkpoint_without_yaml_infers_the_same_architecture(tmp_path):
    torch.manual_seed(1)
    reference = TamingRef(TINY).eval()
    ckpt = write_lightning_checkpoint(tmp_path / "last.ckpt", reference.weights())
    from_yaml = convert_vq(ckpt, config_path=write_model_yaml(tmp_path / "m.yaml", TINY)).config
    inferred = convert_vq(ckpt, image_size=32).config
    for field in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                  "latent_channels", "vq_embed_dim", "num_vq_embeddings", "norm_type", "mid_block_add_attention"):
        assert getattr(inferred, field) == getattr(from_yaml, field), field


def test_taming_log_folder_layout_finds_its_model_yaml(tmp_path):
    torch.manual_seed(2)
    reference = TamingRef(TINY).eval()
    (tmp_path / "vq" / "checkpoints").mkdir(parents=True)
    (tmp_path / "vq" / "configs").mkdir()
    write_lightning_checkpoint(tmp_path / "vq" / "checkpoints" / "last.ckpt", reference.weights())
    write_model_yaml(tmp_path / "vq" / "configs" / "model.yaml", TINY)
    converted = convert_vq(tmp_path / "vq")
    assert any("model.yaml" in note for note in converted.notes)
    assert converted.config.image_size == 32  # the yaml's resolution; inferring would give 256


def test_tokenizer_directory_round_trip(tmp_path):
    torch.manual_seed(3)
    reference = TamingRef(TINY).eval()
    ckpt = write_lightning_checkpoint(tmp_path / "last.ckpt", reference.weights())
    tokenizer, _ = convert_to_directory(ckpt, tmp_path / "out", config_path=write_model_yaml(tmp_path / "m.yaml", TINY))
    loaded = ImageTokenizer.from_pretrained(tmp_path / "out")
    assert loaded.config == tokenizer.config
    x = images()
    assert torch.equal(loaded.encode(x), tokenizer.encode(x))
    check_against_reference(loaded, reference, -1.0, 1.0)


def test_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.ckpt.*system"):
        load_restricted_checkpoint(path)
    with pytest.raises(ValueError, match="system"):
        convert_vq(path)
    assert not marker.exists()


def test_legacy_format_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="refusing to load"):
        load_restricted_checkpoint(path)
    assert not marker.exists()


def test_legacy_format_lightning_checkpoint_loads(tmp_path):
    torch.manual_seed(10)
    reference = TamingRef(TINY).eval()
    ckpt = write_lightning_checkpoint(tmp_path / "old.ckpt", reference.weights(), legacy_format=True)
    CALLBACK_CALLS.clear()
    tokenizer = convert_vq(ckpt, config_path=write_model_yaml(tmp_path / "m.yaml", TINY)).to_tokenizer()
    assert CALLBACK_CALLS == []
    check_against_reference(tokenizer, reference, -1.0, 1.0)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "notes.ckpt").write_text("hello")
    with pytest.raises(ValueError, match=r"cannot load .*notes\.ckpt as a weights-only PyTorch checkpoint"):
        convert_vq(tmp_path / "notes.ckpt")


def test_missing_and_extra_keys_are_named(tmp_path):
    torch.manual_seed(4)
    weights = TamingRef(TINY).weights()
    yaml_path = write_model_yaml(tmp_path / "m.yaml", TINY)

    missing = OrderedDict(weights)
    del missing["encoder.conv_in.bias"]
    ckpt = write_lightning_checkpoint(tmp_path / "missing.ckpt", missing)
    with pytest.raises(ValueError, match=r"missing keys.*encoder\.conv_in\.bias"):
        convert_vq(ckpt, config_path=yaml_path).to_tokenizer()

    extra = OrderedDict(weights)
    extra["encoder.down.0.block.0.extra.weight"] = torch.zeros(3)
    ckpt = write_lightning_checkpoint(tmp_path / "extra.ckpt", extra)
    with pytest.raises(ValueError, match=r"unexpected keys: encoder\.down\.0\.block\.0\.extra\.weight"):
        convert_vq(ckpt, config_path=yaml_path)

    wrong_shape = OrderedDict(weights)
    wrong_shape["quant_conv.bias"] = torch.zeros(5)
    ckpt = write_lightning_checkpoint(tmp_path / "shape.ckpt", wrong_shape)
    with pytest.raises(ValueError, match=r"quant_conv\.bias"):
        convert_vq(ckpt, config_path=yaml_path).to_tokenizer()


# ---- MoVQGAN ------------------------------------------------------------------------------------


def test_movqgan_plain_state_dict_checkpoint(tmp_path):
    torch.manual_seed(5)
    reference = TamingRef(TINY_MOVQ, spatial=True).eval()
    # ai-forever's movqgan_*.ckpt files are bare state dicts (loaded with torch.load → load_state_dict).
    path = tmp_path / "movqgan_67M.ckpt"
    torch.save(reference.weights(), path)
    converted = convert_vq(path, image_size=64)
    assert converted.source_format == "movqgan"
    assert converted.config.norm_type == "spatial"
    assert converted.config.downsample_factor == 8
    tokenizer = converted.to_tokenizer()
    non_loss = {k: v for k, v in reference.weights().items() if not k.startswith("loss.")}
    assert_same_tensors(non_loss, tokenizer.model.state_dict())
    check_against_reference(tokenizer, reference, -1.0, 1.0, size=64)
    # the sequence layout follows the tokenizer: f8 at 256 px is a 32×32 grid
    assert tokenizer.grid_size(256) == (32, 32)


def test_movqgan_yaml_target_selects_spatial_norms(tmp_path):
    torch.manual_seed(6)
    reference = TamingRef(TINY_MOVQ, spatial=True).eval()
    path = tmp_path / "movq.ckpt"
    torch.save(reference.weights(), path)
    yaml_path = write_model_yaml(tmp_path / "movqgan_67M.yaml", TINY_MOVQ, target="movqgan.models.vqgan.MOVQ")
    tokenizer = convert_vq(path, config_path=yaml_path).to_tokenizer()
    assert tokenizer.config.norm_type == "spatial"
    check_against_reference(tokenizer, reference, -1.0, 1.0, size=64)


# ---- dalle-mini Flax msgpack --------------------------------------------------------------------


def to_flax_tree(weights: dict) -> dict:
    """taming weights → the Flax params tree vqgan-jax saved (its converter, run forwards)."""
    tree: dict = {}
    for key, value in weights.items():
        if key.startswith("loss."):
            continue
        parts = key.split(".")
        names = []
        index = 0
        while index < len(parts):  # "down.0" → "down_0", as vqgan-jax's rename_key does
            if index + 1 < len(parts) and parts[index + 1].isdigit():
                names.append(f"{parts[index]}_{parts[index + 1]}")
                index += 2
            else:
                names.append(parts[index])
                index += 1
        array = value.numpy()
        if names[-1] == "weight" and names[-2] == "embedding":
            names[-1] = "embedding"
        elif names[-1] == "weight" and array.ndim == 4:
            names[-1], array = "kernel", array.transpose(2, 3, 1, 0)  # (out, in, kH, kW) → (kH, kW, in, out)
        elif names[-1] == "weight":
            names[-1] = "scale"
        node = tree
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = np.ascontiguousarray(array)
    return tree


def flax_msgpack_bytes(tree: dict) -> bytes:
    """flax.serialization.to_bytes's layout: arrays as msgpack extension 1 = packb((shape, dtype, bytes))."""
    def default(obj):
        if isinstance(obj, np.ndarray):
            payload = msgpack.packb((obj.shape, obj.dtype.name, obj.tobytes("C")), use_bin_type=True)
            return msgpack.ExtType(1, payload)
        raise TypeError(type(obj))

    return msgpack.packb(tree, default=default, strict_types=True)


def test_dalle_mini_flax_msgpack(tmp_path):
    torch.manual_seed(7)
    reference = TamingRef(TINY).eval()
    folder = tmp_path / "vqgan_imagenet_f16_16384"
    folder.mkdir()
    (folder / "flax_model.msgpack").write_bytes(flax_msgpack_bytes(to_flax_tree(reference.weights())))
    hub_config = dict(ddconfig(TINY), embed_dim=TINY["embed_dim"], n_embed=TINY["n_embed"], resamp_with_conv=True,
                      give_pre_end=False, architectures=["VQModel"], transformers_version="4.9.0.dev0")
    (folder / "config.json").write_text(json.dumps(hub_config))

    flat = read_flax_msgpack(folder / "flax_model.msgpack")
    assert flat["encoder.down_0.block_0.conv1.kernel"].shape == (3, 3, 32, 32)
    assert "jax" not in sys.modules and "flax" not in sys.modules

    converted = convert_vq(folder)
    assert converted.source_format == "flax"
    assert converted.config.input_range == (0.0, 1.0)  # dalle-mini feeds [0, 1] pixels
    tokenizer = converted.to_tokenizer()
    non_loss = {k: v for k, v in reference.weights().items() if not k.startswith("loss.")}
    assert_same_tensors(non_loss, tokenizer.model.state_dict())
    check_against_reference(tokenizer, reference, 0.0, 1.0)


# ---- diffusers folders --------------------------------------------------------------------------


def tiny_vqmodel(norm_type="group", seed=8) -> VQModel:
    torch.manual_seed(seed)
    model = VQModel(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, latent_channels=4,
        vq_embed_dim=4, num_vq_embeddings=32, norm_num_groups=16, norm_type=norm_type, lookup_from_codebook=True,
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def check_against_vqmodel(tokenizer: ImageTokenizer, model: VQModel, low=-1.0, high=1.0):
    x = images()
    pixels = x * (high - low) + low
    with torch.no_grad():
        latents = model.encode(pixels).latents
        reference_codes = model.quantize(latents)[2][2].view(latents.shape[0], *latents.shape[2:])
        assert_codes_match(tokenizer.encode(x), reference_codes, latents, model.quantize.embedding.weight)
        shape = (*reference_codes.shape, model.quantize.vq_embed_dim)
        expected = model.decode(reference_codes.reshape(-1), force_not_quantize=True, shape=shape).sample
        expected = ((expected - low) / (high - low)).clamp(0, 1)
        torch.testing.assert_close(tokenizer.decode(reference_codes), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_type", ["group", "spatial"])
def test_diffusers_vqmodel_folder(tmp_path, norm_type):
    model = tiny_vqmodel(norm_type)
    model.save_pretrained(tmp_path / "vq")
    converted = convert_vq(tmp_path / "vq", image_size=32)
    assert converted.source_format == "diffusers" and converted.config.norm_type == norm_type
    tokenizer = converted.to_tokenizer()
    for key, value in model.state_dict().items():
        assert torch.equal(tokenizer.model.state_dict()[key], value), key
    check_against_vqmodel(tokenizer, model)


def test_diffusers_pipeline_folder_and_amused_range(tmp_path):
    # amused's layout: a pipeline folder whose VQModel lives in vqvae/; amused's VQ signature
    # (8,192 codes, 64 latent channels, no mid attention) selects the [0, 1] input range.
    torch.manual_seed(9)
    model = VQModel(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=64, num_vq_embeddings=8192,
        norm_num_groups=32, mid_block_add_attention=False, lookup_from_codebook=True,
    ).eval()
    model.save_pretrained(tmp_path / "amused" / "vqvae")
    (tmp_path / "amused" / "model_index.json").write_text(json.dumps({"_class_name": "AmusedPipeline"}))
    converted = convert_vq(tmp_path / "amused", image_size=32)
    assert converted.config.input_range == (0.0, 1.0)
    check_against_vqmodel(converted.to_tokenizer(), model, 0.0, 1.0)


def test_diffusers_bin_goes_through_the_restricted_loader(tmp_path):
    model = tiny_vqmodel()
    model.save_pretrained(tmp_path / "vq", safe_serialization=False)
    assert (tmp_path / "vq" / "diffusion_pytorch_model.bin").is_file()
    tokenizer = convert_vq(tmp_path / "vq", image_size=32).to_tokenizer()
    check_against_vqmodel(tokenizer, model)

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"encoder.conv_in.weight": Exploit()}, tmp_path / "vq" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load"):
        convert_vq(tmp_path / "vq")
    assert not marker.exists()


def test_hub_id_without_download_is_a_clear_error():
    with pytest.raises(ValueError, match="dalle-mini/vqgan_imagenet_f16_16384 is neither a local file nor a folder"):
        convert_vq("dalle-mini/vqgan_imagenet_f16_16384", allow_download=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_vq("./no/such/checkpoint.ckpt")


def test_inferred_reference_f16_architecture_matches_the_preset():
    # The architecture read from f16-16384-shaped weights is the preset DESIGN.md pins down.
    from gptdraw.vq.model import vq_preset

    arch = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, resolution=256, attn_resolutions=(16,),
                z_channels=256, embed_dim=256, n_embed=16384)
    with torch.device("meta"):  # shapes only, no memory
        state = TamingRef(arch).state_dict()
    inferred = infer_taming_config(state, source="f16")
    preset = vq_preset("taming-f16-16384")
    for field in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                  "latent_channels", "vq_embed_dim", "num_vq_embeddings", "norm_num_groups",
                  "mid_block_add_attention", "input_range", "image_size"):
        assert getattr(inferred, field) == getattr(preset, field), field


def test_unpickling_refuses_a_torch_with_known_holes():
    from gptdraw.runtime import check_torch_is_safe

    for unsafe in ("2.4.0", "2.5.1+cu121", "2.9.1"):
        with pytest.raises(ValueError, match=f"torch {re.escape(unsafe)} can run code.*torch >= 2.10"):
            check_torch_is_safe(unsafe)
    for safe in ("2.10.0", "2.11.0+cu130", "2.13.0+cpu", "3.0.0"):
        check_torch_is_safe(safe)
    check_torch_is_safe()  # the installed one (pyproject.toml asks for >= 2.10)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_a_lightning_name_used_as_the_callable_runs_nothing(tmp_path, legacy_format):
    """A Lightning class is admitted as an inert placeholder, so a payload that calls one with a
    shell command as its argument calls the placeholder: nothing runs, nothing is rebuilt."""
    marker = tmp_path / "pwned"

    class CallsACallback:
        def __reduce__(self):
            return (ModelCheckpoint, (f"touch {marker}",))  # pickled as GLOBAL + args + REDUCE

    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    original_module = ModelCheckpoint.__module__
    ModelCheckpoint.__module__ = names[-1]
    sys.modules.update(modules)
    path = tmp_path / "lightning-call.ckpt"
    try:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": CallsACallback()}, path,
                   _use_new_zipfile_serialization=not legacy_format)
    finally:
        for name in names:
            del sys.modules[name]
        ModelCheckpoint.__module__ = original_module
    assert f"touch {marker}".encode() in (path.read_bytes() if legacy_format else b"".join(
        zipfile.ZipFile(path).read(name) for name in zipfile.ZipFile(path).namelist()))
    CALLBACK_CALLS.clear()
    loaded = load_restricted_checkpoint(path)
    assert type(loaded["payload"]).__name__ == "SkippedObject"
    assert CALLBACK_CALLS == [] and not marker.exists()


@pytest.mark.parametrize("legacy_format", [False, True])
def test_stack_global_payload_is_refused(tmp_path, legacy_format):
    """Pickle protocol 4 names a callable with STACK_GLOBAL (module and name pushed as strings).
    Either format is refused before anything is called: the zip format's opcode scan does not
    read protocol 4, and the weights-only unpickler stops at the callable."""
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "stack-global.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Exploit()}, path, pickle_protocol=4,
               _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(ValueError, match=r"(refusing to load|cannot read checkpoint|cannot load) .*stack-global\.ckpt"):
        load_restricted_checkpoint(path)
    assert not marker.exists()


def flax_array(shape, dtype: str, data: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(1, msgpack.packb([shape, dtype, data]))


@pytest.mark.parametrize("entry, reason", [
    (msgpack.ExtType(1, msgpack.packb([[2, 2], "float32"])), "not \\(shape, dtype, bytes\\)"),  # no data
    (flax_array([2, "2"], "float32", bytes(16)), "is not a list of sizes"),
    (flax_array([2.5], "float32", bytes(10)), "is not a list of sizes"),
    (flax_array([2], "<U5", bytes(40)), "not a number type"),
    (flax_array([2], "object", bytes(16)), "not a number type"),
    (flax_array([1000, 1000], "float32", bytes(16)), "holds 16 bytes"),
])
def test_malformed_flax_entries_are_one_line_errors(tmp_path, entry, reason):
    path = tmp_path / FLAX_WEIGHTS_FILE
    path.write_bytes(msgpack.packb({"params": {"w": entry}}))
    with pytest.raises(ValueError, match=f"cannot read .*msgpack checkpoint: .*{reason}"):
        read_flax_msgpack(path)


def test_deeply_nested_flax_checkpoint_is_refused(tmp_path):
    tree = flax_array([1], "float32", bytes(4))
    for _ in range(900):
        tree = {"x": tree}
    path = tmp_path / FLAX_WEIGHTS_FILE
    path.write_bytes(msgpack.packb(tree))
    with pytest.raises(ValueError, match="cannot read .*(nested more than|depth)"):
        read_flax_msgpack(path)


def test_sizes_in_configs_are_bounded_before_building():
    from gptdraw.vq.config import VQConfig

    base = dict(image_size=32, block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
                num_vq_embeddings=64)
    with pytest.raises(ValueError, match="num_vq_embeddings 10000000000 is over the limit"):
        VQConfig(**{**base, "num_vq_embeddings": 10**10})
    with pytest.raises(ValueError, match="num_vq_embeddings must be whole number"):
        VQConfig(**{**base, "num_vq_embeddings": 1e10})
    with pytest.raises(ValueError, match="block_out_channels 100000 is over the limit"):
        VQConfig(**{**base, "block_out_channels": (32, 100_000)})


def test_a_missing_local_path_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="runs/vq does not exist"):
        convert_vq("runs/vq")
