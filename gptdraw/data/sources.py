"""Readers for image–caption data: one `Source` interface over every supported layout.

A source is an ordered, re-readable list of `SourceItem`s with a known length, read in
ranges (`read(start, stop)`) so that `gptdraw prepare` can split the work into shards
deterministically and resume or distribute them without reading what it skips.

    open_source(spec, **options)          spec is one of:
      "shapes"                            the built-in dataset (count, image_size, seed)
      DIR with *.tar                      webdataset tars, e.g. img2dataset --output_format webdataset
      DIR with *.parquet + sub-folders    img2dataset --output_format files
      DIR or FILE with *.parquet          parquet with an image-bytes column, e.g. img2dataset --output_format parquet
      DIR saved by datasets' save_to_disk a Hugging Face dataset (also "hf:ID" for a hub id)
      DIR of images                       a folder tree of images, each with a same-named .txt caption
      FILE.csv / .tsv / .jsonl            a manifest of image paths (relative to it) and captions

Web-scale caption datasets such as Conceptual Captions come as URL lists. The supported
route is to download them with img2dataset first (it keeps each caption with its image):

    img2dataset --url_list cc3m.tsv --input_format tsv --url_col url --caption_col caption \
        --output_format webdataset --output_folder cc3m --image_size 256 --resize_mode center_crop
    gptdraw prepare cc3m --out data/cc3m --vq VQDIR

For img2dataset output the items that it failed to download or decode are kept, with its
status as the skip reason ("failed_to_download", "failed_to_resize"), so the dataset
manifest accounts for every input line. A manifest whose image column holds URLs reads
them through `url_map` (a JSON object or a two-column TSV url → local file); unmapped URLs
are skipped as "not_downloaded".
"""

from __future__ import annotations

import csv
import json
import os
import re
import tarfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from PIL import Image

from gptdraw.data.decode import IMAGE_EXTENSIONS, image_files

# Column names tried, in order, when the caller names no image or text column.
IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "image_path", "path", "file", "filename", "file_name", "url")
TEXT_COLUMNS = ("caption", "txt", "text", "prompt", "captions", "description", "title", "sentence")
# img2dataset's status for a sample it wrote.
IMG2DATASET_SUCCESS = "success"


@dataclass(frozen=True)
class SourceItem:
    """One image–caption pair as a source has it, before any decoding or checking."""

    key: str  # stable unique id within the source (kept in the dataset next to the caption)
    caption: str | None  # raw caption text; None when the source has none for this item
    image: bytes | str | Image.Image | None  # encoded bytes, a file path, or a decoded image
    skip_reason: str | None = None  # set when the source already knows the item is unusable


class Source:
    """An ordered, re-readable collection of items; subclasses implement `__len__` and `read`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        """Items [start, stop) in source order (stop is clipped to the length)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What this source is (kind, location, options): recorded in the dataset manifest."""
        raise NotImplementedError

    def captions(self) -> Iterator[str | None]:
        """Every item's raw caption, in order (sources override this where it is cheaper than `read`)."""
        for item in self.read(0, len(self)):
            yield item.caption

    def __iter__(self) -> Iterator[SourceItem]:
        return self.read(0, len(self))

    def _range(self, start: int, stop: int) -> tuple[int, int]:
        if start < 0 or stop < start:
            raise ValueError(f"invalid item range [{start}, {stop})")
        return start, min(stop, len(self))


# --------------------------------------------------------------------------------------
# The built-in shapes dataset
# --------------------------------------------------------------------------------------


class ShapesSource(Source):
    """The built-in shapes data set's training split (held-out prompts excluded)."""

    def __init__(self, count: int, image_size: int, seed: int = 0, heldout_seed: int = 0):
        from gptdraw.data import shapes

        if count < 1:
            raise ValueError(f"shapes: count must be at least 1, got {count}")
        shapes.check_image_size(image_size)
        self.count, self.image_size, self.seed, self.heldout_seed = count, image_size, seed, heldout_seed
        self._heldout = shapes.heldout_prompts(heldout_seed)

    def __len__(self) -> int:
        return self.count

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        from gptdraw.data import shapes

        start, stop = self._range(start, stop)
        examples = shapes.generate_examples(
            stop - start, self.image_size, self.seed, self._heldout, split="train", start=start
        )
        for index, (image, caption) in enumerate(examples, start):
            yield SourceItem(key=f"shapes-{self.seed}-{index}", caption=caption, image=image)

    def describe(self) -> dict:
        return {"kind": "shapes", "count": self.count, "image_size": self.image_size,
                "seed": self.seed, "heldout_seed": self.heldout_seed, "split": "train"}


