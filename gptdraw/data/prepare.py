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
VQ-encode in batches on the device (autocast in config.precision: auto is bf16 on a GPU that has
it, fp32 on a CPU), tokenize captions per shard.
Bad items are counted by reason (see gptdraw.data.decode) and never stop the run.

What to do is a `PrepareConfig` (gptdraw.data.prepare_config, whose fields are the CLI's flags);
where and as which process to do it are `prepare`'s keyword arguments.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from gptdraw.data import shards as fmt
from gptdraw.data.decode import DEFAULT_MAX_BYTES, BadInput, clean_caption, decode_parallel
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.sources import Source, SourceItem
from gptdraw.files import replace_directory, reporting_full_disk, staging_directory
from gptdraw.runtime import resolve_device, resolve_precision, torch_dtype

logger = logging.getLogger(__name__)


def default_workers() -> int:
    """Decoding processes: all cores but one, which runs the encoder loop."""
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass(kw_only=True)
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
    def make(cls, items: int, *, fraction: float = 0.0, count: int = 0) -> "EvalSplit":
        if fraction and count:
            raise ValueError("give an eval fraction or an eval count, not both")
        if count:
            if not 0 < count < items:
                raise ValueError(f"eval count must be between 1 and {items - 1} for {items} items, got {count}")
            return cls(numerator=count, denominator=items)
        if not 0 <= fraction < 1:
            raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
        share = Fraction(str(fraction)).limit_denominator(1_000_000)
        return cls(numerator=share.numerator, denominator=share.denominator)

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

    def __init__(self, image_tokenizer, device: torch.device, precision: str):
        self.tokenizer = image_tokenizer.to(device).eval()
        self.device = device
        # fp32 runs without autocast at all, as the codes of a CPU run always have.
        self.autocast = None if precision == "fp32" else torch_dtype(precision)

    @torch.no_grad()
    def __call__(self, pixels: list[np.ndarray]) -> np.ndarray:
        batch = torch.from_numpy(np.stack(pixels))  # (B, S, S, 3) uint8
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        images = batch.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            codes = self.tokenizer.encode(images)  # (B, h, w) int64
        return codes.cpu().numpy().astype(np.uint16)


def caption_tokenizer_for(
    source: Source, out_dir: str | os.PathLike, config: PrepareConfig = PrepareConfig(), *,
    is_main_process: bool = True, wait_for_everyone: Callable[[], None] = lambda: None,
):
    """The caption tokenizer a dataset is prepared with, as `config.text_tokenizer` names it.

    A caption-tokenizer folder, a GPT-2 tokenizer (folder or hub id), or "train": a byte-level
    BPE of config.vocab_size tokens trained on up to config.train_captions of the source's
    cleaned captions, saved in OUT_DIR/text_tokenizer. A resumed run reuses the one saved there
    (its ids are in the shards already written). Under several processes the main one trains it
    while the others wait (`wait_for_everyone`, e.g. Accelerate's) and then load it.
    """
    from gptdraw.captions import CONFIG_NAME, CaptionTokenizer

    choice = config.text_tokenizer
    if choice != "train":
        if (Path(choice) / CONFIG_NAME).is_file():
            return CaptionTokenizer.from_pretrained(choice)
        return CaptionTokenizer.from_gpt2(choice, text_len=config.text_len)
    saved = Path(out_dir) / fmt.TEXT_TOKENIZER_DIR
    if is_main_process and not (saved / CONFIG_NAME).is_file():

        def captions() -> Iterator[str]:
            for caption in itertools.islice(source.captions(), config.train_captions):
                try:
                    yield clean_caption(caption)
                except BadInput:
                    continue

        logger.info("training a %d-token BPE on up to %d captions", config.vocab_size, config.train_captions)
        tokenizer = CaptionTokenizer.train(captions(), vocab_size=config.vocab_size, text_len=config.text_len)
        tokenizer.save_pretrained(saved)
    wait_for_everyone()
    return CaptionTokenizer.from_pretrained(saved)


def _check_request(source: Source, image_tokenizer, *, rank: int, world_size: int) -> int:
    """Refuses a request that cannot work (PrepareConfig has checked its own fields); returns the
    source's item count."""
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


def _settings(source: Source, config: PrepareConfig, *, items: int, split: EvalSplit, image_tokenizer,
              caption_tokenizer) -> dict:
    """Everything that decides the bytes of a shard: a shard made with other settings is not reused."""
    image_size = image_tokenizer.config.image_size
    return {
        "source": source.describe(),
        "items": items,
        "shard_size": config.shard_size,
        "eval_split": split.describe(),
        "image_size": image_size,
        "grid": list(image_tokenizer.grid_size(image_size)),
        "min_image_size": config.min_image_size,
        "max_image_pixels": config.max_image_pixels,
        # Only when changed, so that datasets prepared before this setting existed still resume.
        **({"max_image_bytes": config.max_image_bytes} if config.max_image_bytes != DEFAULT_MAX_BYTES else {}),
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


def _write_manifests(plan: _ShardPlan, settings: dict, *, image_tokenizer_path: str | None) -> tuple[dict, dict]:
    """Writes the manifest of each split from its shards' records; returns (train, eval) manifests."""
    has_eval = len(plan.split_dirs) > 1
    manifests = []
    for directory, name in zip(plan.split_dirs, ("train", fmt.EVAL_SPLIT)):
        records = [fmt.read_done(directory, index, verify=False) for index in range(plan.shard_count)]
        manifests.append(_manifest(name, records, settings=settings, fingerprint=plan.fingerprint,
                                   image_tokenizer_path=image_tokenizer_path, has_eval=has_eval))
    # The eval manifest first: the top manifest's presence means the whole dataset is there.
    for directory, manifest in reversed(list(zip(plan.split_dirs, manifests))):
        fmt.write_json_atomic(directory / fmt.MANIFEST_FILE, manifest)
    evaluation = manifests[1] if has_eval else {"examples": 0, "skipped": {}, "truncated_captions": 0}
    return manifests[0], evaluation


@dataclass(frozen=True, kw_only=True)
class _ShardPlan:
    """Where a run's shards go and how to tell which are done: shard k holds source items
    [k·shard_size, (k+1)·shard_size), its training part in out_dir, its eval part in out_dir/eval."""

    out_dir: Path
    items: int  # the source's item count
    shard_size: int
    split_dirs: tuple[Path, ...]  # the training folder, then the eval folder when there is an eval split
    fingerprint: str  # settings_sha256: a shard recorded with another one is refused

    @property
    def shard_count(self) -> int:
        return (self.items + self.shard_size - 1) // self.shard_size

    def item_range(self, index: int) -> tuple[int, int]:
        """The source items [first, stop) of shard `index`."""
        first = index * self.shard_size
        return first, min(self.items, first + self.shard_size)

    def finished(self, index: int, verify: bool = True) -> bool:
        """Whether every split of shard `index` is complete on disk (checksums checked with `verify`)."""
        records = [fmt.read_done(directory, index, verify=verify) for directory in self.split_dirs]
        for record in records:
            if record is not None and record.get("settings_sha256") != self.fingerprint:
                raise ValueError(
                    f"{self.out_dir}: {fmt.shard_name(index)} was prepared with other settings; "
                    "use a new --out folder or delete this one"
                )
        return all(record is not None for record in records)


def prepare(
    source: Source,
    out_dir: str | os.PathLike,
    config: PrepareConfig = PrepareConfig(),
    *,
    image_tokenizer,
    caption_tokenizer,
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    image_tokenizer_path: str | None = None,
    on_shard_done: Callable[[int], None] | None = None,
    poll_seconds: float = 2.0,
    stall_seconds: float = 3600.0,
) -> PrepareResult:
    """Pre-encode `source` into a dataset folder at `out_dir` as `config` says (resuming whatever
    is already done).

    image_tokenizer: a gptdraw.vq.model.ImageTokenizer; images are encoded at its config.image_size.
    caption_tokenizer: a gptdraw.captions.CaptionTokenizer (see caption_tokenizer_for); it is saved
        to out_dir/text_tokenizer.
    device: where to encode (default: CUDA if present); config.precision is resolved for it.
    rank/world_size: this process's place among several running the same prepare.
    image_tokenizer_path: recorded in the manifest so `gptdraw data inspect` can find the VQGAN.
    on_shard_done(k): called after shard k is written (tests use it to interrupt a run).
    poll_seconds/stall_seconds: how often rank 0 looks for the other ranks' shards, and how long
        it waits for the next one before it gives up.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    items = _check_request(source, image_tokenizer, rank=rank, world_size=world_size)
    split = EvalSplit.make(items, fraction=config.eval_fraction, count=config.eval_count)
    settings = _settings(source, config, items=items, split=split, image_tokenizer=image_tokenizer,
                         caption_tokenizer=caption_tokenizer)
    fingerprint = hashlib.sha256(fmt.dump_json(settings).encode()).hexdigest()
    _check_existing(out_dir, fingerprint)
    if rank == 0:
        _note_source_changes(out_dir, source.state())

    has_eval = split.numerator > 0
    plan = _ShardPlan(out_dir=out_dir, items=items, shard_size=config.shard_size, fingerprint=fingerprint,
                      split_dirs=(out_dir, out_dir / fmt.EVAL_SPLIT) if has_eval else (out_dir,))
    owned = [index for index in range(plan.shard_count) if index % world_size == rank]
    for directory in plan.split_dirs:
        directory.mkdir(parents=True, exist_ok=True)
        fmt.remove_temporaries(directory, [fmt.shard_name(index) for index in owned])
    if rank == 0:
        _save_text_tokenizer(caption_tokenizer, out_dir / fmt.TEXT_TOKENIZER_DIR)

    pending = [index for index in owned if not plan.finished(index)]
    reused = len(owned) - len(pending)
    if reused:
        logger.info("resuming: %d of this process's %d shards are already complete", reused, len(owned))
    processed = 0
    if pending:
        processed = _encode_shards(
            source, plan, pending, config=config, split=split, image_tokenizer=image_tokenizer,
            caption_tokenizer=caption_tokenizer, device=resolve_device(device), on_shard_done=on_shard_done,
            progress=progress, description=f"prepare{f' rank {rank}' if world_size > 1 else ''}",
        )

    counts = {"examples": 0, "skipped": {}, "eval_examples": 0, "eval_skipped": {}, "truncated": 0}
    if rank == 0:  # only rank 0 sees the whole dataset: it waits for the others and writes the manifests
        counts = _complete_dataset(plan, settings, caption_tokenizer=caption_tokenizer,
                                   image_tokenizer_path=image_tokenizer_path, poll_seconds=poll_seconds,
                                   stall_seconds=stall_seconds)
    seconds = time.perf_counter() - started
    return PrepareResult(out_dir=str(out_dir), **counts, shards_written=len(pending), shards_reused=reused,
                         items_processed=processed, seconds=seconds,
                         images_per_s=processed / seconds if seconds else 0.0, complete=rank == 0)


def _complete_dataset(plan: _ShardPlan, settings: dict, *, caption_tokenizer, image_tokenizer_path: str | None,
                      poll_seconds: float, stall_seconds: float) -> dict:
    """Rank 0, once its own shards are written: waits for every other shard, writes the
    manifests and returns the whole dataset's counts (PrepareResult's fields)."""
    _wait_for_shards(plan, poll_seconds=poll_seconds, stall_seconds=stall_seconds)
    train, evaluation = _write_manifests(plan, settings, image_tokenizer_path=image_tokenizer_path)
    truncated = train["truncated_captions"] + evaluation["truncated_captions"]
    if truncated:
        logger.warning(
            "%d captions were longer than text_len=%d tokens and were truncated",
            truncated, caption_tokenizer.text_len,
        )
    return {"examples": train["examples"], "skipped": train["skipped"], "eval_examples": evaluation["examples"],
            "eval_skipped": evaluation["skipped"], "truncated": truncated}


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
    staging = staging_directory(directory)
    caption_tokenizer.save_pretrained(staging)
    replace_directory(staging, directory)


def _encode_shards(source: Source, plan: _ShardPlan, pending: list[int], *, config: PrepareConfig, split: EvalSplit,
                   image_tokenizer, caption_tokenizer, device: torch.device,
                   on_shard_done: Callable[[int], None] | None, progress: bool, description: str) -> int:
    """Decodes, encodes and writes the `pending` shards; returns the source items read."""
    precision = resolve_precision(config.precision, device, purpose="pre-encoding", bf16_on_cpu=False)
    encoder = _Encoder(image_tokenizer, device, precision)
    grid = image_tokenizer.grid_size(image_tokenizer.config.image_size)
    pending_items = sum(stop - first for first, stop in map(plan.item_range, pending))
    processed = 0
    with tqdm(total=pending_items, unit="img", desc=description, disable=not progress, dynamic_ncols=True) as bar:
        shards = _stream_shards(source, pending, plan=plan, split=split, config=config,
                                image_size=image_tokenizer.config.image_size, encoder=encoder, bar=bar)
        for index, builders in shards:
            for directory, builder in zip(plan.split_dirs[::-1], builders[:len(plan.split_dirs)][::-1]):
                # The eval part first, the training part last: the training shard's done.json
                # is what a rerun looks for first.
                _write(directory, builder, plan=plan, caption_tokenizer=caption_tokenizer, grid=grid)
            processed += sum(builder.items for builder in builders)
            if on_shard_done is not None:
                on_shard_done(index)
    return processed


def _clean(item: SourceItem) -> SourceItem:
    """Check the caption before any pixel work: an item without a usable caption is not decoded."""
    if item.skip_reason is not None:
        return item
    try:
        return dataclasses.replace(item, caption=clean_caption(item.caption))
    except BadInput as error:
        return dataclasses.replace(item, image=None, skip_reason=error.reason)


def _stream_shards(source: Source, pending: list[int], *, plan: _ShardPlan, split: EvalSplit, config: PrepareConfig,
                   image_size: int, encoder: _Encoder, bar) -> Iterator[tuple[int, list[_ShardBuilder]]]:
    """Decode and encode the pending shards' items; yield (k, [train builder, eval builder]) per shard."""

    def tagged() -> Iterator[tuple[int, int, SourceItem]]:
        for index in pending:
            first, stop = plan.item_range(index)
            for offset, item in enumerate(source.read(first, stop)):
                yield index, first + offset, _clean(item)

    # One decode stream across all shards keeps the workers busy over shard boundaries;
    # tee buffers only the items in flight between the two sides.
    for_decoding, for_tags = itertools.tee(tagged())
    workers = default_workers() if config.workers is None else config.workers
    decoded = decode_parallel((tag[2] for tag in for_decoding), image_size, workers=workers,
                              min_size=config.min_image_size, max_pixels=config.max_image_pixels,
                              max_bytes=config.max_image_bytes)
    current: list[_ShardBuilder] | None = None
    for (index, position, _), (item, pixels, reason) in zip(for_tags, decoded):
        if current is not None and current[0].index != index:
            yield current[0].index, _finish(current, encoder)
            current = None
        if current is None:
            current = [_ShardBuilder(index=index), _ShardBuilder(index=index)]
        builder = current[1 if split.is_eval(position) else 0]
        builder.items += 1
        bar.update(1)
        if reason is not None:
            builder.skipped[reason] += 1
            continue
        builder.pixels.append(pixels)
        builder.keys.append(item.key)
        builder.captions.append(item.caption)
        if len(builder.pixels) == config.batch_size:
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


def _write(directory: Path, builder: _ShardBuilder, *, plan: _ShardPlan, caption_tokenizer,
           grid: tuple[int, int]) -> None:
    count = len(builder.keys)
    if count:
        encoded = caption_tokenizer.encode_batch(builder.captions)
        caption_ids, truncated = encoded.ids, int(sum(encoded.truncated))
        codes = np.concatenate(builder.codes)
    else:
        caption_ids, truncated = np.zeros((0, caption_tokenizer.text_len), np.int32), 0
        codes = np.zeros((0, *grid), np.uint16)
    record = {
        "settings_sha256": plan.fingerprint,
        "source_items": list(plan.item_range(builder.index)),
        "items": builder.items,
        "skipped": dict(sorted(builder.skipped.items())),
        "truncated_captions": truncated,
    }
    content = fmt.ShardContent(codes=codes, caption_ids=caption_ids, keys=builder.keys, captions=builder.captions)
    with reporting_full_disk(directory / fmt.shard_name(builder.index)):  # a full disk names the shard
        fmt.write_shard(directory, builder.index, content, record)


def _wait_for_shards(plan: _ShardPlan, *, poll_seconds: float, stall_seconds: float) -> None:
    """Rank 0: wait until every shard of every rank is complete on disk. If no shard completes
    for `stall_seconds`, another rank has probably died: stop with a message instead of waiting
    forever (what is written stays, and a rerun resumes)."""
    last_report = last_progress = time.monotonic()
    missing_before = None
    while True:
        missing = [index for index in range(plan.shard_count) if not plan.finished(index, verify=False)]
        if not missing:
            return
        now = time.monotonic()
        if missing_before is None or len(missing) < missing_before:
            missing_before, last_progress = len(missing), now
        if now - last_progress > stall_seconds:
            raise TimeoutError(
                f"{plan.out_dir}: no shard from the other processes completed in {stall_seconds:.0f} s "
                f"({len(missing)} missing, first {fmt.shard_name(missing[0])}); a process may have died. "
                "Rerun the same command to resume."
            )
        if now - last_report > 60:
            logger.info("waiting for %d shards from other ranks (first: %s)", len(missing), fmt.shard_name(missing[0]))
            last_report = now
        time.sleep(poll_seconds)


def _manifest(split_name: str, records: list[dict], *, settings: dict, fingerprint: str,
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
