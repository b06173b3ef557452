"""The model directory: the one format that training writes, and drawing, fine-tuning and the Hub read.

    transformer/       the GPT-2 (transformers format, safetensors)
    text_tokenizer/    the caption tokenizer
    image_tokenizer/   the VQGAN (gptdraw format, safetensors)
    adapter/           LoRA weights on top of transformer/ (only for a model fine-tuned with LoRA)
    gptdraw.json       the sequence layout and the default sampling settings; written last

This module sits below the pipeline, the Hub and training, which all speak it; it knows the
parts and their files, and nothing about drawing.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gptdraw.files import replace_directory, staging_directory, write_text_atomic
from gptdraw.untrusted_files import read_json_object, real, safetensors_header, whole

if TYPE_CHECKING:  # torch-free at import: the Hub and the CLI read only the constants
    from transformers import GPT2LMHeadModel

    from gptdraw.captions import CaptionTokenizer
    from gptdraw.gpt.config import SamplingConfig
    from gptdraw.sequence import SequenceLayout
    from gptdraw.vq.model import ImageTokenizer

MODEL_CONFIG_NAME = "gptdraw.json"
"""The file that marks a folder as a gptdraw model directory."""
PARTS = ("transformer", "text_tokenizer", "image_tokenizer")
"""The folders every model directory has."""
ADAPTER_DIR = "adapter"
"""The LoRA adapter's folder, beside the frozen base in transformer/."""
MODEL_FILES = [
    MODEL_CONFIG_NAME, "README.md", "train_config.json", "loss.png", "samples/*.png",
    "transformer/*.json", "transformer/*.safetensors",
    "text_tokenizer/*.json",
    "image_tokenizer/*.json", "image_tokenizer/*.safetensors",
    f"{ADAPTER_DIR}/*.json", f"{ADAPTER_DIR}/*.safetensors",
]
"""What a model directory is made of: the only files pushed to or fetched from the Hub (no pickles)."""
FORMAT_NAME, FORMAT_VERSION = "gptdraw-model", 1


def is_model_directory(path: str | os.PathLike) -> bool:
    """Whether `path` is a gptdraw model directory (rather than, say, pretrained GPT-2 text weights)."""
    return (Path(path) / MODEL_CONFIG_NAME).is_file()


@dataclass(frozen=True)
class ModelDirectory:
    """A model directory's parts, loaded."""

    transformer: "GPT2LMHeadModel"
    """The GPT (with its LoRA adapter applied, when the directory has one)."""
    text_tokenizer: "CaptionTokenizer"
    image_tokenizer: "ImageTokenizer"
    layout: "SequenceLayout"
    sampling: "SamplingConfig"
    """The model's default sampling settings."""


MAX_GRID_SIDE = 4096
"""The largest side of an image's code grid a layout may have (the whole sequence must also fit
gptdraw.gpt.config.MODEL_LIMITS["n_positions"])."""


def model_roots(directory: str | os.PathLike) -> tuple[Path, ...]:
    """The folders a model directory's files may resolve into: the directory itself, and for a
    snapshot in huggingface_hub's cache (models--user--name/snapshots/COMMIT, whose files are
    links into the repository's blobs/), that repository's blobs/ folder."""
    real = Path(directory).resolve()
    repository = real.parent.parent
    if real.parent.name == "snapshots" and repository.name.startswith("models--") and (repository / "blobs").is_dir():
        return real, repository / "blobs"
    return (real,)


