"""CSV, TSV and JSONL manifests of image paths (relative to the manifest) or URLs, and captions."""

from __future__ import annotations

import csv
import json
import os
import re
from array import array
from pathlib import Path
from typing import Iterator, Mapping

from gptdraw.data.decode import IMAGE_EXTENSIONS
from gptdraw.data.sources.base import IMAGE_COLUMNS, TEXT_COLUMNS, Source, SourceItem, file_state

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _column_index(header: list[str], wanted: str | int | None, *, candidates: tuple[str, ...], what: str,
                  path: Path) -> int | None:
    """The index of the `what` column: the one `wanted` names, else the first of `candidates` present."""
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
        *,
        kind: str | None = None,
        image_column: str | int | None = None,
        text_column: str | int | None = None,
        url_map: str | os.PathLike | Mapping[str, str] | None = None,
        allow_outside_paths: bool = False,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        self.kind = kind or self.path.suffix.lower().lstrip(".")
        if self.kind not in ("csv", "tsv", "jsonl"):
            raise ValueError(f"{self.path}: unknown manifest kind {self.kind!r}; expected csv, tsv or jsonl")
        self._url_map, self._url_map_name = _load_url_map(url_map)
        self.allow_outside_paths = allow_outside_paths
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
            image = _column_index(first, self.image_column, candidates=IMAGE_COLUMNS, what="image", path=self.path)
            text = _column_index(first, self.text_column, candidates=TEXT_COLUMNS, what="caption", path=self.path)
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
        if "\0" in value:
            return None, "missing_file"  # no file name holds a NUL byte
        path = self.path.parent / value
        if not self.allow_outside_paths and not path.resolve().is_relative_to(self.path.parent.resolve()):
            # An untrusted manifest must not read /etc/… or ../../secrets as "images".
            return None, "outside_dataset"
        return str(path), None

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

    def state(self) -> dict[str, list]:
        return file_state([self.path], self.path.parent)  # the images it names are too many to stat on each run

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path.resolve()), "items": len(self),
                "image_column": self.image_column if self.kind == "jsonl" else self._image_index,
                "text_column": self.text_column if self.kind == "jsonl" else self._text_index,
                "url_map": self._url_map_name, **({"allow_outside_paths": True} if self.allow_outside_paths else {})}


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
