"""Throughput of `gptdraw prepare` on this machine: decoding alone, then decoding + VQ encoding.

1. decode: photo-like JPEGs (default 500×375, like web images) → 256 px squares through
   decode_parallel with 0, 1, … workers (images/s).
2. encode: VQ encoding alone with a random-weight image tokenizer: the small shapes-f8
   preset at its 48 px, and the taming-f16-16384 architecture at 256 px for a few batches
   (slow on CPU; --no-taming skips it).
3. prepare: the full pipeline (folder source → decode → VQ encode → shards) in one process
   with each tokenizer. With decoding workers the two overlap: the rate approaches the
   slower of decode (× workers) and encode.

    python bench/prepare.py [--images 256] [--workers 0 1 2] [--out bench/out/prepare.json]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.data.decode import decode_parallel
from gptdraw.data.sources import SourceItem, open_source

# torch and the tokenizers are imported inside the functions that use them: decoding workers
# are spawned processes that import this script, and should not pay for torch and diffusers.


def photo_jpegs(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Smooth random colour fields with some noise: JPEG sizes close to real photos'."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 12, (height, width, 3), dtype=np.int16)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def bench_decode(jpegs: list[bytes], size: int, workers: int) -> dict:
    """Images/s through decode_parallel; `steady` leaves out the worker start-up (each spawned
    process starts Python and imports this script and the decoding code)."""
    items = [SourceItem(key=str(index), caption="x", image=data) for index, data in enumerate(jpegs)]
    started = time.perf_counter()
    first_at, decoded = None, 0
    for _, pixels, _ in decode_parallel(items, size, workers=workers):
        decoded += pixels is not None
        if first_at is None:
            first_at, first_count = time.perf_counter(), decoded
    ended = time.perf_counter()
    steady = (decoded - first_count) / (ended - first_at) if ended > first_at else float("nan")
    return {"workers": workers, "size": size, "images": decoded, "seconds": ended - started,
            "images_per_s": decoded / (ended - started), "startup_seconds": first_at - started,
            "steady_images_per_s": steady}


def bench_encode(preset: str, images: int, batch_size: int) -> dict:
    """Images/s of VQ encoding alone (random weights, fp32 on CPU)."""
    import torch

    from gptdraw.vq.model import ImageTokenizer, vq_preset

    torch.manual_seed(0)
    tokenizer = ImageTokenizer(vq_preset(preset)).eval()
    size = tokenizer.config.image_size
    batch = torch.rand(batch_size, 3, size, size)
    tokenizer.encode(batch[:1])  # warm-up: first-call kernel selection
    started = time.perf_counter()
    for _ in range(max(1, images // batch_size)):
        tokenizer.encode(batch)
    seconds = time.perf_counter() - started
    done = max(1, images // batch_size) * batch_size
    return {"preset": preset, "image_size": size, "batch_size": batch_size, "images": done,
            "seconds": seconds, "images_per_s": done / seconds}


def bench_prepare(folder: Path, preset: str, count: int, batch_size: int, workers: int, work: Path) -> dict:
    """The whole pipeline on `count` JPEGs of `folder` (decoding in-process with workers=0)."""
    import torch

    from gptdraw.data.prepare import prepare
    from gptdraw.data.prepare_config import PrepareConfig
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.vq.model import ImageTokenizer, vq_preset

    torch.manual_seed(0)
    tokenizer = ImageTokenizer(vq_preset(preset)).eval()
    captions = CaptionTokenizer.train((f"photo number {i}" for i in range(100)), vocab_size=300, text_len=64)
    subset = work / f"subset-{count}"
    if not subset.exists():
        subset.mkdir()
        for index in range(count):
            (subset / f"{index:05d}.jpg").symlink_to(folder / f"{index:05d}.jpg")
            (subset / f"{index:05d}.txt").write_text(f"photo number {index}")
    result = prepare(open_source(str(subset)), work / f"dataset-{preset}-{count}-{workers}",
                     PrepareConfig(shard_size=1000, batch_size=batch_size, workers=workers), image_tokenizer=tokenizer,
                     caption_tokenizer=captions, device="cpu", progress=False)
    return {"preset": preset, "image_size": tokenizer.config.image_size, "images": result.examples,
            "batch_size": batch_size, "workers": workers, "seconds": result.seconds,
            "images_per_s": result.images_per_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs for the decode benchmark")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--taming-images", type=int, default=16, help="images through the taming-f16 encoder")
    parser.add_argument("--no-taming", action="store_true")
    add_out_option(parser, "prepare")
    args = parser.parse_args()

    jpegs = photo_jpegs(args.images, args.width, args.height)
    result = {"benchmark": "prepare", "machine": machine(torch.device("cpu")),
              "jpeg": {"width": args.width, "height": args.height, "mean_bytes": float(np.mean([len(j) for j in jpegs]))},
              "decode": [], "encode": [], "prepare": []}
    for workers in args.workers:
        for size in (256, 48):
            run = bench_decode(jpegs, size, workers)
            result["decode"].append(run)
            print(f"decode {args.width}x{args.height} JPEG → {size} px, {workers} workers: "
                  f"{run['steady_images_per_s']:.0f} images/s steady ({run['images_per_s']:.0f} with "
                  f"{run['startup_seconds']:.1f} s start-up)")

    presets = [("shapes-f8", args.images, 64)]
    if not args.no_taming:
        presets.append(("taming-f16-16384", min(args.taming_images, args.images), 8))
    for preset, count, batch_size in presets:
        run = bench_encode(preset, count, batch_size)
        result["encode"].append(run)
        print(f"VQ encode {preset} (random weights) at {run['image_size']} px, batch {batch_size}: "
              f"{run['images_per_s']:.1f} images/s on CPU (fp32)")

    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        folder = work / "photos"
        folder.mkdir()
        for index, data in enumerate(jpegs):
            (folder / f"{index:05d}.jpg").write_bytes(data)
        for preset, count, batch_size in presets:
            run = bench_prepare(folder, preset, count, batch_size, workers=0, work=work)
            result["prepare"].append(run)
            print(f"prepare (decode + encode + write, one process) with {preset} at {run['image_size']} px: "
                  f"{run['images_per_s']:.1f} images/s on CPU")

    write_result(result, args.out)


if __name__ == "__main__":
    main()
