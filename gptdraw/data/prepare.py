"""`gptdraw prepare`: decode, tokenize and VQ-encode a source once, into shards on disk.

Work is cut by position: shard k holds source items [k·shard_size, (k+1)·shard_size), so
the same inputs always give the same shards, byte for byte. That makes the rest simple:

- resume: a rerun skips every shard whose done.json is present and whose files match their
  checksums, and does the others (a crash leaves at most a temporary folder, removed);
- many processes: under `accelerate launch`, rank r does the shards k ≡ r (mod world size)
  and rank 0 waits for all of them and writes the one manifest;
- the held-out eval split: item i goes to eval when ⌊(i+1)·p/q⌋ > ⌊i·p/q⌋ for the eval
  fraction p/q (or count/items), spreading exactly that share evenly over the source; each
  shard's eval items go to DIR/eval/shard-k, a dataset of its own.

Pipeline per item: clean the caption (cheap, first), decode + resize in worker processes,
VQ-encode in batches on the device (bf16 autocast on CUDA), tokenize captions per shard.
Bad items are counted by reason (see gptdraw.data.decode) and never stop the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from gptdraw.data import shards as fmt
from gptdraw.data.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, BadInput, clean_caption, decode_parallel
from gptdraw.data.sources import Source, SourceItem
from gptdraw.runtime import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 10_000


def default_workers() -> int:
    """Decoding processes: all cores but one, which runs the encoder loop."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class PrepareResult:
    """What a prepare run produced (the whole dataset's counts once rank 0 has written the manifest)."""

    out_dir: str  # the dataset folder
    examples: int  # training examples in the dataset
    skipped: dict[str, int]  # training-split items skipped, by reason
    eval_examples: int  # examples in the eval split (DIR/eval), 0 without one
    eval_skipped: dict[str, int]  # eval-split items skipped, by reason
    truncated: int  # captions cut to text_len tokens, both splits
    shards_written: int  # shards this process wrote in this run
    shards_reused: int  # shards this process found complete and kept
    items_processed: int  # source items this process read in this run
    seconds: float  # wall time of this run
    images_per_s: float  # items_processed / seconds
    complete: bool = True  # False on ranks other than 0, which do not see the final counts


@dataclass(frozen=True)
class EvalSplit:
    """Which items go to the eval split: item i when ⌊(i+1)·p/q⌋ > ⌊i·p/q⌋ (a share p/q, evenly spread)."""

    numerator: int  # p
    denominator: int  # q

    def __post_init__(self) -> None:
        if self.denominator <= 0 or not 0 <= self.numerator < self.denominator:
            raise ValueError(f"the eval share must be in [0, 1), got {self.numerator}/{self.denominator}")

    @classmethod
    def make(cls, items: int, fraction: float = 0.0, count: int = 0) -> "EvalSplit":
        if fraction and count:
            raise ValueError("give an eval fraction or an eval count, not both")
        if count:
            if not 0 < count < items:
                raise ValueError(f"eval count must be between 1 and {items - 1} for {items} items, got {count}")
            return cls(count, items)
        if not 0 <= fraction < 1:
            raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
        share = Fraction(str(fraction)).limit_denominator(1_000_000)
        return cls(share.numerator, share.denominator)

    def is_eval(self, index: int) -> bool:
        return (index + 1) * self.numerator // self.denominator > index * self.numerator // self.denominator

    def describe(self) -> dict:
        return {"numerator": self.numerator, "denominator": self.denominator}


def image_tokenizer_identity(image_tokenizer) -> dict:
    """The image tokenizer's architecture and a fingerprint of its weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(image_tokenizer.state_dict().items()):
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(data.tobytes())
    return {"config": image_tokenizer.config.to_dict(), "weights_sha256": digest.hexdigest()}


@dataclass
class _ShardBuilder:
    """Examples of one shard's split as they arrive: pixels wait here until a batch is full."""

    index: int
    pixels: list[np.ndarray] = field(default_factory=list)
    codes: list[np.ndarray] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    items: int = 0


class _Encoder:
    """Batched VQ encoding: uint8 pixels (B, S, S, 3) → uint16 codes (B, h, w)."""

    def __init__(self, image_tokenizer, device: torch.device, dtype: torch.dtype | None):
        self.tokenizer = image_tokenizer.to(device).eval()
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, pixels: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(pixels))  # (B, S, S, 3) uint8
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        images = batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            codes = self.tokenizer.encode(images)  # (B, h, w) int64
        return codes.cpu().numpy().astype(np.uint16)


