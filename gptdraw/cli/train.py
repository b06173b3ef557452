"""`gptdraw train`: train (or resume) a GPT on a pre-encoded dataset."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

# gptdraw.gpt.config holds only dataclasses, so its presets can fill the parser. The modules that
# import torch and transformers load inside the handler, so that `--help` and argument errors
# stay fast.
from gptdraw.gpt.config import TRAIN_PRESETS, model_preset, train_preset

if TYPE_CHECKING:
    from gptdraw.vq.model import ImageTokenizer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a GPT on a prepared dataset; rerun with the same --out to resume",
        description="Train a GPT on pre-encoded shards. Rerunning with the same --out resumes "
        "exactly where the last checkpoint left off. Launch with `accelerate launch -m gptdraw.cli "
        "train …` for several GPUs or machines.",
    )
    parser.add_argument("--data", required=True, help="dataset directory written by `gptdraw prepare`")
    parser.add_argument("--eval-data", help="held-out dataset directory (default: DATA/eval when present)")
    parser.add_argument("--out", required=True, help="run directory; also the model directory")
    parser.add_argument("--vq", help="image tokenizer the data was encoded with (default: the one the dataset records)")
    parser.add_argument("--init-from", help="start from pretrained GPT-2 weights (a directory or hub id); "
                        "the data must be prepared with that GPT-2's tokenizer")
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS), help="training preset")
    parser.add_argument("--model", help="model preset to use instead of the training preset's")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--micro-batch-size", type=int)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--schedule", choices=["constant", "cosine", "linear"])
    parser.add_argument("--optimizer", choices=["adamw", "adafactor"])
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--caption-dropout", type=float)
    parser.add_argument("--text-loss-weight", type=float)
    parser.add_argument("--image-loss-weight", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--sample-every", type=int)
    parser.add_argument("--sample-prompt", action="append", dest="sample_prompts", help="a fixed prompt for the sample grids (repeatable)")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--keep-checkpoints", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--wandb", action="store_true", default=None, help="also log to Weights & Biases")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="default guidance scale stored with the model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gptdraw.data.shards import ShardDataset
    from gptdraw.gpt.model import adapt_pretrained_gpt2
    from gptdraw.gpt.sampling import SamplingSettings
    from gptdraw.sequence import SequenceLayout
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.gpt.train import train

    data_dir = Path(args.data)
    config = train_preset(
        args.preset,
        model=model_preset(args.model) if args.model else None,
        max_steps=args.max_steps, micro_batch_size=args.micro_batch_size, grad_accum=args.grad_accum,
        lr=args.lr, warmup_steps=args.warmup_steps, schedule=args.schedule, optimizer=args.optimizer,
        mixed_precision=args.mixed_precision, compile=args.compile,
        gradient_checkpointing=args.gradient_checkpointing, caption_dropout=args.caption_dropout,
        text_loss_weight=args.text_loss_weight, image_loss_weight=args.image_loss_weight,
        seed=args.seed, eval_every=args.eval_every, sample_every=args.sample_every,
        sample_prompts=tuple(args.sample_prompts) if args.sample_prompts else None,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every, wandb=args.wandb,
    )
    train_data = ShardDataset(data_dir)
    eval_dir = Path(args.eval_data) if args.eval_data else data_dir / "eval"
    eval_data = ShardDataset(eval_dir) if eval_dir.exists() else None
    caption_tokenizer = CaptionTokenizer.from_pretrained(data_dir / "text_tokenizer")
    image_tokenizer = dataset_image_tokenizer(data_dir, train_data.manifest, args.vq)
    init_model = None
    if args.init_from:
        layout = SequenceLayout(
            text_vocab_size=caption_tokenizer.vocab_size, pad_id=caption_tokenizer.pad_id,
            codebook_size=image_tokenizer.codebook_size, text_len=caption_tokenizer.text_len, grid=train_data.grid,
        )
        init_model = adapt_pretrained_gpt2(args.init_from, layout, dropout=config.model.dropout)
    result = train(
        config,
        train_data,
        args.out,
        caption_tokenizer=caption_tokenizer,
        image_tokenizer=image_tokenizer,
        eval_data=eval_data,
        sampling=SamplingSettings(cfg_scale=args.cfg_scale),
        init_model=init_model,
    )
    if result.main_process:  # under `accelerate launch` every process returns the same figures
        print(f"step {result.step}: loss {result.train_loss:.4f}"
              + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
              + f"; model directory: {args.out}")
    return 0


def dataset_image_tokenizer(data_dir: Path, manifest: dict, vq: str | None) -> ImageTokenizer:
    """The image tokenizer a dataset was encoded with; refuses one whose weights differ."""
    from gptdraw.data.prepare import image_tokenizer_identity
    from gptdraw.vq.model import ImageTokenizer

    recorded = manifest.get("image_tokenizer_path")
    path = Path(vq) if vq else (Path(recorded) if recorded else None)
    if path is None:
        raise ValueError(f"{data_dir} does not record where its image tokenizer is: pass --vq DIR")
    tokenizer = ImageTokenizer.from_pretrained(path)
    expected = manifest.get("image_tokenizer", {}).get("weights_sha256")
    if expected and image_tokenizer_identity(tokenizer)["weights_sha256"] != expected:
        raise ValueError(
            f"the image tokenizer at {path} is not the one {data_dir} was encoded with "
            "(its weights differ): codes would mean other pictures"
        )
    return tokenizer
