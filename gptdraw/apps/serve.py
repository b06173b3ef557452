"""The web page: type a prompt, watch the model draw it code by code, download the results.

A Gradio app over `GPTDrawPipeline.stream_ids`. Every request is checked before any work
(`check_request`: clear messages for an empty or non-text prompt, too many images, settings
out of range); a prompt over the caption budget is drawn truncated, with a visible warning.
One drawing runs at a time and the queue holds at most `queue_size` waiting requests.

The server reads no file and writes no file outside its output folder: drawings go to
`<out>/drawings/`, and Gradio's own file cache is pointed at `<out>/.gradio/` (Gradio reads
the GRADIO_TEMP_DIR environment variable for it, so `build_app` sets that variable).
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image

from gptdraw.apps.animate import enlarge
from gptdraw.images import make_grid
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.sampling import compiled_batch_size

logger = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1
PICTURE_SIDE = 256  # the live picture is at least this wide (pixels)


MOST_IMAGES = 16
"""Upper bound of --max-images."""
MOST_QUEUED = 256
"""Upper bound of --queue-size."""


def _shown(value: Any) -> str:
    """A request value as an error message may show it: short, and with no markup of its own."""
    text = repr(value)
    return html.escape(text if len(text) <= 40 else text[:37] + "…", quote=False)


@dataclass(frozen=True)
class ServeConfig:
    """Where the server writes, and the bounds it holds requests to."""

    out_dir: Path
    """The only folder the server writes to (drawings and Gradio's file cache)."""
    max_images: int = 4
    """Most images one request may ask for."""
    max_prompt_chars: int = 2000
    """Longer prompts are refused (prompts over the caption budget but under this are truncated)."""
    max_temperature: float = 5.0
    """Highest temperature a request may set."""
    max_cfg_scale: float = 20.0
    """Highest classifier-free guidance scale a request may set."""
    queue_size: int = 8
    """Requests that may wait while one is drawn; more are turned away."""
    frames_per_image: int = 32
    """How many times the picture is updated while it is drawn."""
    keep_drawings: int = 500
    """Requests whose drawings are kept on disk; older ones are deleted, so the folder stays bounded."""

    def __post_init__(self):
        object.__setattr__(self, "out_dir", Path(self.out_dir).resolve())
        for name in ("max_images", "max_prompt_chars", "queue_size", "frames_per_image", "keep_drawings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        # A public page must not let one request hold the model for long, nor a queue grow without end.
        for name, most in (("max_images", MOST_IMAGES), ("queue_size", MOST_QUEUED)):
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most}, got {getattr(self, name)}")
        if self.max_temperature <= 0 or self.max_cfg_scale <= 0:
            raise ValueError("max_temperature and max_cfg_scale must be positive")


@dataclass(frozen=True)
class DrawRequest:
    """One checked request from the page or the API."""

    prompt: str
    seed: int
    top_k: int
    top_p: float
    temperature: float
    cfg_scale: float
    num_images: int


class RequestError(ValueError):
    """A request the server refuses, with the message shown to the person who sent it."""


def _whole(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Real) or (
        not isinstance(value, Integral) and not (math.isfinite(value) and float(value).is_integer())
    ):
        raise RequestError(f"{name} must be a whole number, got {_shown(value)}")
    value = int(value)
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise RequestError(f"{name} must be a number, got {_shown(value)}")
    value = float(value)
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise RequestError(f"{name} must be in {bracket}{low:g}, {high:g}], got {value:g}")
    return value


def check_request(
    prompt: Any,
    seed: Any,
    top_k: Any,
    top_p: Any,
    temperature: Any,
    cfg_scale: Any,
    num_images: Any,
    config: ServeConfig,
    codebook_size: int,
) -> DrawRequest:
    """Checks raw request values; raises RequestError naming the first problem."""
    if not isinstance(prompt, str):
        raise RequestError(f"the prompt must be text, got {html.escape(type(prompt).__name__)}")
    if not prompt.strip():
        raise RequestError("the prompt is empty: write what to draw")
    if len(prompt) > config.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; the limit is {config.max_prompt_chars}")
    return DrawRequest(
        prompt=prompt.strip(),
        num_images=_whole("number of images", num_images, 1, config.max_images),
        seed=_whole("seed", seed, 0, MAX_SEED),
        top_k=_whole("top-k", top_k, 0, codebook_size),
        top_p=_number("top-p", top_p, 0.0, 1.0, low_open=True),
        temperature=_number("temperature", temperature, 0.0, config.max_temperature),
        cfg_scale=_number("CFG scale", cfg_scale, 0.0, config.max_cfg_scale),
    )


@dataclass
class DrawingUpdate:
    """What the page shows at one moment of a drawing."""

    picture: Image.Image
    """All images of the request side by side, undrawn codes grey."""
    files: list[str]
    """Finished PNG files (empty until the drawing is done)."""
    status: str
    """A line of progress, after the warning if there is one."""
    warning: str
    """Why the drawing is not quite what was asked (a truncated prompt), or ""."""


class DrawingService:
    """Draws checked requests and saves the results in the output folder."""

    def __init__(self, pipe: GPTDrawPipeline, config: ServeConfig):
        self.pipe = pipe
        self.config = config
        self.drawings_dir = config.out_dir / "drawings"

    def draw(self, request: DrawRequest) -> Iterator[DrawingUpdate]:
        """Yields the picture as it fills in, then the saved files."""
        pipe = self.pipe
        caption_ids, warnings = pipe.encode_prompts([request.prompt])
        warning = ""
        if warnings:
            warning = (
                f"Warning: the prompt is longer than the caption budget of {pipe.layout.text_len} "
                "tokens; only its beginning was drawn."
            )
        total = pipe.layout.image_len
        every = max(1, total // self.config.frames_per_image)
        steps = pipe.stream_ids(
            caption_ids.expand(request.num_images, -1),
            seed=request.seed,
            every=every,
            top_k=request.top_k,
            top_p=request.top_p,
            temperature=request.temperature,
            cfg_scale=request.cfg_scale,
        )
        step = None
        for step in steps:
            if step.codes_drawn < total:
                status = f"Drawing… {step.codes_drawn}/{total} codes"
                yield DrawingUpdate(self._picture(step.images), [], " ".join(filter(None, [warning, status])), warning)
        files = self._save(request, step.images)
        status = f"Done: {len(files)} image{'s' if len(files) > 1 else ''} of {total} codes."
        yield DrawingUpdate(self._picture(step.images), files, " ".join(filter(None, [warning, status])), warning)

    @staticmethod
    def _picture(images: list[Image.Image]) -> Image.Image:
        # Small drawings are scaled up (nearest neighbour, codes stay crisp) to be seen.
        tiles = [enlarge(image, PICTURE_SIDE // min(4, len(images))) for image in images]
        return tiles[0] if len(tiles) == 1 else make_grid(tiles, columns=min(4, len(tiles)))

    def _forget_old_drawings(self) -> None:
        """Deletes the oldest requests' folders beyond config.keep_drawings (this one included)."""
        runs = sorted((path for path in self.drawings_dir.iterdir() if path.is_dir()), key=lambda path: path.stat().st_mtime)
        for old in runs[: max(0, len(runs) - self.config.keep_drawings)]:
            shutil.rmtree(old, ignore_errors=True)

    def _save(self, request: DrawRequest, images: list[Image.Image]) -> list[str]:
        # An unguessable folder per request: the files are served by path, and a visitor who
        # could guess another's folder could read their drawings and prompt.
        run = self.drawings_dir / secrets.token_urlsafe(18)
        run.mkdir(parents=True)
        self._forget_old_drawings()
        sidecar = {
            "prompt": request.prompt,
            "seed": request.seed,
            "num_images": request.num_images,
            **self.pipe.settings(
                top_k=request.top_k, top_p=request.top_p, temperature=request.temperature, cfg_scale=request.cfg_scale
            ).to_dict(),
        }
        (run / "request.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        files = []
        for index, image in enumerate(images):
            path = run / f"{index:02d}.png"
            image.save(path)
            files.append(str(path))
        return files


def build_app(pipe: GPTDrawPipeline, config: ServeConfig):
    """The Gradio Blocks app (not launched). Points Gradio's file cache into the output folder."""
    cache_dir = config.out_dir / ".gradio"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Gradio reads this for its cache and upload folder when components and the server are made.
    os.environ["GRADIO_TEMP_DIR"] = str(cache_dir)
    import gradio as gr

    service = DrawingService(pipe, config)
    defaults = pipe.default_settings

    def on_draw(prompt, seed, top_k, top_p, temperature, cfg_scale, num_images):
        try:
            request = check_request(
                prompt, seed, top_k, top_p, temperature, cfg_scale, num_images, config, pipe.layout.codebook_size
            )
        except RequestError as error:
            raise gr.Error(str(error), title="Cannot draw this", print_exception=False) from None
        warned = False
        for update in service.draw(request):
            if update.warning and not warned:
                gr.Warning(update.warning)  # a pop-up as well as the status line
                warned = True
            gallery = [(path, f"{request.prompt} #{i}") for i, path in enumerate(update.files)] or None
            yield update.picture, gallery, update.files or None, update.status

    with gr.Blocks(title="gptdraw", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        gr.Markdown("# gptdraw\nType what to draw and press **Draw**: the picture fills in code by code.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", placeholder="a small red circle in the top left", lines=2)
                draw = gr.Button("Draw", variant="primary")
                with gr.Accordion("Sampling settings", open=False):
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                    num_images = gr.Slider(1, config.max_images, value=1, step=1, label="Number of images")
                    top_k = gr.Slider(0, pipe.layout.codebook_size, step=1, label="Top-k (0: all)",
                                      value=min(defaults.top_k, pipe.layout.codebook_size))
                    top_p = gr.Slider(0.01, 1.0, value=defaults.top_p, step=0.01, label="Top-p")
                    temperature = gr.Slider(0.0, config.max_temperature, step=0.05, label="Temperature (0: greedy)",
                                            value=min(defaults.temperature, config.max_temperature))
                    cfg_scale = gr.Slider(0.0, config.max_cfg_scale, step=0.1, label="CFG scale (1: none)",
                                          value=min(defaults.cfg_scale, config.max_cfg_scale))
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=1):
                picture = gr.Image(label="Drawing", type="pil", format="png", interactive=False, elem_id="drawing",
                                   height=PICTURE_SIDE + 64)
                gallery = gr.Gallery(label="Results", columns=4, elem_id="results", interactive=False,
                                     height=PICTURE_SIDE, object_fit="contain")
                files = gr.File(label="Download", file_count="multiple", interactive=False)
        inputs = [prompt, seed, top_k, top_p, temperature, cfg_scale, num_images]
        outputs = [picture, gallery, files, status]
        # preprocess=False: check_request sees what was sent and explains what is wrong with it.
        gr.on([draw.click, prompt.submit], on_draw, inputs, outputs, api_name="draw",
              concurrency_limit=1, preprocess=False)
    app.queue(max_size=config.queue_size, default_concurrency_limit=1)
    return app


def warm_up(pipe: GPTDrawPipeline, max_images: int) -> None:
    """Draws once at each compiled batch size, so that no visitor waits for a compilation.

    Only a compiled pipeline needs it; other settings than the model's defaults (guidance on
    or off) may still compile once more at their first use.
    """
    sizes = sorted({compiled_batch_size(n) for n in range(1, max_images + 1)})
    for size in sizes:
        logger.info("compiling the decode step for %d image(s) at a time…", size)
        blank = torch.full((size, pipe.layout.text_len), pipe.layout.pad_id, dtype=torch.long)
        for _ in pipe.stream_ids(blank, seed=0, every=pipe.layout.image_len):
            pass


def launch(
    pipe: GPTDrawPipeline,
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
):
    """Builds and starts the app; returns it (call `.close()` to stop) when block is False."""
    import gradio as gr

    if pipe.drawer.options.compile:
        warm_up(pipe, config.max_images)
    app = build_app(pipe, config)
    # System fonts: the page fetches nothing from the internet.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=True,
        share=False,
        show_error=False,
        ssr_mode=False,
        max_threads=8,
        max_file_size=1,  # the page takes no uploads: refuse them before they reach the disk
        allowed_paths=[str(config.out_dir)],
        theme=theme,
        footer_links=[],
    )
    return app