# --------------------------------------------------------------------------------------
# A folder of images with captions beside them
# --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


class FolderSource(Source):
    """Every image under a folder (sorted by relative path), captioned by the same-named .txt."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self._paths = [path.relative_to(self.root).as_posix() for path in image_files(self.root)]
        if not self._paths:
            raise ValueError(f"{self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self._paths)

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        start, stop = self._range(start, stop)
        for relative in self._paths[start:stop]:
            path = self.root / relative
            caption = _read_text(path.with_suffix(".txt"))
            yield SourceItem(key=str(Path(relative).with_suffix("")), caption=caption, image=str(path))

    def describe(self) -> dict:
        return {"kind": "folder", "path": str(self.root.resolve()), "items": len(self)}


# --------------------------------------------------------------------------------------
# img2dataset output: webdataset tars, files folders, parquet
# --------------------------------------------------------------------------------------


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install 'gptdraw[data]'") from None
    return pq


def _image_field(names: list[str]) -> str | None:
    for extension in ("jpg", "jpeg", "png", "webp"):
        if extension in names:
            return extension
    return None


@dataclass
class _MetaRow:
    key: str
    status: str | None
    caption: str | None


def _read_meta(path: Path) -> list[_MetaRow]:
    """img2dataset's per-shard .parquet: one row per input line, in the order it wrote them."""
    table = _parquet().read_table(path)
    names = table.column_names
    if "key" not in names:
        raise ValueError(f"{path} has no 'key' column: not an img2dataset metadata file")
    keys = table.column("key").to_pylist()
    statuses = table.column("status").to_pylist() if "status" in names else [IMG2DATASET_SUCCESS] * len(keys)
    captions = table.column("caption").to_pylist() if "caption" in names else [None] * len(keys)
    return [_MetaRow(str(k), s, c) for k, s, c in zip(keys, statuses, captions)]


@dataclass
class _TarSample:
    key: str
    members: dict[str, tarfile.TarInfo]  # extension (without the dot) → member


def _tar_samples(tar: tarfile.TarFile) -> Iterator[_TarSample]:
    """Group a webdataset tar's consecutive members by key (the name up to the first dot)."""
    current: _TarSample | None = None
    for member in tar:
        if not member.isfile():
            continue
        name = member.name
        directory, _, base = name.rpartition("/")
        stem, dot, extension = base.partition(".")
        if not dot:
            continue
        key = f"{directory}/{stem}" if directory else stem
        if current is None or current.key != key:
            if current is not None:
                yield current
            current = _TarSample(key, {})
        current.members[extension.lower()] = member
    if current is not None:
        yield current


def _tar_item(tar: tarfile.TarFile, sample: _TarSample) -> SourceItem:
    extension = _image_field(list(sample.members))
    image = tar.extractfile(sample.members[extension]).read() if extension else None
    caption = None
    if "txt" in sample.members:
        caption = tar.extractfile(sample.members["txt"]).read().decode("utf-8", errors="replace")
    elif "json" in sample.members:
        try:
            caption = json.loads(tar.extractfile(sample.members["json"]).read()).get("caption")
        except (ValueError, AttributeError):
            caption = None
    return SourceItem(key=sample.key, caption=caption, image=image)


class _Unit:
    """One file of a multi-file source (a tar, a parquet, a files folder) with its item count."""

    def __init__(self, name: str, count: int):
        self.name, self.count = name, count

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        raise NotImplementedError

    def captions(self) -> Iterator[str | None]:
        return (item.caption for item in self.read(0, self.count))


