"""img2dataset output: webdataset tars, "files" folders with parquet metadata, or parquet with image
bytes. Items img2dataset failed to download or decode are kept, with its status as the skip reason."""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from gptdraw.data.decode import DEFAULT_MAX_BYTES
from gptdraw.data.sources.base import (
    IMAGE_COLUMNS, IMG2DATASET_SUCCESS, TEXT_COLUMNS, Source, SourceItem, cell_image, file_state, read_caption_file,
    sorted_files,
)

logger = logging.getLogger(__name__)


# What pyarrow raises for a damaged file: OSError for bad pages and compressed data, ArrowException
# (some kinds of which are ValueErrors) for the rest.
def _parquet_errors() -> tuple[type[BaseException], ...]:
    import pyarrow as pa

    return (OSError, pa.ArrowException)


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("reading parquet needs pyarrow: pip install 'gptdraw[data]'") from None
    return pq


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
    return [_MetaRow(key=str(key), status=status, caption=caption)
            for key, status, caption in zip(keys, statuses, captions)]


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
            current = _TarSample(key=key, members={})
        current.members[extension.lower()] = member
    if current is not None:
        yield current


def _image_field(names: list[str]) -> str | None:
    """The image extension among a sample's fields (webdataset members, parquet columns), if any."""
    for extension in ("jpg", "jpeg", "png", "webp"):
        if extension in names:
            return extension
    return None


MAX_CAPTION_BYTES = 2**20
"""Caption (.txt / .json) members bigger than this are not read: no caption is that long."""