def read_model_config(directory: Path, *, within: tuple[Path, ...] | None = None
                      ) -> tuple["SequenceLayout", "SamplingConfig"]:
    """gptdraw.json → (layout, default sampling settings), every field checked for type and range;
    a missing part or a bad config is a one-line error naming the file."""
    from gptdraw.gpt.config import SamplingConfig

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    missing = [part for part in (MODEL_CONFIG_NAME, *PARTS) if not os.path.lexists(directory / part)]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete gptdraw model directory: it lacks {', '.join(missing)}")
    path = directory / MODEL_CONFIG_NAME
    config = read_json_object(path, within=within or model_roots(directory), what="model config")
    try:
        if config.get("format") != FORMAT_NAME or config.get("version") != FORMAT_VERSION:
            raise ValueError(f"its format is {config.get('format')!r} version {config.get('version')!r}, not "
                             f"{FORMAT_NAME!r} version {FORMAT_VERSION} (the one this gptdraw reads)")
        sampling = config.get("sampling", {})
        if not isinstance(sampling, dict):
            raise ValueError("sampling must be an object of sampling settings")
        return layout_from_dict(config.get("layout")), SamplingConfig(**sampling)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a valid model config: {error}") from None


def layout_from_dict(data) -> "SequenceLayout":
    """A SequenceLayout from a config's "layout", each size a whole number within gptdraw's limits
    (so that no vocabulary or sequence it implies is too big to build)."""
    from gptdraw.gpt.config import MODEL_LIMITS
    from gptdraw.sequence import SequenceLayout

    if not isinstance(data, dict):
        raise ValueError("layout must be an object")
    grid = data.get("grid")
    if not isinstance(grid, (list, tuple)) or len(grid) != 2:
        raise ValueError(f"layout.grid must be [rows, columns], got {grid!r}")
    for side in grid:
        whole(side, "layout.grid", 1, MAX_GRID_SIDE)
    vocab, context = MODEL_LIMITS["vocab_size"], MODEL_LIMITS["n_positions"]
    text_vocab_size = whole(data.get("text_vocab_size"), "layout.text_vocab_size", 1, vocab)
    whole(data.get("pad_id"), "layout.pad_id", 0, text_vocab_size - 1)
    whole(data.get("codebook_size"), "layout.codebook_size", 2, vocab)
    text_len = whole(data.get("text_len"), "layout.text_len", 1, context)
    whole(data.get("pad_vocab_to", 128), "layout.pad_vocab_to", 1, context)
    layout = SequenceLayout.from_dict(data)
    if layout.vocab_size > vocab or text_len + layout.image_len > context:
        raise ValueError(f"layout needs a vocabulary of {layout.vocab_size} and {layout.seq_len} positions, over "
                         f"gptdraw's limits of {vocab} and {context}")
    return layout


def check_parts_agree(directory: Path, layout: "SequenceLayout", gpt_config, text_tokenizer: "CaptionTokenizer",
                      vq_config) -> None:
    """Refuses parts that do not belong together, naming the file that disagrees with gptdraw.json:
    a GPT of another vocabulary or a shorter context, a caption tokenizer of another vocabulary,
    pad id or caption length, an image tokenizer of another codebook."""
    from gptdraw.gpt.model import check_config_fits_layout

    config = directory / MODEL_CONFIG_NAME
    check_config_fits_layout(gpt_config, layout, f"{directory / 'transformer' / 'config.json'} against {config}")
    recorded = {"vocab_size": layout.text_vocab_size, "pad_id": layout.pad_id, "text_len": layout.text_len}
    for name, value in recorded.items():
        if getattr(text_tokenizer, name) != value:
            raise ValueError(f"{directory / 'text_tokenizer'} has {name} {getattr(text_tokenizer, name)}, but the layout "
                             f"in {config} needs {value}: the parts come from different models")
    if vq_config.num_vq_embeddings != layout.codebook_size:
        raise ValueError(f"{directory / 'image_tokenizer' / 'config.json'} has a codebook of {vq_config.num_vq_embeddings} "
                         f"codes, but the layout in {config} needs {layout.codebook_size}")