class _TarUnit(_Unit):
    """A webdataset tar; with img2dataset's .parquet beside it, its failed samples are items too."""

    def __init__(self, path: Path):
        self.path = path
        meta_path = path.with_suffix(".parquet")
        self.meta = _read_meta(meta_path) if meta_path.is_file() else None
        if self.meta is not None:
            count = len(self.meta)
        else:
            with tarfile.open(path, "r:") as tar:
                count = sum(1 for _ in _tar_samples(tar))
        super().__init__(path.name, count)

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        with tarfile.open(self.path, "r:") as tar:
            samples = _tar_samples(tar)
            if self.meta is None:
                for index, sample in enumerate(samples):
                    if index >= stop:
                        return
                    if index >= start:
                        yield _tar_item(tar, sample)
                return
            # img2dataset writes a sample to the tar and its row to the .parquet in the same
            # order, so the tar is walked alongside the successful rows.
            for index, row in enumerate(self.meta[:stop]):
                sample = next(samples, None) if row.status == IMG2DATASET_SUCCESS else None
                if row.status == IMG2DATASET_SUCCESS and (sample is None or sample.key != row.key):
                    raise ValueError(
                        f"{self.path}: sample {row.key} of {self.path.with_suffix('.parquet').name} "
                        f"is not in the tar at its place (found {sample.key if sample else 'the end'})"
                    )
                if index < start:
                    continue
                if sample is None:
                    yield SourceItem(key=row.key, caption=row.caption, image=None,
                                     skip_reason=row.status or "failed_to_download")
                else:
                    yield _tar_item(tar, sample)

    def captions(self) -> Iterator[str | None]:
        if self.meta is not None and any(row.caption is not None for row in self.meta):
            return (row.caption for row in self.meta)
        return super().captions()


class _FilesUnit(_Unit):
    """img2dataset's files layout: NNNNN/KEY.jpg + KEY.txt, rows listed in NNNNN.parquet."""

    def __init__(self, meta_path: Path):
        self.folder = meta_path.with_suffix("")
        self.meta = _read_meta(meta_path)
        super().__init__(self.folder.name, len(self.meta))

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        for row in self.meta[start:stop]:
            if row.status != IMG2DATASET_SUCCESS:
                yield SourceItem(key=row.key, caption=row.caption, image=None,
                                 skip_reason=row.status or "failed_to_download")
                continue
            image = next((self.folder / f"{row.key}.{ext}" for ext in ("jpg", "png", "webp", "jpeg")
                          if (self.folder / f"{row.key}.{ext}").is_file()), None)
            caption = _read_text(self.folder / f"{row.key}.txt")
            if caption is None:
                caption = row.caption
            if image is None:
                yield SourceItem(key=row.key, caption=caption, image=None, skip_reason="missing_file")
            else:
                yield SourceItem(key=row.key, caption=caption, image=str(image))

    def captions(self) -> Iterator[str | None]:
        if any(row.caption is not None for row in self.meta):
            return (row.caption for row in self.meta)
        return super().captions()


def _cell_image(value: Any) -> bytes | str | None:
    # Parquet image cells are raw bytes (img2dataset) or {bytes, path} structs (Hugging Face).
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


