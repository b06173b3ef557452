"""Typed configs and named presets for the GPT and its training.

Presets are plain dataclass instances: `model_preset("tiny")` for a CPU run in minutes,
`model_preset("gpt-draw")` for the reference recipe, larger ones for those who outgrow it.
Image-tokenizer presets live in `gptdraw.vq.config`. SamplingConfig (how drawing picks codes)
lives here too, so that the CLI can make its flags without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar, Literal

from gptdraw.runtime import Precision, canonical_precision


def check_numbers(config, whole: tuple[str, ...] = (), real: tuple[str, ...] = ()) -> None:
    """Refuses, naming the field, a `whole` field that is not an integer (a bool is not one) and a
    `real` field that is not a finite number: NaN and infinity pass every `<` check silently."""
    for name in whole:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
    for name in real:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")


MODEL_LIMITS = {"n_layer": 256, "n_head": 256, "n_embd": 16384, "n_positions": 65536, "vocab_size": 2**20}
"""The largest GPT gptdraw builds or loads (far above GPT-2 XL's 48 layers × 1600, 1,024 positions and
50,257 ids): a config past them is refused before anything is allocated."""


CAPTION_ATTENTIONS = ("causal", "prefix")
"""How a GPT's caption positions attend (ModelConfig.caption_attention), kept in its config.json."""

PART_DROPOUT_KINDS = ("keep-one", "drop-one")
"""What part dropout leaves of a caption (TrainConfig.part_dropout_kind)."""


