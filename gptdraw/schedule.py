"""The learning-rate schedule of every trainer in gptdraw (the GPT's and the image tokenizer's)."""

from __future__ import annotations

import math


def learning_rate(
    step: int, lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine", min_lr_ratio: float = 0.1
) -> float:
    """The learning rate of optimiser step `step` (0-based): a linear warm-up to `lr` over
    `warmup_steps`, then constant, or a cosine or linear decay that reaches
    `min_lr_ratio`·lr at `total_steps` and stays there."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    if schedule == "linear":
        return lr * (1 - (1 - min_lr_ratio) * progress)
    raise ValueError(f"unknown schedule {schedule!r}; choose constant, cosine or linear")
