"""GPTDrawPipeline: a model directory in, pictures out.

A model directory holds everything needed to draw:

    transformer/       the GPT-2 (transformers format, safetensors)
    text_tokenizer/    the caption tokenizer
    image_tokenizer/   the VQGAN (gptdraw format, safetensors)
    gptdraw.json       the sequence layout and the default sampling settings
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import warnings
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel

from gptdraw.captions import CaptionTokenizer
from gptdraw.gpt.config import SamplingConfig
from gptdraw.gpt.model import check_model_fits_layout
from gptdraw.gpt.sampling import CodeDrawer, DrawerConfig, draw_noise
from gptdraw.hub import push_model, resolve_model
from gptdraw.images import tensor_to_pil
from gptdraw.model_dir import load_model_directory, save_model_directory
from gptdraw.runtime import evaluation_mode, native_bf16, resolve_device, resolve_precision, torch_dtype
from gptdraw.sequence import SequenceLayout
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)

MAX_BATCH = 64
"""Images drawn at once unless told otherwise. The KV caches of a batch grow with it (the
reference 124M GPT-2 with guidance: about 1.5 GiB in fp32 at 64), and a compiled drawer
compiles each power of two up to it once (gptdraw.gpt.sampling.COMPILATION_LIMIT)."""

MAX_IMAGES = 10_000
"""The most images one drawing makes unless its caller raises the limit: a slip such as
100,000 images per prompt is refused at once instead of running for days."""

DECODE_BATCH = 16
"""Partial images turned into pixels at once: a 256-px VQGAN decoder needs about 150 MB per image in fp32."""


@dataclass
class DrawingStep:
    """One moment of a drawing in progress."""

    codes_drawn: int
    """How many codes of each image are drawn so far."""
    total_codes: int
    """Codes in a whole image."""
    images: list[Image.Image]
    """The partial images; codes not yet drawn are shown grey."""
    codes: torch.Tensor
    """(B, codes_drawn) the codes so far."""
    first: int = 0
    """Where these images stand among all the drawing's: a drawing of more than `max_batch`
    images comes in batches, one after another, each streamed from its start to its end."""


def check_image_count(count: int, max_images: int = MAX_IMAGES, *, flag: str = "max_images") -> None:
    """Refuses, in one line naming `flag`, a drawing of more than `max_images` images."""
    check_whole(max_images, flag)
    if count > max_images:
        raise ValueError(
            f"{count:,} images asked for (prompts × images per prompt), more than {flag} {max_images:,}; "
            f"raise {flag} to draw that many"
        )


def check_whole(value, name: str) -> None:
    """Refuses a count that is not a whole number of at least 1 (numpy's integers are), naming it."""
    if not is_whole(value) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")


def is_whole(value) -> bool:
    """Whether `value` is an integer of any kind (Python's or numpy's), but not a bool."""
    return not isinstance(value, bool) and hasattr(type(value), "__index__")


def finished_drawing(steps: Iterator[DrawingStep]) -> DrawingStep:
    """Runs a drawing (`GPTDrawPipeline.stream`) to its end and joins the finished step of each
    of its batches into one: every image and its codes, in order."""
    finished = [step for step in steps if step.codes_drawn == step.total_codes]
    if not finished:
        raise ValueError("the drawing ended before it began")
    images = [image for step in finished for image in step.images]
    codes = torch.cat([step.codes for step in finished])  # (N, total_codes)
    return DrawingStep(finished[0].total_codes, finished[0].total_codes, images, codes)


class GPTDrawPipeline:
    """Draws pictures for captions with a trained gptdraw model.

    Its parts are named as the model directory names them: `transformer`, `text_tokenizer`,
    `image_tokenizer` (see gptdraw.model_dir).
    """

    def __init__(
        self,
        transformer: GPT2LMHeadModel,
        text_tokenizer: CaptionTokenizer,
        image_tokenizer: ImageTokenizer,
        layout: SequenceLayout,
        default_settings: SamplingConfig = SamplingConfig(),
        drawer_config: DrawerConfig = DrawerConfig(),
        decode_in_bf16: bool = False,
    ):
        """decode_in_bf16: turn codes into pixels under bf16 autocast (on a CPU with AMX about
        twice as fast as fp32; the pixels differ from fp32's by rounding)."""
        check_model_fits_layout(transformer, layout, "pipeline")
        if image_tokenizer.codebook_size != layout.codebook_size:
            raise ValueError(
                f"the image tokenizer has {image_tokenizer.codebook_size} codes but the GPT was "
                f"trained on {layout.codebook_size}"
            )
        if tuple(image_tokenizer.grid_size()) != layout.grid:
            raise ValueError(
                f"the image tokenizer gives a {image_tokenizer.grid_size()} grid but the GPT was "
                f"trained on {layout.grid}"
            )
        if text_tokenizer.text_len != layout.text_len or text_tokenizer.pad_id != layout.pad_id:
            raise ValueError("the caption tokenizer does not match the model's caption layout")
        # The models are used as they are handed over (a trainer may still be training the GPT);
        # drawing puts them in eval mode only while it draws.
        self.transformer = transformer
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self.layout = layout
        self.default_settings = default_settings
        self.decode_in_bf16 = decode_in_bf16
        # The fast sampler keeps its KV caches (and compiled step) between drawings.
        self.drawer = CodeDrawer(self.transformer, layout, drawer_config)

    @property
    def gpt(self) -> GPT2LMHeadModel:
        """Deprecated name of `transformer` (kept for one release)."""
        warnings.warn("GPTDrawPipeline.gpt is now .transformer", DeprecationWarning, stacklevel=2)
        return self.transformer

    @property
    def caption_tokenizer(self) -> CaptionTokenizer:
        """Deprecated name of `text_tokenizer` (kept for one release)."""
        warnings.warn("GPTDrawPipeline.caption_tokenizer is now .text_tokenizer", DeprecationWarning, stacklevel=2)
        return self.text_tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes the model directory (gptdraw.model_dir)."""
        save_model_directory(directory, transformer=self.transformer, text_tokenizer=self.text_tokenizer,
                             image_tokenizer=self.image_tokenizer, layout=self.layout, sampling=self.default_settings)

    def push_to_hub(self, repo_id: str, *, license: str = "other", credits: str = "", private: bool = False,
                    token: str | None = None) -> str:
        """Saves the model to a temporary directory and uploads it with a model card (gptdraw.hub)."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_model(folder, repo_id, license=license, credits=credits, private=private, token=token)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        precision: str = "auto",
        compile: bool = False,
        revision: str | None = None,
        *,
        dtype: str | None = None,
    ) -> "GPTDrawPipeline":
        """Loads a model directory, or a Hub repository id ("user/name", at `revision`) through
        huggingface_hub's cache; a missing or incomplete one is a clear error.

        precision: the weights' precision, auto | fp32 | bf16 | fp16 (gptdraw.runtime); "auto"
        is bf16 on a GPU that has it, else fp32 with the images decoded under bf16 autocast on a
        CPU that runs bf16 natively. `dtype` is its deprecated name.
        compile: torch.compile the decode step (CUDA graphs on a GPU; the first drawing of
        each batch size then takes a while longer).
        """
        if dtype is not None:
            warnings.warn("from_pretrained(dtype=...) is now precision=...", DeprecationWarning, stacklevel=2)
            precision = dtype
        precision = "auto" if precision is None else precision  # None meant "auto" before the rename
        directory = resolve_model(directory, revision)
        device = resolve_device(device, flag="device")  # the Python argument, not the CLI flag
        chosen = resolve_precision(precision, device, purpose="drawing", bf16_on_cpu=False)
        decode_in_bf16 = precision == "auto" and device.type == "cpu" and native_bf16(device)
        parts = load_model_directory(directory, device, torch_dtype(chosen))
        return cls(
            transformer=parts.transformer,
            text_tokenizer=parts.text_tokenizer,
            image_tokenizer=parts.image_tokenizer,
            layout=parts.layout,
            default_settings=parts.sampling,
            drawer_config=DrawerConfig(compile=compile),
            decode_in_bf16=decode_in_bf16,
        )

    # ----------------------------------------------------------------- drawing
    def encode_prompts(self, prompts: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
        """Prompts → (B, text_len) caption ids and warnings (one per truncated prompt)."""
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise ValueError(f"a prompt must be text, got {type(prompt).__name__}")
            if not prompt.strip():
                raise ValueError("a prompt is empty: write what to draw")
        encoded = self.text_tokenizer.encode_batch(list(prompts))
        warnings = [
            f"prompt {prompt[:40]!r}… is longer than the caption budget of "
            f"{self.layout.text_len} tokens and was truncated"
            for prompt, cut in zip(prompts, encoded.truncated)
            if cut
        ]
        for warning in warnings:
            logger.warning(warning)
        return torch.from_numpy(encoded.ids).long(), warnings

    def settings(self, **overrides) -> SamplingConfig:
        """The model's default sampling settings with some replaced (None values ignored)."""
        return replace(self.default_settings, **{k: v for k, v in overrides.items() if v is not None})

    def stream(
        self,
        prompts: str | Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        every: int = 1,
        prefix_codes: torch.Tensor | None = None,
        *,
        max_batch: int = MAX_BATCH,
        max_images: int = MAX_IMAGES,
        progress: bool = True,
        **settings,
    ) -> Iterator[DrawingStep]:
        """Draws, yielding partial images every `every` codes and the finished images last,
        batch after batch of at most `max_batch` images (`DrawingStep.first` says which).

        prefix_codes: (B, n) codes that are kept as given (an image prompt), B = all images.
        max_images: more images than this in all is refused before any work.
        progress: a progress bar over the images when they take more than one batch.
        Settings (temperature, top_k, top_p, cfg_scale) default to the model's. The same seed
        draws the same images whatever `max_batch` is.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        check_whole(num_images_per_prompt, "num_images_per_prompt")
        check_image_count(len(prompts) * num_images_per_prompt, max_images)  # before encoding them all
        caption_ids, _ = self.encode_prompts(prompts)
        caption_ids = caption_ids.repeat_interleave(num_images_per_prompt, dim=0)  # (B, text_len)
        return self.stream_ids(caption_ids, seed, every, prefix_codes, max_batch=max_batch, max_images=max_images,
                               progress=progress, **settings)

    def stream_ids(
        self,
        caption_ids: torch.Tensor,
        seed: int | None = None,
        every: int = 1,
        prefix_codes: torch.Tensor | None = None,
        *,
        max_batch: int = MAX_BATCH,
        max_images: int = MAX_IMAGES,
        progress: bool = True,
        **settings,
    ) -> Iterator[DrawingStep]:
        """`stream` for captions already encoded: (B, text_len) ids, one image per row.

        Everything is checked here, when it is called, before the first step is asked for."""
        check_whole(every, "every")
        check_whole(max_batch, "max_batch")
        count = caption_ids.shape[0]
        check_image_count(count, max_images)
        if prefix_codes is not None and prefix_codes.shape[0] != count:
            raise ValueError(f"prefix_codes has {prefix_codes.shape[0]} rows for {count} captions")
        sampling = self.settings(**settings)
        if seed is not None and (not is_whole(seed) or not -2**63 <= seed < 2**64):
            raise ValueError(f"seed must be a whole number from -2**63 to 2**64 - 1, got {seed!r}")
        generator = torch.Generator(self.device)
        # Without a seed, a fresh one (torch.seed() would also reseed torch's global generator).
        generator.manual_seed(int(seed) if seed is not None else secrets.randbits(63))
        return self._draw_batches(caption_ids, generator, every, prefix_codes, sampling, max_batch, progress)

    def _draw_batches(self, caption_ids, generator, every, prefix_codes, sampling, max_batch, progress):
        """The steps of `stream_ids`, batch after batch."""
        count, total = caption_ids.shape[0], self.layout.image_len
        prefix = None if prefix_codes is None else prefix_codes.reshape(count, -1)  # (B, n0)
        steps = total - (0 if prefix is None else prefix.shape[1])
        # Every image's random numbers are drawn first, as one batch of all of them would draw
        # them, so that each image is the same whichever batch it falls in.
        noise = draw_noise(count, max(steps, 0), generator, self.device) if sampling.temperature > 0 else None
        bar = tqdm(total=count, desc="draw", unit="img", disable=not progress or count <= max_batch, dynamic_ncols=True)
        with evaluation_mode(self.transformer), bar:
            for first in range(0, count, max_batch):
                rows = slice(first, first + max_batch)
                batch_steps = self.drawer.iter_codes(
                    caption_ids[rows].to(self.device), sampling, None,
                    None if prefix is None else prefix[rows], None if noise is None else noise[rows],
                )
                for codes in batch_steps:
                    drawn = codes.shape[1]
                    if drawn == total or drawn % every == 0:
                        yield DrawingStep(drawn, total, self.decode_partial(codes), codes, first)
                bar.update(min(max_batch, count - first))

    def __call__(
        self,
        prompts: str | Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        prefix_codes: torch.Tensor | None = None,
        *,
        max_batch: int = MAX_BATCH,
        max_images: int = MAX_IMAGES,
        progress: bool = True,
        **settings,
    ) -> list[Image.Image]:
        """Draws `num_images_per_prompt` images for each prompt, in prompt order, `max_batch` at a
        time; more than `max_images` in all is refused (see `stream`)."""
        steps = self.stream(prompts, num_images_per_prompt, seed, every=self.layout.image_len, prefix_codes=prefix_codes,
                            max_batch=max_batch, max_images=max_images, progress=progress, **settings)
        return finished_drawing(steps).images

    def decode_partial(self, codes: torch.Tensor) -> list[Image.Image]:
        """(B, n ≤ h·w) codes → images; positions not yet drawn are painted grey.

        Finished images are decoded one at a time: a convolution's rounding can change with the
        batch it runs in, and an image's pixels must depend on its codes alone, not on how many
        were drawn beside it. Partial ones (previews) go DECODE_BATCH at a time. Either way memory
        does not grow with B."""
        chunk = 1 if codes.shape[1] == self.layout.image_len else DECODE_BATCH
        return [image for start in range(0, codes.shape[0], chunk) for image in self._decode_chunk(codes[start : start + chunk])]

    def _decode_chunk(self, codes: torch.Tensor) -> list[Image.Image]:
        batch, drawn = codes.shape
        h, w = self.layout.grid
        full = torch.zeros(batch, h * w, dtype=torch.long, device=codes.device)
        full[:, :drawn] = codes
        bf16 = torch.autocast(codes.device.type, torch.bfloat16, enabled=self.decode_in_bf16)
        with torch.inference_mode(), evaluation_mode(self.image_tokenizer), bf16:
            pixels = self.image_tokenizer.decode(full.reshape(batch, h, w))  # (B, 3, H, W)
        if drawn < h * w:
            known = torch.zeros(h * w, device=pixels.device)
            known[:drawn] = 1
            scale = pixels.shape[-1] // w
            mask = known.reshape(1, 1, h, w).repeat_interleave(scale, 2).repeat_interleave(scale, 3)
            pixels = pixels * mask + 0.5 * (1 - mask)
        return tensor_to_pil(pixels.float().cpu())
