"""Drawing: continue captions with image codes, one code at a time.

One class, `CodeDrawer`, draws for one GPT; its `iter_codes` yields the codes after every step.
It runs one of two loops, which draw the same codes for the same seed:

- the fast one (the default): a static, preallocated KV cache; classifier-free guidance as
  one batch of 2B rows (conditional rows, then blank-caption rows) whose last hidden states
  are mixed as `uncond + scale·(cond − uncond)` before the LM head (the head is linear, so
  this is mixing the logits, for half the head's work); logits computed for the image codes
  only; and a decode step of fixed shapes that can be compiled (`DrawerConfig(compile=True)`:
  CUDA graphs on a GPU through torch.compile's "reduce-overhead" mode).
- the plain reference loop (`DrawerConfig(use_cache=False)`), which runs the whole
  sequence through the model for every code. It exists to check the fast one.

Both choose codes with the same function, `pick_codes`, from the same random numbers:
inverse-CDF sampling with one uniform number per image and step. The numbers are drawn
outside the model step with the caller's torch.Generator (or all beforehand, `draw_noise`,
so that a drawing split into batches draws what it draws in one), so a compiled step (or a
CUDA graph) holds no random state and a seed means the same codes on every path.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel, GPT2Model, StaticCache

from gptdraw.gpt.config import SamplingConfig, SamplingSettings  # noqa: F401  (torch-free, for the CLI; the old name kept)
from gptdraw.gpt.model import attention_mask
from gptdraw.sequence import SequenceLayout


T = TypeVar("T")


class SamplingTensors(NamedTuple):
    """SamplingSettings as the sampler's step takes them.

    Temperature and guidance scale are 0-d tensors. For a compiled step, top_k and top_p
    are tensors when they filter, so other filter values reuse the compiled step instead of
    compiling another. Filters that keep everything (top_k 0, top_p 1) stay numbers, so the
    step skips them instead of sorting the codebook at every step; a compiled step then
    compiles once with and once without filtering (on a CPU the sort of 16 × 16,384 logits
    costs more than a small GPT's whole step).
    """

    temperature: torch.Tensor
    top_k: torch.Tensor | int
    top_p: torch.Tensor | float
    cfg_scale: torch.Tensor

    @classmethod
    def of(cls, settings: SamplingConfig, device: torch.device | str, compiled: bool = False) -> "SamplingTensors":
        as_float = dict(dtype=torch.float32, device=device)
        as_tensors = compiled and (settings.top_k > 0 or settings.top_p < 1.0)
        return cls(
            temperature=torch.tensor(settings.temperature, **as_float),
            top_k=torch.tensor(settings.top_k, dtype=torch.long, device=device) if as_tensors else settings.top_k,
            top_p=torch.tensor(settings.top_p, **as_float) if as_tensors else settings.top_p,
            cfg_scale=torch.tensor(settings.cfg_scale, **as_float),
        )


# ------------------------------------------------------------------------------------ choosing
def filter_logits(
    logits: torch.Tensor, top_k: int | torch.Tensor = 0, top_p: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Sets logits outside the top-k and the top-p nucleus to -inf. (B, V) → (B, V).

    top_k 0 and top_p 1 keep everything; ties with the k-th logit are kept. As numbers,
    the filters that keep everything are skipped; as 0-d tensors (a compiled step) there
    is no data-dependent branch and the same codes are kept.
    """
    batch, vocab = logits.shape
    if not isinstance(top_k, torch.Tensor) and not isinstance(top_p, torch.Tensor) and top_p >= 1.0:
        if top_k <= 0 or top_k >= vocab:
            return logits
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        return logits.masked_fill(logits < kth, float("-inf"))
    top_k = torch.as_tensor(top_k, device=logits.device)
    top_p = torch.as_tensor(top_p, device=logits.device)
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V) each
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)
    kth = sorted_logits.gather(-1, (k - 1).reshape(1, 1).expand(batch, 1))  # (B, 1)
    outside_k = sorted_logits < kth
    probs = sorted_logits.masked_fill(outside_k, float("-inf")).softmax(dim=-1)
    # Drop a code when the codes before it already reach top_p; the first always stays.
    # (top_p = 1 drops nothing: a cumulative sum that rounds past 1 must not cut the tail.)
    outside_p = (cumulative_sum(probs) - probs >= top_p) & (top_p < 1.0)
    drop_sorted = outside_k | outside_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


