"""`gptdraw quickstart`: the whole pipeline on the built-in shapes data, on a laptop CPU.

    shapes images + captions → caption BPE → small VQGAN → pre-encoded shards → GPT-2 → drawings

Each stage leaves its result in the run directory and is skipped when it is already there,
so an interrupted quickstart picks up where it stopped.

    OUT/data/        pre-encoded shards (and OUT/data/eval, a held-out split of examples)
    OUT/vq/          the VQGAN trained on the shapes
    OUT/model/       the trained model directory (`gptdraw generate --model OUT/model`)
    OUT/samples.png  drawings of held-out prompts, OUT/eval.json the verifier's score
    OUT/drawing.gif  one image being drawn code by code
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gptdraw.apps.animate import save_gif
from gptdraw.gpt.config import train_preset
from gptdraw.data import shapes
from gptdraw.data.prepare import caption_tokenizer_for, prepare
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import ShapesSource
from gptdraw.eval.shapes import evaluate_shapes
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.runtime import resolve_device
from gptdraw.gpt.sampling import SamplingSettings
from gptdraw.gpt.train import train
from gptdraw.vq.train import VQTrainConfig, train_vq
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of the quickstart run; the defaults finish in about ten minutes on two CPU cores."""

    image_size: int = 48
    """Canvas size of the shapes images (48 px with the f8 VQGAN gives a 6×6 code grid: each
    cell of the shapes' 3×3 layout is 2×2 codes, and a sequence is 20 + 36 tokens)."""
    vq_preset: str = "shapes-f8"
    """Image tokenizer architecture (gptdraw.vq.model presets)."""
    train_examples: int = 16_000
    """Image–caption pairs generated for training the GPT."""
    eval_examples: int = 512
    """Pairs kept out of training for the eval loss."""
    vq_images: int = 6_000
    """Images the VQGAN is trained on (a prefix of the training set)."""
    vq_steps: int = 800
    """VQGAN optimiser steps."""
    vq_lr: float = 2e-3
    """VQGAN peak learning rate."""
    vq_autoencoder_warmup: float = 0.5
    """Fraction of the VQGAN steps trained as a plain autoencoder before the codebook starts
    (helps f8; for shapes-f4 use 0: it cost that tokenizer about 1.5 dB PSNR in bench/vq_train.py)."""
    gpt_steps: int = 800
    """GPT optimiser steps."""
    gpt_batch: int = 48
    """Sequences per GPT step."""
    text_len: int = 20
    """Caption tokens per sequence (the longest shapes caption takes 17)."""
    text_vocab_size: int = 512
    """Caption BPE vocabulary; large enough that every caption word is one token."""
    images_per_prompt: int = 4
    """Drawings per held-out prompt for the verifier's score."""
    sampling: SamplingSettings = SamplingSettings(temperature=0.5, top_k=4, top_p=1.0, cfg_scale=2.0)
    """Default sampling settings stored with the model (the best of a small sweep on held-out
    prompts: hotter sampling or stronger guidance draws stray objects)."""
    seed: int = 0
    """Seeds the data, the VQGAN, the GPT and the drawings."""
    device: str = "auto"
    """Where to run: auto picks CUDA when present."""


def _heldout() -> shapes.HeldOut:
    return shapes.heldout_prompts(seed=0)


def run_quickstart(out: str | Path, config: QuickstartConfig = QuickstartConfig(), progress: bool = True) -> dict:
    """Runs (or resumes) every stage and returns the report also written to OUT/quickstart.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    source = ShapesSource(config.train_examples + config.eval_examples, config.image_size, seed=config.seed)

    # 1. Caption tokenizer: a BPE trained on the source's captions, as `gptdraw prepare` trains one.
    data_dir = out / "data"
    caption_tokenizer = caption_tokenizer_for(source, data_dir, "train", config.text_len, config.text_vocab_size)
    timings["text_tokenizer"] = time.perf_counter() - started

    # 2. The VQGAN, on a prefix of the training images.
    mark = time.perf_counter()
    vq_dir = out / "vq"
    if not (vq_dir / "model.safetensors").exists():
        images = np.stack([np.asarray(item.image) for item in source.read(0, config.vq_images)])  # (N, S, S, 3)
        vq_config = VQTrainConfig(
            preset=config.vq_preset, steps=config.vq_steps, seed=config.seed, image_size=config.image_size,
            lr=config.vq_lr, reconstruction_loss="mse", autoencoder_warmup=config.vq_autoencoder_warmup,
        )
        vq_result = train_vq(vq_config, images, vq_dir, device=str(device), progress=progress)
        logger.info("VQGAN: PSNR %.1f dB, codebook usage %.0f%%", vq_result.psnr, 100 * vq_result.codebook_usage)
    image_tokenizer = ImageTokenizer.from_pretrained(vq_dir, device=device)
    timings["vqgan"] = time.perf_counter() - mark

    # 3. Pre-encode every example; eval_examples of them, spread evenly, form the held-out split.
    mark = time.perf_counter()
    prepare(
        source, data_dir, image_tokenizer, caption_tokenizer, eval_count=config.eval_examples,
        device=device, image_tokenizer_path=str(vq_dir), workers=0, progress=progress,
    )
    timings["prepare"] = time.perf_counter() - mark

    # 4. The GPT.
    mark = time.perf_counter()
    model_dir = out / "model"
    heldout = _heldout()
    train_config = train_preset(
        "tiny", max_steps=config.gpt_steps, seed=config.seed, micro_batch_size=config.gpt_batch,
        warmup_steps=min(100, config.gpt_steps // 10),
        sample_prompts=tuple(heldout.one_object[:4] + heldout.two_object[:4]),
        sample_every=max(1, config.gpt_steps // 3),
    )
    result = train(
        train_config, ShardDataset(data_dir), model_dir, caption_tokenizer, image_tokenizer,
        eval_data=ShardDataset(data_dir / "eval"), sampling=config.sampling, progress=progress,
    )
    timings["gpt"] = time.perf_counter() - mark

    # 5. Draw the held-out prompts, score them, and animate one drawing.
    mark = time.perf_counter()
    pipe = GPTDrawPipeline.from_pretrained(model_dir, device=device)
    scores = evaluate_shapes(pipe, heldout.prompts, config.images_per_prompt, seed=config.seed, out_dir=out, progress=progress)
    frames = [step.images[0] for step in pipe.stream(heldout.two_object[0], seed=config.seed)]
    save_gif(frames, out / "drawing.gif")
    timings["evaluate"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    report = {
        "one_object_accuracy": scores["one_object"],
        "two_object_accuracy": scores["two_object"],
        "accuracy": scores["accuracy"],
        "train_loss": result.train_loss,
        "eval_loss": result.eval_loss,
        "seconds": timings,
        "config": asdict(config),
        "model": str(model_dir),
    }
    (out / "quickstart.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
