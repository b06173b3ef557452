"""Training throughput: gptdraw's training loop against a plain eager baseline, in one run.

Both loops read the same memory-mapped shards (random codes and captions written here), so
data loading is inside the measured step loop. gptdraw's loop is `gptdraw.gpt.train.train`
itself (bf16 autocast where the hardware has it, chunked cross-entropy, fused AdamW on
CUDA, optionally torch.compile). Two baselines: transformers' GPT2LMHeadModel called with
labels, torch's AdamW, no compile, in fp32 (what the model does out of the box) and under bf16
autocast (what a user gets with one line; on hardware without bf16 it is left out).

MFU = achieved model FLOP/s ÷ peak FLOP/s. Model FLOPs per token are 6·N + 12·L·C·T
(N: parameters that do matmuls, the LM head's rows that are multiplied included — per modality,
a caption position's caption ids and an image position's codes; L layers, C width, T context).
The baseline's MFU counts its own head, the whole joint vocabulary.
The peak is the device's stated dense bf16 tensor peak on known GPUs, and on a CPU the bf16
matmul rate measured here (a 4096² matmul, best of several).

Rates are per second of wall time, and on a CPU also per second of process CPU time: on a
machine shared with other work the two loops may get different shares of the cores, and the
CPU-time ratio then moves less than the wall-time one. The load average is recorded beside them.

Peak memory: on a GPU, torch.cuda.max_memory_allocated over the timed run (always reported).
On a CPU with --memory, the live tensor bytes of two more training steps, replayed from the CPU
allocator's events (bench/memory.py): the figure max_memory_allocated would give on a GPU, split
into parameters, gradients, optimizer state and activations, in the forward and backward passes
and in the optimizer step. --memory-only skips the timing; --memory-depths measures the preset
at smaller depths and extrapolates to its own (for models too big or slow for the machine).

    python bench/train.py --preset tiny --steps 20                    # < 1 minute on a laptop CPU
    python bench/train.py --preset gpt-draw --micro-batch 16 --steps 50 --compile   # a GPU
    python bench/train.py --preset gpt-draw --micro-batch 16 --memory-only           # CPU, minutes
    python bench/train.py --preset gpt-draw-large --micro-batch 16 --memory-only --memory-depths 2 4
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gptdraw.gpt.config import TrainConfig, model_preset
from gptdraw.data.shards import FORMAT_NAME, FORMAT_VERSION, ShardContent, ShardDataset, write_shard
from gptdraw.files import write_json_atomic
from gptdraw.gpt.model import build_model
from gptdraw.sequence import SequenceLayout
from gptdraw.captions import CaptionTokenizer
from gptdraw.data.loader import EpochBatches
from gptdraw.runtime import PRECISIONS, canonical_precision, resolve_device, resolve_precision
from gptdraw.gpt.train import micro_batch_indices, train
from gptdraw.vq.model import ImageTokenizer, VQConfig
from common import add_out_option, device_name, machine, synchronize, write_result  # bench/common.py
from memory import GIB, extrapolate_by_depth, highest, measure_training_memory  # bench/memory.py, beside this script

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity).
STATED_PEAKS = {
    # The first key whose words are all in the device's name counts: specific names first.
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
    "A100": 312e12, "L40S": 362e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "RTX 3060": 51e12,
}


def device_peak(device: torch.device) -> tuple[float, str]:
    """(peak bf16 FLOP/s, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in STATED_PEAKS.items():
            if all(word in name for word in key.split()):
                return peak, f"stated dense bf16 peak of {key}"
        raise SystemExit(f"no stated peak known for {name}: add it to STATED_PEAKS")
    size = 4096
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best, f"measured bf16 matmul {size}x{size} on this CPU ({torch.get_num_threads()} threads)"


def head_rows(config, layout: SequenceLayout) -> float:
    """Rows of the LM head a position is multiplied by, on average over the context: the whole joint
    vocabulary, or per modality the caption ids at caption positions and the codes at image positions."""
    if config.loss_vocabulary == "joint":
        return layout.vocab_size
    context = layout.seq_len - 1
    return ((layout.text_len - 1) * layout.text_vocab_size + layout.image_len * layout.codebook_size) / context


def flops_per_token(config, layout: SequenceLayout) -> float:
    """The FLOPs actually computed per training token (the LM head as `head_rows` says)."""
    n_embd, n_layer, context = config.model.n_embd, config.model.n_layer, layout.seq_len - 1
    per_layer = 12 * n_embd * n_embd  # attention projections (4C²) and MLP (8C²)
    matmul_params = n_layer * per_layer + head_rows(config, layout) * n_embd  # blocks + LM head
    return 6 * matmul_params + 12 * n_layer * n_embd * context


def random_dataset(root: Path, layout: SequenceLayout, examples: int, seed: int = 0) -> ShardDataset:
    """Writes one shard of random codes and captions in the real on-disk format."""
    rng = np.random.default_rng(seed)
    content = ShardContent(
        codes=rng.integers(0, layout.codebook_size, (examples, *layout.grid)),
        caption_ids=rng.integers(0, layout.text_vocab_size, (examples, layout.text_len)),
        keys=[str(i) for i in range(examples)],
        captions=[""] * examples,
    )
    done = write_shard(root, 0, content, {})
    write_json_atomic(root / "manifest.json", {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "examples": examples, "grid": list(layout.grid),
        "text_len": layout.text_len, "codebook_size": layout.codebook_size,
        "shards": [{"name": done["name"], "examples": examples, "sha256": done["sha256"]}],
    })
    return ShardDataset(root)


def baseline_tokens_per_s(
    config: TrainConfig, layout: SequenceLayout, data: ShardDataset, steps: int, warmup: int, device, bf16: bool = False
) -> tuple[float, float]:
    """Plain transformers training: labels=ids, torch AdamW, no compile; fp32, or under bf16
    autocast with `bf16`. Returns tokens per second of wall time and of process CPU time."""
    gpt = build_model(config.model, layout, seed=0).to(device).train()
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=config.lr)
    order = EpochBatches(len(data), config.micro_batch_size, seed=0)
    started = cpu_started = None
    for step in range(warmup + steps):
        if step == warmup:
            synchronize(device)
            started, cpu_started = time.perf_counter(), time.process_time()
        for micro in range(config.grad_accum):
            captions, codes = data.get_batch(micro_batch_indices(order, step * config.grad_accum + micro))
            ids = layout.pack(captions, codes).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = gpt(input_ids=ids, labels=ids).loss
            (loss / config.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    tokens = steps * config.grad_accum * config.micro_batch_size * (layout.seq_len - 1)
    del gpt, optimizer  # before the next loop allocates its own
    return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu_started)


