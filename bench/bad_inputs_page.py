"""bench/bad_inputs.py's page family: a tiny model served over HTTP and tried as an attacker would.

The server runs in this process (apps.serve.launch) with `--out .` from inside its output folder,
beside files it did not write: a `secret.env` in --out and a Gradio example cache under the
working directory. Each attack is one request; its reply is judged by its status and its body:
a 5xx (or a traceback in the server's log) counts as a traceback, a planted secret, a stored
upload or an open monitoring page as a leak, a malformed request that is not refused as accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import secrets
from dataclasses import dataclass
from pathlib import Path

SECRET = "TOKEN=do-not-serve-me"
GOOD = ["a red circle", 0, 20, 1.0, 1.0, 2.0, 1]
"""A draw request's values: prompt, seed, top-k, top-p, temperature, CFG, images."""
WAIT_SECONDS = 15
"""A hang guard per request: the tiny model draws in well under a second."""
REFUSED = (400, 401, 403, 404, 405, 413, 416, 422)


@dataclass
class Page:
    url: str
    out: Path
    app: object
    planted: list[Path]
    log: io.StringIO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served_page(work: Path, model: Path):
    """Serves `model` with --keep-drawings 2 from inside its --out; everything the server prints
    or logs (its threads included) goes to the page's log, read for tracebacks afterwards."""
    from gptdraw.apps.serve import ServeConfig, launch
    from gptdraw.pipeline import GPTDrawPipeline

    out = work / "page" / "out"
    planted = [out / "secret.env", out / ".gradio" / "cached_examples" / "0" / "secret.txt"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SECRET)
    pipe = GPTDrawPipeline.from_pretrained(model, device="cpu", precision="fp32")
    environment, cwd, log = dict(os.environ), os.getcwd(), io.StringIO()
    handler = logging.StreamHandler(log)
    loggers = [logging.getLogger(name) for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access", "gradio")]
    for logger in loggers:
        logger.addHandler(handler)
    os.chdir(out)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        with contextlib.redirect_stderr(log):
            config = ServeConfig(out_dir=Path("."), max_images=2, queue_size=2, keep_drawings=2)
            app = launch(pipe, config, host="127.0.0.1", port=free_port(), block=False)
            try:
                yield Page(app.local_url, out, app, planted, log)
            finally:
                app.close()
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environment)  # launch points Gradio's cache into --out through the environment
        for logger in loggers:
            logger.removeHandler(handler)


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


def ask(corpus, page: Page, name: str, method: str, path: str, expect=REFUSED, **options):
    """One request as a case; returns the reply, or None when it failed (counted)."""
    import httpx

    corpus.tally.tried += 1
    try:
        reply = httpx.request(method, page.url + path, timeout=WAIT_SECONDS, **options)
    except httpx.TimeoutException:
        corpus.count("hangs", name)
        return None
    except httpx.HTTPError as error:  # the server went away
        corpus.count("tracebacks", name, f"{type(error).__name__}: {error}")
        return None
    if reply.status_code >= 500:
        corpus.count("tracebacks", name, f"HTTP {reply.status_code}: {reply.text[:120]}")
    elif SECRET in reply.text or "root:x:0:0" in reply.text:
        corpus.count("leaks", name, f"HTTP {reply.status_code} served a secret")
    elif reply.status_code not in expect:
        corpus.count("accepted", name, f"HTTP {reply.status_code}: {reply.text[:120]}")
    return reply


def draw(corpus, page: Page, name: str, values) -> list | None:
    """A draw through the REST API, read to its end; returns its last data (None if it failed or
    was refused). A 4xx refusal is fine; an `error` event is the page's refusal of a value."""
    import httpx

    reply = ask(corpus, page, name, "POST", "gradio_api/call/draw", expect=(200, *REFUSED), json={"data": values})
    if reply is None or reply.status_code != 200:
        return None
    try:
        with httpx.stream("GET", f"{page.url}gradio_api/call/draw/{reply.json()['event_id']}",
                          timeout=WAIT_SECONDS) as stream:
            lines = list(stream.iter_lines())
    except httpx.TimeoutException:
        corpus.count("hangs", f"{name} (its stream)")
        return None
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    if not events or events[-1] not in ("complete", "error"):
        corpus.count("tracebacks", f"{name} (its stream)", f"ended with {lines[-2:]}")
        return None
    return json.loads(data[-1]) if events[-1] == "complete" and data else None


