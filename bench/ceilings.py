"""The device's two ceilings, measured: dense bf16 matmul FLOP/s and memory copy bytes/s.

MFU in bench/train.py is taken against the vendor's stated peak; these measured ceilings say
how much of that peak this card, as it is found, really gives (an H200's stated 989 TFLOP/s
dense bf16 is about 790 measured on random data). Random inputs, never zeros: zeros run faster.

    python bench/ceilings.py                      # a GPU: seconds
    python bench/ceilings.py --size 512 --copy-mib 64 --repeats 2   # a CPU, quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import add_out_option, device_name, machine, synchronize, write_result  # bench/common.py


def median_seconds(function, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall seconds of `function()` after `warmup` untimed calls, device work included."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_flops(device: torch.device, size: int, repeats: int) -> float:
    """FLOP/s of a size³ bf16 matmul; four input pairs in turn so that caches do not serve them."""
    generator = torch.Generator(device).manual_seed(0)
    pairs = [(torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator),
              torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)) for _ in range(4)]
    turn = iter(range(10**9))

    def product():
        a, b = pairs[next(turn) % len(pairs)]
        return a @ b

    return 2 * size**3 / median_seconds(product, device, repeats)


def copy_bytes_per_s(device: torch.device, mib: int, repeats: int) -> float:
    """Bytes read plus bytes written per second by a device-to-device copy of `mib` MiB."""
    source = torch.rand(mib * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    return 2 * source.numel() * 4 / median_seconds(lambda: target.copy_(source), device, repeats)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="square matmul size")
    parser.add_argument("--copy-mib", type=int, default=4096, help="MiB copied (several times the L2 cache)")
    parser.add_argument("--repeats", type=int, default=10)
    add_out_option(parser, "ceilings")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "machine": machine(device),
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "matmul_size": args.size,
        "bf16_matmul_flops": matmul_flops(device, args.size, args.repeats),
        "copy_mib": args.copy_mib,
        "copy_bytes_per_s": copy_bytes_per_s(device, args.copy_mib, args.repeats),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        result.update(multiprocessors=properties.multi_processor_count, memory_gib=properties.total_memory / 2**30)
    try:
        import transformers, accelerate  # noqa: E401 — the versions the figures were taken with

        result.update(transformers=transformers.__version__, accelerate=accelerate.__version__)
    except ImportError:
        pass
    print(json.dumps(result, indent=2))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