def profile_steps(config: TrainConfig, data, caption_tokenizer, vq, work_dir: Path, warmup: int, steps: int,
                  device: torch.device, top: int = 25) -> dict:
    """Where the time of `steps` training steps goes (after `warmup` untimed ones): torch.profiler's
    operators by their own device time (CPU time on a CPU), per step, and the share of the wall
    time the device was busy (well under 1: the device waits for Python to launch work)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    clock: dict[int, float] = {}
    with profile(activities=activities, schedule=schedule(wait=warmup, warmup=1, active=steps, repeat=1)) as profiler:
        def step_done(done: int) -> None:
            synchronize(device)
            clock[done] = time.perf_counter()
            profiler.step()

        train(replace(config, max_steps=warmup + 1 + steps), data, work_dir, caption_tokenizer, vq, progress=False,
              on_step=step_done)
    wall = clock[warmup + 1 + steps] - clock[warmup + 1]
    averages = profiler.key_averages()
    # The device's own events (kernels, copies) once each; an operator's "self device time" is the
    # time of the kernels it launched, so adding both would count every kernel twice.
    device_events = [event for event in averages if event.device_type != DeviceType.CPU]
    operators = [event for event in averages if event.device_type == DeviceType.CPU and not event.key.startswith("ProfilerStep")]
    own = (lambda event: event.self_device_time_total) if cuda else (lambda event: event.self_cpu_time_total)
    busy = sum(event.self_device_time_total for event in device_events) / 1e6
    rows = sorted(operators, key=own, reverse=True)[:top]
    return {
        "steps": steps,
        "wall_ms_per_step": 1e3 * wall / steps,
        "device_busy_fraction": busy / wall if cuda else None,
        "device_launches_per_step": sum(event.count for event in device_events) / steps if cuda else None,
        "top_ops": [{"name": event.key, "self_ms_per_step": own(event) / 1e3 / steps,
                     "calls_per_step": event.count / steps} for event in rows],
    }


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(peak bytes, what they are) of everything run so far, without the tracker."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    # Linux reports KiB; the whole process (Python, libraries, data) and not only tensors.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS (not tensor memory: use --memory)"


def tracked_memory(config: TrainConfig, data, caption_tokenizer, vq, work_dir: Path, depths: list[int]) -> dict:
    """Peak tensor memory of two training steps on this CPU (bench/memory.py), measured at the
    preset's depth, or at `depths` and extrapolated to it (each phase on its own)."""
    if not depths:
        print(f"measuring peak memory of 2 training steps ({config.model.n_layer} layers)", flush=True)
        peaks = measure_training_memory(config, data, caption_tokenizer, vq, work_dir / "memory")
        method = "CPU allocator events of 2 training steps, 512-byte blocks (bench/memory.py)"
        measured = None
    else:
        points = {}
        for depth in depths:
            print(f"measuring peak memory of 2 training steps ({depth} layers)", flush=True)
            shallow = replace(config, model=replace(config.model, n_layer=depth))
            points[depth] = measure_training_memory(shallow, data, caption_tokenizer, vq, work_dir / f"memory-{depth}")
            print(f"depth {depth}: peak {highest(points[depth]).peak_bytes / GIB:.3f} GiB ({highest(points[depth]).where})")
        phases = set.intersection(*(set(point) for point in points.values()))
        peaks = {phase: extrapolate_by_depth({d: point[phase] for d, point in points.items()}, config.model.n_layer)
                 for phase in phases}
        method = (f"CPU allocator events of 2 training steps at depths {sorted(points)}, extrapolated linearly "
                  f"to {config.model.n_layer} layers, 512-byte blocks (bench/memory.py)")
        measured = {str(depth): highest(point).peak_bytes / GIB for depth, point in sorted(points.items())}
    peak = highest(peaks)
    return {
        "peak_memory_gib": peak.peak_bytes / GIB,
        "peak_memory_method": method,
        "peak_memory_breakdown_gib": {k: v for k, v in peak.gib().items() if k != "peak"},
        "peak_memory_where": peak.where,
        "peak_memory_in_step": peak.optimizer_steps_before + 1,
        "peak_memory_by_phase_gib": {phase: p.gib() for phase, p in sorted(peaks.items())},
        "peak_memory_at_depths": measured,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (tiny, gpt-draw, gpt-draw-medium, gpt-draw-large)")
    parser.add_argument("--width", type=int, help="the preset's hidden width replaced (the emoji quickstart's GPT: tiny at 384)")
    parser.add_argument("--dropout", type=float, help="the preset's dropout replaced (the emoji quickstart's GPT: 0.1)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each loop")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--grid", type=int, default=16, help="image codes per side (16 for the reference)")
    parser.add_argument("--codebook", type=int, default=16384)
    parser.add_argument("--text-vocab", type=int, default=50258)
    parser.add_argument("--compile", action="store_true", help="torch.compile gptdraw's training forward")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no code generated)")
    parser.add_argument("--compile-mode", help="torch.compile mode: reduce-overhead (CUDA graphs), max-autotune")
    parser.add_argument("--loss-vocabulary", default="per-modality", choices=["per-modality", "joint"])
    parser.add_argument("--log-every", type=int, default=1,
                        help="steps between logged (and read-back) losses, as a run trains (the recipe logs every 10)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adafactor", "muon"])
    parser.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank only (0: every weight)")
    parser.add_argument("--precision", "--mixed-precision", dest="precision", default="auto", type=canonical_precision,
                        choices=PRECISIONS)
    parser.add_argument("--loss-chunk", type=int, default=TrainConfig.loss_chunk,
                        help="token positions per cross-entropy chunk (memory of the loss ∝ chunk × vocabulary)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--memory", action="store_true",
                        help="also report peak training memory (on a CPU: two more steps under bench/memory.py's tracker)")
    parser.add_argument("--memory-only", action="store_true", help="report peak training memory, without timing")
    parser.add_argument("--memory-depths", type=int, nargs="+", default=[], metavar="N",
                        help="CPU: measure memory at these depths and extrapolate to the preset's (implies --memory)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="also profile this many steps of gptdraw's loop (a separate run, after the timing)")
    add_out_option(parser, "train")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    measured_on = machine(device)
    if args.memory_depths and (device.type == "cuda" or min(args.memory_depths) < 1 or len(set(args.memory_depths)) < 2):
        parser.error("--memory-depths takes two or more different depths ≥ 1, and only on a CPU (a GPU measures directly)")
    track_memory = device.type == "cpu" and (args.memory or args.memory_only or bool(args.memory_depths))
    layout = SequenceLayout(text_vocab_size=args.text_vocab, pad_id=0, codebook_size=args.codebook,
                            text_len=args.text_len, grid=(args.grid, args.grid))
    model = model_preset(args.preset)
    model = replace(model, n_embd=model.n_embd if args.width is None else args.width,
                    dropout=model.dropout if args.dropout is None else args.dropout)
    config = TrainConfig(
        model=model, max_steps=args.warmup + args.steps, micro_batch_size=args.micro_batch,
        grad_accum=args.grad_accum, warmup_steps=1, precision=args.precision, compile=args.compile,
        compile_backend=args.compile_backend, compile_mode=args.compile_mode, loss_vocabulary=args.loss_vocabulary,
        optimizer=args.optimizer, lora_rank=args.lora_rank,
        gradient_checkpointing=args.gradient_checkpointing, loss_chunk=args.loss_chunk, caption_dropout=0.1,
        log_every=args.log_every,
        eval_every=0, sample_every=0, checkpoint_every=10**9,
    )
    peak, peak_source = device_peak(device)
    per_token = flops_per_token(config, layout)
    baseline_per_token = flops_per_token(replace(config, loss_vocabulary="joint"), layout)  # its head is the whole vocabulary
    examples = max(2048, config.micro_batch_size * config.grad_accum * (config.max_steps + 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = random_dataset(tmp / "data", layout, examples)
        # Tokenizers only fix the layout's sizes here; a byte-level BPE padded to text_vocab ids.
        caption_tokenizer = CaptionTokenizer.train(["a"], vocab_size=300, text_len=args.text_len)
        caption_tokenizer.tokenizer.add_tokens([f"<unused{i}>" for i in range(args.text_vocab - caption_tokenizer.vocab_size)])
        layout = replace(layout, pad_id=caption_tokenizer.pad_id)
        vq = ImageTokenizer(VQConfig(
            image_size=args.grid * 2, block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=8, vq_embed_dim=8,
            num_vq_embeddings=args.codebook, mid_block_add_attention=False,
        ))
        tokens_per_s = baseline = cpu_tokens_per_s = baseline_cpu = baseline_bf16 = baseline_bf16_cpu = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if not args.memory_only:
            cpu_clock = {}  # step → process CPU seconds when it ended

            def note_cpu_time(done: int) -> None:
                cpu_clock[done] = time.process_time()

            train(config, data, tmp / "run", caption_tokenizer, vq, progress=True, on_step=note_cpu_time)
            rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
            logged = [row for row in rows if "tokens_per_s" in row]
            # Each row's rate covers the steps since the row before; total tokens ÷ total time over the
            # rows after the warm-up (a warm-up that is a multiple of --log-every leaves none of it in them).
            spans = [(row["step"] - before["step"], row["tokens_per_s"]) for before, row in zip([{"step": 0}] + logged, logged)
                     if before["step"] >= args.warmup]
            tokens_per_s = sum(steps for steps, _ in spans) / sum(steps / rate for steps, rate in spans)
            if args.warmup in cpu_clock:
                tokens = args.steps * config.grad_accum * config.micro_batch_size * (layout.seq_len - 1)
                cpu_tokens_per_s = tokens / (cpu_clock[config.max_steps] - cpu_clock[args.warmup])
        elif device.type == "cuda":  # the second step is the first with the optimizer state alive throughout
            train(replace(config, max_steps=2), data, tmp / "run", caption_tokenizer, vq, progress=True)
        peak_bytes, peak_method = peak_memory(device)  # before the baseline adds its own
        memory = {"peak_memory_gib": peak_bytes / GIB, "peak_memory_method": peak_method}
        if not (args.memory_only or args.skip_baseline):
            baseline, baseline_cpu = baseline_tokens_per_s(config, layout, data, args.steps, args.warmup, device)
            if resolve_precision("auto", resolve_device(None), purpose="training", fp16_on_gpu=True) == "bf16":
                baseline_bf16, baseline_bf16_cpu = baseline_tokens_per_s(
                    config, layout, data, args.steps, args.warmup, device, bf16=True)
        if track_memory:
            memory = tracked_memory(config, data, caption_tokenizer, vq, tmp, args.memory_depths)
        profiled = None
        if args.profile:
            profiled = profile_steps(config, data, caption_tokenizer, vq, tmp / "profile", args.warmup, args.profile, device)
            for row in profiled["top_ops"][:12]:
                print(f"{row['self_ms_per_step']:9.3f} ms/step {row['calls_per_step']:7.1f} calls  {row['name']}")

    result = {
        "machine": measured_on,
        "device": device_name(device),
        "preset": args.preset,
        "width": config.model.n_embd,
        "dropout": config.model.dropout,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "seq_len": layout.seq_len,
        "vocab_size": layout.vocab_size,
        "precision": args.precision,
        "precision_used": resolve_precision(args.precision, resolve_device(None), purpose="training", fp16_on_gpu=True),
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "loss_vocabulary": args.loss_vocabulary,
        "log_every": args.log_every,
        "optimizer": args.optimizer,
        "lora_rank": args.lora_rank,
        "gradient_checkpointing": args.gradient_checkpointing,
        "loss_chunk": args.loss_chunk,
        "tokens_per_s": tokens_per_s,
        "baseline_tokens_per_s": baseline,
        "speedup": tokens_per_s / baseline if tokens_per_s and baseline else None,
        "baseline_bf16_tokens_per_s": baseline_bf16,
        "speedup_over_bf16_baseline": tokens_per_s / baseline_bf16 if tokens_per_s and baseline_bf16 else None,
        # The same per second of process CPU time: on a machine shared with other work, where the
        # two loops may get different shares of the cores, this ratio moves less than the one above.
        "cpu_tokens_per_s": cpu_tokens_per_s,
        "baseline_cpu_tokens_per_s": baseline_cpu,
        "speedup_cpu_time": cpu_tokens_per_s / baseline_cpu if cpu_tokens_per_s and baseline_cpu else None,
        "baseline_bf16_cpu_tokens_per_s": baseline_bf16_cpu,
        "speedup_over_bf16_baseline_cpu_time": cpu_tokens_per_s / baseline_bf16_cpu
        if cpu_tokens_per_s and baseline_bf16_cpu else None,
        "flops_per_token": per_token,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "mfu": tokens_per_s * per_token / peak if tokens_per_s else None,
        "baseline_flops_per_token": baseline_per_token,
        "baseline_mfu": baseline * baseline_per_token / peak if baseline else None,
        "baseline_bf16_mfu": baseline_bf16 * baseline_per_token / peak if baseline_bf16 else None,
        **memory,
        "profile": profiled,
        "reference_epoch_minutes": 881e6 / tokens_per_s / 60 if tokens_per_s else None,
    }
    print(json.dumps(result, indent=2))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
