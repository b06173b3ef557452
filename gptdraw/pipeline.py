"""GPTDrawPipeline: a model directory in, pictures out.

A model directory holds everything needed to draw:

    transformer/       the GPT-2 (transformers format, safetensors)
    text_tokenizer/    the caption tokenizer
    image_tokenizer/   the VQGAN (gptdraw format, safetensors)
    gptdraw.json       the sequence layout and the default sampling settings
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image
from transformers import GPT2LMHeadModel

from gptdraw.hub import push_model, resolve_model
from gptdraw.images import tensor_to_pil
from gptdraw.gpt.lora import ADAPTER_DIR, base_model, has_lora, load_adapter, save_adapter
from gptdraw.gpt.model import check_model_fits_layout, load_transformer, save_transformer
from gptdraw.runtime import native_bf16, resolve_device, resolve_dtype
from gptdraw.gpt.sampling import CodeDrawer, DrawerOptions, SamplingSettings
from gptdraw.sequence import SequenceLayout
from gptdraw.captions import CaptionTokenizer
from gptdraw.vq.model import ImageTokenizer

logger = logging.getLogger(__name__)

MODEL_CONFIG_NAME = "gptdraw.json"
PARTS = ("transformer", "text_tokenizer", "image_tokenizer")


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


def save_model_directory(
    directory: str | os.PathLike, gpt: GPT2LMHeadModel, caption_tokenizer: CaptionTokenizer,
    image_tokenizer: ImageTokenizer, layout: SequenceLayout, sampling: SamplingSettings,
) -> None:
    """Writes a model directory: transformer/, text_tokenizer/, image_tokenizer/ and gptdraw.json.
    Each part is written whole before it replaces the old one, and gptdraw.json comes last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {
        "transformer": lambda d: save_transformer(gpt, d),
        "text_tokenizer": caption_tokenizer.save_pretrained,
        "image_tokenizer": image_tokenizer.save_pretrained,
    }
    if has_lora(gpt):  # the frozen base in transformer/, the adapter beside it
        writers["transformer"] = lambda d: save_transformer(base_model(gpt), d)
        writers[ADAPTER_DIR] = lambda d: save_adapter(gpt, d)
    elif (directory / ADAPTER_DIR).exists():  # an adapter merged into the weights since
        shutil.rmtree(directory / ADAPTER_DIR)
    for part, write in writers.items():
        temporary = Path(tempfile.mkdtemp(prefix=f".{part}-", dir=directory))
        write(temporary)
        if (directory / part).exists():
            shutil.rmtree(directory / part)
        os.replace(temporary, directory / part)
    config = {
        "format": "gptdraw-model",
        "version": 1,
        "layout": layout.to_dict(),
        "sampling": sampling.to_dict(),
        "text_tokenizer": caption_tokenizer.identity(),
    }
    temporary_config = directory / f".{MODEL_CONFIG_NAME}.tmp"
    temporary_config.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(temporary_config, directory / MODEL_CONFIG_NAME)


@contextlib.contextmanager
def evaluation_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Runs the block with the modules in eval mode (no dropout), then gives each its own mode back."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, training in zip(modules, modes):
            module.train(training)


