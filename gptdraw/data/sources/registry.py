"""The source formats `gptdraw prepare` reads, by name, and how a spec picks one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gptdraw.data.sources.base import Source, sorted_files
from gptdraw.data.sources.builtin import ShapesSource
from gptdraw.data.sources.folder import FolderSource
from gptdraw.data.sources.huggingface import HFSource
from gptdraw.data.sources.img2dataset import files_source, parquet_source, webdataset_source
from gptdraw.data.sources.manifest import ManifestSource


@dataclass(frozen=True)
class SourceFormat:
    """How to open one format of source."""

    open: Callable[..., Source]
    """(spec, **options) → the source."""
    options: tuple[str, ...] = ()
    """The options this format takes."""
    required: tuple[str, ...] = ()
    """Those it cannot do without."""


MANIFEST_OPTIONS = ("image_column", "text_column", "url_map", "allow_outside_paths")

SOURCE_FORMATS: dict[str, SourceFormat] = {
    "shapes": SourceFormat(lambda spec, **options: ShapesSource(**options),
                           options=("count", "image_size", "seed", "heldout_seed", "two_object_prob"),
                           required=("count", "image_size")),
    "webdataset": SourceFormat(webdataset_source),
    "parquet": SourceFormat(parquet_source, options=("image_column", "text_column")),
    "files": SourceFormat(files_source),
    "folder": SourceFormat(FolderSource),
    "csv": SourceFormat(lambda spec, **options: ManifestSource(spec, kind="csv", **options), options=MANIFEST_OPTIONS),
    "tsv": SourceFormat(lambda spec, **options: ManifestSource(spec, kind="tsv", **options), options=MANIFEST_OPTIONS),
    "jsonl": SourceFormat(lambda spec, **options: ManifestSource(spec, kind="jsonl", **options),
                          options=MANIFEST_OPTIONS),
    "huggingface": SourceFormat(lambda spec, **options: HFSource(spec.removeprefix("hf:"), **options),
                                options=("split", "image_column", "text_column")),
}
"""Every format `open_source` reads, by the name `--format` takes. A new reader registers here."""

FORMATS = tuple(SOURCE_FORMATS)


def detect_format(spec: str) -> str:
    """The format of a source spec, from its name and what the path holds."""
    if spec == "shapes":
        return "shapes"
    if spec.startswith("hf:"):
        return "huggingface"
    path = Path(spec)
    if path.is_file():
        suffix = path.suffix.lower()
        formats = {".tar": "webdataset", ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
        if suffix in formats:
            return formats[suffix]
        raise ValueError(f"{path}: unknown source file type {suffix!r}; expected .tar, .parquet, .csv, .tsv or .jsonl")
    if not path.is_dir():
        raise FileNotFoundError(f"source not found: {spec} (not 'shapes', 'hf:ID', a file or a folder)")
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return "huggingface"
    if any(path.glob("*.tar")):
        return "webdataset"
    parquets = sorted_files(path, "*.parquet")
    if parquets:
        return "files" if any(meta.with_suffix("").is_dir() for meta in parquets) else "parquet"
    return "folder"


def open_source(spec: str, format: str | None = None, **options) -> Source:
    """Open a data source; `format` (one of FORMATS) overrides detection. The options each
    format takes are in SOURCE_FORMATS; options given as None are ignored, others that a
    format does not take raise ValueError."""
    format = format or detect_format(spec)
    if format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {format!r}; expected one of {', '.join(FORMATS)}")
    reader = SOURCE_FORMATS[format]
    options = {key: value for key, value in options.items() if value is not None}
    unused = sorted(set(options) - set(reader.options))
    if unused:
        raise ValueError(f"option(s) {', '.join(unused)} do not apply to a {format} source ({spec})")
    missing = [name for name in reader.required if name not in options]
    if missing:
        raise ValueError(f"the {format} source needs {' and '.join(missing)}")
    return reader.open(spec, **options)
