"""Encode and decode speed of an image tokenizer (default: the reference taming f16-16384 architecture).

Random weights: speed does not depend on what the weights are. For each variant (dtype,
memory format, torch.compile) and batch size it times `ImageTokenizer.encode` (images →
codes, including the nearest-code search) and `ImageTokenizer.decode` (codes → images),
prints images/s and writes everything to a JSON file.

    python bench/vqgan.py                                        # 256 px, batches 1,4,16
    python bench/vqgan.py --image-size 128 --batch-sizes 1,4 --repeats 2   # ~1–2 min on 2 CPU cores
    python bench/vqgan.py --variants fp32,bf16+cl+compile --device cuda

Variants are dtype[+cl][+compile]: fp32 or bf16 (bf16 = autocast), +cl = channels_last,
+compile = torch.compile of the encoder and decoder (compile time is reported separately
as the first call's duration, not mixed into the throughput).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from common import add_out_option, machine, synchronize, write_result  # bench/common.py
from gptdraw.vq.model import ImageTokenizer, vq_preset

DEFAULT_VARIANTS = "fp32,bf16,fp32+cl,bf16+cl,fp32+compile"


@dataclass
class Variant:
    """One way of running the tokenizer."""

    name: str  # as given, e.g. "bf16+cl"
    dtype: str  # "fp32" or "bf16" (autocast)
    channels_last: bool  # weights and inputs in channels_last memory format
    compile: bool  # torch.compile the encoder and decoder

    @classmethod
    def parse(cls, text: str) -> "Variant":
        dtype, *flags = text.strip().split("+")
        if dtype not in ("fp32", "bf16") or any(flag not in ("cl", "compile") for flag in flags):
            raise ValueError(f"bad variant {text!r}: expected fp32|bf16 followed by optional +cl and +compile")
        return cls(text.strip(), dtype, "cl" in flags, "compile" in flags)


@dataclass
class Result:
    """Throughput of one variant at one batch size."""

    variant: str
    batch_size: int
    encode_images_per_s: float  # batch_size / median encode time
    decode_images_per_s: float  # batch_size / median decode time
    encode_s: float  # median seconds per encode call
    decode_s: float  # median seconds per decode call
    first_call_s: float  # first encode + decode (includes compilation for +compile)


def timed(function, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    output = function()
    synchronize(device)
    return time.perf_counter() - start, output


def build_tokenizer(
    preset: str, image_size: int, variant: Variant, device: torch.device, backend: str = "inductor"
) -> ImageTokenizer:
    torch.manual_seed(0)
    tokenizer = ImageTokenizer(vq_preset(preset, image_size=image_size)).to(device).eval()
    if variant.channels_last:
        tokenizer.to(memory_format=torch.channels_last)
    if variant.compile:
        tokenizer.model.encoder.compile(backend=backend)
        tokenizer.model.decoder.compile(backend=backend)
    return tokenizer


def bench_variant(
    tokenizer: ImageTokenizer, variant: Variant, batch_size: int, image_size: int, repeats: int, warmup: int,
    device: torch.device,
) -> Result:
    generator = torch.Generator().manual_seed(batch_size)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)
    if variant.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    rows, columns = tokenizer.grid_size(image_size)
    codes = torch.randint(0, tokenizer.codebook_size, (batch_size, rows, columns), generator=generator).to(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if variant.dtype == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        first_encode, _ = timed(lambda: tokenizer.encode(images), device)
        first_decode, _ = timed(lambda: tokenizer.decode(codes), device)
        for _ in range(warmup):
            tokenizer.encode(images)
            tokenizer.decode(codes)
        encode_times = [timed(lambda: tokenizer.encode(images), device)[0] for _ in range(repeats)]
        decode_times = [timed(lambda: tokenizer.decode(codes), device)[0] for _ in range(repeats)]
    encode_s, decode_s = statistics.median(encode_times), statistics.median(decode_times)
    return Result(variant.name, batch_size, batch_size / encode_s, batch_size / decode_s, encode_s, decode_s,
                  first_encode + first_decode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="taming-f16-16384", help="VQ preset (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="square image size (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="1,4,16", help="comma-separated (default: %(default)s)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated dtype[+cl][+compile] "
                        "(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement; the median counts")
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls after the first, which is never timed "
                        "(default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of +compile variants (aot_eager: trace without generating code)")
    add_out_option(parser, "vqgan")
    args = parser.parse_args(argv)

    try:
        batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
        variants = [Variant.parse(text) for text in args.variants.split(",")]
    except ValueError as error:
        parser.error(str(error))
    if min(batch_sizes) <= 0 or args.repeats <= 0 or args.warmup < 0:
        parser.error("batch sizes and --repeats must be positive, --warmup not negative")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    measured_on = machine(device)
    environment = {
        "device": measured_on["device"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "image_size": args.image_size,
        "repeats": args.repeats,
    }
    print(" ".join(f"{key}={value}" for key, value in environment.items()))
    header = f"{'variant':<18} {'batch':>5} {'encode img/s':>13} {'decode img/s':>13} {'first call s':>13}"
    print(header)
    print("-" * len(header))
    results: list[Result] = []
    for variant in variants:
        tokenizer = build_tokenizer(args.preset, args.image_size, variant, device, args.compile_backend)
        for batch_size in batch_sizes:
            result = bench_variant(tokenizer, variant, batch_size, args.image_size, args.repeats, args.warmup, device)
            results.append(result)
            print(f"{result.variant:<18} {batch_size:>5} {result.encode_images_per_s:>13.2f} "
                  f"{result.decode_images_per_s:>13.2f} {result.first_call_s:>13.2f}", flush=True)
            # Written after every measurement: a run stopped at its time limit keeps what it measured.
            write_result({"machine": measured_on, "environment": environment, "results": [asdict(r) for r in results]},
                         args.out)
        del tokenizer
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
