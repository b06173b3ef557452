"""A Hugging Face dataset: a `save_to_disk` folder, or "hf:ID" for a hub id."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

from gptdraw.data.sources.base import IMAGE_COLUMNS, TEXT_COLUMNS, Source, SourceItem, cell_image

logger = logging.getLogger(__name__)


class HFSource(Source):
    """A Hugging Face `datasets` dataset: a save_to_disk folder, a local data folder, or a hub id."""

    def __init__(self, name: str, *, split: str = "train", image_column: str | None = None,
                 text_column: str | None = None):
        try:
            import datasets
        except ImportError:
            raise ImportError("reading Hugging Face datasets needs datasets: pip install 'gptdraw[data]'") from None
        self.name, self.split = name, split
        path = Path(name)
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            try:
                loaded = datasets.load_from_disk(str(path))
            except OSError as error:  # pyarrow's error for a cut or damaged arrow file
                raise ValueError(f"{path}: the dataset's files cannot be read ({str(error).splitlines()[0]})") from None
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
            last = min(stop, first + batch)
            rows = self._rows(first, last)
            if rows is None:
                for index in range(first, last):
                    yield SourceItem(key=f"{self.split}:{index}", caption=None, image=None, skip_reason="damaged_dataset")
                continue
            for offset, (image, caption) in enumerate(zip(rows[self.image_column], rows[self.text_column])):
                yield SourceItem(key=f"{self.split}:{first + offset}", caption=caption, image=cell_image(image))

    def _rows(self, first: int, last: int) -> dict | None:
        """Rows first..last-1 as columns, or None where the dataset's files are damaged there."""
        try:
            return self.dataset[first:last]
        except (OSError, ValueError) as error:  # pyarrow's errors for damaged arrow files
            logger.warning("%s: rows %d..%d cannot be read (%s); they are skipped", self.name, first, last - 1,
                           str(error).splitlines()[0] if str(error) else type(error).__name__)
            return None

    def captions(self, batch: int = 4096) -> Iterator[str | None]:
        for first in range(0, len(self), batch):
            rows = self._rows(first, min(len(self), first + batch))
            yield from rows[self.text_column] if rows is not None else [None] * (min(len(self), first + batch) - first)

    def describe(self) -> dict:
        return {"kind": "huggingface", "name": self.name, "split": self.split, "items": len(self),
                "image_column": self.image_column, "text_column": self.text_column}