def _member_problem(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why a tar member must not be read (its size is the header's claim), or None."""
    if member.issparse():
        return "sparse_member"  # a tiny file can claim gigabytes of holes
    return "too_many_bytes" if member.size > max_bytes else None


_DAMAGED = object()  # stands for a sample lost to a tar's damage


def _tar_item(tar: tarfile.TarFile, sample: _TarSample) -> SourceItem:
    """One sample's image bytes and caption, read only when their sizes are plausible."""
    try:
        return _read_tar_item(tar, sample)
    except TAR_ERRORS:
        return SourceItem(key=sample.key, caption=None, image=None, skip_reason="damaged_tar")


def _read_tar_item(tar: tarfile.TarFile, sample: _TarSample) -> SourceItem:
    extension = _image_field(list(sample.members))
    caption = None
    for name in ("txt", "json"):
        member = sample.members.get(name)
        if member is None or _member_problem(member, MAX_CAPTION_BYTES):
            continue
        text = tar.extractfile(member).read()
        if name == "txt":
            caption = text.decode("utf-8", errors="replace")
        else:
            try:
                caption = json.loads(text).get("caption")
            except (ValueError, AttributeError):
                caption = None
        break
    problem = _member_problem(sample.members[extension], DEFAULT_MAX_BYTES) if extension else None
    if problem:
        return SourceItem(key=sample.key, caption=caption, image=None, skip_reason=problem)
    image = tar.extractfile(sample.members[extension]).read() if extension else None
    return SourceItem(key=sample.key, caption=caption, image=image)


class _Unit:
    """One file of a multi-file source (a tar, a parquet, a files folder) with its item count."""

    def __init__(self, name: str, count: int):
        self.name, self.count = name, count

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        raise NotImplementedError

    def captions(self) -> Iterator[str | None]:
        return (item.caption for item in self.read(0, self.count))


TAR_ERRORS = (tarfile.TarError, EOFError, OSError)
"""What reading a damaged tar raises."""


def _open_tar(path: Path):
    """The tar, or None (with a warning) when it cannot be read at all."""
    try:
        return tarfile.open(path, "r:")
    except TAR_ERRORS as error:
        logger.warning("skipping %s: the tar cannot be read (%s)", path, error)
        return None


def _readable_samples(tar: tarfile.TarFile, path: Path) -> Iterator[_TarSample]:
    """The tar's samples up to any damage; a tar cut short or corrupted part-way keeps what comes
    before the damage (with a warning) instead of ending the run."""
    try:
        yield from _tar_samples(tar)
    except TAR_ERRORS as error:
        logger.warning("%s is damaged (%s): reading only the samples before the damage", path, error)


class _TarUnit(_Unit):
    """A webdataset tar; with img2dataset's .parquet beside it, its failed samples are items too."""

    def __init__(self, path: Path):
        self.path = path
        meta_path = path.with_suffix(".parquet")
        self.meta = _read_meta(meta_path) if meta_path.is_file() else None
        if self.meta is not None:
            count = len(self.meta)
        else:
            tar = _open_tar(path)
            count = 0
            if tar is not None:
                with tar:
                    count = sum(1 for _ in _readable_samples(tar, path))
        super().__init__(path.name, count)

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        tar = _open_tar(self.path)
        if tar is None:  # unreadable since it was counted: its items are all damaged
            for index in range(start, stop):
                key = self.meta[index].key if self.meta is not None else f"{self.path.name}:{index}"
                yield SourceItem(key=key, caption=None, image=None, skip_reason="damaged_tar")
            return
        with tar:
            samples = _readable_samples(tar, self.path)
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
                if row.status == IMG2DATASET_SUCCESS and sample is None:
                    sample = _DAMAGED  # the tar ended early: its damaged part held this sample
                if row.status == IMG2DATASET_SUCCESS and sample is not _DAMAGED and sample.key != row.key:
                    raise ValueError(
                        f"{self.path}: sample {row.key} of {self.path.with_suffix('.parquet').name} "
                        f"is not in the tar at its place (found {sample.key if sample else 'the end'})"
                    )
                if index < start:
                    continue
                if sample is None:
                    yield SourceItem(key=row.key, caption=row.caption, image=None,
                                     skip_reason=row.status or "failed_to_download")
                elif sample is _DAMAGED:
                    yield SourceItem(key=row.key, caption=row.caption, image=None, skip_reason="damaged_tar")
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
            caption = read_caption_file(self.folder / f"{row.key}.txt")
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


class _ParquetUnit(_Unit):
    """A parquet file with an image column (bytes or {bytes, path}) and a text column."""

    def __init__(self, path: Path, image_column: str | None, text_column: str | None):
        self.path = path
        pq = _parquet()
        try:
            self.file = pq.ParquetFile(path)
        except _parquet_errors() as error:  # a damaged footer: not even the row count can be read
            raise ValueError(f"{path} is not a readable parquet file ({str(error).splitlines()[0]})") from None
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
                try:
                    table_rows = self.file.read_row_group(group, columns=self._columns(with_image)).to_pylist()
                except _parquet_errors() as error:
                    logger.warning("%s: row group %d is damaged (%s); its %d rows are skipped", self.path, group,
                                   str(error).splitlines()[0] if str(error) else type(error).__name__, rows)
                    table_rows = [None] * rows  # None: a damaged row
                for offset, row in enumerate(table_rows):
                    if start <= first + offset < stop:
                        yield first + offset, row
            first += rows
            if first >= stop:
                return

    def read(self, start: int, stop: int) -> Iterator[SourceItem]:
        for index, row in self._rows(start, stop, with_image=True):
            if row is None:
                yield SourceItem(key=f"{self.path.stem}:{index}", caption=None, image=None, skip_reason="damaged_parquet")
                continue
            key = str(row["key"]) if self.has_key else f"{self.path.stem}:{index}"
            caption = row.get(self.text_column) if self.text_column else None
            image = cell_image(row[self.image_column])
            if isinstance(image, str) and not os.path.isabs(image):
                image = str(self.path.parent / image)
            status = row.get("status") if self.has_status else IMG2DATASET_SUCCESS
            if status != IMG2DATASET_SUCCESS:
                yield SourceItem(key=key, caption=caption, image=None, skip_reason=status or "failed_to_download")
            else:
                yield SourceItem(key=key, caption=caption, image=image)

    def captions(self) -> Iterator[str | None]:
        for _, row in self._rows(0, self.count, with_image=False):
            yield row.get(self.text_column) if self.text_column and row is not None else None


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

    def state(self) -> dict[str, list]:
        folder = self.root if self.root.is_dir() else self.root.parent
        return file_state(sorted(path for path in folder.rglob("*") if path.is_file()), folder)


def webdataset_source(path: str | os.PathLike) -> MultiFileSource:
    """Webdataset tars (a folder of them, or one): img2dataset's webdataset output or any other."""
    path = Path(path)
    tars = [path] if path.is_file() else sorted_files(path, "*.tar")
    return MultiFileSource("webdataset", path, [_TarUnit(tar) for tar in tars])


def files_source(path: str | os.PathLike) -> MultiFileSource:
    """img2dataset's files output: NNNNN.parquet beside the NNNNN/ folder it lists."""
    path = Path(path)
    metas = [meta for meta in sorted_files(path, "*.parquet") if meta.with_suffix("").is_dir()]
    return MultiFileSource("img2dataset-files", path, [_FilesUnit(meta) for meta in metas])


def parquet_source(path: str | os.PathLike, image_column: str | None = None,
                   text_column: str | None = None) -> MultiFileSource:
    """Parquet files with image bytes: img2dataset's parquet output, or a Hugging Face parquet export."""
    path = Path(path)
    files = [path] if path.is_file() else sorted_files(path, "*.parquet")
    options = {"image_column": image_column, "text_column": text_column}
    return MultiFileSource("parquet", path, [_ParquetUnit(file, image_column, text_column) for file in files], options)
