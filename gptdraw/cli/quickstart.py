"""`gptdraw quickstart`: data, VQGAN, GPT and drawings in one command, on the built-in shapes or
(`--data emoji`) on real pictures: emoji sets in five styles."""

from __future__ import annotations

import argparse
import dataclasses

from gptdraw.apps.quickstart_config import EmojiQuickstartConfig, QuickstartConfig
from gptdraw.cli import claimed_out
from gptdraw.cli.config_flags import add_config_flags, given_fields
from gptdraw.runtime import resolve_device

# Sampling settings are chosen by bench/quality.py (shapes) and bench/real_sampling.py (emoji) on
# the tuning set; `gptdraw generate` takes its own sampling flags for a trained model.
SKIP = ("sampling",)
CONFIGS = {"shapes": QuickstartConfig, "emoji": EmojiQuickstartConfig}
SHAPES_FIELDS = {field.name for field in dataclasses.fields(QuickstartConfig)}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train and draw on the built-in shapes (about 10 minutes on 2 CPU cores) or on real emoji pictures",
    )
    parser.add_argument("--out", default=None, help="run directory (default: runs/quickstart, runs/quickstart-emoji)")
    parser.add_argument("--data", choices=list(CONFIGS), default="shapes",
                        help="shapes: the built-in generated data; emoji: real pictures of five emoji sets (the npm "
                             "ones fetched with npm pack)")
    add_config_flags(parser, QuickstartConfig, skip=SKIP, title="quickstart settings (default: the recipe's; with "
                                                                "--data emoji, see its defaults in docs/real-pictures.md)")
    add_config_flags(parser, EmojiQuickstartConfig, skip=SKIP + tuple(SHAPES_FIELDS), title="--data emoji only")
    parser.set_defaults(func=run)


def chosen_config(args: argparse.Namespace):
    """The chosen data's config with the flags given; a flag the other data alone has is refused."""
    cls = CONFIGS[args.data]
    other = CONFIGS["emoji" if args.data == "shapes" else "shapes"]
    own = {field.name for field in dataclasses.fields(cls)}
    stray = sorted(set(given_fields(args, other, skip=SKIP)) - own)
    if stray:
        raise ValueError(f"--{stray[0].replace('_', '-')} does not apply to --data {args.data}")
    return dataclasses.replace(cls(), **given_fields(args, cls, skip=SKIP))


def run(args: argparse.Namespace) -> int:
    # Heavy libraries (torch, transformers) load here, so that `--help` and argument errors stay fast.
    config = chosen_config(args)
    if args.out is None:  # not `or`: an empty --out is refused (by claimed_out), not swapped for the default
        args.out = "runs/quickstart" if args.data == "shapes" else "runs/quickstart-emoji"
    resolve_device(config.device, flag="--device")  # a device this machine lacks is refused before any work
    with claimed_out(args):  # checked, and held against a second run on it until the end
        if args.data == "emoji":
            from gptdraw.apps.emoji_quickstart import run_emoji_quickstart

            print_emoji_summary(run_emoji_quickstart(args.out, config), args.out)
            return 0
        from gptdraw.apps.quickstart import run_quickstart

        summary = run_quickstart(args.out, config)
    print(
        f"held-out prompts drawn correctly: {summary['one_object_accuracy']:.0%} of one-object, "
        f"{summary['two_object_accuracy']:.0%} of two-object ({config.images_per_prompt} images each)\n"
        f"samples: {args.out}/samples.png, animation: {args.out}/drawing.gif, "
        f"model: {args.out}/model ({summary['seconds']['total']:.0f} s)\n"
        f'draw anything: gptdraw generate "a small red circle in the top left" --model {args.out}/model'
    )
    return 0


def print_emoji_summary(summary: dict, out: str) -> None:
    from gptdraw.cli.evaluate import share

    report = summary["report"]

    def figure(name: str, figures: dict = report) -> str:
        return share(figures.get(name))

    print(
        f"report half, {report['heldout_captions']} held-out captions: subject retrieval top 1 "
        f"{figure('retrieval_top1')} / top 5 {figure('retrieval_top5')} (the tokenizer's reconstructions "
        f"{figure('reconstructions_retrieval_top1')} / {figure('reconstructions_retrieval_top5')}), named tone "
        f"{figure('tone_accuracy')} (the reader on the real pictures {figure('real_tone_accuracy')}), "
        f"named style {figure('style_accuracy')}, variety {figure('variety')}; "
        f"training captions {figure('training_retrieval_top1')} top 1\n"
        + "".join(f"  held-out (subject, {kind}) captions: retrieval top 5 {figure('retrieval_top5', part)}, "
                  f"named tone {figure('tone_accuracy', part)}, named style {figure('style_accuracy', part)}\n"
                  for kind, part in report.get("by_kind", {}).items()) +
        f"samples: {out}/samples.png, figures: {out}/eval.json, animation: {out}/drawing.gif, "
        f"model: {out}/model ({summary['seconds']['total']:.0f} s)\n"
        f'draw anything: gptdraw generate "red apple, noto" --model {out}/model'
    )