def file_attacks(page: Page, drawing: str) -> dict[str, str]:
    """Paths asked of the page's file routes that must not be served."""
    secret, cached = (str(path) for path in page.planted)
    folder = Path(drawing).parent
    (folder / "planted.html").write_text("<script>alert(1)</script>" + SECRET)
    return {
        "a file in --out": f"gradio_api/file={secret}",
        "a file in --out, relative": "gradio_api/file=secret.env",
        "Gradio's example cache": f"gradio_api/file={cached}",
        "Gradio's example cache, relative": "gradio_api/file=.gradio/cached_examples/0/secret.txt",
        "the older file route": f"gradio_api/file/{secret}",
        "a drawing's sidecar": f"gradio_api/file={folder}/request.json",
        "a file planted among the drawings": f"gradio_api/file={folder}/planted.html",
        "up from a drawing": f"gradio_api/file={folder}/../../secret.env",
        "up from a drawing, encoded": f"gradio_api/file={folder}/..%2F..%2Fsecret.env",
        "/etc/passwd": "gradio_api/file=/etc/passwd",
        "the process's environment": "gradio_api/file=/proc/self/environ",
        "a URL": "gradio_api/file=https://example.com/",
        "the proxy": "gradio_api/proxy=https://example.com/",
        "a file outside, old API": f"file={secret}",
    }


def page_cases(corpus, runs, quick: bool) -> None:
    """Every attack of issue 23 on the page, against one running server."""
    with served_page(runs.work, runs.model) as page:
        result = draw(corpus, page, "a good drawing", GOOD)
        if not result or not str(result[-1]).startswith("Done"):
            corpus.count("lost", "a good drawing", f"the page drew nothing: {result}")
            return
        drawing = result[2][0]["path"]
        for name, path in file_attacks(page, drawing).items():
            ask(corpus, page, name, "GET", path)
        ask(corpus, page, "its own drawing", "GET", f"gradio_api/file={drawing}", expect=(200,))
        upload_attacks(corpus, page, quick)
        value_attacks(corpus, page, quick)
        for header in ("bytes=1-2-3", "bytes=a-b", "pages=0-1", "bytes=0-1,2-3", "bytes=5-2", "bytes=-",
                       "bytes=99999999999999999999-", "bytes=0-3" + ",0-1" * 200):
            ask(corpus, page, f"Range {header[:30]}", "GET", f"gradio_api/file={drawing}", headers={"Range": header})
        for path in ("monitoring", "monitoring/summary", "gradio_api/monitoring/summary", "gradio_api/mcp/sse",
                     "gradio_api/queue/data?session_hash=nobody", "gradio_api/call/draw/no-such-event"):
            reply = ask(corpus, page, f"GET /{path}", "GET", path, expect=(404,))
            if reply is not None and reply.status_code == 200 and "monitoring" in path:
                corpus.count("leaks", f"GET /{path}", "monitoring is open")
        for _ in range(3):  # more drawings than --keep-drawings 2
            draw(corpus, page, "another good drawing", [GOOD[0], secrets.randbelow(1000), *GOOD[2:]])
        check_disk(corpus, page)
    tracebacks = page.log.getvalue().count("Traceback")
    corpus.tally.tried += 1
    if tracebacks:
        corpus.count("tracebacks", "the server's log", f"{tracebacks} tracebacks, the last: "
                     f"{page.log.getvalue().split('Traceback')[-1].strip().splitlines()[-1][:200]}", number=tracebacks)


