"""The on-disk format of a pre-encoded dataset, its writer helpers and its reader.

    DIR/
      manifest.json            what the dataset is: counts, skip reasons, grid, tokenizers, shards
      text_tokenizer/          the caption tokenizer that made caption_ids (written by prepare)
      shard-00000/
        codes.npy              uint16 (N, h, w): image codes, row-major over the grid
        caption_ids.npy        int32 (N, text_len): caption token ids, right-padded
        captions.jsonl         {"key": …, "caption": …} per example: the cleaned caption text
        done.json              this shard's record: counts, skip reasons, checksums
      shard-00001/ …
      eval/                    optional held-out split: the same layout, with its own manifest.json

A shard appears only complete: it is built in a temporary folder and renamed into place,
and the manifest is replaced atomically, so a reader (or a resumed prepare) never sees
half-written files under a final name. Codes are uint16, so a codebook may hold at most
65,536 entries; the reader memory-maps them and gathers batches per shard with numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gptdraw.files import dump_json, replace_directory, write_durable, write_json_atomic  # noqa: F401  (also the format's own JSON)

FORMAT_NAME = "gptdraw-shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
DONE_FILE = "done.json"
CODES_FILE = "codes.npy"
CAPTION_IDS_FILE = "caption_ids.npy"
CAPTIONS_FILE = "captions.jsonl"
SHARD_FILES = (CODES_FILE, CAPTION_IDS_FILE, CAPTIONS_FILE)
EVAL_SPLIT = "eval"  # sub-folder holding the held-out split
TEXT_TOKENIZER_DIR = "text_tokenizer"
MAX_CODEBOOK_SIZE = 1 << 16  # codes are stored as uint16


class ChecksumError(ValueError):
    """A shard file's bytes differ from the checksum recorded when it was written."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ShardContent:
    """The examples of one shard, ready to write."""

    codes: np.ndarray  # (N, h, w) integer codes, each < MAX_CODEBOOK_SIZE
    caption_ids: np.ndarray  # (N, text_len) integer token ids
    keys: list[str]  # source key of each example
    captions: list[str]  # cleaned caption of each example

    def __post_init__(self) -> None:
        count = len(self.keys)
        if self.codes.ndim != 3 or self.codes.shape[0] != count:
            raise ValueError(f"codes must be (N={count}, h, w), got {self.codes.shape}")
        if self.caption_ids.ndim != 2 or self.caption_ids.shape[0] != count:
            raise ValueError(f"caption_ids must be (N={count}, text_len), got {self.caption_ids.shape}")
        if len(self.captions) != count:
            raise ValueError(f"got {len(self.captions)} captions for {count} examples")
        if count and (self.codes.min() < 0 or self.codes.max() >= MAX_CODEBOOK_SIZE):
            raise ValueError(f"codes must be in [0, {MAX_CODEBOOK_SIZE}) to be stored as uint16")


def write_shard(directory: Path, index: int, content: ShardContent, record: dict) -> dict:
    """Write shard `index` under `directory` atomically; returns its done record (also in done.json).

    `record` holds what the caller wants kept with the shard (item range, skip reasons,
    settings fingerprint); the file checksums and the example count are added here.
    """
    directory = Path(directory)
    name = shard_name(index)
    final = directory / name
    temporary = directory / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir(parents=True)
    try:
        _save_npy(temporary / CODES_FILE, content.codes.astype(np.uint16))
        _save_npy(temporary / CAPTION_IDS_FILE, content.caption_ids.astype(np.int32))
        lines = "".join(
            json.dumps({"key": key, "caption": caption}, ensure_ascii=False) + "\n"
            for key, caption in zip(content.keys, content.captions)
        )
        write_durable(temporary / CAPTIONS_FILE, lines.encode("utf-8"))
        done = {
            **record,
            "name": name,
            "index": index,
            "examples": len(content.keys),
            "sha256": {file: sha256_file(temporary / file) for file in SHARD_FILES},
        }
        # done.json last: a folder without it is never taken as a finished shard.
        write_durable(temporary / DONE_FILE, dump_json(done).encode("utf-8"))
        replace_directory(temporary, final)  # over an earlier, invalid attempt at this shard
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return done


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as file:
        np.save(file, np.ascontiguousarray(array), allow_pickle=False)
        file.flush()
        os.fsync(file.fileno())


