"""A folder tree of images, each captioned by a same-named .txt file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from gptdraw.data.decode import IMAGE_EXTENSIONS, image_files
from gptdraw.data.sources.base import Source, SourceItem, file_state, read_caption_file


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
            caption = read_caption_file(path.with_suffix(".txt"))
            yield SourceItem(key=str(Path(relative).with_suffix("")), caption=caption, image=str(path))

    def describe(self) -> dict:
        return {"kind": "folder", "path": str(self.root.resolve()), "items": len(self)}

    def state(self) -> dict[str, list]:
        files = [self.root / relative for relative in self._paths]
        return file_state(files + [path.with_suffix(".txt") for path in files], self.root)