class _ParquetUnit(_Unit):
    """A parquet file with an image column (bytes or {bytes, path}) and a text column."""

    def __init__(self, path: Path, image_column: str | None, text_column: str | None):
        self.path = path
        pq = _parquet()
        self.file = pq.ParquetFile(path)
        schema = self.file.schema_arrow
        names = schema.names
        self.image_column = image_column or _image_field(names) or next(
            (name for name in IMAGE_COLUMNS if name in names and name != "url"), None)
        if self.image_column is None or self.image_column not in names:
            raise ValueError(f"{path}: no image column (columns: {', '.join(names)}); name one with image_column=")
        self.text_column = text_column or next((name for name in TEXT_COLUMNS if name in names), None)
        if self.text_column is not None and self.text_column not in names:
            raise ValueError(f"{path}: no column {self.text_column!r} (columns: {', '.join(names)})")
        self.has_status = "status" in names
        self.has_key = "key" in names
        super().__init__(path.name, self.file.metadata.num_rows)

    def _columns(self, with_image: bool) -> list[str]:
        columns = [self.image_column] if with_image else []
        columns += [name for name, present in ((self.text_column, self.text_column is not None),
                                               ("status", self.has_status), ("key", self.has_key)) if present]
        return columns

    def _rows(self, start: int, stop: int, with_image: bool) -> Iterator[tuple[int, dict]]:
        # Read only the row groups that overlap [start, stop).
        first = 0
        for group in range(self.file.num_row_groups):
            rows = self.file.metadata.row_group(group).num_rows
            if first + rows > start and first < stop:
                table = self.file.read_row_group(group, columns=self._columns(with_image))
                for offset, row in enumerate(table.to_pylist()):
                    if start <= first + offset < stop:
                        yield first + offset, row
            first += rows
            if first >= stop:
                return

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        for index, row in self._rows(start, stop, with_image=True):
            key = str(row["key"]) if self.has_key else f"{self.path.stem}:{index}"
            caption = row.get(self.text_column) if self.text_column else None
            image = _cell_image(row[self.image_column])
            if isinstance(image, str) and not os.path.isabs(image):
                image = str(self.path.parent / image)
            status = row.get("status") if self.has_status else IMG2DATASET_SUCCESS
            if status != IMG2DATASET_SUCCESS:
                yield SourceItem(key=key, caption=caption, image=None, skip_reason=status or "failed_to_download")
            else:
                yield SourceItem(key=key, caption=caption, image=image)

    def captions(self) -> Iterator[str | None]:
        for _, row in self._rows(0, self.count, with_image=False):
            yield row.get(self.text_column) if self.text_column else None


class MultiFileSource(Source):
    """Files read one after another as a single ordered source (sorted by file name)."""

    def __init__(self, kind: str, root: Path, units: list[_Unit], options: dict | None = None):
        if not units:
            raise ValueError(f"{root} holds no {kind} files")
        self.kind, self.root, self.units, self.options = kind, root, units, options or {}
        self._starts = []
        total = 0
        for unit in units:
            self._starts.append(total)
            total += unit.count
        self._length = total

    def __len__(self) -> int:
        return self._length

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        start, stop = self._range(start, stop)
        for unit, first in zip(self.units, self._starts):
            if first + unit.count <= start or first >= stop:
                continue
            yield from unit.read(max(0, start - first), min(unit.count, stop - first))

    def captions(self) -> Iterator[str | None]:
        for unit in self.units:
            yield from unit.captions()

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.root.resolve()), "items": len(self),
                "files": [unit.name for unit in self.units], **self.options}


def _sorted_files(root: Path, pattern: str) -> list[Path]:
    return sorted(path for path in root.glob(pattern) if path.is_file())


def webdataset_source(path: str | os.PathLike) -> MultiFileSource:
    """Webdataset tars (a folder of them, or one): img2dataset's webdataset output or any other."""
    path = Path(path)
    tars = [path] if path.is_file() else _sorted_files(path, "*.tar")
    return MultiFileSource("webdataset", path, [_TarUnit(tar) for tar in tars])


def files_source(path: str | os.PathLike) -> MultiFileSource:
    """img2dataset's files output: NNNNN.parquet beside the NNNNN/ folder it lists."""
    path = Path(path)
    metas = [meta for meta in _sorted_files(path, "*.parquet") if meta.with_suffix("").is_dir()]
    return MultiFileSource("img2dataset-files", path, [_FilesUnit(meta) for meta in metas])


def parquet_source(path: str | os.PathLike, image_column: str | None = None,
                   text_column: str | None = None) -> MultiFileSource:
    """Parquet files with image bytes: img2dataset's parquet output, or a Hugging Face parquet export."""
    path = Path(path)
    files = [path] if path.is_file() else _sorted_files(path, "*.parquet")
    options = {"image_column": image_column, "text_column": text_column}
    return MultiFileSource("parquet", path, [_ParquetUnit(file, image_column, text_column) for file in files], options)