def _resolve_dtype(device: torch.device, dtype: str | torch.dtype | None) -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA unless told otherwise, full fp32 on CPU unless asked."""
    if isinstance(dtype, torch.dtype):
        return None if dtype == torch.float32 else dtype
    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": None, "float32": None}
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else None
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(names)}")
    return names[dtype]


def caption_tokenizer_for(
    source: Source, out_dir: str | os.PathLike, choice: str = "train", text_len: int = 64, vocab_size: int = 16384,
    max_captions: int = 1_000_000, is_main_process: bool = True, wait_for_everyone: Callable[[], None] = lambda: None,
):
    """The caption tokenizer a dataset is prepared with.

    choice: a caption-tokenizer folder, a GPT-2 tokenizer (folder or hub id), or "train": a
    byte-level BPE trained on up to max_captions of the source's cleaned captions, saved in
    OUT_DIR/text_tokenizer. A resumed run reuses the one saved there (its ids are in the
    shards already written). Under several processes the main one trains it while the others
    wait (`wait_for_everyone`, e.g. Accelerate's) and then load it.
    """
    from gptdraw.captions import CONFIG_NAME, CaptionTokenizer

    if choice != "train":
        if (Path(choice) / CONFIG_NAME).is_file():
            return CaptionTokenizer.from_pretrained(choice)
        return CaptionTokenizer.from_gpt2(choice, text_len=text_len)
    saved = Path(out_dir) / fmt.TEXT_TOKENIZER_DIR
    if is_main_process and not (saved / CONFIG_NAME).is_file():

        def captions() -> Iterator[str]:
            for caption in itertools.islice(source.captions(), max_captions):
                try:
                    yield clean_caption(caption)
                except BadInput:
                    continue

        logger.info("training a %d-token BPE on up to %d captions", vocab_size, max_captions)
        CaptionTokenizer.train(captions(), vocab_size=vocab_size, text_len=text_len).save_pretrained(saved)
    wait_for_everyone()
    return CaptionTokenizer.from_pretrained(saved)


def _check_request(source: Source, image_tokenizer, shard_size: int, batch_size: int, rank: int, world_size: int) -> int:
    """Refuses settings that cannot work; returns the source's item count."""
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if image_tokenizer.codebook_size > fmt.MAX_CODEBOOK_SIZE:
        raise ValueError(
            f"the image tokenizer has {image_tokenizer.codebook_size} codes; shards store codes as uint16, "
            f"so at most {fmt.MAX_CODEBOOK_SIZE}"
        )
    items = len(source)
    if items == 0:
        raise ValueError(f"the source {source.describe()} has no items")
    return items


def _settings(source: Source, items: int, shard_size: int, split: "EvalSplit", image_tokenizer, caption_tokenizer,
              min_image_size: int, max_image_pixels: int, max_image_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Everything that decides the bytes of a shard: a shard made with other settings is not reused."""
    image_size = image_tokenizer.config.image_size
    return {
        "source": source.describe(),
        "items": items,
        "shard_size": shard_size,
        "eval_split": split.describe(),
        "image_size": image_size,
        "grid": list(image_tokenizer.grid_size(image_size)),
        "min_image_size": min_image_size,
        "max_image_pixels": max_image_pixels,
        # Only when changed, so that datasets prepared before this setting existed still resume.
        **({"max_image_bytes": max_image_bytes} if max_image_bytes != DEFAULT_MAX_BYTES else {}),
        "codebook_size": image_tokenizer.codebook_size,
        "image_tokenizer": image_tokenizer_identity(image_tokenizer),
        "text_tokenizer": caption_tokenizer.identity(),
        "text_len": caption_tokenizer.text_len,
    }


SOURCE_STATE_FILE = "source_state.json"


def _note_source_changes(out_dir: Path, state: dict[str, list]) -> None:
    """Keeps the source's file state beside the dataset; on a resume, warns naming the files
    that changed since the first run (shards already written hold their old content)."""
    path = out_dir / SOURCE_STATE_FILE
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        fmt.write_json_atomic(path, state)
        return
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = {}
    changed = sorted(name for name in set(before) | set(state) if before.get(name) != state.get(name))
    if changed:
        logger.warning(
            "the source changed since this dataset was started: %d file(s) differ (%s%s); shards already "
            "written keep the old content: prepare into a new folder to use the new one",
            len(changed), ", ".join(changed[:5]), ", …" if len(changed) > 5 else "",
        )


def _write_manifests(split_dirs: list[Path], shard_count: int, settings: dict, fingerprint: str,
                     image_tokenizer_path: str | None) -> tuple[dict, dict]:
    """Writes the manifest of each split from its shards' records; returns (train, eval) manifests."""
    has_eval = len(split_dirs) > 1
    manifests = []
    for directory, name in zip(split_dirs, ("train", fmt.EVAL_SPLIT)):
        records = [fmt.read_done(directory, index, verify=False) for index in range(shard_count)]
        manifests.append(_manifest(name, records, settings, fingerprint, image_tokenizer_path, has_eval))
    # The eval manifest first: the top manifest's presence means the whole dataset is there.
    for directory, manifest in reversed(list(zip(split_dirs, manifests))):
        fmt.write_json_atomic(directory / fmt.MANIFEST_FILE, manifest)
    evaluation = manifests[1] if has_eval else {"examples": 0, "skipped": {}, "truncated_captions": 0}
    return manifests[0], evaluation


def prepare(
    source: Source,
    out_dir: str | os.PathLike,
    image_tokenizer,
    caption_tokenizer,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    eval_fraction: float = 0.0,
    eval_count: int = 0,
    min_image_size: int = DEFAULT_MIN_SIZE,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
    max_image_bytes: int = DEFAULT_MAX_BYTES,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    image_tokenizer_path: str | None = None,
    on_shard_done: Callable[[int], None] | None = None,
    poll_seconds: float = 2.0,
    stall_seconds: float = 3600.0,
) -> PrepareResult:
    """Pre-encode `source` into a dataset folder at `out_dir` (resuming whatever is already done).

    image_tokenizer: a gptdraw.vq.model.ImageTokenizer; images are encoded at its config.image_size.
    caption_tokenizer: a gptdraw.captions.CaptionTokenizer; it is saved to out_dir/text_tokenizer.
    workers: decoding processes (0 = decode in this process; default all cores but one).
    device/dtype: where and in which autocast dtype to encode (default: CUDA if present, bf16 there).
    eval_fraction / eval_count: the share or number of items kept out for out_dir/eval.
    rank/world_size: this process's place among several running the same prepare.
    image_tokenizer_path: recorded in the manifest so `gptdraw data inspect` can find the VQGAN.
    on_shard_done(k): called after shard k is written (tests use it to interrupt a run).
    stall_seconds: how long rank 0 waits for the other ranks' next shard before it gives up.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    items = _check_request(source, image_tokenizer, shard_size, batch_size, rank, world_size)
    workers = default_workers() if workers is None else workers
    device = resolve_device(device)
    autocast_dtype = _resolve_dtype(device, dtype)
    image_size = image_tokenizer.config.image_size
    grid = image_tokenizer.grid_size(image_size)
    split = EvalSplit.make(items, eval_fraction, eval_count)
    has_eval = split.numerator > 0
    settings = _settings(source, items, shard_size, split, image_tokenizer, caption_tokenizer, min_image_size,
                         max_image_pixels, max_image_bytes)
    fingerprint = hashlib.sha256(fmt.dump_json(settings).encode()).hexdigest()
    _check_existing(out_dir, fingerprint)
    if rank == 0:
        _note_source_changes(out_dir, source.state())

    shard_count = (items + shard_size - 1) // shard_size
    owned = [index for index in range(shard_count) if index % world_size == rank]
    split_dirs = [out_dir] + ([out_dir / fmt.EVAL_SPLIT] if has_eval else [])
    for directory in split_dirs:
        directory.mkdir(parents=True, exist_ok=True)
        fmt.remove_temporaries(directory, [fmt.shard_name(index) for index in owned])
    if rank == 0:
        _save_text_tokenizer(caption_tokenizer, out_dir / fmt.TEXT_TOKENIZER_DIR)

    def finished(index: int, verify: bool = True) -> bool:
        records = [fmt.read_done(directory, index, verify=verify) for directory in split_dirs]
        for record in records:
            if record is not None and record.get("settings_sha256") != fingerprint:
                raise ValueError(
                    f"{out_dir}: {fmt.shard_name(index)} was prepared with other settings; "
                    "use a new --out folder or delete this one"
                )
        return all(record is not None for record in records)

    pending = [index for index in owned if not finished(index)]
    reused = len(owned) - len(pending)
    if reused:
        logger.info("resuming: %d of this process's %d shards are already complete", reused, len(owned))
    pending_items = sum(min(items, (index + 1) * shard_size) - index * shard_size for index in pending)

    encoder = _Encoder(image_tokenizer, device, autocast_dtype) if pending else None
    record_base = {"settings_sha256": fingerprint}
    processed = 0
    with tqdm(total=pending_items, unit="img", desc=f"prepare{f' rank {rank}' if world_size > 1 else ''}",
              disable=not progress, dynamic_ncols=True) as bar:
        for index, builders in _stream_shards(source, pending, shard_size, items, split, image_size, workers,
                                              min_image_size, max_image_pixels, max_image_bytes, batch_size, encoder, bar):
            for directory, builder in zip(split_dirs[::-1], builders[:len(split_dirs)][::-1]):
                # The eval part first, the training part last: the training shard's done.json
                # is what a rerun looks for first.
                _write(directory, builder, caption_tokenizer, grid, shard_size, items, record_base)
            processed += sum(builder.items for builder in builders)
            if on_shard_done is not None:
                on_shard_done(index)

    if rank != 0:
        seconds = time.perf_counter() - started
        return PrepareResult(str(out_dir), 0, {}, 0, {}, 0, len(pending), reused, processed, seconds,
                             processed / seconds if seconds else 0.0, complete=False)

    _wait_for_shards(out_dir, shard_count, finished, poll_seconds, stall_seconds)
    train, evaluation = _write_manifests(split_dirs, shard_count, settings, fingerprint, image_tokenizer_path)
    truncated = train["truncated_captions"] + evaluation["truncated_captions"]
    if truncated:
        logger.warning(
            "%d captions were longer than text_len=%d tokens and were truncated",
            truncated, caption_tokenizer.text_len,
        )
    seconds = time.perf_counter() - started
    return PrepareResult(
        out_dir=str(out_dir),
        examples=train["examples"],
        skipped=train["skipped"],
        eval_examples=evaluation["examples"],
        eval_skipped=evaluation["skipped"],
        truncated=truncated,
        shards_written=len(pending),
        shards_reused=reused,
        items_processed=processed,
        seconds=seconds,
        images_per_s=processed / seconds if seconds else 0.0,
    )


def _check_existing(out_dir: Path, fingerprint: str) -> None:
    path = out_dir / fmt.MANIFEST_FILE
    if not path.is_file():
        return
    manifest = fmt.read_manifest(out_dir)
    if manifest.get("settings_sha256") != fingerprint:
        raise ValueError(
            f"{out_dir} already holds a dataset prepared from other inputs or settings; "
            "use a new --out folder or delete this one"
        )


def _save_text_tokenizer(caption_tokenizer, directory: Path) -> None:
    temporary = directory.with_name(f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}")
    caption_tokenizer.save_pretrained(temporary)
    if directory.exists():
        shutil.rmtree(directory)
    os.rename(temporary, directory)


def _clean(item: SourceItem) -> SourceItem:
    """Check the caption before any pixel work: an item without a usable caption is not decoded."""
    if item.skip_reason is not None:
        return item
    try:
        return dataclasses.replace(item, caption=clean_caption(item.caption))
    except BadInput as error:
        return dataclasses.replace(item, image=None, skip_reason=error.reason)


def _stream_shards(
    source: Source,
    pending: list[int],
    shard_size: int,
    items: int,
    split: EvalSplit,
    image_size: int,
    workers: int,
    min_image_size: int,
    max_image_pixels: int,
    max_image_bytes: int,
    batch_size: int,
    encoder: _Encoder | None,
    bar,
) -> Iterator[tuple[int, list[_ShardBuilder]]]:
    """Decode and encode the pending shards' items; yield (k, [train builder, eval builder]) per shard."""

    def tagged() -> Iterator[tuple[int, int, SourceItem]]:
        for index in pending:
            first = index * shard_size
            for offset, item in enumerate(source.read(first, min(items, first + shard_size))):
                yield index, first + offset, _clean(item)

    # One decode stream across all shards keeps the workers busy over shard boundaries;
    # tee buffers only the items in flight between the two sides.
    for_decoding, for_tags = itertools.tee(tagged())
    decoded = decode_parallel((tag[2] for tag in for_decoding), image_size, workers,
                              min_size=min_image_size, max_pixels=max_image_pixels, max_bytes=max_image_bytes)
    current: list[_ShardBuilder] | None = None
    for (index, position, _), (item, pixels, reason) in zip(for_tags, decoded):
        if current is not None and current[0].index != index:
            yield current[0].index, _finish(current, encoder)
            current = None
        if current is None:
            current = [_ShardBuilder(index), _ShardBuilder(index)]
        builder = current[1 if split.is_eval(position) else 0]
        builder.items += 1
        bar.update(1)
        if reason is not None:
            builder.skipped[reason] += 1
            continue
        builder.pixels.append(pixels)
        builder.keys.append(item.key)
        builder.captions.append(item.caption)
        if len(builder.pixels) == batch_size:
            builder.codes.append(encoder(builder.pixels))
            builder.pixels = []
    if current is not None:
        yield current[0].index, _finish(current, encoder)


def _finish(builders: list[_ShardBuilder], encoder: _Encoder) -> list[_ShardBuilder]:
    for builder in builders:
        if builder.pixels:
            builder.codes.append(encoder(builder.pixels))
            builder.pixels = []
    return builders


def _write(directory: Path, builder: _ShardBuilder, caption_tokenizer, grid: tuple[int, int], shard_size: int,
           items: int, record_base: dict) -> None:
    count = len(builder.keys)
    if count:
        encoded = caption_tokenizer.encode_batch(builder.captions)
        caption_ids, truncated = encoded.ids, int(sum(encoded.truncated))
        codes = np.concatenate(builder.codes)
    else:
        caption_ids, truncated = np.zeros((0, caption_tokenizer.text_len), np.int32), 0
        codes = np.zeros((0, *grid), np.uint16)
    first = builder.index * shard_size
    record = {
        **record_base,
        "source_items": [first, min(items, first + shard_size)],
        "items": builder.items,
        "skipped": dict(sorted(builder.skipped.items())),
        "truncated_captions": truncated,
    }
    content = fmt.ShardContent(codes=codes, caption_ids=caption_ids, keys=builder.keys, captions=builder.captions)
    fmt.write_shard(directory, builder.index, content, record)


def _wait_for_shards(out_dir: Path, shard_count: int, finished: Callable[..., bool], poll_seconds: float,
                     stall_seconds: float) -> None:
    """Rank 0: wait until every shard of every rank is complete on disk. If no shard completes
    for `stall_seconds`, another rank has probably died: stop with a message instead of waiting
    forever (what is written stays, and a rerun resumes)."""
    last_report = last_progress = time.monotonic()
    missing_before = None
    while True:
        missing = [index for index in range(shard_count) if not finished(index, verify=False)]
        if not missing:
            return
        now = time.monotonic()
        if missing_before is None or len(missing) < missing_before:
            missing_before, last_progress = len(missing), now
        if now - last_progress > stall_seconds:
            raise TimeoutError(
                f"{out_dir}: no shard from the other processes completed in {stall_seconds:.0f} s "
                f"({len(missing)} missing, first {fmt.shard_name(missing[0])}); a process may have died. "
                "Rerun the same command to resume."
            )
        if now - last_report > 60:
            logger.info("waiting for %d shards from other ranks (first: %s)", len(missing), fmt.shard_name(missing[0]))
            last_report = now
        time.sleep(poll_seconds)


def _manifest(split_name: str, records: list[dict], settings: dict, fingerprint: str,
              image_tokenizer_path: str | None, has_eval: bool) -> dict:
    skipped: Counter = Counter()
    for record in records:
        skipped.update(record["skipped"])
    manifest = {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "split": split_name,
        "examples": sum(record["examples"] for record in records),
        "items": sum(record["items"] for record in records),
        "skipped": dict(sorted(skipped.items())),
        "truncated_captions": sum(record["truncated_captions"] for record in records),
        "image_size": settings["image_size"],
        "grid": settings["grid"],
        "text_len": settings["text_len"],
        "codebook_size": settings["codebook_size"],
        "text_tokenizer": settings["text_tokenizer"],
        "text_tokenizer_dir": fmt.TEXT_TOKENIZER_DIR if split_name == "train" else f"../{fmt.TEXT_TOKENIZER_DIR}",
        "image_tokenizer": settings["image_tokenizer"],
        "image_tokenizer_path": image_tokenizer_path,
        "source": settings["source"],
        "source_items": settings["items"],
        "shard_size": settings["shard_size"],
        "eval_split": settings["eval_split"],
        "min_image_size": settings["min_image_size"],
        "max_image_pixels": settings["max_image_pixels"],
        "settings_sha256": fingerprint,
        "splits": {fmt.EVAL_SPLIT: fmt.EVAL_SPLIT} if has_eval and split_name == "train" else {},
        "shards": [
            {"name": record["name"], "examples": record["examples"], "sha256": record["sha256"],
             "source_items": record["source_items"]}
            for record in records
        ],
    }
    return manifest