@dataclass(frozen=True)
class ModelConfig:
    """Width and depth of the GPT-2 (vocabulary and context come from the sequence layout)."""

    n_layer: int
    """Transformer blocks."""
    n_head: int
    """Attention heads per block."""
    n_embd: int
    """Hidden width; must divide by n_head."""
    dropout: float = 0.0
    """Residual, embedding and attention dropout (the reference uses none)."""
    tie_head: bool = True
    """The output head is the token embedding (GPT-2's way); False gives the head weights of its own,
    so an image code's output row need not be its input row (LlamaGen, minDALL-E and DALLE-pytorch untie)."""
    caption_attention: Literal["causal", "prefix"] = "causal"
    """causal: each caption token sees the ones before it (GPT-2's way); prefix: every caption token sees
    the whole caption (a prefix LM, the cheap stand-in for dalle-mini's and Parti's text encoders). A
    prefix caption has no next-word loss to learn (each position sees the next word): train it with
    text_loss_weight 0."""
    mask_pads: bool = False
    """True: no position attends the pads between a caption's last word and the first code (each pad
    still sees the words before it), so a short caption's words are not diluted by a dozen pads;
    False: the pads are attended like any token (GPT-2's way, and what older gptdraw models do)."""

    def __post_init__(self):
        check_numbers(self, whole=("n_layer", "n_head", "n_embd"), real=("dropout",))
        for name in ("tie_head", "mask_pads"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.caption_attention not in CAPTION_ATTENTIONS:
            raise ValueError(f"caption_attention must be one of {', '.join(CAPTION_ATTENTIONS)}, "
                             f"got {self.caption_attention!r}")
        for name in ("n_layer", "n_head", "n_embd"):
            if not 1 <= getattr(self, name) <= MODEL_LIMITS[name]:
                raise ValueError(f"{name} must be in [1, {MODEL_LIMITS[name]}], got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Trains in minutes on two CPU cores on the built-in shapes data.
    "tiny": ModelConfig(n_layer=4, n_head=8, n_embd=256),
    # The reference "GPT-Draw": GPT-2 small's width and depth with more heads, no dropout.
    "gpt-draw": ModelConfig(n_layer=12, n_head=16, n_embd=768),
    # For users who outgrow the reference: about GPT-2 medium (350M) and large (774M).
    "gpt-draw-medium": ModelConfig(n_layer=24, n_head=16, n_embd=1024),
    "gpt-draw-large": ModelConfig(n_layer=36, n_head=20, n_embd=1280),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[name]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, batch, precision, logging and checkpoints."""

    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["tiny"])
    """The GPT's width and depth."""
    max_steps: int = 1000
    """Optimiser steps to train for (one step = micro_batch_size × grad_accum × processes sequences)."""
    micro_batch_size: int = 32
    """Sequences per forward pass on each process."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimiser step."""
    lr: float = 1e-3
    """Peak learning rate."""
    embedding_lr_ratio: float = 1.0
    """The token and position embeddings' learning rate as a multiple of lr (modded-nanogpt gives its
    embeddings a far higher one than its matrices); 1: the same as everything else. A tied head is the
    token embedding, so it learns at this rate too (untie it with ModelConfig.tie_head to keep it at lr)."""
    warmup_steps: int = 100
    """Linear warm-up from 0 to lr over this many steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After warm-up: constant (the reference), cosine or linear decay to min_lr_ratio·lr."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the decaying schedules, as a fraction of lr."""
    optimizer: Literal["adamw", "adafactor", "muon"] = "adamw"
    """AdamW with torch's defaults (the reference), Adafactor to save optimiser memory, or Muon on the
    transformer blocks' matrices with AdamW on the rest (not under FSDP: Muon needs whole matrices)."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default), applied to matrices only."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas (torch's default)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    precision: Precision = "auto"
    """Mixed precision: auto (bf16 where the hardware runs it natively, fp16 on a GPU without bf16, else
    fp32), fp32, bf16 or fp16 (float32, bfloat16, float16 and "no" are accepted too)."""
    compile: bool | None = None
    """torch.compile the training forward and backward as one graph (None: on when training on a GPU,
    where it pays; on a CPU the compilation takes longer than a short run saves)."""
    compile_mode: str | None = None
    """torch.compile mode for inductor: "reduce-overhead" replays the step as CUDA graphs (fewer launches,
    more memory), "max-autotune" searches kernels; None: inductor's default."""
    compile_backend: str = "inductor"
    """torch.compile backend; "aot_eager" traces the same graphs without generating code (to debug)."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank beside the blocks' matrices, all else frozen (0: train every weight).
    Meant with --init-from a trained model; needs peft."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the adapters' update is scaled by lora_alpha / lora_rank."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to fit big micro-batches in little memory."""
    caption_dropout: float = 0.1
    """Probability of training on the blank caption instead, so classifier-free guidance works."""
    part_dropout: float = 0.0
    """Probability of training on one of the caption's comma-separated parts instead, chosen at random
    ("farmer, medium skin tone, noto" → "medium skin tone"), so that each part learns what it draws
    whatever else the caption names. Captions of one part are kept."""
    part_dropout_kind: Literal["keep-one", "drop-one"] = "keep-one"
    """What part dropout leaves of a caption: keep-one, one part alone (as above); drop-one, every part
    but one ("farmer, medium skin tone, noto" → "farmer, noto"), so that each part is still learnt
    without each other one, but a part is mostly trained beside the others (a tone beside its subject)."""
    text_loss_weight: float = 1.0
    """Weight of the caption-token loss (DALL·E used 1/8 text, 7/8 image)."""
    image_loss_weight: float = 1.0
    """Weight of the image-code loss."""
    loss_vocabulary: Literal["per-modality", "joint"] = "per-modality"
    """per-modality: a caption position's softmax is over the caption ids and an image position's over
    the codes only (what the sampler draws from); joint: both over the whole joint vocabulary (the first recipe)."""
    loss_chunk: int = 4096
    """Token positions per chunk of the cross-entropy, so full fp32 logits are never held at once."""
    seed: int = 0
    """Seeds the weights, the data order and the caption dropout."""
    eval_every: int = 200
    """Steps between evaluations on the held-out split (0: never)."""
    eval_batches: int = 8
    """Micro-batches per evaluation."""
    sample_every: int = 500
    """Steps between sample grids (0: never)."""
    sample_prompts: tuple[str, ...] = ()
    """Fixed prompts drawn in each sample grid."""
    log_every: int = 10
    """Steps between logged metrics."""
    checkpoint_every: int = 200
    """Steps between checkpoints (the last step is always saved)."""
    checkpoint_minutes: float = 0.0
    """Also checkpoint at the first log step once this many minutes have passed since the last
    checkpoint (decided on the main process, the same step on every process): a kill loses at most
    about this much work however fast the steps are. 0: by checkpoint_every alone."""
    async_checkpoint: bool = False
    """Write checkpoints in a background thread while training goes on: the step's weights and
    optimiser state are first copied to host memory (that much more of it), one write runs at a time,
    and the run waits for the last before it returns."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are pruned."""
    wandb: bool = False
    """Also log to Weights & Biases (must be installed)."""

    RENAMED: ClassVar[dict[str, str]] = {"mixed_precision": "precision"}
    """Old field names still read from config files and flags (kept for one release)."""

    def __post_init__(self):
        object.__setattr__(self, "precision", canonical_precision(self.precision))
        check_numbers(self, whole=("max_steps", "micro_batch_size", "grad_accum", "warmup_steps", "lora_rank", "seed",
                                   "eval_every", "eval_batches", "sample_every", "log_every", "checkpoint_every",
                                   "keep_checkpoints", "loss_chunk"),
                      real=("lr", "embedding_lr_ratio", "checkpoint_minutes", "min_lr_ratio", "weight_decay", "grad_clip", "lora_alpha", "caption_dropout",
                            "part_dropout", "text_loss_weight", "image_loss_weight"))
        if not all(isinstance(b, (int, float)) and math.isfinite(b) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.grad_clip < 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("grad_clip and weight_decay must be ≥ 0, min_lr_ratio in [0, 1]")
        for name in ("eval_every", "sample_every"):  # 0 switches these off
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0 (0: never), got {getattr(self, name)}")
        for name in ("max_steps", "micro_batch_size", "grad_accum", "keep_checkpoints", "loss_chunk", "log_every",
                     "checkpoint_every", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("lr must be positive and warmup_steps non-negative")
        if self.checkpoint_minutes < 0:
            raise ValueError(f"checkpoint_minutes must be ≥ 0 (0: by steps only), got {self.checkpoint_minutes}")
        if self.embedding_lr_ratio <= 0:
            raise ValueError(f"embedding_lr_ratio must be positive, got {self.embedding_lr_ratio}")
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError("lora_rank must be non-negative and lora_alpha positive")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0.0 <= self.part_dropout <= 1.0:
            raise ValueError(f"part_dropout must be in [0, 1], got {self.part_dropout}")
        if self.part_dropout_kind not in PART_DROPOUT_KINDS:
            raise ValueError(f"part_dropout_kind must be one of {', '.join(PART_DROPOUT_KINDS)}, got {self.part_dropout_kind!r}")
        if self.text_loss_weight < 0 or self.image_loss_weight <= 0:
            raise ValueError("loss weights must be non-negative, the image weight positive")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = {cls.RENAMED.get(name, name): value for name, value in data.items()}
        data["model"] = ModelConfig(**data["model"])
        data["betas"] = tuple(data["betas"])
        data["sample_prompts"] = tuple(data["sample_prompts"])
        return cls(**data)


GPU_CHECKPOINTS = {"checkpoint_minutes": 20.0, "async_checkpoint": True}
"""The GPU presets' checkpoints: at least every 20 minutes however fast the steps go, written while
training goes on (a gpt-draw checkpoint is ~2 GB: seconds of disk time a step need not wait for)."""

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # Minutes on two CPU cores (the quickstart).
    "tiny": TrainConfig(
        model=MODEL_PRESETS["tiny"], max_steps=1500, micro_batch_size=64, lr=2e-3,
        warmup_steps=100, schedule="cosine", eval_every=250, sample_every=0, checkpoint_every=250,
    ),
    # The reference recipe: effective batch 16 × 64 = 1024, AdamW, LR 1e-3 after 500 warm-up steps,
    # constant; one epoch of CC3M is 2,690 steps. A checkpoint of gpt-draw is ~2 GB (weights and AdamW
    # state): every 250 steps is a few minutes of GPU work between writes, not a write every 50.
    "gpt-draw": TrainConfig(
        model=MODEL_PRESETS["gpt-draw"], max_steps=2690, micro_batch_size=16, grad_accum=64,
        lr=1e-3, warmup_steps=500, schedule="constant", weight_decay=0.01,
        eval_every=100, sample_every=250, checkpoint_every=250, **GPU_CHECKPOINTS,
    ),
    "gpt-draw-medium": TrainConfig(
        model=MODEL_PRESETS["gpt-draw-medium"], max_steps=2690, micro_batch_size=16, grad_accum=64,
        lr=3e-4, warmup_steps=500, schedule="cosine", eval_every=100, sample_every=250,
        checkpoint_every=250, **GPU_CHECKPOINTS,
    ),
    "gpt-draw-large": TrainConfig(
        model=MODEL_PRESETS["gpt-draw-large"], max_steps=2690, micro_batch_size=8, grad_accum=128,
        lr=2e-4, warmup_steps=500, schedule="cosine", eval_every=100, sample_every=250,
        checkpoint_every=250, gradient_checkpointing=True, **GPU_CHECKPOINTS,
    ),
}


def train_preset(name: str, **overrides) -> TrainConfig:
    """A named training preset with some fields replaced (None values are ignored)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}")
    return replace(TRAIN_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class SamplingConfig:
    """How the next code is chosen from the model's distribution."""

    temperature: float = 1.0
    """Softmax temperature; 0 draws the most likely code (greedy)."""
    top_k: int = 0
    """Keep only the k most likely codes (0: all; at most 2**20, the largest vocabulary)."""
    top_p: float = 1.0
    """Keep the smallest set of codes whose probability reaches p (1: all)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale; 1 is plain conditional sampling."""

    def __post_init__(self):
        check_numbers(self, whole=("top_k",), real=("temperature", "top_p", "cfg_scale"))
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0 <= self.top_k <= MODEL_LIMITS["vocab_size"]:
            raise ValueError(f"top_k must be in [0, {MODEL_LIMITS['vocab_size']}] (0: all codes), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be ≥ 0, got {self.cfg_scale}")

    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance changes anything (it needs the blank-caption rows)."""
        return self.cfg_scale != 1.0

    def to_dict(self) -> dict:
        return asdict(self)


SamplingSettings = SamplingConfig
"""Deprecated name of SamplingConfig (kept for one release)."""
