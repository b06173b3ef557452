"""Editing and choosing: complete an image from its top, vary an image, keep the best of N.

- Completion (an image prompt): the image is encoded with the image tokenizer, the first
  `keep_rows` rows of codes are kept exactly, and the model draws the rest after them.
- Variations: the same with fewer rows kept (by default the top quarter of the grid) and
  the caption, if any, guiding the redraw. Each variation is its own random draw, so they
  share the given image's top rows and differ below them. Without a caption they are drawn
  after the blank caption (no guidance).
- Best of N: N candidates are drawn and ranked by how much more likely the model finds
  their codes under the caption than under the blank caption, summed over the image codes
  (`guidance_scores`, one batched forward), or by a CLIP model's image–text similarity when
  a local CLIP directory is given and loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from transformers import GPT2LMHeadModel

from gptdraw.images import pil_to_tensor
from gptdraw.gpt.model import attention_mask
from gptdraw.gpt.sampling import code_tokens, image_logits, model_rows
from gptdraw.pipeline import DrawingStep, GPTDrawPipeline, finished_drawing
from gptdraw.runtime import evaluation_mode
from gptdraw.sequence import SequenceLayout

logger = logging.getLogger(__name__)

# Rows of (image codes × codebook) log-probabilities held at once while scoring.
SCORE_ROWS_PER_CHUNK = 4


# ------------------------------------------------------------------------------ image prompts
def image_to_codes(pipe: GPTDrawPipeline, image: Image.Image | torch.Tensor) -> torch.Tensor:
    """An image → its (1, h, w) codes on the model's grid.

    A PIL image is resized (shorter side) and centre-cropped to the tokenizer's input size;
    a tensor must be (1, 3, H, W) in [0, 1] of exactly that size.
    """
    h, w = pipe.layout.grid
    factor = pipe.image_tokenizer.downsample_factor
    size = (h * factor, w * factor)
    if isinstance(image, Image.Image):
        if size[0] != size[1]:
            raise ValueError(f"the model's grid {h}x{w} is not square: pass a {size[1]}x{size[0]} tensor")
        pixels = pil_to_tensor([image], size=size[0])  # (1, 3, H, W)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 4 or image.shape[0] != 1 or tuple(image.shape[-2:]) != size:
            raise ValueError(f"an image tensor must be (1, 3, {size[0]}, {size[1]}), got {tuple(image.shape)}")
        pixels = image
    else:
        raise ValueError(f"an image prompt must be a PIL image or a tensor, got {type(image).__name__}")
    with evaluation_mode(pipe.image_tokenizer):
        return pipe.image_tokenizer.encode(pixels.to(pipe.device))  # (1, h, w)


def kept_codes(pipe: GPTDrawPipeline, image: Image.Image | torch.Tensor, keep_rows: int) -> torch.Tensor:
    """The first `keep_rows` rows of the image's codes, row-major: (1, keep_rows·w)."""
    h, w = pipe.layout.grid
    if not 1 <= keep_rows < h:
        raise ValueError(f"keep_rows must be between 1 and {h - 1} (the grid has {h} rows), got {keep_rows}")
    codes = image_to_codes(pipe, image)
    return codes[:, :keep_rows].reshape(1, keep_rows * w)  # (1, keep_rows*w)


def stream_completion(
    pipe: GPTDrawPipeline,
    prompt: str,
    image: Image.Image | torch.Tensor,
    keep_rows: int,
    num_images: int = 1,
    seed: int | None = None,
    every: int = 1,
    **settings,
) -> Iterator[DrawingStep]:
    """Completes the image below its top `keep_rows` code rows, yielding partial images."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    prefix = kept_codes(pipe, image, keep_rows).expand(num_images, -1)  # (N, keep_rows*w)
    return pipe.stream(prompt, num_images, seed=seed, every=every, prefix_codes=prefix, **settings)


def complete(
    pipe: GPTDrawPipeline,
    prompt: str,
    image: Image.Image | torch.Tensor,
    keep_rows: int,
    num_images: int = 1,
    seed: int | None = None,
    **settings,
) -> list[Image.Image]:
    """Draws `num_images` completions of the image's top `keep_rows` code rows for the prompt."""
    steps = stream_completion(
        pipe, prompt, image, keep_rows, num_images, seed, every=pipe.layout.image_len, **settings
    )
    return finished_drawing(steps).images


