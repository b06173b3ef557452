"""Correctness on the device at hand: what the CPU tests prove, checked where users train.

Three checks, each on the built-in shapes data (a random-weight shapes-f8 VQGAN: 48 px → 6×6
codes, which is all the checks need) and a GPT of the given preset:

- precision: the same run in bf16 autocast and in fp32 gives per-step losses within
  PRECISION_TOLERANCE of each other (relative). The runs warm up gently (lr 3e-4 over 10
  steps): a loss spike early in training sends two runs that differ by rounding down
  different paths, which says nothing about the precision of either;
- resume: a run stopped halfway and resumed gives the uninterrupted run's later losses within
  RESUME_TOLERANCE (relative). A second uninterrupted run gives the device's own run-to-run
  spread beside it (atomic adds in some CUDA backward kernels are not bit-reproducible);
- sync: no training step waits for the device — under torch.cuda.set_sync_debug_mode("error")
  any synchronising call inside `TrainingRun.take_step` raises (CUDA only; skipped elsewhere).
  The losses are read back at log steps, outside the step, and the first step (lazy state) is
  left out;
- launch: `accelerate launch -m gptdraw.cli train` on this machine's one device, plainly and
  with FSDP2 (one process), ends well and logs the distributed mode it really ran in
  (Accelerate turns FSDP on only over GPUs: on a CPU the FSDP launch is expected to fall back).

    python bench/correctness.py precision resume launch            # a GPU: about a minute
    python bench/correctness.py precision resume launch --preset tiny --steps 6   # a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import add_out_option, device_name, machine, write_result  # bench/common.py
from gptdraw.gpt.config import TrainConfig, model_preset
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import ShapesSource
from gptdraw.captions import CaptionTokenizer
from gptdraw.runtime import resolve_device, resolve_precision
from gptdraw.gpt.train import train
from gptdraw.vq.model import ImageTokenizer, vq_preset

PRECISION_TOLERANCE = 0.02
"""bf16 against fp32: the largest relative difference of a step's loss that passes."""
RESUME_TOLERANCE = 1e-3
"""Resumed against uninterrupted: the largest relative difference of a later step's loss that passes."""
FSDP_FALLBACK = "FSDP was asked for, but"  # gptdraw.gpt.train's warning when Accelerate runs DDP instead
CHECKS = ("precision", "resume", "sync", "launch")


def make_data(root: Path, examples: int) -> Path:
    """Shapes pairs pre-encoded with a random shapes-f8 VQGAN and a BPE trained on their captions."""
    source = ShapesSource(examples, 48, seed=0)
    captions = [item.caption for item in source.read(0, min(examples, 512))]
    caption_tokenizer = CaptionTokenizer.train(captions, vocab_size=512, text_len=24)
    torch.manual_seed(0)
    vq = ImageTokenizer(vq_preset("shapes-f8", image_size=48)).eval()
    vq.save_pretrained(root / "vq")
    prepare(source, root / "data", PrepareConfig(workers=0), image_tokenizer=vq, caption_tokenizer=caption_tokenizer,
            progress=False, image_tokenizer_path=str(root / "vq"))
    return root / "data"


def load_data(data_dir: Path) -> tuple[ShardDataset, CaptionTokenizer, ImageTokenizer]:
    """The prepared shards with the two tokenizers they were encoded with."""
    data = ShardDataset(data_dir)
    return (data, CaptionTokenizer.from_pretrained(data_dir / "text_tokenizer"),
            ImageTokenizer.from_pretrained(data.manifest["image_tokenizer_path"]))


def run_losses(config: TrainConfig, data_dir: Path, out: Path, stop_after: int | None = None) -> dict[int, float]:
    """Trains (or resumes) in `out`; returns {step: loss} from its metrics."""
    data, caption_tokenizer, vq = load_data(data_dir)
    train(config, data, out, caption_tokenizer, vq, progress=False, stop_after=stop_after)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def check_sync(config: TrainConfig, data_dir: Path, work: Path, steps: int = 5) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "needs CUDA (torch.cuda.set_sync_debug_mode)"}
    from gptdraw.gpt.train import TrainingRun

    data, caption_tokenizer, vq = load_data(data_dir)
    run = TrainingRun(replace(config, max_steps=steps + 1), data, work, caption_tokenizer, vq)
    first_sync = None
    try:
        run.take_step(0)  # the optimiser's state and the allocator's pools are made here
        for step in range(1, steps + 1):
            torch.cuda.set_sync_debug_mode("error")
            try:
                run.take_step(step)
            except RuntimeError as error:
                first_sync = f"step {step}: {str(error).splitlines()[0]}"
                break
            finally:
                torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    finally:
        run.batches.close()
    return {"passed": first_sync is None, "steps": steps, "first_sync": first_sync}


def largest_relative_difference(losses: dict[int, float], reference: dict[int, float], steps) -> float:
    return max(abs(losses[step] - reference[step]) / abs(reference[step]) for step in steps)


