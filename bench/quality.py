"""Benchmark: what the quickstart's model draws, at several budgets and with one lever changed at a time.

    python bench/quality.py --steps 400 800 1600 3200                  # the curve of the defaults
    python bench/quality.py --steps 800 --variant muon:gpt_optimizer=muon \\
        --variant text0:text_loss_weight=0 --variant two70:two_object_prob=0.7   # an ablation
    python bench/quality.py --sweep-sampling bench/out/quality/defaults-800/model   # sampling settings

Each run is the whole quickstart (`gptdraw.apps.quickstart`) with some QuickstartConfig fields
replaced. The VQGAN and the pre-encoded data are trained once per setting and shared by the runs
that can use them, and a run whose quickstart.json exists is read back, so an interrupted sweep
resumes. Figures (the verifier's, on the two held-out sets of the built-in data, which training
never sees): one- and two-object accuracy on the tuning set (choose by these) and on the report
set (quote these), accuracy on prompts that name no size, the share of those drawn small, and the
share of prompts with at least two distinct drawings out of four. Each run's samples.png is in
its folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import itertools

import torch

from common import add_out_option, machine, parse_variant, stage_key, write_result  # bench/common.py
from gptdraw.apps.quickstart import QuickstartConfig, run_quickstart
from gptdraw.data import shapes
from gptdraw.eval.shapes import evaluate_shapes
from gptdraw.pipeline import GPTDrawPipeline

# The fields each shared stage depends on: a run reuses a stage built with the same values.
VQ_FIELDS = ("image_size", "vq_preset", "train_examples", "eval_examples", "vq_images", "vq_steps", "vq_lr",
             "vq_autoencoder_warmup", "seed", "two_object_prob")
DATA_FIELDS = VQ_FIELDS + ("text_len", "text_vocab_size")


def run_one(name: str, config: QuickstartConfig, work: Path) -> dict:
    """The quickstart in work/name, reusing the VQGAN and data of earlier runs with the same settings."""
    run = work / name
    summary_path = run / "quickstart.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    shared = {"vq": work / "_shared" / f"vq-{stage_key(config, VQ_FIELDS)}",
              "data": work / "_shared" / f"data-{stage_key(config, DATA_FIELDS)}"}
    for stage, cached in shared.items():
        if cached.exists() and not (run / stage).exists():
            shutil.copytree(cached, run / stage)
    started = time.perf_counter()
    summary = run_quickstart(run, config, progress=False)
    summary["wall_seconds"] = time.perf_counter() - started
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    for stage, cached in shared.items():
        if not cached.exists():
            shutil.copytree(run / stage, cached)
    return summary


def figures(summary: dict) -> dict:
    tuning = summary["tuning"]
    return {
        "tune_one": tuning["one_object"], "tune_two": tuning["two_object"],
        "report_one": summary["one_object_accuracy"], "report_two": summary["two_object_accuracy"],
        "sizeless": summary["sizeless_accuracy"], "small_share": summary["variety"]["small_share"],
        "distinct": summary["variety"]["distinct"],
        "gpt_seconds": summary["seconds"]["gpt"], "total_seconds": summary["seconds"]["total"],
    }


def share(value: float | None) -> str:
    """A figure as a percentage, or "–" where there was nothing to count (e.g. one drawing per prompt)."""
    return "–" if value is None else f"{value:.0%}"


def keeps_variety(scores: dict) -> bool:
    """The issue's variety targets: both sizes for size-less prompts (each at least a quarter of
    the correct drawings' objects) and at least two distinct drawings for 75% of the prompts."""
    variety = scores["variety"]
    small = variety["small_share"]
    return small is not None and 0.25 <= small <= 0.75 and (variety["distinct"] or 0) >= 0.75