def upload_attacks(corpus, page: Page, quick: bool) -> None:
    """Uploads the README says the page does not take: each refused, nothing stored."""
    uploads = {
        "0 bytes": [("files", ("empty.png", b"", "image/png"))],
        "1 byte": [("files", ("one.png", b"x", "image/png"))],
        "html": [("files", ("page.html", b"<script>alert(1)</script>", "text/html"))],
        "svg": [("files", ("image.svg", b"<svg onload='alert(1)'/>", "image/svg+xml"))],
        "many files": [("files", (f"{i}.txt", b"x", "text/plain")) for i in range(20 if quick else 1000)],
    }
    for name, files in uploads.items():
        before = files_under(page.out)
        ask(corpus, page, f"upload {name}", "POST", "gradio_api/upload", files=files)
        ask(corpus, page, f"upload {name}, old route", "POST", "upload", files=files)
        if files_under(page.out) != before:
            corpus.count("leaks", f"upload {name}", f"stored {sorted(files_under(page.out) - before)[:3]}")


def value_attacks(corpus, page: Page, quick: bool) -> None:
    """Requests with the wrong number of values (a 4xx) and with odd values (refused by the page:
    an error event or a 4xx, never a 5xx or a traceback)."""
    fn_index = next(index for index, fn in page.app.fns.items() if fn.api_name == "draw")
    for values in ([], GOOD[:1], GOOD[:6], [*GOOD, 1], "not a list", None):
        label = f"{len(values)} values" if isinstance(values, list) else repr(values)
        ask(corpus, page, f"draw with {label}", "POST", "gradio_api/call/draw", json={"data": values})
        ask(corpus, page, f"queue join with {label}", "POST", "gradio_api/queue/join",
            json={"data": values, "fn_index": fn_index, "session_hash": "s"})
    ask(corpus, page, "queue join of event 99", "POST", "gradio_api/queue/join",
        json={"data": GOOD, "fn_index": 99, "session_hash": "s"})
    ask(corpus, page, "a body that is not JSON", "POST", "gradio_api/call/draw", content=b"{not json",
        headers={"content-type": "application/json"})
    odd = {"no prompt": [None, *GOOD[1:]], "a seed that is text": [GOOD[0], "x", *GOOD[2:]],
           "seed 2**64": [GOOD[0], 2**64, *GOOD[2:]], "top-k -1": [*GOOD[:2], -1, *GOOD[3:]],
           "top-p 0": [*GOOD[:3], 0, *GOOD[4:]], "CFG 1e308": [*GOOD[:5], 1e308, 1],
           "1000 images": [*GOOD[:6], 1000], "0 images": [*GOOD[:6], 0], "a 100 kB prompt": ["x" * 100_000, *GOOD[1:]]}
    if quick:
        odd = dict(list(odd.items())[:3])
    for name, values in odd.items():
        draw(corpus, page, f"draw with {name}", values)
    reply = ask(corpus, page, "draw with temperature NaN", "POST", "gradio_api/call/draw", expect=(200, *REFUSED),
                content=json.dumps({"data": [*GOOD[:4], float("nan"), *GOOD[5:]]}).encode(),
                headers={"content-type": "application/json"})
    if reply is not None and reply.status_code == 200:
        draw_stream_end(corpus, page, "draw with temperature NaN", reply.json()["event_id"])


def draw_stream_end(corpus, page: Page, name: str, event_id: str) -> None:
    """Reads a draw's stream to its end: it must end, and not in a drawing of a NaN temperature."""
    import httpx

    try:
        with httpx.stream("GET", f"{page.url}gradio_api/call/draw/{event_id}", timeout=WAIT_SECONDS) as stream:
            lines = list(stream.iter_lines())
    except httpx.TimeoutException:
        corpus.count("hangs", f"{name} (its stream)")
        return
    if any(line.startswith("event: complete") for line in lines) and "Done" in "".join(lines):
        corpus.count("accepted", name, "drawn")


def check_disk(corpus, page: Page) -> None:
    """What the page wrote stays within --keep-drawings 2, and the planted files are untouched."""
    corpus.tally.tried += 1
    runs = {Path(path).parts[1] for path in files_under(page.out) if path.startswith("drawings/")}
    if len(runs) > 2:
        corpus.count("leaks", "the page's disk", f"{len(runs)} drawing folders kept, over --keep-drawings 2")
    if any(path.read_text() != SECRET for path in page.planted):
        corpus.count("lost", "the page's disk", "a file the page did not write was changed")
