"""A model directory is untrusted input (issue 23): each way of tampering with one is a one-line
error naming the file, found before a network is built — no MemoryError, no hang, no traceback."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gptdraw.gpt.model as gpt_model
from gptdraw.model_dir import load_model_directory, model_roots
from gptdraw.untrusted_files import read_json

FIXTURE = Path(__file__).parent / "fixtures" / "model-v1" / "model"
"""A tiny model directory (1 layer × 16 wide; codebook 32; 10 caption tokens + 4×4 codes)."""
GPT_CONFIG, GPT_WEIGHTS = "transformer/config.json", "transformer/model.safetensors"
VQ_CONFIG, VQ_WEIGHTS = "image_tokenizer/config.json", "image_tokenizer/model.safetensors"
TOKENIZER, TOKENIZER_CONFIG = "text_tokenizer/tokenizer.json", "text_tokenizer/caption_tokenizer.json"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def set_field(relative: str, dotted: str, value):
    """A tampering that sets one (dotted) field of a JSON file of the directory."""
    def tamper(model: Path) -> None:
        def change(data):
            *parents, last = dotted.split(".")
            for name in parents:
                data = data[name]
            data[last] = value
        edit_json(model / relative, change)
    return tamper


def replace_with(relative: str, content: bytes):
    def tamper(model: Path) -> None:
        (model / relative).write_bytes(content)
    return tamper


def link_to(relative: str, target: str):
    def tamper(model: Path) -> None:
        (model / relative).unlink()
        (model / relative).symlink_to(target)
    return tamper


def make_fifo(relative: str):
    def tamper(model: Path) -> None:
        (model / relative).unlink()
        os.mkfifo(model / relative)
    return tamper


def link_outside(relative: str):
    """The file moved out of the directory, a link to it left in its place."""
    def tamper(model: Path) -> None:
        outside = model.parent / f"outside-{Path(relative).name}"
        shutil.move(model / relative, outside)
        (model / relative).symlink_to(outside)
    return tamper


def sparse(relative: str, size: int):
    """The file grown to `size` bytes without writing them (a sparse file: instant, no disk)."""
    def tamper(model: Path) -> None:
        with open(model / relative, "r+b") as file:
            file.truncate(size)
    return tamper


def cut(relative: str, keep: float):
    def tamper(model: Path) -> None:
        data = (model / relative).read_bytes()
        (model / relative).write_bytes(data[: int(len(data) * keep)])
    return tamper


def edit_header(relative: str, change):
    """Rewrites the safetensors header of a weights file (the data bytes left as they are)."""
    def tamper(model: Path) -> None:
        data = (model / relative).read_bytes()
        length = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8 : 8 + length])
        change(header)
        encoded = json.dumps(header).encode()
        (model / relative).write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return tamper


def poison(relative: str, tensor: str, value: float):
    def tamper(model: Path) -> None:
        state = load_file(str(model / relative))
        state[tensor].view(-1)[0] = value
        save_file(state, str(model / relative))
    return tamper


def nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


LN = "transformer.ln_f.bias"
CASES = {
    # gptdraw.json: the file itself
    "config is /dev/zero": (link_to("gptdraw.json", "/dev/zero"), "gptdraw.json is a link to /dev/zero, outside"),
    "config is a FIFO": (make_fifo("gptdraw.json"), "gptdraw.json is a FIFO"),
    "config is 5 MB": (sparse("gptdraw.json", 5 * 2**20), "over the 4 MiB limit"),
    "config is not JSON": (replace_with("gptdraw.json", b"{cut"), "gptdraw.json is not valid JSON"),
    "config is a list": (replace_with("gptdraw.json", b"[]"), "gptdraw.json must hold a JSON object"),
    "config nests too deep": (replace_with("gptdraw.json", nest(100_000)), "gptdraw.json is not JSON gptdraw can read"),
    "config links outside": (link_outside("gptdraw.json"), "outside"),
    "config of another format": (set_field("gptdraw.json", "format", "other"), "gptdraw.json is not a valid model config"),
    # gptdraw.json: its fields
    "pad_vocab_to 0": (set_field("gptdraw.json", "layout.pad_vocab_to", 0), "layout.pad_vocab_to"),
    "float codebook": (set_field("gptdraw.json", "layout.codebook_size", 32.0), "layout.codebook_size"),
    "1e9 caption ids": (set_field("gptdraw.json", "layout.text_vocab_size", 10**9), "layout.text_vocab_size"),
    "huge grid": (set_field("gptdraw.json", "layout.grid", [10**6, 10**6]), "layout.grid"),
    "grid of one side": (set_field("gptdraw.json", "layout.grid", [4]), "layout.grid"),
    "long sequence": (set_field("gptdraw.json", "layout.grid", [4096, 4096]), "positions"),
    "pad id outside": (set_field("gptdraw.json", "layout.pad_id", 280), "layout.pad_id"),
    "float top_k": (set_field("gptdraw.json", "sampling.top_k", 2.5), "top_k must be a whole number"),
    "bool top_k": (set_field("gptdraw.json", "sampling.top_k", True), "top_k must be a whole number"),
    "NaN guidance": (set_field("gptdraw.json", "sampling.cfg_scale", float("nan")), "cfg_scale must be a finite"),
    "NaN temperature": (set_field("gptdraw.json", "sampling.temperature", float("nan")), "temperature must be a finite"),
    "unknown setting": (set_field("gptdraw.json", "sampling.colour", 1), "gptdraw.json is not a valid model config"),
    # transformer/config.json
    "GPT config not JSON": (replace_with(GPT_CONFIG, b"not json"), "config.json is not valid JSON"),
    "GPT config is /dev/zero": (link_to(GPT_CONFIG, "/dev/zero"), "config.json is a link to /dev/zero, outside"),
    "n_head 0": (set_field(GPT_CONFIG, "n_head", 0), "n_head must be a whole number in [1, 256]"),
    "negative width": (set_field(GPT_CONFIG, "n_embd", -16), "n_embd must be a whole number"),
    "1e9 positions": (set_field(GPT_CONFIG, "n_positions", 10**9), "n_positions must be a whole number"),
    "1e9 vocabulary": (set_field(GPT_CONFIG, "vocab_size", 10**9), "vocab_size must be a whole number"),
    "a million layers": (set_field(GPT_CONFIG, "n_layer", 1_000_000), "n_layer must be a whole number in [1, 256]"),
    "float layers": (set_field(GPT_CONFIG, "n_layer", 1.5), "n_layer must be a whole number"),
    "width not divisible": (set_field(GPT_CONFIG, "n_embd", 17), "not divisible by n_head"),
    "unknown activation": (set_field(GPT_CONFIG, "activation_function", "os.system"), "activation_function"),
    "NaN epsilon": (set_field(GPT_CONFIG, "layer_norm_epsilon", float("nan")), "layer_norm_epsilon"),
    "cross attention": (set_field(GPT_CONFIG, "add_cross_attention", True), "not a gptdraw GPT"),
    "another vocabulary": (set_field(GPT_CONFIG, "vocab_size", 512), "vocabulary of 512"),
    "short context": (set_field(GPT_CONFIG, "n_positions", 8), "context is 8 tokens"),
    # transformer/model.safetensors
    "GPT weights a pickle": (replace_with(GPT_WEIGHTS, pickle.dumps({"weight": [1.0] * 10})), "model.safetensors"),
    "GPT weights are text": (replace_with(GPT_WEIGHTS, b"root:x:0:0:root:/root:/bin/bash\n"), "not a readable safetensors file"),
    "GPT weights empty": (replace_with(GPT_WEIGHTS, b""), "not a readable safetensors file"),
    "GPT weights cut": (cut(GPT_WEIGHTS, 0.5), "cut short"),
    "GPT weights link outside": (link_outside(GPT_WEIGHTS), "outside"),
    "GPT weights are a FIFO": (make_fifo(GPT_WEIGHTS), "model.safetensors is a FIFO"),
    "header length lies": (lambda model: (model / GPT_WEIGHTS).write_bytes(struct.pack("<Q", 2**40) + b"{}"),
                           "not a readable safetensors file"),
    "offsets lie": (edit_header(GPT_WEIGHTS, lambda h: h[LN].update(data_offsets=[0, 10**9])), "header lies"),
    "shape lies about size": (edit_header(GPT_WEIGHTS, lambda h: h[LN].update(shape=[8])), "header lies"),
    "shape swapped": (edit_header(GPT_WEIGHTS, lambda h: h["transformer.h.0.attn.c_attn.weight"].update(shape=[48, 16])),
                      "1 shape mismatches (transformer.h.0.attn.c_attn.weight"),
    "integer weights": (edit_header(GPT_WEIGHTS, lambda h: h[LN].update(dtype="I32")), "not floating point"),
    "unknown dtype": (edit_header(GPT_WEIGHTS, lambda h: h[LN].update(dtype="Q4")), "no known dtype"),
    "a tensor renamed": (edit_header(GPT_WEIGHTS, lambda h: h.update(other=h.pop(LN))), "1 missing keys"),
    "weights of another depth": (set_field(GPT_CONFIG, "n_layer", 2), "missing keys (transformer.h.1"),
    "NaN weights": (poison(GPT_WEIGHTS, "transformer.h.0.mlp.c_fc.weight", float("nan")),
                    "tensor transformer.h.0.mlp.c_fc.weight holds NaN"),
    "inf weights": (poison(GPT_WEIGHTS, "transformer.wte.weight", float("inf")), "tensor transformer.wte.weight holds"),
    # the caption tokenizer
    "tokenizer cut": (cut(TOKENIZER, 0.5), "tokenizer.json is not a tokenizer file"),
    "tokenizer empty": (replace_with(TOKENIZER, b""), "tokenizer.json is not a tokenizer file"),
    "tokenizer of another schema": (replace_with(TOKENIZER, b'{"version": "1.0", "model": 3}'),
                                    "tokenizer.json is not a tokenizer file"),
    "tokenizer of 100 MB": (sparse(TOKENIZER, 100 * 2**20), "tokenizer.json is 100 MiB, over the 64 MiB limit"),
    "tokenizer not UTF-8": (replace_with(TOKENIZER, b"\xff\xfe{}"), "tokenizer.json is not UTF-8"),
    "tokenizer config is /dev/zero": (link_to(TOKENIZER_CONFIG, "/dev/zero"), "caption_tokenizer.json is a link to /dev/zero, outside"),
    "1e9 caption tokens": (set_field(TOKENIZER_CONFIG, "text_len", 10**9), "text_len must be a whole number"),
    "tokenizer of another length": (set_field(TOKENIZER_CONFIG, "text_len", 12), "text_len 12, but the layout"),
    "tokenizer of another vocabulary": (set_field(TOKENIZER_CONFIG, "vocab_size", 300), "records 300"),
    # the image tokenizer
    "VQ config is /dev/zero": (link_to(VQ_CONFIG, "/dev/zero"), "image_tokenizer/config.json is a link to /dev/zero, outside"),
    "VQ config not JSON": (replace_with(VQ_CONFIG, b"{"), "image_tokenizer/config.json is not valid JSON"),
    "VQ of another codebook": (set_field(VQ_CONFIG, "config.num_vq_embeddings", 64), "codebook of 64 codes"),
    "float VQ codebook": (set_field(VQ_CONFIG, "config.num_vq_embeddings", 32.0), "num_vq_embeddings"),
    "VQ weights a pickle": (replace_with(VQ_WEIGHTS, pickle.dumps([1, 2, 3])), "image_tokenizer/model.safetensors"),
    "VQ weights cut": (cut(VQ_WEIGHTS, 0.9), "image_tokenizer/model.safetensors"),
    "VQ NaN weights": (poison(VQ_WEIGHTS, "quantize.embedding.weight", float("nan")),
                       "tensor quantize.embedding.weight holds NaN"),
    # a LoRA adapter beside the GPT (checked before peft builds anything)
    "adapter of rank 1e9": (lambda model: (model / "adapter").mkdir() or (model / "adapter" / "adapter_config.json")
                            .write_text(json.dumps({"rank": 10**9, "alpha": 16})), "not a readable LoRA adapter: rank must be a whole number"),
}
"""name → (tampering, a part of the one-line error)."""

BEFORE_ANY_GPT = {name for name in CASES if not name.startswith(("GPT weights", "header", "offsets", "shape",
                                                                  "integer", "unknown dtype", "a tensor", "weights of",
                                                                  "NaN weights", "inf weights", "VQ weights", "VQ NaN"))}
"""The cases refused before a GPT is even made on the meta device: configs and the parts against each other."""


@pytest.fixture
def built(monkeypatch) -> list:
    """The configs of every GPT the loader builds (on the meta device or not)."""
    configs = []
    real_class = gpt_model.GPT2LMHeadModel

    def counting(config, *args, **kwargs):
        configs.append(config)
        return real_class(config, *args, **kwargs)

    monkeypatch.setattr(gpt_model, "GPT2LMHeadModel", counting)
    return configs


def test_the_untouched_directory_loads(tmp_path, built):
    model = shutil.copytree(FIXTURE, tmp_path / "model")
    parts = load_model_directory(model, torch.device("cpu"), torch.float32)
    assert parts.layout.codebook_size == 32 and parts.transformer.lm_head.weight is parts.transformer.transformer.wte.weight
    assert len(built) == 1 and built[0].n_layer == 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tampered_model_directory_is_one_line_naming_the_file(tmp_path, built, case):
    tamper, message = CASES[case]
    model = shutil.copytree(FIXTURE, tmp_path / "model")
    tamper(model)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        load_model_directory(model, torch.device("cpu"), torch.float32)
    text = str(error.value)
    assert message in text, text
    assert "\n" not in text and str(model) in text, text  # one line, naming a file of this directory
    if case in BEFORE_ANY_GPT:
        assert built == [], f"{case}: a GPT was built before the error"


def test_a_hub_snapshot_loads_through_its_blob_links_but_no_further(tmp_path):
    """huggingface_hub's cache: snapshots/COMMIT/* are links into the repository's blobs/."""
    repository = tmp_path / "cache" / "models--someone--tiny"
    snapshot = repository / "snapshots" / ("a" * 40)
    for index, path in enumerate(sorted(FIXTURE.rglob("*"))):
        if path.is_file():
            blob = repository / "blobs" / f"blob{index}"
            blob.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, blob)
            link = snapshot / path.relative_to(FIXTURE)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    assert model_roots(snapshot) == (snapshot.resolve(), (repository / "blobs").resolve())
    assert load_model_directory(snapshot, torch.device("cpu"), torch.float32).layout.text_len == 10
    (snapshot / "gptdraw.json").unlink()
    shutil.copy(FIXTURE / "gptdraw.json", tmp_path / "elsewhere.json")
    (snapshot / "gptdraw.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ValueError, match="gptdraw.json is a link to .*elsewhere.json, outside"):
        load_model_directory(snapshot, torch.device("cpu"), torch.float32)


def test_devices_fifos_and_folders_are_refused_at_once_wherever_they_are(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="config.json is a FIFO, not a regular file"):  # opened without blocking
        read_json(fifo)
    with pytest.raises(ValueError, match="/dev/zero is a device, not a regular file"):
        read_json("/dev/zero")
    with pytest.raises(ValueError, match="is a folder, not a regular file"):
        read_json(tmp_path)


def test_generate_with_a_tampered_model_is_one_line_and_no_traceback(tmp_path):
    model = shutil.copytree(FIXTURE, tmp_path / "model")
    set_field(GPT_CONFIG, "n_layer", 1_000_000)(model)  # took over 120 s and 1 GiB before it was checked
    result = subprocess.run([sys.executable, "-m", "gptdraw.cli", "generate", "x", "--model", str(model), "--out",
                             str(tmp_path / "out"), "--device", "cpu"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # a hang guard only
    errors = [line for line in result.stderr.splitlines() if not line.startswith("INFO ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert errors == [f"gptdraw generate: error: {model / GPT_CONFIG}: n_layer must be a whole number in [1, 256], "
                      "got 1000000"], result.stderr


def test_the_python_api_refuses_settings_the_cli_refuses():
    from gptdraw import GPTDrawPipeline

    pipe = GPTDrawPipeline.from_pretrained(FIXTURE, device="cpu", precision="fp32")
    for settings, message in ((dict(cfg_scale=float("nan")), "cfg_scale must be a finite number"),
                              (dict(temperature=float("inf")), "temperature must be a finite number"),
                              (dict(top_k=2.5), "top_k must be a whole number")):
        with pytest.raises(ValueError, match=message):
            pipe(["a red circle"], seed=0, **settings)