SCAN_BLOCK = 128
"""Length of the short scans that cumulative_sum is made of."""


def cumulative_sum(values: torch.Tensor) -> torch.Tensor:
    """The running sum of (B, V) values along V, as torch.cumsum, made of short scans: a scan
    within each block of SCAN_BLOCK values, then one over the block totals.

    Why: torch.compile (inductor, torch 2.11, CUDA) picks a split scan kernel for a long scan
    over few rows, such as a (16, 16384) cumsum, and fails to generate it; a scan this short
    over many rows is a plain kernel. Each block starts from the sum through the one before, so
    that a cdf made of it rises from block to block as a plain cumsum's does.

    Upstream: inductor's scan lowering (pytorch/pytorch#106581) falls back or splits long scans;
    no issue names this failure. Can go when bench/gpu.py's compiled-sampler check passes with a
    plain torch.cumsum on the torch that pyproject.toml requires at least.
    """
    batch, length = values.shape
    blocks = -(-length // SCAN_BLOCK)
    padding = blocks * SCAN_BLOCK - length  # zeros at the end, which change no sum
    padded = F.pad(values, (0, padding)) if padding else values  # (B, blocks·block)
    within = padded.reshape(batch, blocks, SCAN_BLOCK).cumsum(dim=-1)  # (B, blocks, block)
    through = within[..., -1].cumsum(dim=-1)  # (B, blocks): the sum through each block's end
    before = F.pad(through[:, :-1], (1, 0))  # (B, blocks): the sum before each block
    sums = (within + before[..., None]).reshape(batch, -1)  # (B, blocks·block)
    return sums[:, :length] if padding else sums  # (B, V)


def apply_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale·(cond − uncond)."""
    return uncond + scale * (cond - uncond)


def draw_uniform(batch: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """One uniform number in [0, 1) per row, (batch, 1): the randomness of one sampling step."""
    return torch.rand(batch, 1, generator=generator, device=device)


def pick_codes(logits: torch.Tensor, uniform: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """(B, K) float32 logits and (B, 1) uniform numbers → (B,) chosen codes.

    Temperature 0 takes the argmax. Otherwise p is the softmax of the temperature-scaled,
    top-k/top-p filtered logits, and the code is where u·Σp falls in p's cumulative sum
    (inverse-CDF sampling: code i with probability p_i, one random number per row).
    """
    greedy = logits.argmax(dim=-1)
    temperature = torch.where(tensors.temperature > 0, tensors.temperature, 1.0)
    probs = filter_logits(logits / temperature, tensors.top_k, tensors.top_p).softmax(dim=-1)
    cdf = cumulative_sum(probs)  # (B, K)
    total = cdf[:, -1:]
    # Strictly below the total: the first cdf entry above the target is then a code with p > 0
    # (filtered codes add nothing to the sum, so they never make it rise).
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))
    # The number of cdf entries at or below the target is the index of the first one above it
    # (searchsorted's answer, as one plain reduction: inductor in torch 2.11 could not lower
    # searchsorted over a cdf made by cumulative_sum; its searchsorted lowering was also wrong,
    # pytorch/pytorch#182343). Can go with cumulative_sum, under the same check.
    sampled = (cdf <= target).sum(dim=-1)  # (B,)
    return torch.where(tensors.temperature > 0, sampled, greedy)


def draw_noise(count: int, steps: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """The uniform numbers of a whole drawing of `count` images, drawn beforehand: (count, steps), on the CPU.

    Column t holds what step t of `CodeDrawer.iter_codes` would draw from `generator` (one
    (count, 1) draw per step on `device`, in the same order), so that the drawing split into
    batches of rows, each given its rows as `noise`, draws the same codes as in one batch.
    The cost is 4 bytes per image and step in host memory (1 KiB an image for 256 codes).
    """
    columns = [draw_uniform(count, generator, device).cpu() for _ in range(steps)]
    return torch.cat(columns, dim=1) if columns else torch.empty(count, 0)


def _uniform_source(
    settings: SamplingConfig, batch: int, generator, noise: torch.Tensor | None, device
) -> Callable[[], torch.Tensor]:
    """The (B, 1) uniform numbers of each step in turn: the columns of `noise`, else fresh
    draws from `generator`."""
    if settings.temperature == 0:
        # Greedy drawing uses no randomness, so it leaves the generator untouched.
        return lambda: torch.zeros(batch, 1, device=device)
    if noise is None:
        return lambda: draw_uniform(batch, generator, device)
    columns = iter(noise.to(device=device, dtype=torch.float32).t().contiguous())  # (steps, B): one row per step
    return lambda: next(columns)[:, None]  # (B, 1)


def image_logits(gpt: GPT2LMHeadModel, layout: SequenceLayout, hidden: torch.Tensor) -> torch.Tensor:
    """Last hidden states (R, C) → float32 logits over the image codes only, (R, codebook).

    Only codes can be drawn, so the LM head multiplies by the codebook's rows of its weight
    and never computes the caption vocabulary's logits.
    """
    head = gpt.get_output_embeddings()
    rows = slice(layout.image_offset, layout.image_offset + layout.codebook_size)
    bias = head.bias[rows] if head.bias is not None else None
    return F.linear(hidden, head.weight[rows], bias).float()


def last_hidden(gpt: GPT2LMHeadModel, tokens: torch.Tensor, cache: StaticCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """(R, n) tokens → (R, C) the transformer's output at the last position. `mask`: the tokens'
    attention mask (gptdraw.gpt.model.attention_mask), None where transformers' causal one serves.

    The tokens go in as embeddings: transformers then skips its check for padding in
    input_ids, which would wait for the GPU at every step (and warn about the caption pads,
    which the model was trained to read).
    """
    embeds = gpt.get_input_embeddings()(tokens)  # (R, n, C)
    out = gpt.transformer(inputs_embeds=embeds, attention_mask=mask, use_cache=cache is not None,
                          **{CACHE_ARGUMENT: cache})
    return out.last_hidden_state[:, -1]


# transformers renamed GPT2Model.forward's `past_key_values` to `cache` (5.2x). The other name
# would vanish into **kwargs without an error and draw every step without the cache, so the
# name is read off the installed version's signature. Can go when pyproject.toml requires a
# transformers that has `cache` (then pass it by that name).
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(GPT2Model.forward).parameters else "past_key_values"


def next_codes(
    gpt: GPT2LMHeadModel, layout: SequenceLayout, hidden: torch.Tensor, uniform: torch.Tensor, tensors: SamplingTensors
) -> torch.Tensor:
    """Last hidden states of B or 2B rows (conditional, then blank-caption) → (B,) chosen codes.

    The rows are guided when there are twice as many as (B, 1) uniform numbers. Guidance is
    mixed on the hidden states, before the LM head: the head is linear (h·Wᵀ + b), so
    uncond + s·(cond − uncond) of the hidden states gives the same logits as of the logits,
    and the head multiplies B rows instead of 2B.
    """
    if hidden.shape[0] == 2 * uniform.shape[0]:
        cond, uncond = hidden.float().chunk(2)  # (B, C) each
        hidden = apply_cfg(cond, uncond, tensors.cfg_scale).to(hidden.dtype)
    return pick_codes(image_logits(gpt, layout, hidden), uniform, tensors)


def model_rows(caption_ids: torch.Tensor, layout: SequenceLayout, guided: bool) -> torch.Tensor:
    """(B, text_len) captions → the rows the model runs: (2B, text_len) with guidance."""
    if not guided:
        return caption_ids
    blank = torch.full_like(caption_ids, layout.pad_id)
    return torch.cat([caption_ids, blank])  # conditional rows, then blank-caption rows


def code_tokens(codes: torch.Tensor, layout: SequenceLayout, guided: bool) -> torch.Tensor:
    """(B, n) codes → (B or 2B, n) joint-vocabulary tokens for the model's rows."""
    tokens = codes + layout.image_offset
    return torch.cat([tokens, tokens]) if guided else tokens


def _start_codes(caption_ids: torch.Tensor, prefix_codes: torch.Tensor | None) -> torch.Tensor:
    batch = caption_ids.shape[0]
    if prefix_codes is None:
        return torch.empty(batch, 0, dtype=torch.long, device=caption_ids.device)
    if prefix_codes.shape[0] != batch:
        raise ValueError(f"prefix_codes has {prefix_codes.shape[0]} rows for {batch} captions")
    return prefix_codes.to(device=caption_ids.device, dtype=torch.long).reshape(batch, -1)  # (B, n0)


def _check_inputs(layout: SequenceLayout, caption_ids: torch.Tensor, codes: torch.Tensor,
                  noise: torch.Tensor | None) -> None:
    if caption_ids.ndim != 2 or caption_ids.shape[1] != layout.text_len:
        raise ValueError(f"caption ids must be (B, {layout.text_len}), got {tuple(caption_ids.shape)}")
    if codes.shape[1] > layout.image_len:
        raise ValueError(f"{codes.shape[1]} prefix codes do not fit an image of {layout.image_len}")
    if codes.numel() and (codes.min() < 0 or codes.max() >= layout.codebook_size):
        raise ValueError(f"prefix codes must be in [0, {layout.codebook_size})")
    steps = layout.image_len - codes.shape[1]
    if noise is not None and tuple(noise.shape) != (caption_ids.shape[0], steps):
        raise ValueError(f"noise must be (B, codes to draw) = {(caption_ids.shape[0], steps)}, got {tuple(noise.shape)}")


# ------------------------------------------------------------------------------------ the loops
@dataclass(frozen=True)
class DrawerConfig:
    """How a CodeDrawer runs its steps."""

    use_cache: bool = True
    """The fast loop; False runs the plain reference loop, without a cache, to check it."""
    compile: bool = False
    """torch.compile the fast loop's decode step (fixed shapes, a whole graph). Worth it on a GPU."""
    backend: str | Callable = "inductor"
    """torch.compile backend; "aot_eager" or "eager" trace the step without generating code."""
    mode: str | None = None
    """torch.compile mode for inductor; None: "reduce-overhead" (CUDA graphs) on a GPU,
    the default mode on a CPU."""

    def __post_init__(self):
        if self.mode is not None and self.backend != "inductor":
            raise ValueError(f"a compile mode needs the inductor backend, not {self.backend!r}")
        if self.compile and not self.use_cache:
            raise ValueError("only the fast loop (use_cache=True) has a decode step to compile")


def compiled_batch_size(batch: int) -> int:
    """The batch a compiled drawer runs for `batch` images: the next power of two, so that a
    compiled step (and its CUDA graph) serves a few batch sizes."""
    return 1 << (batch - 1).bit_length()


# Compilations one compiled drawer may make: batches padded to 1, 2, … 64 (7 sizes) × guidance
# on or off × filtering on or off is 28. Past it torch.compile(fullgraph=True) raises.
COMPILATION_LIMIT = 32


def recompile_options() -> dict:
    """torch.compile's per-call recompile settings where this torch has them (newer versions): each drawer
    compiles up to COMPILATION_LIMIT shapes of its own. Older versions share torch's global limit
    (8 per code object) between drawers; past it the step raises under fullgraph.

    Upstream: torch.compile(isolate_recompiles=True), PyTorch's devlog "Dynamo Isolate Recompiles"
    (2026-05-04). The signature check can go when pyproject.toml requires a torch that has it."""
    wanted = {"recompile_limit": COMPILATION_LIMIT, "isolate_recompiles": True}
    accepted = inspect.signature(torch.compile).parameters
    return {name: value for name, value in wanted.items() if name in accepted}


class CodeDrawer:
    """Draws image codes for one GPT: static KV caches, batched guidance, an optional compiled step.

    Caches (one per row count) and the compiled step live as long as the drawer, so that
    later drawings reuse them. With compile on, batches are padded to a power of two (the
    padding rows draw nothing that is kept), so a few compiled shapes serve every batch size:
    each (padded batch, guidance on or off, top-k/top-p filtering on or off) compiles once,
    counted per drawer (see COMPILATION_LIMIT).
    A compiled drawer shares its caches between drawings, so one drawing runs at a time
    (others wait for it); an uncompiled one allocates a cache per drawing.
    """

    def __init__(self, gpt: GPT2LMHeadModel, layout: SequenceLayout, options: DrawerConfig = DrawerConfig()):
        self.gpt = gpt
        self.layout = layout
        self.options = options
        self._caches: dict[tuple[int, torch.dtype, torch.device], StaticCache] = {}
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread drawing now, with a compiled step
        self._step = self._decode_step
        if options.compile:
            mode = options.mode
            if mode is None and options.backend == "inductor" and self.device.type == "cuda":
                mode = "reduce-overhead"
            self._step = torch.compile(
                self._decode_step, backend=options.backend, mode=mode, fullgraph=True, dynamic=False,
                **recompile_options(),
            )

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device

    @torch.inference_mode()
    def iter_codes(
        self,
        caption_ids: torch.Tensor,
        settings: SamplingConfig = SamplingConfig(),
        generator: torch.Generator | None = None,
        prefix_codes: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> Iterator[torch.Tensor]:
        """Draws codes for (B, text_len) caption ids, yielding the (B, n) codes after each step.

        prefix_codes: (B, n0) codes already fixed (an image prompt); drawing continues after them
        (a prefix that fills the image is yielded once as it is). Only image codes can be drawn.
        noise: (B, image_len − n0) uniform numbers drawn beforehand (draw_noise), one per image
        and step, used instead of drawing them from `generator` as the steps go.
        The same generator state (or noise) draws the same codes in either loop, compiled or not.
        """
        caption_ids = caption_ids.to(device=self.device, dtype=torch.long)
        codes = _start_codes(caption_ids, prefix_codes)
        _check_inputs(self.layout, caption_ids, codes, noise)
        if codes.shape[1] == self.layout.image_len:
            yield codes
            return
        uniform = _uniform_source(settings, caption_ids.shape[0], generator, noise, self.device)
        if not self.options.use_cache:
            yield from self._reference_steps(caption_ids, codes, settings, uniform)
            return
        if not self.options.compile:  # nothing shared between drawings: no need to wait
            yield from self._cached_steps(caption_ids, codes, settings, uniform)
            return
        if self._owner == threading.get_ident():
            raise RuntimeError("this thread is already drawing with this compiled drawer; finish that drawing first")
        with self._lock:
            self._owner = threading.get_ident()
            try:
                yield from self._cached_steps(caption_ids, codes, settings, uniform)
            finally:
                self._owner = None

    def _reference_steps(self, caption_ids, codes, settings, uniform) -> Iterator[torch.Tensor]:
        """The plain loop: every step runs the whole sequence so far, without a cache."""
        layout, device = self.layout, self.device
        tensors = SamplingTensors.of(settings, device)
        rows = model_rows(caption_ids, layout, settings.guided)
        while codes.shape[1] < layout.image_len:
            ids = torch.cat([rows, code_tokens(codes, layout, settings.guided)], dim=1)
            mask = attention_mask(self.gpt, layout, rows, ids.shape[1])
            chosen = next_codes(self.gpt, layout, last_hidden(self.gpt, ids, mask=mask), uniform(), tensors)  # (B,)
            codes = torch.cat([codes, chosen[:, None]], dim=1)
            yield codes

    def _cached_steps(self, caption_ids, codes, settings, real_rows_uniform) -> Iterator[torch.Tensor]:
        """The fast loop: one uncompiled prefill, then one fixed-shape decode step per code."""
        layout, device = self.layout, self.device
        batch = caption_ids.shape[0]
        padded = compiled_batch_size(batch) if self.options.compile else batch
        padding = padded - batch
        if padding:  # blank rows that are drawn alongside and thrown away
            blank = torch.full((padding, layout.text_len), layout.pad_id, dtype=torch.long, device=device)
            caption_ids = torch.cat([caption_ids, blank])
            codes_in = torch.cat([codes, codes[:1].expand(padding, -1)])
        else:
            codes_in = codes
        guided = settings.guided
        tensors = SamplingTensors.of(settings, device, compiled=self.options.compile)
        cache = self._cache(padded * (2 if guided else 1))

        def uniform() -> torch.Tensor:
            # Only the real rows draw random numbers, so padding leaves the generator's stream alone.
            real = real_rows_uniform()
            return torch.cat([real, torch.zeros(padding, 1, device=device)]) if padding else real

        # Prefill: the captions and any prefix codes in one uncompiled pass of varying length.
        rows = model_rows(caption_ids, layout, guided)
        prompt = torch.cat([rows, code_tokens(codes_in, layout, guided)], dim=1)
        mask = attention_mask(self.gpt, layout, rows, prompt.shape[1], layout.seq_len)  # the cache's seq_len slots
        chosen, tokens = self._decode_step(cache, prompt, uniform(), tensors, mask)
        codes = torch.cat([codes, chosen[:batch, None]], dim=1)
        yield codes
        # Decode: one token per row per step, always the same shapes. Step i's one new token (code i − 1
        # goes in) sits at position text_len + i − 1: its mask is row i − 1 of the decode steps' masks,
        # built once per drawing.
        steps = attention_mask(self.gpt, layout, rows, layout.image_len - 1, layout.seq_len, first=layout.text_len)
        while codes.shape[1] < layout.image_len:
            step = codes.shape[1] - 1
            mask = None if steps is None else steps[:, :, step:step + 1]  # (R or 1, 1, 1, seq_len)
            if self.options.compile:
                # CUDA graphs reuse their output memory on the next replay: mark the step, copy out.
                torch.compiler.cudagraph_mark_step_begin()
                chosen, tokens = self._step(cache, tokens, uniform(), tensors, mask)
                chosen, tokens = chosen.clone(), tokens.clone()
            else:
                chosen, tokens = self._step(cache, tokens, uniform(), tensors, mask)
            codes = torch.cat([codes, chosen[:batch, None]], dim=1)
            yield codes

    def _cache(self, rows: int) -> StaticCache:
        dtype = next(self.gpt.parameters()).dtype
        key = (rows, dtype, self.device)
        cache = self._caches.get(key)
        if cache is None:
            cache = StaticCache(config=self.gpt.config, max_cache_len=self.layout.seq_len)
            if self.options.compile:  # an uncompiled drawer allocates per drawing, keeping no memory
                self._caches[key] = cache
        else:
            cache.reset()
        return cache

    def _decode_step(
        self, cache: StaticCache, tokens: torch.Tensor, uniform: torch.Tensor, tensors: SamplingTensors,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs (R, n) new tokens through the cached model; returns (B,) codes and their (R, 1) tokens.
        `mask`: the tokens' attention mask (attention_mask), None where transformers' causal one serves."""
        hidden = last_hidden(self.gpt, tokens, cache, mask)  # (R, C)
        chosen = next_codes(self.gpt, self.layout, hidden, uniform, tensors)  # (B,)
        guided = tokens.shape[0] == 2 * uniform.shape[0]
        return chosen, code_tokens(chosen[:, None], self.layout, guided)


def last_step(steps: Iterable[T]) -> T:
    """Runs a drawing to its end (the steps of `CodeDrawer.iter_codes`, or of the pipeline's
    `stream`) and returns its last step."""
    last = None
    for last in steps:
        pass
    if last is None:
        raise ValueError("the drawing ended before it began")
    return last


def sample_codes(steps: Iterable[torch.Tensor], layout: SequenceLayout) -> torch.Tensor:
    """Runs a drawing (`CodeDrawer.iter_codes`) to its end: the last (B, h·w) codes as (B, h, w)."""
    codes = last_step(steps)
    if codes.shape[1] != layout.image_len:
        raise ValueError("the drawing ended before its image was whole")
    return codes.reshape(codes.shape[0], *layout.grid)  # (B, h, w)


DrawerOptions = DrawerConfig
"""Deprecated name of DrawerConfig (kept for one release)."""