def check_adapter(folder: Path, gpt_config, within: tuple[Path, ...]) -> None:
    """The LoRA adapter's files, checked before peft reads them: a regular config under the size cap
    with a rank and scale in range, and weights whose header holds."""
    path = folder / "adapter_config.json"
    try:
        settings = read_json_object(path, within=within, what="adapter config")
        whole(settings.get("rank"), "rank", 1, gpt_config.n_embd)
        real(settings.get("alpha"), "alpha", 0.0, 1e6)
    except ValueError as error:
        raise ValueError(f"{folder} is not a readable LoRA adapter: {error}") from None
    safetensors_header(folder / "adapter_model.safetensors", within=within)


def load_model_directory(directory: str | os.PathLike, device, dtype) -> ModelDirectory:
    """Loads every part of a local model directory onto `device`, the weights in `dtype` (a torch dtype).

    The directory is untrusted input: every config is read as a regular file under a size cap and
    checked for type and range, the parts are checked against each other and the weights' headers
    against the configs, all before a network is built; files may not resolve outside the directory
    (model_roots). Every failure is one ValueError or FileNotFoundError line naming the file.
    """
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.gpt.lora import load_adapter
    from gptdraw.gpt.model import load_transformer, read_transformer_config
    from gptdraw.vq.model import ImageTokenizer, read_config

    directory = Path(directory)
    within = model_roots(directory)
    layout, sampling = read_model_config(directory, within=within)
    gpt_config = read_transformer_config(directory / "transformer" / "config.json", within=within)
    vq_config = read_config(directory / "image_tokenizer" / "config.json", within=within)
    text_tokenizer = CaptionTokenizer.from_pretrained(directory / "text_tokenizer", within=within)
    check_parts_agree(directory, layout, gpt_config, text_tokenizer, vq_config)
    adapter = directory / ADAPTER_DIR
    if os.path.lexists(adapter):
        check_adapter(adapter, gpt_config, within)
    transformer = load_transformer(directory / "transformer", device, config=gpt_config, within=within)
    if os.path.lexists(adapter):
        transformer = load_adapter(transformer, adapter).to(device).eval()
    return ModelDirectory(
        transformer=transformer.to(dtype),
        text_tokenizer=text_tokenizer,
        image_tokenizer=ImageTokenizer.from_pretrained(directory / "image_tokenizer", device, dtype, config=vq_config,
                                                       within=within),
        layout=layout,
        sampling=sampling,
    )


def save_model_directory(directory: str | os.PathLike, *, transformer, text_tokenizer, image_tokenizer, layout,
                         sampling) -> None:
    """Writes a model directory, whole or absent at every instant: every part is written whole
    beside the old ones first; then gptdraw.json goes (from here a loader finds no model, rather
    than old parts beside new ones), the parts are swapped in, and gptdraw.json comes back last.
    A run killed in between leaves no gptdraw.json, which `gptdraw train` repairs on its rerun."""
    from gptdraw.gpt.lora import base_model, has_lora, save_adapter
    from gptdraw.gpt.model import save_transformer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {
        "transformer": lambda folder: save_transformer(transformer, folder),
        "text_tokenizer": text_tokenizer.save_pretrained,
        "image_tokenizer": image_tokenizer.save_pretrained,
    }
    if has_lora(transformer):  # the frozen base in transformer/, the adapter beside it
        writers["transformer"] = lambda folder: save_transformer(base_model(transformer), folder)
        writers[ADAPTER_DIR] = lambda folder: save_adapter(transformer, folder)
    staged = {}
    for part, write in writers.items():
        staged[part] = staging_directory(directory / part)
        write(staged[part])
    (directory / MODEL_CONFIG_NAME).unlink(missing_ok=True)
    if ADAPTER_DIR not in writers and (directory / ADAPTER_DIR).exists():  # an adapter merged into the weights since
        shutil.rmtree(directory / ADAPTER_DIR)
    for part, staging in staged.items():
        replace_directory(staging, directory / part)
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layout": layout.to_dict(),
        "sampling": sampling.to_dict(),
        "text_tokenizer": text_tokenizer.identity(),
    }
    write_text_atomic(directory / MODEL_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