def variations(
    pipe: GPTDrawPipeline,
    image: Image.Image | torch.Tensor,
    prompt: str | None = None,
    num_images: int = 4,
    keep_rows: int | None = None,
    seed: int | None = None,
    **settings,
) -> list[Image.Image]:
    """Variations of an image: its top `keep_rows` rows (default: a quarter of the grid, at
    least one) kept, the rest redrawn, guided by the prompt or after the blank caption."""
    h, _ = pipe.layout.grid
    keep_rows = max(1, h // 4) if keep_rows is None else keep_rows
    if prompt is not None:
        return complete(pipe, prompt, image, keep_rows, num_images, seed, **settings)
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    prefix = kept_codes(pipe, image, keep_rows).expand(num_images, -1)
    blank = torch.full((num_images, pipe.layout.text_len), pipe.layout.pad_id, dtype=torch.long)
    # Guidance against the blank caption is a no-op when the caption is blank.
    settings["cfg_scale"] = 1.0
    steps = pipe.stream_ids(blank, seed, every=pipe.layout.image_len, prefix_codes=prefix, **settings)
    return finished_drawing(steps).images


# ------------------------------------------------------------------------------ ranking
@torch.inference_mode()
def guidance_scores(
    gpt: GPT2LMHeadModel, layout: SequenceLayout, caption_ids: torch.Tensor, codes: torch.Tensor
) -> torch.Tensor:
    """How much more likely the model finds each image under its caption than under the blank
    caption: Σ_t log p(code_t | caption, codes<t) − log p(code_t | blank, codes<t).

    caption_ids (B, text_len), codes (B, h, w) or (B, h·w) → (B,) float32. The conditional and
    blank rows run as one batch of 2B; probabilities are over the codebook (only codes can be
    drawn) at temperature 1 without top-k/top-p, whatever settings drew the codes.
    """
    device = next(gpt.parameters()).device
    batch = caption_ids.shape[0]
    codes = codes.reshape(batch, -1).to(device=device, dtype=torch.long)  # (B, h*w)
    if codes.shape[1] != layout.image_len:
        raise ValueError(f"scoring needs whole images of {layout.image_len} codes, got {codes.shape[1]}")
    caption_ids = caption_ids.to(device=device, dtype=torch.long)
    ids = torch.cat([model_rows(caption_ids, layout, True), code_tokens(codes, layout, True)], dim=1)  # (2B, T)
    # Position text_len-1+t predicts code t: the last caption token predicts the first code.
    embeds = gpt.get_input_embeddings()(ids[:, :-1])  # (2B, T-1, C); embeddings: see sampling.last_hidden
    mask = attention_mask(gpt, layout, ids[:, : layout.text_len], embeds.shape[1])
    hidden = gpt.transformer(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, layout.text_len - 1 :]  # (2B, h*w, C)
    targets = torch.cat([codes, codes])  # (2B, h*w)
    totals = []
    for start in range(0, 2 * batch, SCORE_ROWS_PER_CHUNK):
        rows = slice(start, start + SCORE_ROWS_PER_CHUNK)
        log_probs = image_logits(gpt, layout, hidden[rows]).log_softmax(dim=-1)  # (rows, h*w, K)
        totals.append(log_probs.gather(-1, targets[rows, :, None]).squeeze(-1).sum(dim=1))
    cond, blank = torch.cat(totals).chunk(2)
    return (cond - blank).cpu()


class ClipScorer:
    """Image–text cosine similarity with a CLIP model from a local directory (transformers)."""

    def __init__(self, model, processor, device: torch.device):
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ClipScorer":
        """Loads CLIPModel and its processor from a directory, never from the network."""
        from transformers import AutoProcessor, CLIPModel

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"CLIP directory {directory} does not exist")
        try:
            model = CLIPModel.from_pretrained(directory, local_files_only=True, use_safetensors=True)
            processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"{directory} is not a loadable CLIP model directory: {error}") from None
        return cls(model, processor, torch.device(device))

    @torch.inference_mode()
    def score(self, images: list[Image.Image], prompt: str) -> torch.Tensor:
        """(N,) cosine similarity of each image with the prompt."""
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt", padding=True, truncation=True)
        out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        # image_embeds and text_embeds come out normalised: their dot product is the cosine.
        return (out.image_embeds @ out.text_embeds.T).squeeze(-1).float().cpu()  # (N,)


