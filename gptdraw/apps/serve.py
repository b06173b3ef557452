"""The web page: type a prompt, watch the model draw it code by code, download the results.

A Gradio app over `GPTDrawPipeline.stream_ids`. Every request is checked before any work
(`check_request`: clear messages for an empty or non-text prompt, too many images, settings
out of range); a prompt over the caption budget is drawn truncated, with a visible warning.
One drawing runs at a time and the queue holds at most `queue_size` waiting requests.

The server writes nothing outside `<out>/drawings/`, and no more than `keep_drawings`
requests' folders there: Gradio's file cache is that folder (Gradio reads the GRADIO_TEMP_DIR
environment variable for it, so `build_app` sets it), and the page takes no uploads. It serves
only the files it drew for the requests it keeps, and a visitor who leaves has their drawing
stopped and removed (`PageGuard`, `DrawingService`).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs

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
    monitoring: bool = False
    """Gradio's /monitoring pages (request counts and latencies): off, since any visitor could read them."""

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

    picture: str
    """A PNG of all images of the request side by side, undrawn codes grey."""
    files: list[str]
    """Finished PNG files (empty until the drawing is done)."""
    status: str
    """A line of progress, after the warning if there is one."""
    warning: str
    """Why the drawing is not quite what was asked (a truncated prompt), or ""."""


RUN_NAME = re.compile(r"[A-Za-z0-9_-]{24}")
"""A request's folder name (secrets.token_urlsafe(18)): pruning touches no other folder."""


