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


def read_model_config(directory: Path) -> tuple["SequenceLayout", "SamplingConfig"]:
    """gptdraw.json → (layout, default sampling settings); a missing part or a bad config is a one-line error."""
    from gptdraw.gpt.config import SamplingConfig
    from gptdraw.sequence import SequenceLayout

    if not directory.is_dir():
        raise FileNotFoundError(f"model directory {directory} does not exist")
    missing = [part for part in (MODEL_CONFIG_NAME, *PARTS) if not (directory / part).exists()]
    if missing:
        raise FileNotFoundError(f"{directory} is not a complete gptdraw model directory: it lacks {', '.join(missing)}")
    try:
        config = json.loads((directory / MODEL_CONFIG_NAME).read_text())
        return SequenceLayout.from_dict(config["layout"]), SamplingConfig(**config.get("sampling", {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{directory / MODEL_CONFIG_NAME} is not a valid model config: {error}") from None


def load_model_directory(directory: str | os.PathLike, device, dtype) -> ModelDirectory:
    """Loads every part of a local model directory onto `device`, the weights in `dtype` (a torch dtype)."""
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.gpt.lora import load_adapter
    from gptdraw.gpt.model import load_transformer
    from gptdraw.vq.model import ImageTokenizer

    directory = Path(directory)
    layout, sampling = read_model_config(directory)
    transformer = load_transformer(directory / "transformer", device)
    if (directory / ADAPTER_DIR).is_dir():
        transformer = load_adapter(transformer, directory / ADAPTER_DIR).to(device).eval()
    return ModelDirectory(
        transformer=transformer.to(dtype),
        text_tokenizer=CaptionTokenizer.from_pretrained(directory / "text_tokenizer"),
        image_tokenizer=ImageTokenizer.from_pretrained(directory / "image_tokenizer", device, dtype),
        layout=layout,
        sampling=sampling,
    )


def save_model_directory(directory: str | os.PathLike, *, transformer, text_tokenizer, image_tokenizer, layout,
                         sampling) -> None:
    """Writes a model directory. Each part is written whole before it replaces the old one, and
    gptdraw.json comes last."""
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
    elif (directory / ADAPTER_DIR).exists():  # an adapter merged into the weights since
        shutil.rmtree(directory / ADAPTER_DIR)
    for part, write in writers.items():
        staging = staging_directory(directory / part)
        write(staging)
        replace_directory(staging, directory / part)
    config = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "layout": layout.to_dict(),
        "sampling": sampling.to_dict(),
        "text_tokenizer": text_tokenizer.identity(),
    }
    write_text_atomic(directory / MODEL_CONFIG_NAME, json.dumps(config, indent=2) + "\n")