def load_clip_scorer(path: str | Path | None, device: str | torch.device = "cpu") -> tuple[ClipScorer | None, str]:
    """A ClipScorer, or None and the reason it was skipped (no path given, or it does not load)."""
    if path is None:
        return None, "no CLIP model given: ranked by the guidance score"
    try:
        return ClipScorer.from_pretrained(path, device), ""
    except (FileNotFoundError, ValueError) as error:
        message = f"CLIP ranking skipped: {error}; ranked by the guidance score"
        logger.warning(message)
        return None, message


@dataclass
class Ranking:
    """Candidates drawn for one prompt, the kept ones best first."""

    images: list[Image.Image]
    """The kept candidates, best first."""
    indices: list[int]
    """Which candidates (in drawing order) were kept, best first."""
    guidance: torch.Tensor
    """(N,) guidance score of every candidate, in drawing order."""
    clip: torch.Tensor | None
    """(N,) CLIP similarity of every candidate, or None without a CLIP model."""
    ranked_by: str
    """"clip" or "guidance"."""
    message: str
    """Why CLIP was not used, or ""."""
    codes: torch.Tensor
    """(N, h, w) codes of every candidate, in drawing order."""


def best_of(
    pipe: GPTDrawPipeline,
    prompt: str,
    num_candidates: int = 8,
    keep: int = 1,
    seed: int | None = None,
    clip: str | Path | ClipScorer | None = None,
    **settings,
) -> Ranking:
    """Draws `num_candidates` images for the prompt and keeps the best `keep`.

    Ranked by CLIP similarity when `clip` is a ClipScorer or a CLIP directory that loads,
    otherwise by `guidance_scores`. Both scores are returned whenever they exist.
    """
    if num_candidates < 1 or not 1 <= keep <= num_candidates:
        raise ValueError(f"keep must be between 1 and num_candidates ({num_candidates}), got {keep}")
    caption_ids, _ = pipe.encode_prompts([prompt])
    caption_ids = caption_ids.expand(num_candidates, -1)  # (N, text_len)
    final = finished_drawing(pipe.stream_ids(caption_ids, seed, every=pipe.layout.image_len, **settings))
    codes = final.codes.reshape(num_candidates, *pipe.layout.grid)  # (N, h, w)
    with evaluation_mode(pipe.transformer):
        guidance = guidance_scores(pipe.transformer, pipe.layout, caption_ids, codes)
    scorer, message = (clip, "") if isinstance(clip, ClipScorer) else load_clip_scorer(clip, pipe.device)
    clip_scores = scorer.score(final.images, prompt) if scorer is not None else None
    key = clip_scores if clip_scores is not None else guidance
    order = torch.argsort(key, descending=True, stable=True)[:keep].tolist()
    return Ranking(
        images=[final.images[i] for i in order],
        indices=order,
        guidance=guidance,
        clip=clip_scores,
        ranked_by="clip" if clip_scores is not None else "guidance",
        message=message,
        codes=codes.cpu(),
    )
