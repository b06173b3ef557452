"""The web page tried from outside as an attacker would, against one running server.

The server runs with `--out .` from inside its output folder, beside files it did not write (a
`secret.env`, and a Gradio example cache under the working directory), with --keep-drawings 2.
Each test asks over HTTP what a browser or a script could ask, and looks at the disk afterwards.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.sampling import SamplingConfig
from gptdraw.apps.serve import ServeConfig

from test_serve import WAIT_SECONDS, free_port

httpx = pytest.importorskip("httpx", reason="the page tests speak HTTP through httpx")

SECRET = "TOKEN=do-not-serve-me"
GOOD = ["a red circle", 0, 20, 1.0, 1.0, 2.0, 1]  # prompt, seed, top-k, top-p, temperature, CFG, images


class Steps:
    """Stands in for the pipeline's stream_ids: records the codes drawn per seed, and can hold a
    drawing between two steps until the test lets it go on (so that a client can leave mid-way)."""

    def __init__(self, pipe: GPTDrawPipeline):
        self._stream_ids = pipe.stream_ids
        self.drawn: dict[int, int] = {}
        self.go_on = threading.Event()
        self.go_on.set()
        pipe.stream_ids = self

    def __call__(self, caption_ids, *, seed, **options):
        for step in self._stream_ids(caption_ids, seed=seed, **options):
            self.drawn[seed] = step.codes_drawn
            yield step
            # A hang guard only: the test releases the drawing long before.
            self.go_on.wait(WAIT_SECONDS)


@dataclass
class Page:
    url: str
    out: Path
    app: object
    steps: Steps
    planted: list[Path] = field(default_factory=list)

    def get(self, path: str, **options):
        return httpx.get(self.url + path, timeout=WAIT_SECONDS, **options)

    def post(self, path: str, **options):
        return httpx.post(self.url + path, timeout=WAIT_SECONDS, **options)


@pytest.fixture(scope="module")
def page(tmp_path_factory, gpt, caption_tokenizer, image_tokenizer, layout):
    pytest.importorskip("gradio", reason="the web app needs gradio (pip install 'gptdraw[serve]')")
    from gptdraw.apps.serve import launch

    root = tmp_path_factory.mktemp("guarded")
    settings = SamplingConfig(top_k=20, cfg_scale=2.0)
    GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, settings).save_pretrained(root / "model")
    pipe = GPTDrawPipeline.from_pretrained(root / "model", device="cpu")
    steps = Steps(pipe)
    out = root / "out"
    # Files the server did not write: one in --out, one where Gradio caches examples (under the
    # working directory, which is --out here).
    planted = [out / "secret.env", out / ".gradio" / "cached_examples" / "0" / "secret.txt"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SECRET)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(out)  # `--out .`: the whole working directory is the output folder
        patch.setenv("GRADIO_TEMP_DIR", str(out / "drawings"))  # restored afterwards
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        config = ServeConfig(out_dir=Path("."), max_images=2, queue_size=2, keep_drawings=2)
        app = launch(pipe, config, host="127.0.0.1", port=free_port(), block=False)
        try:
            yield Page(url=app.local_url, out=out, app=app, steps=steps, planted=planted)
        finally:
            app.close()


def draw(page: Page, values=GOOD) -> list:
    """One request through the REST API; returns the outputs of its last update."""
    reply = page.post("gradio_api/call/draw", json={"data": values})
    assert reply.status_code == 200, reply.text[:300]
    event_id = reply.json()["event_id"]
    with httpx.stream("GET", f"{page.url}gradio_api/call/draw/{event_id}", timeout=WAIT_SECONDS) as stream:
        lines = list(stream.iter_lines())
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert events[-1] == "complete", lines[-4:]
    return json.loads(data[-1])


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def served_file(page: Page) -> str:
    """The path of a drawing the page serves now (it draws one)."""
    picture, gallery, files, status = draw(page)
    assert status.startswith("Done"), status
    return files[0]["path"]


# ------------------------------------------------------------------------------ 1. only its own drawings
def test_files_the_server_did_not_draw_are_not_served(page):
    drawing = served_file(page)
    secret, cached = (str(path) for path in page.planted)
    asked = [
        f"gradio_api/file={secret}",  # a file in --out
        "gradio_api/file=secret.env",  # the same, relative to the working directory
        f"gradio_api/file={cached}",
        "gradio_api/file=.gradio/cached_examples/0/secret.txt",  # Gradio's example cache under the cwd
        f"gradio_api/file/{secret}",  # the older form of the route
        f"gradio_api/file={Path(drawing).parent}/request.json",  # a drawing's sidecar: the prompt is not a drawing
        f"gradio_api/file={Path(drawing).parent}/../../secret.env",
        "gradio_api/file=https://example.com/",  # the route also fetches URLs for the page
        "gradio_api/proxy=https://example.com/",
    ]
    for path in asked:
        reply = page.get(path)
        assert reply.status_code in (403, 404), (path, reply.status_code)
        assert SECRET not in reply.text, path
    reply = page.get(f"gradio_api/file={drawing}")
    assert reply.status_code == 200 and reply.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_planted_among_the_drawings_is_not_served(page):
    drawing = Path(served_file(page))
    for name in ("planted.html", "planted.svg", "planted.png"):
        (drawing.parent / name).write_text("<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>")
        reply = page.get(f"gradio_api/file={drawing.parent / name}")
        assert reply.status_code in (403, 404), (name, reply.status_code)


# ------------------------------------------------------------------------------ 2. no uploads
@pytest.mark.parametrize(
    "files",
    [
        [("files", ("empty.png", b"", "image/png"))],
        [("files", ("one.png", b"x", "image/png"))],
        [("files", ("page.html", b"<script>alert(1)</script>", "text/html"))],
        [("files", ("image.svg", b"<svg onload='alert(1)'/>", "image/svg+xml"))],
        [("files", (f"{i}.txt", b"x", "text/plain")) for i in range(1000)],
    ],
    ids=["0 bytes", "1 byte", "html", "svg", "1000 files"],
)
def test_uploads_are_refused_and_nothing_is_stored(page, files):
    before = files_under(page.out)
    reply = page.post("gradio_api/upload", files=files)
    assert reply.status_code in (403, 404, 413), reply.text[:200]
    assert files_under(page.out) == before


# ------------------------------------------------------------------------------ 3. bounded disk
def test_everything_the_page_writes_stays_within_keep_drawings(page):
    remembered = []  # how many paths Gradio holds in memory for the page's outputs, after each request
    for seed in range(5):
        draw(page, [GOOD[0], seed, *GOOD[2:-1], 2])
        remembered.append(sum(len(getattr(block, "temp_files", ())) for block in page.app.blocks.values()))
    assert remembered[2] == remembered[3] == remembered[4], remembered  # steady once pruning begins
    written = files_under(page.out) - {str(path.relative_to(page.out)) for path in page.planted}
    written -= {".gradio", ".gradio/cached_examples", ".gradio/cached_examples/0"}  # the planted files' folders
    runs = {Path(path).parts[1] for path in written if path.startswith("drawings/")}
    assert len(runs) == 2, sorted(written)
    # The last request keeps its live frames until the next one starts (a browser may still fetch them).
    frames = {path for path in written if "/frames" in path}
    assert len({Path(path).parts[1] for path in frames}) == 1 and len(frames) <= 1 + ServeConfig.frames_per_image
    expected = {"drawings"} | {
        f"drawings/{run}{name}" for run in runs for name in ("", "/request.json", "/00.png", "/01.png", "/picture.png")
    }
    assert written - frames == expected, sorted((written - frames) ^ expected)


# ------------------------------------------------------------------------------ 4. a client that leaves
def join(page: Page, seed: int, route: str = "queue") -> tuple[str, str]:
    """Puts a draw request in the queue, as the page does ("queue") or as a REST client does
    ("call"); returns its session and the address of its stream of messages."""
    values = [GOOD[0], seed, *GOOD[2:]]
    if route == "call":
        reply = page.post("gradio_api/call/draw", json={"data": values})
        assert reply.status_code == 200, reply.text[:200]
        event_id = reply.json()["event_id"]
        return event_id, f"gradio_api/call/draw/{event_id}"  # the job's session is its id
    session = secrets.token_hex(8)
    fn_index = next(index for index, fn in page.app.fns.items() if fn.api_name == "draw")
    body = {"data": values, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    reply = page.post("gradio_api/queue/join", json=body)
    assert reply.status_code == 200, reply.text[:200]
    return session, f"gradio_api/queue/data?session_hash={session}"


def listen_then_leave(page: Page, stream_at: str, until: str) -> None:
    """Reads a stream of messages until one that mentions `until`, then closes the connection."""
    with httpx.stream("GET", page.url + stream_at, timeout=WAIT_SECONDS) as stream:
        for line in stream.iter_lines():
            if until in line:
                return
    raise AssertionError(f"the stream ended before a {until} message")


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS  # a hang guard: each condition comes in well under a second
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        time.sleep(0.05)


def server_saw_leave(page: Page, session: str) -> bool:
    """Whether Gradio's queue has marked the session's running job as abandoned (it notices a
    closed connection within milliseconds); the held drawing is let go on only then."""
    running = [event for job in page.app._queue.active_jobs if job for event in job]
    return not any(event.alive for event in running if event.session_hash == session)


def seeds_on_disk(page: Page) -> set[int]:
    return {json.loads(path.read_text())["seed"] for path in (page.out / "drawings").glob("*/request.json")}


@pytest.mark.parametrize("route, drawing", [("queue", '"process_generating"'), ("call", "event: generating")])
def test_a_client_that_leaves_has_its_drawing_stopped_and_its_files_removed(page, layout, route, drawing):
    steps, seed = page.steps, {"queue": 101, "call": 102}[route]
    steps.go_on.clear()
    try:
        session, stream_at = join(page, seed, route)
        listen_then_leave(page, stream_at, until=drawing)  # the drawing has begun
        wait_until(lambda: server_saw_leave(page, session), "noticed that the client left")
    finally:
        steps.go_on.set()
    wait_until(lambda: seed not in seeds_on_disk(page), "cleaned up after the client left")
    assert steps.drawn[seed] < layout.image_len  # it stopped drawing, did not finish for nobody
    assert draw(page)[-1].startswith("Done")  # and the next visitor is served


def test_a_client_that_leaves_the_queue_is_never_drawn(page):
    steps, drawing, waiting = page.steps, 201, 202
    steps.go_on.clear()
    try:
        _, first = join(page, drawing)
        wait_until(lambda: drawing in steps.drawn, "drawing the first request")
        listen_then_leave(page, join(page, waiting)[1], until='"estimation"')  # waits in the queue, then leaves
        wait_until(lambda: len(page.app._queue) == 0, "out of the queue")  # Gradio's count of waiting jobs
    finally:
        steps.go_on.set()
    listen_then_leave(page, first, until='"process_completed"')
    assert draw(page)[-1].startswith("Done")  # drawn after anything still queued
    assert waiting not in steps.drawn


# ------------------------------------------------------------------------------ 5. malformed requests, monitoring
@pytest.mark.parametrize("values", [GOOD[:1], GOOD[:6], [*GOOD, 1], []], ids=["1 value", "6 values", "8 values", "none"])
def test_a_draw_request_with_the_wrong_number_of_values_is_a_4xx(page, values):
    reply = page.post("gradio_api/call/draw", json={"data": values})
    assert reply.status_code == 422, reply.text[:200]
    assert "7 values" in reply.text
    fn_index = next(index for index, fn in page.app.fns.items() if fn.api_name == "draw")
    reply = page.post("gradio_api/queue/join", json={"data": values, "fn_index": fn_index, "session_hash": "s"})
    assert reply.status_code == 422, reply.text[:200]


def test_a_request_for_an_event_or_a_stream_the_page_does_not_have_is_a_4xx(page):
    reply = page.post("gradio_api/queue/join", json={"data": GOOD, "fn_index": 99, "session_hash": "s"})
    assert reply.status_code == 422 and "fn_index" in reply.text, reply.text[:200]
    for path in ("gradio_api/queue/data?session_hash=nobody", "gradio_api/queue/data?session_hash=",
                 "gradio_api/call/draw/no-such-event"):
        reply = page.get(path)
        assert reply.status_code == 404, (path, reply.status_code, reply.text[:200])


def test_a_malformed_range_header_is_a_4xx(page):
    drawing = served_file(page)
    whole = page.get(f"gradio_api/file={drawing}").content
    for header, status in [("bytes=1-2-3", 400), ("bytes=a-b", 400), ("pages=0-1", 400), ("bytes=0-1,2-3", 416),
                           ("bytes=5-2", 416)]:
        reply = page.get(f"gradio_api/file={drawing}", headers={"Range": header})
        assert reply.status_code == status, (header, reply.status_code, reply.text[:100])
    reply = page.get(f"gradio_api/file={drawing}", headers={"Range": "bytes=0-3"})
    assert reply.status_code == 206 and reply.content == whole[:4]


def test_monitoring_is_off_unless_asked_for(page):
    for path in ("monitoring", "monitoring/summary", "gradio_api/monitoring/summary"):
        reply = page.get(path)
        assert reply.status_code == 404, (path, reply.status_code, reply.text[:100])