# --------------------------------------------------------------------------------------
# CSV / TSV / JSONL manifests
# --------------------------------------------------------------------------------------

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _load_url_map(url_map: str | os.PathLike | Mapping[str, str] | None) -> tuple[dict[str, str] | None, str | None]:
    """url → local path, from a mapping, a JSON object file, or a two-column TSV file."""
    if url_map is None:
        return None, None
    if isinstance(url_map, Mapping):
        return dict(url_map), "<mapping>"
    path = Path(url_map)
    if not path.is_file():
        raise FileNotFoundError(f"url_map file not found: {path}")
    base = path.parent
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a url_map JSON file must hold one object url → path")
        pairs = data.items()
    else:
        pairs = []
        with open(path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 2:
                    raise ValueError(f"{path}:{number}: expected 'url<TAB>path'")
                pairs.append((fields[0], fields[1]))
    return {url: str(base / local) for url, local in pairs}, str(path.resolve())


def _index_records(path: Path, quoted: bool) -> array:
    """Byte offset of each record start; with `quoted`, newlines inside "…" fields do not end a record."""
    offsets = array("q")
    position = 0
    in_quotes = False
    with open(path, "rb") as file:
        for line in file:
            if not in_quotes and line.strip():
                offsets.append(position)
            if quoted and line.count(b'"') % 2:
                in_quotes = not in_quotes
            position += len(line)
    return offsets


def _column_index(header: list[str], wanted: str | int | None, candidates: tuple[str, ...], what: str,
                  path: Path) -> int | None:
    lowered = [name.strip().lower() for name in header]
    if isinstance(wanted, int):
        return wanted
    if wanted is not None:
        if wanted.lower() not in lowered:
            raise ValueError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(header)})")
        return lowered.index(wanted.lower())
    return next((lowered.index(name) for name in candidates if name in lowered), None)


def _looks_like_image(value: str) -> bool:
    return bool(_URL.match(value)) or value.lower().endswith(IMAGE_EXTENSIONS)


