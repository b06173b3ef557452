"""`gptdraw train`: train (or resume) a GPT on a pre-encoded dataset."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

# gptdraw.gpt.config holds only dataclasses, so its presets and fields can fill the parser. The
# modules that import torch and transformers load inside the handler, so that `--help` and
# argument errors stay fast.
from gptdraw.cli import claimed_out
from gptdraw.cli.config_flags import add_config_flags, apply_config_file, given_fields, read_config_file
from gptdraw.gpt.config import MODEL_PRESETS, TRAIN_PRESETS, ModelConfig, TrainConfig, model_preset, train_preset

if TYPE_CHECKING:
    from gptdraw.vq.model import ImageTokenizer


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a GPT on a prepared dataset; rerun with the same --out to resume",
        description="Train a GPT on pre-encoded shards. Rerunning with the same --out resumes "
        "exactly where the last checkpoint left off. Launch with `accelerate launch -m gptdraw.cli "
        "train …` for several GPUs or machines. Settings come from --preset, then --config, then "
        "the flags; the run writes them to OUT/train_config.json, which --config reads back.",
    )
    parser.add_argument("--data", required=True, help="dataset directory written by `gptdraw prepare`")
    parser.add_argument("--eval-data", help="held-out dataset directory (default: DATA/eval when present)")
    parser.add_argument("--out", required=True, help="run directory; also the model directory")
    parser.add_argument("--image-tokenizer", "--vq", dest="image_tokenizer",
                        help="image tokenizer the data was encoded with (default: the one the dataset records)")
    parser.add_argument("--init-from", help="start from a trained gptdraw model directory (fine-tuning: the data must be "
                        "prepared with its tokenizers, MODEL/text_tokenizer and MODEL/image_tokenizer), or from "
                        "pretrained GPT-2 weights (a directory or hub id; the data prepared with that GPT-2's tokenizer)")
    parser.add_argument("--preset", default="tiny", choices=sorted(TRAIN_PRESETS), help="training preset")
    parser.add_argument("--config", help="YAML or JSON file of TrainConfig fields (e.g. a run's train_config.json)")
    parser.add_argument("--model", help=f"model preset instead of the training preset's ({', '.join(sorted(MODEL_PRESETS))})")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="default guidance scale stored with the model")
    add_config_flags(parser, TrainConfig, skip=("model",))
    add_config_flags(parser, ModelConfig, skip=MODEL_SIZES, title="ModelConfig fields beside the model preset's sizes")
    parser.add_argument("--sample-prompt", action="append", dest="sample_prompt", help="a fixed prompt for the sample "
                        "grids (repeatable; adds to --sample-prompts)")
    parser.set_defaults(func=run)


MODEL_SIZES = ("n_layer", "n_head", "n_embd", "dropout")
"""ModelConfig fields that come from --model (a preset) or --config only; the others are flags too."""


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's TrainConfig: the preset, then the --config file, then --model and the flags."""
    config = train_preset(args.preset)
    if args.config:
        data = read_config_file(args.config)
        if "model" in data:
            model = data.pop("model")
            try:
                config = replace(config, model=model_preset(model) if isinstance(model, str) else ModelConfig(**model))
            except TypeError as error:
                raise ValueError(f"{args.config}: the model must be a preset name or ModelConfig fields: {error}") from None
        config = apply_config_file(config, data, args.config)
    if args.model:
        config = replace(config, model=model_preset(args.model))
    given = given_fields(args, TrainConfig, skip=("model",))
    model_given = given_fields(args, ModelConfig, skip=MODEL_SIZES)
    if model_given:
        given["model"] = replace(config.model, **model_given)
    if args.sample_prompt:
        given["sample_prompts"] = tuple(given.get("sample_prompts", ())) + tuple(args.sample_prompt)
    return replace(config, **given)


def run(args: argparse.Namespace) -> int:
    config = train_config(args)  # a bad setting is refused before --out is made
    with claimed_out(args):  # checked, and held against a second run on it until the end
        return train_into_out(args, config)


def train_into_out(args: argparse.Namespace, config: TrainConfig) -> int:
    from gptdraw.captions import CaptionTokenizer
    from gptdraw.data.shards import ShardDataset
    from gptdraw.gpt.finetune import load_for_finetuning
    from gptdraw.gpt.model import adapt_pretrained_gpt2, caption_attention, masks_pads
    from gptdraw.gpt.sampling import SamplingConfig
    from gptdraw.gpt.train import train
    from gptdraw.model_dir import is_model_directory
    from gptdraw.sequence import SequenceLayout

    data_dir = Path(args.data)
    train_data = ShardDataset(data_dir)
    eval_dir = Path(args.eval_data) if args.eval_data else data_dir / "eval"
    eval_data = ShardDataset(eval_dir) if eval_dir.exists() else None
    caption_tokenizer = CaptionTokenizer.from_pretrained(data_dir / "text_tokenizer")
    image_tokenizer = dataset_image_tokenizer(data_dir, train_data.manifest, args.image_tokenizer)
    init_model = None
    if args.init_from:
        layout = SequenceLayout.from_tokenizers(caption_tokenizer, image_tokenizer, train_data.grid)
        if is_model_directory(args.init_from):  # a trained gptdraw model: fine-tune it
            init_model = load_for_finetuning(args.init_from, caption_tokenizer, image_tokenizer, layout,
                                             dropout=config.model.dropout)
            # The run trains the model's architecture, whatever the preset says.
            config = replace(config, model=ModelConfig(
                n_layer=init_model.config.n_layer, n_head=init_model.config.n_head, n_embd=init_model.config.n_embd,
                dropout=config.model.dropout, tie_head=init_model.config.tie_word_embeddings,
                caption_attention=caption_attention(init_model), mask_pads=masks_pads(init_model)))
        else:
            init_model = adapt_pretrained_gpt2(args.init_from, layout, dropout=config.model.dropout)
    result = train(
        config,
        train_data,
        args.out,
        caption_tokenizer=caption_tokenizer,
        image_tokenizer=image_tokenizer,
        eval_data=eval_data,
        sampling=SamplingConfig(cfg_scale=args.cfg_scale),
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
        raise ValueError(f"{data_dir} does not record where its image tokenizer is: pass --image-tokenizer DIR")
    tokenizer = ImageTokenizer.from_pretrained(path)
    expected = manifest.get("image_tokenizer", {}).get("weights_sha256")
    if not expected:
        raise ValueError(f"{data_dir} records no checksum of its image tokenizer's weights: cannot tell whether "
                         f"{path} is the one it was encoded with")
    if image_tokenizer_identity(tokenizer)["weights_sha256"] != expected:
        raise ValueError(
            f"the image tokenizer at {path} is not the one {data_dir} was encoded with "
            "(its weights differ): codes would mean other pictures"
        )
    return tokenizer