def sweep_sampling(model_dir: str, temperatures: list[float], top_ks: list[int], cfg_scales: list[float],
                   images_per_prompt: int, seed: int) -> dict:
    """Every combination on the tuning set; the best that keeps variety (by mean one- and
    two-object accuracy; ties to the hottest) is then drawn once on the report set."""
    pipe = GPTDrawPipeline.from_pretrained(model_dir)
    tuning, report = shapes.evaluation_sets()
    rows = []
    for temperature, top_k, cfg_scale in itertools.product(temperatures, top_ks, cfg_scales):
        settings = dict(temperature=temperature, top_k=top_k, cfg_scale=cfg_scale)
        scores = evaluate_shapes(pipe, tuning.prompts, images_per_prompt, seed=seed, progress=False, **settings)
        row = {**settings, "tune_one": scores["one_object"], "tune_two": scores["two_object"],
               "sizeless": scores["sizeless_accuracy"], **scores["variety"], "keeps_variety": keeps_variety(scores)}
        rows.append(row)
        print(f"T {temperature:<4} top-k {top_k:<3} cfg {cfg_scale:<4} tune {share(row['tune_one'])}/{share(row['tune_two'])} "
              f"small {share(row['small_share'])} distinct {share(row['distinct'])}", flush=True)
    eligible = [row for row in rows if row["keeps_variety"]] or rows
    # Ties go to the hottest settings (temperature, then top-k): the same score with more variety.
    best = max(eligible, key=lambda row: (round(row["tune_one"] + row["tune_two"], 6), row["temperature"], row["top_k"],
                                          -row["cfg_scale"]))
    settings = {key: best[key] for key in ("temperature", "top_k", "cfg_scale")}
    scores = evaluate_shapes(pipe, report.prompts, images_per_prompt, seed=seed, progress=False, **settings)
    chosen = {**settings, "report_one": scores["one_object"], "report_two": scores["two_object"],
              "sizeless": scores["sizeless_accuracy"], **scores["variety"]}
    print(f"chosen on the tuning set: {settings}; on the report set {share(chosen['report_one'])}/{share(chosen['report_two'])}")
    return {"model": model_dir, "tuning": rows, "chosen": chosen}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[800], help="GPT step budgets to run each variant at")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:field=value,... QuickstartConfig fields to change (repeatable); "
                             "without any, the defaults run (as 'defaults')")
    parser.add_argument("--no-defaults", action="store_true", help="run only the variants, not the defaults")
    parser.add_argument("--base", default="", help="field=value,... changed in every variant, defaults included")
    parser.add_argument("--work", default="bench/out/quality", help="run folders (reused: delete to start over)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--sweep-sampling", metavar="MODEL_DIR", help="instead of training: sweep the sampling "
                        "settings of a trained model on the tuning set, then draw the best on the report set")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--top-ks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--images-per-prompt", type=int, default=4)
    add_out_option(parser, "quality")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep_sampling:
        result = {"machine": machine(torch.device("cpu")),
                  **sweep_sampling(args.sweep_sampling, args.temperatures, args.top_ks, args.cfg_scales,
                                   args.images_per_prompt, seed=0)}
        write_result(result, args.out)
        return 0

    _, base = parse_variant(f"base:{args.base}", QuickstartConfig())
    variants = [] if args.no_defaults else [("defaults", {})]
    variants += [parse_variant(text, QuickstartConfig()) for text in args.variant]
    result = {"machine": machine(torch.device("cpu")), "base": base, "runs": []}
    work = Path(args.work)
    for steps in args.steps:
        for name, changes in variants:
            config = dataclasses.replace(QuickstartConfig(), **{**base, "gpt_steps": steps, **changes})
            label = f"{name}-{steps}"
            summary = run_one(label, config, work)
            row = {"variant": name, "steps": steps, "changes": changes, **figures(summary),
                   "samples": str(work / label / "samples.png")}
            result["runs"].append(row)
            print(f"{label:28s} tune {share(row['tune_one'])}/{share(row['tune_two'])}  report {share(row['report_one'])}/"
                  f"{share(row['report_two'])}  sizeless {share(row['sizeless'])} small {share(row['small_share'])} "
                  f"distinct {share(row['distinct'])}  gpt {row['gpt_seconds']:.0f} s", flush=True)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
