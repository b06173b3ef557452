"""How fast gptdraw draws: the fast sampler beside transformers' GPT2LMHeadModel.generate.

Times a batch of prompts (default 16) drawn to whole images with classifier-free guidance,
with random weights (speed does not depend on them), in the reference layout by default:
64 caption tokens + 16×16 codes from a 16,384-code VQGAN (taming f16 architecture).

- fast: `CodeDrawer` (static KV cache, CFG as one batch of 2B rows mixed before the LM head,
  codebook-only logits, optionally a compiled decode step: CUDA graphs on a GPU), then one
  batched VQGAN decode.
- baseline: `gpt.generate` on the same captions, settings and dtype. Its guidance is
  transformers' own (`guidance_scale` + `negative_prompt_ids` = the blank caption: an
  UnbatchedClassifierFreeGuidanceLogitsProcessor, which runs the blank rows as a second
  forward with its own cache and mixes log-softmaxes; that differs from mixing logits only by
  a constant per row, so it is the same distribution). A logits processor
  (`ImageCodesOnly`) masks everything but image codes before temperature/top-k/top-p, as
  gptdraw's sampler draws only codes. The same VQGAN decode (timed once) is added to it.

With --compile the fast loop's decode step is compiled; the first draw (which compiles) is
timed apart from the steady state, and one uncompiled draw with the same seed checks that the
compiled step draws the same codes (and gives the compile speedup).

Prints one JSON object (and writes it to --out): seconds, baseline_seconds, speedup (both
including the decode), their sampling-only parts, seconds per image, and the device. On a CPU
it also gives each timing's process CPU time and the load average before and after, because
wall-clock times on a shared machine depend on the other processes (with one torch thread,
CPU seconds are about the wall-clock seconds of an idle machine).

    python bench/generate.py                                   # reference layout, gpt-draw preset
    python bench/generate.py --preset tiny --text-len 16 --grid 8 --codebook 1024 \\
        --text-vocab 1024 --vq small --warmup 0 --repeats 1 --threads 1   # small: under a minute on a CPU
    python bench/generate.py --compile                         # on a GPU: CUDA graphs
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from common import add_out_option, device_name, machine, synchronize, write_result  # bench/common.py
from gptdraw.gpt.config import model_preset
from gptdraw.gpt.model import build_model
from gptdraw.runtime import PRECISIONS, canonical_precision, native_bf16, resolve_device, resolve_precision, torch_dtype
from gptdraw.gpt.sampling import CodeDrawer, DrawerConfig, SamplingConfig, sample_codes
from gptdraw.sequence import SequenceLayout
from gptdraw.vq.model import ImageTokenizer, vq_preset


class ImageCodesOnly(LogitsProcessor):
    """Masks every token but the image codes: generate must draw only codes, as gptdraw does."""

    def __init__(self, layout: SequenceLayout):
        self.start = layout.image_offset
        self.stop = layout.image_offset + layout.codebook_size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        masked = torch.full_like(scores, float("-inf"))
        masked[:, self.start : self.stop] = scores[:, self.start : self.stop]
        return masked


def image_tokenizer_for(kind: str, grid: int, codebook: int, seed: int = 0) -> ImageTokenizer | None:
    """A random-weight VQGAN whose f16 grid is grid×grid: the taming architecture, or one with
    a quarter of its channels ("small"), or none."""
    if kind == "none":
        return None
    channels = {"taming": (128, 128, 256, 256, 512), "small": (32, 32, 64, 64, 128)}[kind]
    config = vq_preset(
        "taming-f16-16384", image_size=16 * grid, block_out_channels=channels, num_vq_embeddings=codebook
    )
    torch.manual_seed(seed)
    return ImageTokenizer(config).eval()


class Timing:
    """Wall-clock and process CPU seconds of the runs of one thing."""

    def __init__(self):
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def run(self, function, device: torch.device):
        synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = function()
        synchronize(device)
        self.wall.append(time.perf_counter() - started)
        self.cpu.append(time.process_time() - cpu_started)
        return result

    def median(self) -> float:
        return statistics.median(self.wall) if self.wall else 0.0

    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else 0.0


def first_difference(codes: torch.Tensor, reference: torch.Tensor) -> int | None:
    """The first step (code position) where any image differs, or None."""
    differs = (codes.reshape(codes.shape[0], -1) != reference.reshape(reference.shape[0], -1)).any(dim=0)
    return int(differs.nonzero()[0]) if differs.any() else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-draw", help="model preset (gptdraw.gpt.config): tiny, gpt-draw, …")
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch (one image each)")
    parser.add_argument("--text-len", type=int, default=64, help="caption tokens")
    parser.add_argument("--text-vocab", type=int, default=50258, help="caption vocabulary (GPT-2's + pad by default)")
    parser.add_argument("--grid", type=int, default=16, help="codes per image side")
    parser.add_argument("--codebook", type=int, default=16384, help="VQGAN codebook size")
    parser.add_argument("--vq", choices=("taming", "small", "none"), default="taming",
                        help="VQGAN decoder timed: taming f16 architecture, a quarter of its channels, or no decode")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", "--dtype", dest="precision", default="auto", type=canonical_precision, choices=PRECISIONS,
                        help="the weights' precision: auto (bf16 on a GPU that has it), fp32, bf16")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for inductor (default: reduce-overhead on a GPU, default on a CPU)")
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of generate and the VQGAN decode first "
                        "(the fast loop's first draw, which compiles, is timed apart)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip transformers' generate (speedups are then null): for quick runs of the fast loop")
    add_out_option(parser, "generate")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    dtype = torch_dtype(resolve_precision(args.precision, device, purpose="drawing", bf16_on_cpu=False))
    layout = SequenceLayout(
        text_vocab_size=args.text_vocab, pad_id=args.text_vocab - 1, codebook_size=args.codebook,
        text_len=args.text_len, grid=(args.grid, args.grid),
    )
    gpt = build_model(model_preset(args.preset), layout).to(device=device, dtype=dtype).eval()
    tokenizer = image_tokenizer_for(args.vq, args.grid, args.codebook)
    if tokenizer is not None:
        tokenizer = tokenizer.to(device=device, dtype=dtype)
    settings = SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale
    )
    generator = torch.Generator().manual_seed(0)
    caption_ids = torch.randint(0, layout.pad_id, (args.batch, layout.text_len), generator=generator)
    caption_ids[:, layout.text_len // 2 :] = layout.pad_id  # captions shorter than the budget, as usual
    caption_ids = caption_ids.to(device)
    blank = torch.full_like(caption_ids, layout.pad_id)

    measured_on = machine(device)
    drawer = CodeDrawer(gpt, layout, DrawerConfig(
        compile=args.compile, backend=args.compile_backend, mode=args.compile_mode
    ))

    def fast(with_drawer: CodeDrawer = drawer) -> torch.Tensor:
        steps = with_drawer.iter_codes(caption_ids, settings, torch.Generator(device).manual_seed(0))
        return sample_codes(steps, layout)  # (B, h, w)

    @torch.inference_mode()
    def baseline() -> torch.Tensor:
        torch.manual_seed(0)
        ids = gpt.generate(
            input_ids=caption_ids,
            attention_mask=torch.ones_like(caption_ids),
            max_new_tokens=layout.image_len,
            do_sample=settings.temperature > 0,
            temperature=settings.temperature if settings.temperature > 0 else None,
            top_k=settings.top_k,
            top_p=settings.top_p,
            guidance_scale=settings.cfg_scale if settings.guided else None,
            negative_prompt_ids=blank if settings.guided else None,
            negative_prompt_attention_mask=torch.ones_like(blank) if settings.guided else None,
            logits_processor=LogitsProcessorList([ImageCodesOnly(layout)]),
            pad_token_id=layout.pad_id,
            eos_token_id=None,
        )
        return (ids[:, layout.text_len :] - layout.image_offset).reshape(args.batch, args.grid, args.grid)

    # As GPTDrawPipeline decides: with dtype auto, a CPU that runs bf16 natively decodes under bf16 autocast.
    decode_in_bf16 = args.precision == "auto" and device.type == "cpu" and native_bf16(device)

    @torch.inference_mode()
    def decode(codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, torch.bfloat16, enabled=decode_in_bf16):
            return tokenizer.decode(codes)  # one batched call for all images

    # The first fast draw compiles a compiled step: timed on its own, never in the median.
    first, fast_runs, baseline_runs, decode_runs = Timing(), Timing(), Timing(), Timing()
    codes = first.run(fast, device)
    for _ in range(args.warmup):
        if not args.no_baseline:
            baseline()
        if tokenizer is not None:
            decode(codes)
    for _ in range(args.repeats):
        codes = fast_runs.run(fast, device)
        if not args.no_baseline:
            baseline_codes = baseline_runs.run(baseline, device)
            assert baseline_codes.min() >= 0 and baseline_codes.max() < layout.codebook_size, "generate drew a non-code"
        if tokenizer is not None:
            decode_runs.run(lambda: decode(codes), device)
    assert codes.min() >= 0 and codes.max() < layout.codebook_size
    check = None
    if args.compile:  # the compiled step must draw what the uncompiled one draws
        uncompiled = Timing()
        reference = uncompiled.run(lambda: fast(CodeDrawer(gpt, layout)), device)
        check = {
            "codes_equal": bool(torch.equal(codes, reference)),
            "equal_fraction": float((codes == reference).float().mean()),
            "images_equal": int((codes == reference).flatten(1).all(dim=1).sum()),
            "first_difference_step": first_difference(codes, reference),
            "uncompiled_sampling_seconds": uncompiled.median(),
            "uncompiled_sampling_cpu_seconds": uncompiled.median_cpu(),
        }

    sampling = fast_runs.median() if fast_runs.wall else first.median()
    baseline_sampling = baseline_runs.median() if baseline_runs.wall else None
    decoding = decode_runs.median()

    def per_image(seconds: float | None) -> float | None:
        return None if seconds is None else seconds / args.batch

    total = sampling + decoding
    baseline_total = None if baseline_sampling is None else baseline_sampling + decoding
    result = {
        "benchmark": "generate",
        "machine": measured_on,
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile,
        "compile_backend": args.compile_backend if args.compile else None,
        "preset": args.preset,
        "parameters": sum(p.numel() for p in gpt.parameters()),
        "batch": args.batch,
        "layout": {"text_len": layout.text_len, "text_vocab": layout.text_vocab_size, "grid": list(layout.grid),
                   "codebook": layout.codebook_size},
        "vq": args.vq,
        "decode_in_bf16": decode_in_bf16,
        "settings": settings.to_dict(),
        "seconds": total,
        "baseline_seconds": baseline_total,
        "speedup": None if baseline_total is None else baseline_total / total,
        "sampling_seconds": sampling,
        "baseline_sampling_seconds": baseline_sampling,
        "sampling_speedup": None if baseline_sampling is None else baseline_sampling / sampling,
        "decode_seconds": decoding,
        "seconds_per_image": per_image(total),
        "baseline_seconds_per_image": per_image(baseline_total),
        "sampling_seconds_per_image": per_image(sampling),
        "codes_per_second": args.batch * layout.image_len / sampling,
        # Process CPU seconds (all torch threads): steadier than wall-clock on a shared machine.
        "sampling_cpu_seconds": fast_runs.median_cpu() if fast_runs.cpu else first.median_cpu(),
        "baseline_sampling_cpu_seconds": baseline_runs.median_cpu() if baseline_runs.cpu else None,
        "sampling_cpu_speedup": baseline_runs.median_cpu() / fast_runs.median_cpu()
        if baseline_runs.cpu and fast_runs.cpu else None,
        "first_draw_seconds": first.median(),
        "compile_seconds": first.median() - fast_runs.median() if args.compile and fast_runs.wall else None,
        "compiled_check": check,
        "runs": {"first": first.wall, "fast": fast_runs.wall, "baseline": baseline_runs.wall, "decode": decode_runs.wall,
                 "fast_cpu": fast_runs.cpu, "baseline_cpu": baseline_runs.cpu},
        "baseline": "GPT2LMHeadModel.generate, guidance_scale + negative_prompt_ids (blank caption), "
                    "logits processor masking all but image codes, same dtype, batch and settings",
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