def check_precision(config: TrainConfig, data_dir: Path, work: Path) -> dict:
    if resolve_precision("auto", resolve_device(None), purpose="training", fp16_on_gpu=True) != "bf16":
        return {"skipped": "this device has no native bf16"}
    fp32 = run_losses(replace(config, precision="fp32"), data_dir, work / "fp32")
    bf16 = run_losses(replace(config, precision="bf16"), data_dir, work / "bf16")
    difference = largest_relative_difference(bf16, fp32, sorted(fp32))
    return {
        "steps": config.max_steps,
        "fp32_losses": [fp32[step] for step in sorted(fp32)],
        "bf16_losses": [bf16[step] for step in sorted(bf16)],
        "first_step_relative_difference": largest_relative_difference(bf16, fp32, [1]),
        "max_relative_difference": difference,
        "tolerance": PRECISION_TOLERANCE,
        "passed": difference <= PRECISION_TOLERANCE,
    }


def check_resume(config: TrainConfig, data_dir: Path, work: Path) -> dict:
    half = config.max_steps // 2
    config = replace(config, checkpoint_every=half)
    whole = run_losses(config, data_dir, work / "whole")
    again = run_losses(config, data_dir, work / "again")
    first = run_losses(config, data_dir, work / "resumed", stop_after=half)
    if max(first) != half:
        raise RuntimeError(f"the first part was to stop after step {half}, it logged up to {max(first)}")
    resumed = run_losses(config, data_dir, work / "resumed")
    later = range(half + 1, config.max_steps + 1)
    difference = largest_relative_difference(resumed, whole, later)
    return {
        "steps": config.max_steps,
        "resumed_at": half,
        "bit_identical": all(resumed[step] == whole[step] for step in later),
        "max_relative_difference": difference,
        "run_to_run_relative_difference": largest_relative_difference(again, whole, later),
        "tolerance": RESUME_TOLERANCE,
        "passed": difference <= RESUME_TOLERANCE,
    }


def check_launch(data_dir: Path, work: Path, preset: str, steps: int, micro_batch: int) -> dict:
    on_gpu = torch.cuda.is_available()
    base = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--dynamo_backend", "no", "--main_process_port", "29541"]
    # On a CPU, Accelerate's CPU mode comes from the environment (its --cpu flag excludes --use_fsdp).
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({} if on_gpu else {"ACCELERATE_USE_CPU": "1"})}
    fsdp = ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
            "--fsdp_transformer_layer_cls_to_wrap", "GPT2Block"]
    results = {}
    for name, launcher in (("plain", base), ("fsdp2", base + fsdp)):
        out = work / f"launch-{name}"
        command = [*launcher, "-m", "gptdraw.cli", "train", "--data", str(data_dir), "--out", str(out),
                   "--model", preset, "--max-steps", str(steps), "--micro-batch-size", str(micro_batch),
                   "--warmup-steps", "1", "--eval-every", "0", "--sample-every", "0", "--log-every", "1",
                   "--checkpoint-every", str(steps)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
        log = done.stdout + done.stderr
        (work / f"launch-{name}.log").write_text(log)
        mode = re.search(r"training with (\w+) on (\d+) process", log)
        metrics = out / "metrics.jsonl"
        logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
        result = {
            "returncode": done.returncode,
            "seconds": time.perf_counter() - started,
            "distributed_type": mode.group(1) if mode else None,
            "steps_logged": logged,
            "log_tail": log[-1500:] if done.returncode else None,
        }
        ok = done.returncode == 0 and logged == list(range(1, steps + 1))
        if name == "fsdp2":
            result["fsdp_active"] = result["distributed_type"] == "FSDP" and FSDP_FALLBACK not in log
            ok = ok and (result["fsdp_active"] or not on_gpu)  # on a CPU the fallback is expected
        result["passed"] = ok
        results[name] = result
    return {**results, "passed": all(result["passed"] for result in results.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="+", choices=CHECKS)
    parser.add_argument("--preset", default="gpt-draw", help="model preset of the GPT trained")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps of each run")
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--examples", type=int, default=512, help="shapes pairs to pre-encode")
    add_out_option(parser, "correctness")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = TrainConfig(
        model=model_preset(args.preset), max_steps=args.steps, micro_batch_size=args.micro_batch, lr=3e-4,
        warmup_steps=10, eval_every=0, sample_every=0, log_every=1, checkpoint_every=args.steps, seed=1,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": machine(device), "device": device_name(device), "preset": args.preset}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_dir = make_data(work, args.examples)
        for check in args.checks:
            started = time.perf_counter()
            if check == "precision":
                outcome = check_precision(config, data_dir, work / check)
            elif check == "resume":
                outcome = check_resume(config, data_dir, work / check)
            elif check == "sync":
                outcome = check_sync(config, data_dir, work / check)
            else:
                outcome = check_launch(data_dir, work, args.preset, min(args.steps, 4), args.micro_batch)
            result[check] = {**outcome, "seconds": time.perf_counter() - started}
            print(f"{check}: {json.dumps(result[check])}", flush=True)
    result["passed"] = all(result[check].get("passed", True) for check in args.checks)
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