def read_done(directory: Path, index: int, verify: bool = True) -> dict | None:
    """The done record of a finished, intact shard; None if it is missing, partial or corrupt."""
    folder = Path(directory) / shard_name(index)
    try:
        done = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or not isinstance(done.get("sha256"), dict):
        return None
    for file in SHARD_FILES:
        path = folder / file
        if not path.is_file() or (verify and sha256_file(path) != done["sha256"].get(file)):
            return None
    return done


def remove_temporaries(directory: Path, names: Sequence[str]) -> None:
    """Delete leftover temporary folders of the named shards (from an interrupted run)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    wanted = set(names)
    for path in directory.glob(".tmp-shard-*"):
        if path.is_dir() and path.name[len(".tmp-"):len(".tmp-") + len("shard-00000")] in wanted:
            shutil.rmtree(path, ignore_errors=True)


def read_manifest(directory: Path) -> dict:
    """The manifest.json of a dataset folder, checked for format and version."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: not a prepared dataset (or its prepare has not finished; rerun it to resume)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('version')!r}; this gptdraw reads {FORMAT_VERSION}")
    return manifest


def _safe_shard_name(name, directory: Path) -> str:
    """A shard's folder name from a manifest, refused if it could point elsewhere (../, /, …)."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ValueError(f"{directory}: the manifest names a shard {name!r}, which is not a plain folder name")
    return name


def _text_vocab_size(manifest: dict) -> int | None:
    """The caption tokenizer's vocabulary size as the manifest records it (None if it does not)."""
    recorded = manifest.get("text_tokenizer")
    size = recorded.get("vocab_size") if isinstance(recorded, dict) else None
    return size if isinstance(size, int) and size > 0 else None