class DrawingService:
    """Draws checked requests, keeps their files in the output folder, and knows which files the page serves.

    Each request gets a folder `<out>/drawings/<unguessable>/`: its request.json, the live
    picture's frames (frames/, removed when the next request starts), then its PNGs and the
    last picture (picture.png). Only those files, of the requests still kept, are ever served.
    """

    def __init__(self, pipe: GPTDrawPipeline, config: ServeConfig):
        self.pipe = pipe
        self.config = config
        self.drawings_dir = config.out_dir / "drawings"
        # Real paths of the files the page may serve. A set of names, not a folder: a file
        # anyone else puts beside them, or a request.json with its prompt, is not among them.
        self._served: set[str] = set()

    def serves(self, path: str) -> bool:
        """Whether `path` is a file this server drew for a request it still keeps."""
        return os.path.realpath(path) in self._served

    def draw(self, request: DrawRequest) -> Iterator[DrawingUpdate]:
        """Yields the picture as it fills in, then the saved files.

        A drawing that is not finished (the visitor left and the caller closed this generator,
        or it failed) leaves nothing behind.
        """
        pipe = self.pipe
        caption_ids, warnings = pipe.encode_prompts([request.prompt])
        warning = ""
        if warnings:
            warning = (
                f"Warning: the prompt is longer than the caption budget of {pipe.layout.text_len} "
                "tokens; only its beginning was drawn."
            )
        total = pipe.layout.image_len
        steps = pipe.stream_ids(
            caption_ids.expand(request.num_images, -1),
            seed=request.seed,
            every=max(1, total // self.config.frames_per_image),
            top_k=request.top_k,
            top_p=request.top_p,
            temperature=request.temperature,
            cfg_scale=request.cfg_scale,
            progress=False,
        )
        run = self._new_run(request)
        finished = False
        try:
            step = None
            for frame, step in enumerate(steps):
                if step.codes_drawn < total:
                    picture = self._write_png(run / "frames" / f"{frame:04d}.png", self._picture(step.images))
                    status = f"Drawing… {step.codes_drawn}/{total} codes"
                    yield DrawingUpdate(picture, [], " ".join(filter(None, [warning, status])), warning)
            files = [self._write_png(run / f"{index:02d}.png", image) for index, image in enumerate(step.images)]
            picture = self._write_png(run / "picture.png", self._picture(step.images))
            status = f"Done: {len(files)} image{'s' if len(files) > 1 else ''} of {total} codes."
            finished = True
            yield DrawingUpdate(picture, files, " ".join(filter(None, [warning, status])), warning)
        finally:
            steps.close()
            if not finished:
                self._remove(run)

    @staticmethod
    def _picture(images: list[Image.Image]) -> Image.Image:
        # Small drawings are scaled up (nearest neighbour, codes stay crisp) to be seen.
        tiles = [enlarge(image, PICTURE_SIDE // min(4, len(images))) for image in images]
        return tiles[0] if len(tiles) == 1 else make_grid(tiles, columns=min(4, len(tiles)))

    def _write_png(self, path: Path, image: Image.Image) -> str:
        path.parent.mkdir(exist_ok=True)
        image.save(path, format="PNG")
        self._served.add(os.path.realpath(path))
        return str(path)

    def _remove(self, folder: Path) -> None:
        """Deletes a folder this server wrote, and stops serving what was in it."""
        inside = os.path.realpath(folder) + os.sep
        self._served.difference_update([path for path in list(self._served) if path.startswith(inside)])
        shutil.rmtree(folder, ignore_errors=True)

    def _new_run(self, request: DrawRequest) -> Path:
        """A new request's folder with its request.json, after pruning to keep_drawings folders in all.

        The frames of earlier requests go now, not when their drawing ended: a browser fetches
        the last few frames after the drawing is done, and they should still be there.
        """
        self.drawings_dir.mkdir(parents=True, exist_ok=True)
        self._forget_old_drawings(room_for=1)
        for frames in self.drawings_dir.glob("*/frames"):
            if RUN_NAME.fullmatch(frames.parent.name):
                self._remove(frames)
        # An unguessable folder per request: the files are served by path, and a visitor who
        # could guess another's folder could read their drawings.
        run = self.drawings_dir / secrets.token_urlsafe(18)
        run.mkdir()
        sidecar = {
            "prompt": request.prompt,
            "seed": request.seed,
            "num_images": request.num_images,
            **self.pipe.settings(
                top_k=request.top_k, top_p=request.top_p, temperature=request.temperature, cfg_scale=request.cfg_scale
            ).to_dict(),
        }
        (run / "request.json").write_text(json.dumps(sidecar, indent=2) + "\n")
        return run

    def _forget_old_drawings(self, room_for: int = 0) -> None:
        """Deletes the oldest requests' folders, leaving keep_drawings - room_for of them.

        Only folders this page makes (a request's name and its request.json) are counted and
        deleted: with `--out ~`, a `~/drawings/holiday/` is not the page's to delete.
        """
        runs = []
        for path in self.drawings_dir.iterdir():
            sidecar = path / "request.json"
            if RUN_NAME.fullmatch(path.name) and not path.is_symlink() and sidecar.is_file():
                runs.append((sidecar.stat().st_mtime_ns, path.name, path))
        runs.sort()
        for *_, old in runs[: max(0, len(runs) - (self.config.keep_drawings - room_for))]:
            self._remove(old)


# The routes the page and its API clients use (Gradio's page, its assets and config, the queue,
# the REST call of /draw). Everything else Gradio offers is refused (a 404): uploads, proxies,
# run history, screen recordings, the vibe editor, and any route a later Gradio adds, until it is let in here.
OPEN_ROUTES = re.compile(
    r"/(config/?|theme\.css|favicon\.ico|robots\.txt|manifest\.json|pwa_icon(/\d+)?|(assets|static|svelte)/.+)?"
    r"|/gradio_api/(info/?|theme\.css|app_id/?|user/?|login_check/?|token/?|startup-events|heartbeat/[^/]+)"
)
STREAMS = re.compile(r"/gradio_api/(queue/data|call/draw/(?P<event>[^/]+))")
"""The streams of a queued request's messages, by session (the page) or by event id (the REST call)."""
DRAW_ROUTES = re.compile(r"/gradio_api/(queue/join|call/draw/?)")
"""The POST routes that start a drawing: their values are counted before Gradio sees them."""
OTHER_POSTS = re.compile(r"/gradio_api/(cancel|reset/?)")
FILE_ROUTE = re.compile(r"/gradio_api/file[=/](?P<path>.+)")
MONITORING = re.compile(r"/monitoring(/.*)?")
RANGE = re.compile(r"bytes=(?P<start>\d*)-(?P<end>\d*)")
MAX_BODY = 64 * 1024
"""Largest request body (bytes): a draw request of the longest prompt, escaped, is well under it."""
DRAW_VALUES = "prompt, seed, top-k, top-p, temperature, CFG scale, number of images"


class PageGuard:
    """The server's first word on every HTTP request, before Gradio's own routes.

    It lets through only the routes the page uses (OPEN_ROUTES), serves only the files the
    DrawingService drew (not the rest of --out, of Gradio's cache or of the working directory),
    counts the values of a draw request, and answers a malformed Range header with a 4xx.
    A pure ASGI middleware, so that streamed answers (the queue's events) pass through untouched.
    """

    def __init__(self, app, *, service: DrawingService, fn_index: int, values: int,
                 has_stream: Callable[[str], bool], monitoring: bool):
        self.app = app
        self.service = service
        self.fn_index = fn_index
        """Gradio's number for the draw event: the page's only one."""
        self.values = values
        """How many values a draw request takes."""
        self.has_stream = has_stream
        """Whether Gradio's queue holds messages for a session or event id (gradio_streams)."""
        self.monitoring = monitoring

    async def __call__(self, scope, receive, send):
        path, method = scope.get("path", ""), scope.get("method")
        if scope["type"] != "http" or (self.monitoring and MONITORING.fullmatch(path)):
            return await self.app(scope, receive, send)
        if method in ("GET", "HEAD"):
            refusal = self._refuse_get(path, scope)
        elif method == "POST" and DRAW_ROUTES.fullmatch(path):
            body = await _read_body(receive, dict(scope["headers"]))
            refusal = self._refuse_draw(body, path) if isinstance(body, bytes) else body
            if refusal is None:
                receive = _replay(body, receive)
        elif method == "POST" and OTHER_POSTS.fullmatch(path):
            refusal = None
        elif path.startswith("/gradio_api/upload"):
            refusal = 403, "this page takes no uploads"
        else:
            refusal = 404, "Not Found"
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        logger.debug("refused %s %s: %d %s", method, path, status, message)
        await _answer(send, status, message)

    def _refuse_get(self, path: str, scope) -> tuple[int, str] | None:
        if OPEN_ROUTES.fullmatch(path):
            return None
        if stream := STREAMS.fullmatch(path):
            # Gradio answers a stream it does not know with a 200 that breaks off, and a traceback.
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
            session = stream["event"] or (query.get("session_hash") or [None])[0]
            known = session is None or self.has_stream(session)  # None: Gradio itself says what is missing
            return None if known else (404, "no queued request of that id: join the queue first")
        match = FILE_ROUTE.fullmatch(path)
        if match is None:
            return 404, "Not Found"
        if not self.service.serves(match["path"]):
            return 404, "Not Found: this page serves only its own drawings"
        return _refuse_range(dict(scope["headers"]).get(b"range"))

    def _refuse_draw(self, body: bytes, path: str) -> tuple[int, str] | None:
        try:
            request = json.loads(body)
        except ValueError:
            return 422, "the request body is not JSON"
        request = request if isinstance(request, dict) else {}
        values = request.get("data")
        if not isinstance(values, list) or len(values) != self.values:
            got = f"{len(values)}" if isinstance(values, list) else "no list of values"
            return 422, f"a draw request takes {self.values} values ({DRAW_VALUES}), got {got}"
        if path.endswith("/queue/join") and request.get("fn_index") != self.fn_index:
            return 422, f"this page has one event, draw (fn_index {self.fn_index}), not {_shown(request.get('fn_index'))}"
        return None


def _refuse_range(header: bytes | None) -> tuple[int, str] | None:
    """A 4xx for a Range header Gradio's file route would answer with an error 500 or nonsense."""
    if header is None:
        return None
    text = header.decode("latin-1").strip()
    if text.startswith("bytes=") and "," in text:
        return 416, "one byte range at a time"
    match = RANGE.fullmatch(text)
    if match is None or not (match["start"] or match["end"]):
        return 400, f"malformed Range header {_shown(text)}"
    if match["start"] and match["end"] and int(match["start"]) > int(match["end"]):
        return 416, f"the Range {_shown(text)} ends before it starts"
    return None


async def _read_body(receive, headers: dict[bytes, bytes]) -> bytes | tuple[int, str]:
    """The whole request body, or a refusal if it is over MAX_BODY (nothing more is read then)."""
    length = headers.get(b"content-length", b"0")
    if not length.isdigit() or int(length) > MAX_BODY:
        return 413, f"the request body is over {MAX_BODY} bytes"
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return 400, "the client left"
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            return 413, f"the request body is over {MAX_BODY} bytes"
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that gives the body already read once, then what the client sends next (its leaving)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed():
        return pending.pop() if pending else await receive()

    return replayed


async def _answer(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def gradio_streams(app) -> Callable[[str], bool]:
    """Whether the app's queue has messages for a session or a REST call's event id, as Gradio
    looks them up for its streams. Reads the queue's own tables; were a later Gradio to rename
    them, every stream is let through to Gradio again."""

    def has_stream(session: str) -> bool:
        queue = app._queue
        sessions = getattr(queue, "pending_messages_per_session", None)
        if sessions is None:
            return True
        event = getattr(queue, "event_ids_to_events", {}).get(session)
        if event is not None:
            return event.session_hash in sessions
        pending = getattr(queue, "pending_event_ids_session", {})
        return session in sessions or any(session in ids and owner in sessions for owner, ids in list(pending.items()))

    return has_stream


def forget_deleted_files(components, service: DrawingService) -> None:
    """Drops the files the page has deleted from what Gradio remembers of its outputs.

    Gradio keeps every path an output named (Block.temp_files), for a cache clean-up this page
    does not use: a few dozen more per request, for ever. Call it before a drawing, when no
    output is being processed (the page draws one request at a time).
    """
    for component in components:
        remembered = getattr(component, "temp_files", None)
        if isinstance(remembered, set):
            remembered.difference_update([path for path in list(remembered) if not service.serves(path)])


def build_app(pipe: GPTDrawPipeline, config: ServeConfig, service: DrawingService | None = None):
    """The Gradio Blocks app (not launched). Points Gradio's file cache at the drawings folder.

    Gradio copies every file an output names into its cache folder unless it is there already;
    with the cache at `<out>/drawings`, the drawings are in it, so Gradio copies nothing and
    writes nothing of its own (uploads never reach it: see PageGuard).
    """
    service = service or DrawingService(pipe, config)
    service.drawings_dir.mkdir(parents=True, exist_ok=True)
    # Gradio reads this for its cache and upload folder when components and the server are made;
    # there is no argument for it.
    os.environ["GRADIO_TEMP_DIR"] = str(service.drawings_dir)
    import gradio as gr

    defaults = pipe.default_settings

    def on_draw(prompt, seed, top_k, top_p, temperature, cfg_scale, num_images):
        try:
            request = check_request(
                prompt, seed, top_k, top_p, temperature, cfg_scale, num_images, config, pipe.layout.codebook_size
            )
        except RequestError as error:
            raise gr.Error(str(error), title="Cannot draw this", print_exception=False) from None
        forget_deleted_files(outputs, service)
        warned = False
        # Gradio closes this generator when the visitor leaves; closing the drawing's with it
        # stops the drawing at its next frame and removes its folder.
        with contextlib.closing(service.draw(request)) as updates:
            for update in updates:
                if update.warning and not warned:
                    gr.Warning(update.warning)  # a pop-up as well as the status line
                    warned = True
                gallery = [(path, f"{request.prompt} #{i}") for i, path in enumerate(update.files)] or None
                yield update.picture, gallery, update.files or None, update.status

    with gr.Blocks(title="gptdraw", analytics_enabled=False) as app:
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
                picture = gr.Image(label="Drawing", type="filepath", format="png", interactive=False, elem_id="drawing",
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
    from starlette.middleware import Middleware

    if pipe.drawer.options.compile:
        warm_up(pipe, config.max_images)
    service = DrawingService(pipe, config)
    app = build_app(pipe, config, service)
    # System fonts: the page fetches nothing from the internet.
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    fn_index, draw = next((index, fn) for index, fn in app.fns.items() if fn.api_name == "draw")
    guard = Middleware(PageGuard, service=service, fn_index=fn_index, values=len(draw.inputs),
                       has_stream=gradio_streams(app), monitoring=config.monitoring)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=True,
        share=False,
        show_error=False,
        ssr_mode=False,
        max_threads=8,
        max_file_size=1,  # uploads are refused before Gradio (PageGuard); this is a second lock
        enable_monitoring=config.monitoring,
        run_history=False,  # Gradio would record every run and offer to upload them to a Hub bucket
        mcp_server=False,
        app_kwargs={"middleware": [guard]},
        theme=theme,
        footer_links=[],
    )
    return app
