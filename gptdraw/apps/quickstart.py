"""`gptdraw quickstart`: the whole pipeline on the built-in shapes data, on a laptop CPU.

    shapes images + captions → caption BPE → small VQGAN → pre-encoded shards → GPT-2 → drawings

Each stage leaves its result in the run directory and is skipped when it is already there,
so an interrupted quickstart picks up where it stopped.

    OUT/data/        pre-encoded shards (and OUT/data/eval, a held-out split of examples)
    OUT/vq/          the VQGAN trained on the shapes
    OUT/model/       the trained model directory (`gptdraw generate --model OUT/model`)
    OUT/samples.png  drawings of the report set's held-out prompts, OUT/eval.json the verifier's score
    OUT/tuning/      the same for the tuning set (sampling and recipe were chosen on it)
    OUT/drawing.gif  one image being drawn code by code
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gptdraw.apps.animate import save_gif
from gptdraw.apps.quickstart_config import EmojiQuickstartConfig, QuickstartConfig
from gptdraw.data import shapes
from gptdraw.data.prepare import caption_tokenizer_for, prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import ShapesSource
from gptdraw.eval.shapes import evaluate_shapes
from gptdraw.gpt.config import ModelConfig, TrainConfig, train_preset
from gptdraw.gpt.train import train
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.runtime import resolve_device
from gptdraw.vq.model import ImageTokenizer
from gptdraw.vq.train import VQTrainConfig, train_vq

logger = logging.getLogger(__name__)


def train_image_tokenizer(source: ShapesSource, vq_dir: Path, config: QuickstartConfig, *, device, progress: bool) -> None:
    """Stage 2: the VQGAN, trained on a prefix of the training images and saved to `vq_dir`."""
    images = np.stack([np.asarray(item.image) for item in source.read(0, config.vq_images)])  # (N, S, S, 3)
    vq_config = VQTrainConfig(
        preset=config.vq_preset, steps=config.vq_steps, seed=config.seed, image_size=config.image_size,
        lr=config.vq_lr, reconstruction_loss="mse", autoencoder_warmup=config.vq_autoencoder_warmup,
    )
    vq_result = train_vq(vq_config, images, vq_dir, device=str(device), progress=progress)
    logger.info("VQGAN: PSNR %.1f dB, codebook usage %.0f%%", vq_result.psnr, 100 * vq_result.codebook_usage)


def gpt_train_config(config: "QuickstartConfig | EmojiQuickstartConfig", *,
                     sample_prompts: tuple[str, ...]) -> TrainConfig:
    """Stage 4's recipe: the tiny preset with the quickstart's sizes, optimiser and schedule (the
    shapes and the emoji quickstart name their GPT fields alike)."""
    return train_preset(
        "tiny", max_steps=config.gpt_steps, seed=config.seed, micro_batch_size=config.gpt_batch,
        model=ModelConfig(n_layer=config.gpt_layers, n_head=config.gpt_heads, n_embd=config.gpt_width,
                          dropout=config.gpt_dropout, tie_head=config.gpt_tie_head,
                          caption_attention=config.gpt_caption_attention, mask_pads=config.gpt_mask_pads),
        optimizer=config.gpt_optimizer, lr=config.gpt_lr, embedding_lr_ratio=config.gpt_embedding_lr_ratio,
        text_loss_weight=config.text_loss_weight, caption_dropout=config.caption_dropout,
        part_dropout=config.part_dropout, part_dropout_kind=config.part_dropout_kind,
        loss_vocabulary=config.gpt_loss_vocabulary, warmup_steps=min(100, config.gpt_steps // 10),
        sample_prompts=sample_prompts, sample_every=max(1, config.gpt_steps // 3),
    )


def run_quickstart(out: str | Path, config: QuickstartConfig = QuickstartConfig(), progress: bool = True) -> dict:
    """Runs (or resumes) every stage and returns the summary also written to OUT/quickstart.json."""
    gpt_train_config(config, sample_prompts=())  # a bad GPT setting is refused now, not after the earlier stages
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = ShapesSource(config.train_examples + config.eval_examples, config.image_size, seed=config.seed,
                          two_object_prob=config.two_object_prob)

    # 1. Caption tokenizer: a BPE trained on the source's captions, as `gptdraw prepare` trains one.
    data_dir = out / "data"
    text_settings = PrepareConfig(text_tokenizer="train", text_len=config.text_len, vocab_size=config.text_vocab_size)
    caption_tokenizer = caption_tokenizer_for(source, data_dir, text_settings)
    timings["text_tokenizer"] = time.perf_counter() - started

    # 2. The VQGAN, on a prefix of the training images.
    mark = time.perf_counter()
    vq_dir = out / "vq"
    if not (vq_dir / "model.safetensors").exists():
        train_image_tokenizer(source, vq_dir, config, device=device, progress=progress)
    image_tokenizer = ImageTokenizer.from_pretrained(vq_dir, device=device)
    timings["vqgan"] = time.perf_counter() - mark

    # 3. Pre-encode every example; eval_examples of them, spread evenly, form the held-out split.
    mark = time.perf_counter()
    prepare(
        source, data_dir, PrepareConfig(eval_count=config.eval_examples, workers=0), image_tokenizer=image_tokenizer,
        caption_tokenizer=caption_tokenizer, device=device, image_tokenizer_path=str(vq_dir), progress=progress,
    )
    timings["prepare"] = time.perf_counter() - mark

    # 4. The GPT.
    mark = time.perf_counter()
    model_dir = out / "model"
    tuning, report = shapes.evaluation_sets()
    train_config = gpt_train_config(config, sample_prompts=tuple(tuning.one_object[:4] + tuning.two_object[:4]))
    result = train(
        train_config, ShardDataset(data_dir), model_dir, caption_tokenizer, image_tokenizer,
        eval_data=ShardDataset(data_dir / "eval"), sampling=config.sampling, progress=progress,
    )
    timings["gpt"] = time.perf_counter() - mark

    # 5. Draw both held-out sets, score them, and animate one drawing.
    mark = time.perf_counter()
    pipe = GPTDrawPipeline.from_pretrained(model_dir, device=device)
    tuning_scores = evaluate_shapes(pipe, tuning.prompts, config.images_per_prompt, seed=config.seed,
                                    out_dir=out / "tuning", progress=progress)
    scores = evaluate_shapes(pipe, report.prompts, config.images_per_prompt, seed=config.seed, out_dir=out, progress=progress)
    frames = [step.images[0] for step in pipe.stream(report.two_object[0], seed=config.seed)]
    save_gif(frames, out / "drawing.gif")
    timings["evaluate"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    summary = {
        "one_object_accuracy": scores["one_object"],
        "two_object_accuracy": scores["two_object"],
        "accuracy": scores["accuracy"],
        "sizeless_accuracy": scores["sizeless_accuracy"],
        "variety": scores["variety"],
        "tuning": {key: tuning_scores[key] for key in ("one_object", "two_object", "sizeless_accuracy", "variety")},
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "seconds": timings,
        "config": asdict(config),
        "model": str(model_dir),
    }
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
