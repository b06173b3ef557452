"""Drawing: continue captions with image codes, one code at a time.

Small pure functions (filter_logits, apply_cfg, choose_next) and one loop,
`iter_codes`, that yields the codes as they are drawn, so that a caller can show the
image filling in. Classifier-free guidance runs the conditional rows and the blank-caption
rows as one batch of 2B and mixes their logits as `uncond + scale·(cond − uncond)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator

import torch
from transformers import DynamicCache, GPT2LMHeadModel

from .sequence import SequenceLayout


@dataclass(frozen=True)
class SamplingSettings:
    """How the next code is chosen from the model's distribution."""

    temperature: float = 1.0
    """Softmax temperature; 0 draws the most likely code (greedy)."""
    top_k: int = 0
    """Keep only the k most likely codes (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of codes whose probability reaches p (1: all)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale; 1 is plain conditional sampling."""

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be ≥ 0, got {self.cfg_scale}")

    def to_dict(self) -> dict:
        return asdict(self)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Sets logits outside the top-k and the top-p nucleus to -inf. (B, V) → (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a code when the codes before it already reach top_p; the first always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale·(cond − uncond)."""
    return uncond + scale * (cond - uncond)


def choose_next(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) float32 logits → (B,) chosen indices."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def iter_codes(
    gpt: GPT2LMHeadModel,
    layout: SequenceLayout,
    caption_ids: torch.Tensor,
    settings: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    prefix_codes: torch.Tensor | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Draws image codes for (B, text_len) caption ids, yielding (B, n) codes after each step.

    prefix_codes: (B, n0) codes already fixed (an image prompt); drawing continues after them.
    Only image codes can be drawn: the logits are sliced to the codebook's range.
    """
    device = next(gpt.parameters()).device
    batch = caption_ids.shape[0]
    caption_ids = caption_ids.to(device=device, dtype=torch.long)
    codes = (
        torch.empty(batch, 0, dtype=torch.long, device=device)
        if prefix_codes is None
        else prefix_codes.to(device=device, dtype=torch.long).reshape(batch, -1)
    )
    guided = settings.cfg_scale != 1.0
    rows = caption_ids
    if guided:
        blank = torch.full_like(caption_ids, layout.pad_id)
        rows = torch.cat([caption_ids, blank])  # (2B, text_len): conditional rows, then blank rows
    image_slice = slice(layout.image_offset, layout.image_offset + layout.codebook_size)

    def next_logits(ids: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
        # logits_to_keep=1: only the last position's logits are computed.
        out = gpt(input_ids=ids, cache=cache, use_cache=cache is not None, logits_to_keep=1)
        logits = out.logits[:, -1, image_slice].float()  # (rows, codebook)
        if guided:
            cond, uncond = logits.chunk(2)
            logits = apply_cfg(cond, uncond, settings.cfg_scale)
        return logits

    def as_tokens(new_codes: torch.Tensor) -> torch.Tensor:
        tokens = new_codes + layout.image_offset
        return torch.cat([tokens, tokens]) if guided else tokens

    cache = DynamicCache() if use_cache else None
    pending = torch.cat([rows, as_tokens(codes)], dim=1)  # tokens not yet seen by the model
    while codes.shape[1] < layout.image_len:
        if use_cache:
            logits = next_logits(pending, cache)
        else:
            logits = next_logits(torch.cat([rows, as_tokens(codes)], dim=1), None)
        chosen = choose_next(logits, settings, generator)  # (B,)
        codes = torch.cat([codes, chosen[:, None]], dim=1)
        pending = as_tokens(chosen[:, None])
        yield codes


@torch.no_grad()
def sample_codes(
    gpt: GPT2LMHeadModel,
    layout: SequenceLayout,
    caption_ids: torch.Tensor,
    settings: SamplingSettings = SamplingSettings(),
    generator: torch.Generator | None = None,
    prefix_codes: torch.Tensor | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Draws a whole image of codes: (B, text_len) caption ids → (B, h, w) codes."""
    codes = prefix_codes
    for codes in iter_codes(gpt, layout, caption_ids, settings, generator, prefix_codes, use_cache):
        pass
    return codes.reshape(caption_ids.shape[0], *layout.grid)  # (B, h, w)