class GPTDrawPipeline:
    """Draws pictures for captions with a trained gptdraw model."""

    def __init__(
        self,
        gpt: GPT2LMHeadModel,
        caption_tokenizer: CaptionTokenizer,
        image_tokenizer: ImageTokenizer,
        layout: SequenceLayout,
        default_settings: SamplingSettings = SamplingSettings(),
        drawer_options: DrawerOptions = DrawerOptions(),
        decode_in_bf16: bool = False,
    ):
        """decode_in_bf16: turn codes into pixels under bf16 autocast (on a CPU with AMX about
        twice as fast as fp32; the pixels differ from fp32's by rounding)."""
        check_model_fits_layout(gpt, layout, "pipeline")
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
        if caption_tokenizer.text_len != layout.text_len or caption_tokenizer.pad_id != layout.pad_id:
            raise ValueError("the caption tokenizer does not match the model's caption layout")
        # The models are used as they are handed over (a trainer may still be training the GPT);
        # drawing puts them in eval mode only while it draws.
        self.gpt = gpt
        self.caption_tokenizer = caption_tokenizer
        self.image_tokenizer = image_tokenizer
        self.layout = layout
        self.default_settings = default_settings
        self.decode_in_bf16 = decode_in_bf16
        # The fast sampler keeps its KV caches (and compiled step) between drawings.
        self.drawer = CodeDrawer(self.gpt, layout, drawer_options)

    @property
    def device(self) -> torch.device:
        return next(self.gpt.parameters()).device

    # ----------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes the model directory (see save_model_directory)."""
        save_model_directory(directory, self.gpt, self.caption_tokenizer, self.image_tokenizer, self.layout,
                             self.default_settings)

    def push_to_hub(self, repo_id: str, license: str = "other", credits: str = "", private: bool = False,
                    token: str | None = None) -> str:
        """Saves the model to a temporary directory and uploads it with a model card (gptdraw.hub)."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_model(folder, repo_id, license=license, credits=credits, private=private, token=token)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = "auto",
        compile: bool = False,
        revision: str | None = None,
    ) -> "GPTDrawPipeline":
        """Loads a model directory, or a Hub repository id ("user/name", at `revision`) through
        huggingface_hub's cache; a missing or incomplete one is a clear error.

        dtype: "auto" (bfloat16 on a GPU that has it, else float32, with the images decoded
        under bf16 autocast on a CPU that runs bf16 natively), "float32", "bfloat16".
        compile: torch.compile the decode step (CUDA graphs on a GPU; the first drawing of
        each batch size then takes a while longer).
        """
        directory = resolve_model(directory, revision)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory {directory} does not exist")
        missing = [p for p in (MODEL_CONFIG_NAME, *PARTS) if not (directory / p).exists()]
        if missing:
            raise FileNotFoundError(
                f"{directory} is not a complete gptdraw model directory: it lacks {', '.join(missing)}"
            )
        try:
            config = json.loads((directory / MODEL_CONFIG_NAME).read_text())
            layout = SequenceLayout.from_dict(config["layout"])
            settings = SamplingSettings(**config.get("sampling", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{directory / MODEL_CONFIG_NAME} is not a valid model config: {error}") from None
        device = resolve_device(device)
        decode_in_bf16 = dtype in (None, "auto") and device.type == "cpu" and native_bf16(device)
        dtype = resolve_dtype(dtype, device)
        gpt = load_transformer(directory / "transformer", device)
        if (directory / ADAPTER_DIR).is_dir():
            gpt = load_adapter(gpt, directory / ADAPTER_DIR).to(device).eval()
        return cls(
            gpt=gpt.to(dtype),
            caption_tokenizer=CaptionTokenizer.from_pretrained(directory / "text_tokenizer"),
            image_tokenizer=ImageTokenizer.from_pretrained(directory / "image_tokenizer", device, dtype),
            layout=layout,
            default_settings=settings,
            drawer_options=DrawerOptions(compile=compile),
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
        encoded = self.caption_tokenizer.encode_batch(list(prompts))
        warnings = [
            f"prompt {prompt[:40]!r}… is longer than the caption budget of "
            f"{self.layout.text_len} tokens and was truncated"
            for prompt, cut in zip(prompts, encoded.truncated)
            if cut
        ]
        for warning in warnings:
            logger.warning(warning)
        return torch.from_numpy(encoded.ids).long(), warnings

    def settings(self, **overrides) -> SamplingSettings:
        """The model's default sampling settings with some replaced (None values ignored)."""
        return replace(self.default_settings, **{k: v for k, v in overrides.items() if v is not None})

    def stream(
        self,
        prompts: str | Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        every: int = 1,
        prefix_codes: torch.Tensor | None = None,
        **settings,
    ) -> Iterator[DrawingStep]:
        """Draws, yielding partial images every `every` codes and the finished images last.

        prefix_codes: (B, n) codes that are kept as given (an image prompt), B = all images.
        Settings (temperature, top_k, top_p, cfg_scale) default to the model's.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        caption_ids, _ = self.encode_prompts(prompts)
        caption_ids = caption_ids.repeat_interleave(num_images_per_prompt, dim=0)  # (B, text_len)
        return self.stream_ids(caption_ids, seed, every, prefix_codes, **settings)

    def stream_ids(
        self,
        caption_ids: torch.Tensor,
        seed: int | None = None,
        every: int = 1,
        prefix_codes: torch.Tensor | None = None,
        **settings,
    ) -> Iterator[DrawingStep]:
        """`stream` for captions already encoded: (B, text_len) ids, one image per row."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        sampling = self.settings(**settings)
        generator = torch.Generator(self.device)
        # Without a seed, a fresh one (torch.seed() would also reseed torch's global generator).
        generator.manual_seed(seed if seed is not None else secrets.randbits(63))
        total = self.layout.image_len
        with evaluation_mode(self.gpt):
            for codes in self.drawer.iter_codes(caption_ids.to(self.device), sampling, generator, prefix_codes):
                drawn = codes.shape[1]
                if drawn == total or drawn % every == 0:
                    yield DrawingStep(drawn, total, self.decode_partial(codes), codes)

    def __call__(
        self,
        prompts: str | Sequence[str],
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        prefix_codes: torch.Tensor | None = None,
        **settings,
    ) -> list[Image.Image]:
        """Draws `num_images_per_prompt` images for each prompt, in prompt order."""
        last = None
        for last in self.stream(
            prompts, num_images_per_prompt, seed, every=self.layout.image_len,
            prefix_codes=prefix_codes, **settings,
        ):
            pass
        return last.images

    def decode_partial(self, codes: torch.Tensor) -> list[Image.Image]:
        """(B, n ≤ h·w) codes → images; positions not yet drawn are painted grey."""
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
