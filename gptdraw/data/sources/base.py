"""What every reader of image–caption data shares: `Source`, `SourceItem`, the column names tried
for images and captions, and small helpers for caption files, parquet cells and file lists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from PIL import Image


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


def file_state(paths, root: Path) -> dict[str, list]:
    """{path relative to root: [bytes, modified ns]} of the files that exist."""
    state = {}
    for path in paths:
        try:
            status = Path(path).stat()
        except OSError:
            continue
        state[Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else str(path)] = [
            status.st_size, status.st_mtime_ns]
    return state


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

    def state(self) -> dict[str, list]:
        """What the source's files are like now ({file: [bytes, modified ns]}), cheap to take:
        `prepare` compares it on resume to notice a source edited between runs. Sources that
        are not files (the built-in data, a hub dataset) have none."""
        return {}

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


def read_caption_file(path: Path) -> str | None:
    """A caption file's text (undecodable bytes replaced); None when it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None


def cell_image(value: Any) -> bytes | str | None:
    """A parquet image cell as a source item's image."""
    # Parquet image cells are raw bytes (img2dataset) or {bytes, path} structs (Hugging Face).
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def sorted_files(root: Path, pattern: str) -> list[Path]:
    """The files (not folders) in `root` matching the glob `pattern`, sorted by path."""
    return sorted(path for path in root.glob(pattern) if path.is_file())
