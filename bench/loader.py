"""How fast the training reader feeds sequences from one CPU core: EpochBatches + ShardDataset.get_batch.

Builds a synthetic dataset of random codes in the real layout (default: 200,000 examples,
16×16 codes, 64 caption tokens = 320-token sequences, shards of 10,000), then times batch
index generation plus gathering with torch and numpy limited to one thread. Target: at
least 2,000 sequences/s. Prints the figures and writes JSON.

    python bench/loader.py [--examples 200000] [--batch-size 64] [--seconds 5] [--out bench/out/loader.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.data import shards as fmt
from gptdraw.data.loader import EpochBatches


def build_dataset(directory: Path, examples: int, grid: int, text_len: int, shard_size: int) -> None:
    """Random shards in the on-disk format, with the manifest fields ShardDataset reads."""
    rng = np.random.default_rng(0)
    records = []
    for index, first in enumerate(range(0, examples, shard_size)):
        count = min(shard_size, examples - first)
        content = fmt.ShardContent(
            codes=rng.integers(0, 16384, (count, grid, grid), dtype=np.uint16),
            caption_ids=rng.integers(0, 16384, (count, text_len), dtype=np.int32),
            keys=[str(first + row) for row in range(count)],
            captions=["a caption"] * count,
        )
        records.append(fmt.write_shard(directory, index, content, {}))
    manifest = {
        "format": fmt.FORMAT_NAME, "version": fmt.FORMAT_VERSION, "split": "train", "examples": examples,
        "grid": [grid, grid], "text_len": text_len, "codebook_size": 16384,
        "shards": [{"name": r["name"], "examples": r["examples"], "sha256": r["sha256"]} for r in records],
    }
    fmt.write_json_atomic(directory / fmt.MANIFEST_FILE, manifest)


def measure(dataset: fmt.ShardDataset, batch_size: int, world_size: int, seconds: float) -> dict:
    """Sequences/s for one rank's share of global batches of `batch_size`."""
    batches = EpochBatches(len(dataset), batch_size, seed=0, rank=0, world_size=world_size).batches()
    sequences = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = next(batches)
        caption_ids, codes = dataset.get_batch(batch.indices)
        sequences += caption_ids.shape[0]
    elapsed = time.perf_counter() - started
    tokens = dataset.text_len + dataset.grid[0] * dataset.grid[1]
    return {"batch_size": batch_size, "world_size": world_size, "per_rank_batch": batch_size // world_size,
            "sequences_per_s": sequences / elapsed, "tokens_per_s": sequences * tokens / elapsed,
            "sequence_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    add_out_option(parser, "loader")
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core, as the target says
    measured_on = machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        build_dataset(Path(directory), args.examples, args.grid, args.text_len, args.shard_size)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        dataset = fmt.ShardDataset(directory, verify=True)
        open_seconds = time.perf_counter() - started
        runs = [measure(dataset, args.batch_size, 1, args.seconds),
                measure(dataset, 1024, 8, args.seconds),  # the reference recipe's global batch over 8 ranks
                measure(dataset, 1024, 1, args.seconds)]
    result = {
        "benchmark": "loader", "examples": args.examples, "grid": [args.grid, args.grid], "text_len": args.text_len,
        "shard_size": args.shard_size, "build_seconds": build_seconds, "open_with_checksums_seconds": open_seconds,
        "runs": runs, "machine": measured_on, "target_sequences_per_s": 2000,
    }
    for run in runs:
        print(f"global batch {run['batch_size']:5d} over {run['world_size']} rank(s): "
              f"{run['sequences_per_s']:,.0f} sequences/s ({run['tokens_per_s']:,.0f} tokens/s) on one core")
    print(f"opening {args.examples:,} examples with checksum verification: {open_seconds:.2f} s")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
