"""How fast gptdraw draws: the fast sampler beside transformers' GPT2LMHeadModel.generate.

Times a batch of prompts (default 16) drawn to whole images with classifier-free guidance,
with random weights (speed does not depend on them), in the reference layout by default:
64 caption tokens + 16×16 codes from a 16,384-code VQGAN (taming f16 architecture).

- fast: `CodeDrawer` (static KV cache, CFG as one batch of 2B rows, codebook-only logits,
  optionally a compiled decode step: CUDA graphs on a GPU), then one batched VQGAN decode.
- baseline: `gpt.generate` on the same captions, settings and dtype. Its guidance is
  transformers' own (`guidance_scale` + `negative_prompt_ids` = the blank caption: an
  UnbatchedClassifierFreeGuidanceLogitsProcessor, which runs the blank rows as a second
  forward with its own cache and mixes log-softmaxes; that differs from mixing logits only by
  a constant per row, so it is the same distribution). A logits processor
  (`ImageCodesOnly`) masks everything but image codes before temperature/top-k/top-p, as
  gptdraw's sampler draws only codes. The same VQGAN decode (timed once) is added to it.

Prints one JSON object (and writes it to --out): seconds, baseline_seconds, speedup (both
including the decode), their sampling-only parts, seconds per image, and the device.

    python bench/generate.py                                   # reference layout, gpt-draw preset
    python bench/generate.py --preset tiny --text-len 16 --grid 8 --codebook 1024 \\
        --text-vocab 1024 --vq small --warmup 0 --repeats 1 --threads 1   # small: under a minute on a CPU
    python bench/generate.py --compile                         # on a GPU: CUDA graphs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from gptdraw.config import model_preset
from gptdraw.model import build_model
from gptdraw.pipeline import resolve_device, resolve_dtype
from gptdraw.sampling import CodeDrawer, DecodeOptions, SamplingSettings
from gptdraw.sequence import SequenceLayout
from gptdraw.vqgan import ImageTokenizer, vq_preset


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> tuple[float, object]:
    synchronize(device)
    started = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt-draw", help="model preset (gptdraw.config): tiny, gpt-draw, …")
    parser.add_argument("--batch", type=int, default=16, help="prompts per batch (one image each)")
    parser.add_argument("--text-len", type=int, default=64, help="caption tokens")
    parser.add_argument("--text-vocab", type=int, default=50258, help="caption vocabulary (GPT-2's + pad by default)")
    parser.add_argument("--grid", type=int, default=16, help="codes per image side")
    parser.add_argument("--codebook", type=int, default=16384, help="VQGAN codebook size")
    parser.add_argument("--vq", choices=("taming", "small", "none"), default="taming",
                        help="VQGAN decoder timed: taming f16 architecture, a quarter of its channels, or no decode")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that has it), float32, bfloat16")
    parser.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on a GPU)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each first (compiles)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the median is reported")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--out", default="bench/out/generate.json", help="JSON file to write")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    layout = SequenceLayout(
        text_vocab_size=args.text_vocab, pad_id=args.text_vocab - 1, codebook_size=args.codebook,
        text_len=args.text_len, grid=(args.grid, args.grid),
    )
    gpt = build_model(model_preset(args.preset), layout).to(device=device, dtype=dtype).eval()
    tokenizer = image_tokenizer_for(args.vq, args.grid, args.codebook)
    if tokenizer is not None:
        tokenizer = tokenizer.to(device=device, dtype=dtype)
    settings = SamplingSettings(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, cfg_scale=args.cfg_scale
    )
    generator = torch.Generator().manual_seed(0)
    caption_ids = torch.randint(0, layout.pad_id, (args.batch, layout.text_len), generator=generator)
    caption_ids[:, layout.text_len // 2 :] = layout.pad_id  # captions shorter than the budget, as usual
    caption_ids = caption_ids.to(device)
    blank = torch.full_like(caption_ids, layout.pad_id)

    drawer = CodeDrawer(gpt, layout, DecodeOptions(compile=args.compile, backend=args.compile_backend))

    def fast() -> torch.Tensor:
        codes = None
        for codes in drawer.iter_codes(caption_ids, settings, torch.Generator(device).manual_seed(0)):
            pass
        return codes.reshape(args.batch, args.grid, args.grid)  # (B, h, w)

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

    @torch.inference_mode()
    def decode(codes: torch.Tensor) -> torch.Tensor:
        return tokenizer.decode(codes)  # one batched call for all images

    for _ in range(args.warmup):
        codes = fast()
        baseline()
        if tokenizer is not None:
            decode(codes)

    fast_runs, baseline_runs, decode_runs = [], [], []
    for _ in range(args.repeats):
        seconds, codes = timed(fast, device)
        fast_runs.append(seconds)
        seconds, baseline_codes = timed(baseline, device)
        baseline_runs.append(seconds)
        if tokenizer is not None:
            decode_runs.append(timed(lambda: decode(codes), device)[0])
    assert codes.min() >= 0 and codes.max() < layout.codebook_size
    assert baseline_codes.min() >= 0 and baseline_codes.max() < layout.codebook_size, "generate drew a non-code"

    sampling = statistics.median(fast_runs)
    baseline_sampling = statistics.median(baseline_runs)
    decoding = statistics.median(decode_runs) if decode_runs else 0.0
    result = {
        "benchmark": "generate",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile,
        "preset": args.preset,
        "parameters": sum(p.numel() for p in gpt.parameters()),
        "batch": args.batch,
        "layout": {"text_len": layout.text_len, "text_vocab": layout.text_vocab_size, "grid": list(layout.grid),
                   "codebook": layout.codebook_size},
        "vq": args.vq,
        "settings": settings.to_dict(),
        "seconds": sampling + decoding,
        "baseline_seconds": baseline_sampling + decoding,
        "speedup": (baseline_sampling + decoding) / (sampling + decoding),
        "sampling_seconds": sampling,
        "baseline_sampling_seconds": baseline_sampling,
        "sampling_speedup": baseline_sampling / sampling,
        "decode_seconds": decoding,
        "seconds_per_image": (sampling + decoding) / args.batch,
        "baseline_seconds_per_image": (baseline_sampling + decoding) / args.batch,
        "codes_per_second": args.batch * layout.image_len / sampling,
        "runs": {"fast": fast_runs, "baseline": baseline_runs, "decode": decode_runs},
        "baseline": "GPT2LMHeadModel.generate, guidance_scale + negative_prompt_ids (blank caption), "
                    "logits processor masking all but image codes, same dtype, batch and settings",
        "torch": torch.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