class ManifestSource(Source):
    """A CSV, TSV or JSONL file naming an image (path relative to the file, or URL) and a caption per row.

    CSV and TSV may have a header row with recognisable column names (image/path/file/url,
    caption/text/…); without one, the column whose first value looks like an image path or
    URL is the image and the other the caption (Conceptual Captions' `caption<TAB>url`).
    TSV fields are split on tabs, never quoted. A row that cannot be parsed is an item
    skipped as "broken_line".
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str | None = None,
        image_column: str | int | None = None,
        text_column: str | int | None = None,
        url_map: str | os.PathLike | Mapping[str, str] | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        self.kind = kind or self.path.suffix.lower().lstrip(".")
        if self.kind not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"{self.path}: unknown manifest kind {self.kind!r}; expected csv, tsv or jsonl")
        self._url_map, self._url_map_name = _load_url_map(url_map)
        self._offsets = _index_records(self.path, quoted=self.kind == "csv")
        self._header = False
        self.image_column: str | int | None = image_column
        self.text_column: str | int | None = text_column
        if self.kind != "jsonl":
            self._find_columns()
        elif self.image_column is None or self.text_column is None:
            self._find_keys()
        if self._header:
            del self._offsets[0]

    # Column detection ------------------------------------------------------------------

    def _first_rows(self, count: int) -> list[list[str]]:
        rows = []
        with open(self.path, encoding="utf-8", errors="replace", newline="") as file:
            for offset in self._offsets[:count]:
                file.seek(offset)
                rows.append(self._parse_row(file))
        return [row for row in rows if row is not None]

    def _find_columns(self) -> None:
        rows = self._first_rows(2)
        if not rows:
            raise ValueError(f"{self.path} is empty")
        first = rows[0]
        first[0] = first[0].lstrip("\ufeff")  # a byte-order mark from spreadsheet exports
        names = [value.strip().lower() for value in first]
        named = any(name in IMAGE_COLUMNS or name in TEXT_COLUMNS for name in names)
        if named or isinstance(self.image_column, str) or isinstance(self.text_column, str):
            self._header = True
            image = _column_index(first, self.image_column, IMAGE_COLUMNS, "image", self.path)
            text = _column_index(first, self.text_column, TEXT_COLUMNS, "caption", self.path)
        else:
            image = self.image_column if isinstance(self.image_column, int) else next(
                (index for index, value in enumerate(first) if _looks_like_image(value.strip())), None)
            text = self.text_column if isinstance(self.text_column, int) else next(
                (index for index in range(len(first)) if index != image), None)
        if image is None or text is None:
            raise ValueError(
                f"{self.path}: cannot tell which column is the image and which the caption "
                f"(first row: {first}); name them with image_column= and text_column="
            )
        self._image_index, self._text_index = image, text

    def _find_keys(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as file:
            for offset in self._offsets[:100]:
                file.seek(offset)
                try:
                    record = json.loads(file.readline())
                except ValueError:
                    continue
                if isinstance(record, dict):
                    lowered = {key.lower(): key for key in record}
                    if self.image_column is None:
                        self.image_column = next((lowered[n] for n in IMAGE_COLUMNS if n in lowered), None)
                    if self.text_column is None:
                        self.text_column = next((lowered[n] for n in TEXT_COLUMNS if n in lowered), None)
                    break
        if self.image_column is None or self.text_column is None:
            raise ValueError(f"{self.path}: cannot find the image and caption keys in its first records; "
                             "name them with image_column= and text_column=")

    # Reading ---------------------------------------------------------------------------

    def _parse_row(self, file) -> list[str] | None:
        if self.kind == "tsv":
            return file.readline().rstrip("\r\n").split("\t")
        try:
            return next(csv.reader(_RecordLines(file)))
        except (csv.Error, StopIteration):
            return None

    def __len__(self) -> int:
        return len(self._offsets)

    def _resolve(self, value: str) -> tuple[str | None, str | None]:
        """An image cell → (local path, None) or (None, skip reason)."""
        value = value.strip()
        if not value:
            return None, "missing_image"
        if _URL.match(value):
            if self._url_map is None or value not in self._url_map:
                return None, "not_downloaded"
            return self._url_map[value], None
        return str(self.path.parent / value), None

    def _row_item(self, number: int, file) -> SourceItem:
        key = f"{self.path.name}:{number}"
        if self.kind == "jsonl":
            try:
                record = json.loads(file.readline())
            except ValueError:
                record = None
            if not isinstance(record, dict):
                return SourceItem(key=key, caption=None, image=None, skip_reason="broken_line")
            image_value, caption = record.get(self.image_column), record.get(self.text_column)
            if image_value is not None and not isinstance(image_value, str):
                return SourceItem(key=key, caption=None, image=None, skip_reason="broken_line")
        else:
            row = self._parse_row(file)
            if row is None or len(row) <= max(self._image_index, self._text_index):
                return SourceItem(key=key, caption=None, image=None, skip_reason="broken_line")
            image_value, caption = row[self._image_index], row[self._text_index]
        if image_value is None:
            return SourceItem(key=key, caption=caption, image=None, skip_reason="missing_image")
        image, reason = self._resolve(image_value)
        return SourceItem(key=key, caption=caption, image=image, skip_reason=reason)

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        start, stop = self._range(start, stop)
        with open(self.path, encoding="utf-8", errors="replace", newline="") as file:
            for number in range(start, stop):
                file.seek(self._offsets[number])
                yield self._row_item(number + 1, file)

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path.resolve()), "items": len(self),
                "image_column": self.image_column if self.kind == "jsonl" else self._image_index,
                "text_column": self.text_column if self.kind == "jsonl" else self._text_index,
                "url_map": self._url_map_name}


class _RecordLines:
    """Lines of one CSV record from a file positioned at its start (quoted newlines included)."""

    def __init__(self, file):
        self.file, self.open_quotes, self.started = file, False, False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.started and not self.open_quotes:
            raise StopIteration
        line = self.file.readline()
        if not line:
            raise StopIteration
        self.started = True
        if line.count('"') % 2:
            self.open_quotes = not self.open_quotes
        return line


# --------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------


class HFSource(Source):
    """A Hugging Face `datasets` dataset: a save_to_disk folder, a local data folder, or a hub id."""

    def __init__(self, name: str, split: str = "train", image_column: str | None = None,
                 text_column: str | None = None):
        try:
            import datasets
        except ImportError:
            raise ImportError("reading Hugging Face datasets needs datasets: pip install 'gptdraw[data]'") from None
        self.name, self.split = name, split
        path = Path(name)
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            self.name = str(path.resolve())
        else:
            loaded = datasets.load_dataset(name, split=split)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{name} has no split {split!r}; it has {', '.join(loaded)}")
            loaded = loaded[split]
        features = loaded.features
        self.image_column = image_column or next(
            (column for column, feature in features.items() if isinstance(feature, datasets.Image)), None
        ) or next((column for column in IMAGE_COLUMNS if column in features and column != "url"), None)
        strings = [column for column, feature in features.items()
                   if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")]
        self.text_column = text_column or next((column for column in TEXT_COLUMNS if column in strings), None) or (
            strings[0] if len(strings) == 1 else None)
        for what, column in (("image", self.image_column), ("text", self.text_column)):
            if column is None or column not in features:
                raise ValueError(f"{name}: cannot find the {what} column among {', '.join(features)}; "
                                 f"name it with {what}_column=")
        if isinstance(features[self.image_column], datasets.Image):
            # Undecoded: the bytes go to decode_image's size checks before Pillow decodes anything.
            loaded = loaded.cast_column(self.image_column, datasets.Image(decode=False))
        self.dataset = loaded.select_columns([self.image_column, self.text_column])

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, start: int, stop: int, batch: int = 256) -> Iterator[SourceItem]:
        start, stop = self._range(start, stop)
        for first in range(start, stop, batch):
            rows = self.dataset[first:min(stop, first + batch)]
            for offset, (image, caption) in enumerate(zip(rows[self.image_column], rows[self.text_column])):
                yield SourceItem(key=f"{self.split}:{first + offset}", caption=caption, image=_cell_image(image))

    def captions(self) -> Iterator[str | None]:
        yield from self.dataset[self.text_column]

    def describe(self) -> dict:
        return {"kind": "huggingface", "name": self.name, "split": self.split, "items": len(self),
                "image_column": self.image_column, "text_column": self.text_column}


# --------------------------------------------------------------------------------------
# open_source: pick the reader from the spec
# --------------------------------------------------------------------------------------

FORMATS = ("shapes", "webdataset", "parquet", "files", "folder", "csv", "tsv", "jsonl", "huggingface")


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
    parquets = _sorted_files(path, "*.parquet")
    if parquets:
        return "files" if any(meta.with_suffix("").is_dir() for meta in parquets) else "parquet"
    return "folder"


def open_source(spec: str, format: str | None = None, **options) -> Source:
    """Open a data source; `format` overrides detection (one of FORMATS).

    Options by format: shapes: count, image_size, seed, heldout_seed; csv/tsv/jsonl:
    image_column, text_column, url_map; parquet: image_column, text_column; huggingface:
    split, image_column, text_column. Unknown or unused options raise ValueError.
    """
    format = format or detect_format(spec)
    accepted = {
        "shapes": ("count", "image_size", "seed", "heldout_seed"),
        "webdataset": (), "files": (), "folder": (),
        "parquet": ("image_column", "text_column"),
        "csv": ("image_column", "text_column", "url_map"),
        "tsv": ("image_column", "text_column", "url_map"),
        "jsonl": ("image_column", "text_column", "url_map"),
        "huggingface": ("split", "image_column", "text_column"),
    }
    if format not in accepted:
        raise ValueError(f"unknown source format {format!r}; expected one of {', '.join(FORMATS)}")
    options = {key: value for key, value in options.items() if value is not None}
    unused = sorted(set(options) - set(accepted[format]))
    if unused:
        raise ValueError(f"option(s) {', '.join(unused)} do not apply to a {format} source ({spec})")
    if format == "shapes":
        missing = [name for name in ("count", "image_size") if name not in options]
        if missing:
            raise ValueError(f"the shapes source needs {' and '.join(missing)}")
        return ShapesSource(**options)
    if format == "huggingface":
        return HFSource(spec.removeprefix("hf:"), **options)
    if format == "webdataset":
        return webdataset_source(spec)
    if format == "files":
        return files_source(spec)
    if format == "parquet":
        return parquet_source(spec, **options)
    if format == "folder":
        return FolderSource(spec)
    return ManifestSource(spec, kind=format, **options)