class ShardDataset(torch.utils.data.Dataset):
    """A prepared dataset: memory-mapped codes and caption ids over all shards.

    `ShardDataset(DIR)` opens the training split; `ShardDataset(DIR, split="eval")` (or
    `ShardDataset(DIR / "eval")`) the held-out split written with an eval fraction/count.
    """

    def __init__(self, directory: str | os.PathLike, verify: bool = True, split: str = "train"):
        directory = Path(directory)
        if split == EVAL_SPLIT:
            directory = directory / EVAL_SPLIT
        elif split != "train":
            raise ValueError(f"unknown split {split!r}; expected 'train' or '{EVAL_SPLIT}'")
        self.directory = directory
        self.manifest = read_manifest(directory)
        self.grid: tuple[int, int] = tuple(self.manifest["grid"])
        self.text_len: int = int(self.manifest["text_len"])
        self._codes: list[np.ndarray] = []
        self._caption_ids: list[np.ndarray] = []
        self._names: list[str] = []
        counts = []
        # Codes and caption ids are checked against these ranges as batches are read: an id out
        # of range would otherwise land in a padding row, or crash a GPU with a device assert.
        if not isinstance(self.manifest.get("codebook_size"), int):
            raise ValueError(f"{directory}: the manifest records no codebook_size")
        self.codebook_size = self.manifest["codebook_size"]
        self.text_vocab_size = _text_vocab_size(self.manifest)
        for shard in self.manifest["shards"]:
            folder = directory / _safe_shard_name(shard["name"], directory)
            if verify:
                self._verify(folder, shard)
            codes = self._load(folder / CODES_FILE, shard["examples"])
            caption_ids = self._load(folder / CAPTION_IDS_FILE, shard["examples"])
            expected = [(codes, (shard["examples"], *self.grid), np.uint16),
                        (caption_ids, (shard["examples"], self.text_len), np.int32)]
            for array, shape, dtype in expected:
                if array.shape != shape or array.dtype != dtype:
                    raise ValueError(
                        f"{folder}: an array has shape {array.shape} {array.dtype}, the manifest says {shape} "
                        f"{np.dtype(dtype)}"
                    )
            self._codes.append(codes)
            self._caption_ids.append(caption_ids)
            self._names.append(shard["name"])
            counts.append(shard["examples"])
        self._ends = np.cumsum(np.asarray(counts, dtype=np.int64))
        self._starts = self._ends - np.asarray(counts, dtype=np.int64)
        self._captions: dict[int, list[dict]] = {}
        if len(self) != self.manifest["examples"]:
            raise ValueError(f"{directory}: shards hold {len(self)} examples, the manifest says {self.manifest['examples']}")

    @staticmethod
    def _verify(folder: Path, shard: dict) -> None:
        # Every file a shard must have, whatever the manifest lists: a manifest that records no
        # checksums (or fewer) does not switch the check off.
        recorded = shard.get("sha256") if isinstance(shard.get("sha256"), dict) else {}
        for file in SHARD_FILES:
            expected = recorded.get(file)
            if not isinstance(expected, str):
                raise ChecksumError(f"shard {shard['name']}: the manifest records no checksum for {file}")
            path = folder / file
            if not path.is_file():
                raise FileNotFoundError(f"shard {shard['name']} is missing {file} ({path})")
            if sha256_file(path) != expected:
                raise ChecksumError(
                    f"shard {shard['name']}: {file} does not match its recorded checksum ({path}); "
                    "the file was changed or damaged: prepare that shard again"
                )

    @staticmethod
    def _load(path: Path, examples: int) -> np.ndarray:
        try:
            # numpy cannot memory-map an empty array.
            return np.load(path, mmap_mode="r" if examples else None, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {path}: {error}") from None

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} is out of range for a dataset of {len(self)}")
        shard = int(np.searchsorted(self._ends, index, side="right"))
        return shard, index - int(self._starts[shard])

    def codes(self, index: int) -> np.ndarray:
        """Codes of example `index`, uint16 (h, w)."""
        shard, row = self._locate(index)
        return np.asarray(self._codes[shard][row])

    def caption_ids(self, index: int) -> np.ndarray:
        """Caption ids of example `index`, int32 (text_len,)."""
        shard, row = self._locate(index)
        return np.asarray(self._caption_ids[shard][row])

    def _caption_record(self, index: int) -> dict:
        shard, row = self._locate(index)
        if shard not in self._captions:
            path = self.directory / self._names[shard] / CAPTIONS_FILE
            with open(path, encoding="utf-8") as file:
                self._captions[shard] = [json.loads(line) for line in file]
        return self._captions[shard][row]

    def caption(self, index: int) -> str:
        """The cleaned caption text of example `index`."""
        return self._caption_record(index)["caption"]

    def key(self, index: int) -> str:
        """The source key of example `index`."""
        return self._caption_record(index)["key"]

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples → (caption_ids int64 (B, text_len), codes int64 (B, h*w)), gathered per shard."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {indices.shape}")
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"indices must be in [0, {len(self)}), got [{indices.min()}, {indices.max()}]")
        count = len(indices)
        codes = np.empty((count, *self.grid), dtype=np.uint16)
        caption_ids = np.empty((count, self.text_len), dtype=np.int32)
        shards = np.searchsorted(self._ends, indices, side="right")
        rows = indices - self._starts[shards]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            codes[where] = self._codes[shard][rows[where]]
            caption_ids[where] = self._caption_ids[shard][rows[where]]
            self._check_ranges(codes[where], caption_ids[where], shard)
        return (
            torch.from_numpy(caption_ids.astype(np.int64)),
            torch.from_numpy(codes.reshape(count, -1).astype(np.int64)),  # (B, h*w)
        )

    def _check_ranges(self, codes: np.ndarray, caption_ids: np.ndarray, shard: int) -> None:
        if codes.size and int(codes.max()) >= self.codebook_size:
            raise ValueError(f"{self.directory / self._names[shard]}: a code is {int(codes.max())}, but the codebook "
                             f"has {self.codebook_size}: the shard is damaged or from another image tokenizer")
        low = int(caption_ids.min()) if caption_ids.size else 0
        high = int(caption_ids.max()) if caption_ids.size else 0
        if low < 0 or (self.text_vocab_size is not None and high >= self.text_vocab_size):
            raise ValueError(f"{self.directory / self._names[shard]}: caption ids span [{low}, {high}], outside the "
                             f"caption tokenizer's {self.text_vocab_size} ids: the shard is damaged")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption_ids int64 (text_len,), codes int64 (h*w,)) of one example."""
        caption_ids, codes = self.get_batch([index])
        return caption_ids[0], codes[0]
