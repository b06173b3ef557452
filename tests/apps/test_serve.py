"""The web app: request checks, and the running server called through gradio_client."""

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from gptdraw import cli
from gptdraw.pipeline import GPTDrawPipeline
from gptdraw.gpt.sampling import SamplingConfig
from gptdraw.apps.serve import RequestError, ServeConfig, check_request

# The longest any test waits for the server: a hang guard. A drawing takes well under a second, and a
# request in the full queue waits behind at most queue_size + 1 of them (a few seconds, more on a loaded machine).
WAIT_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    url: str
    app: object
    config: ServeConfig
    model_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory, gpt, caption_tokenizer, image_tokenizer, layout):
    """A running server on 127.0.0.1 for a model directory made from the tiny fixtures."""
    pytest.importorskip("gradio", reason="the web app needs gradio (pip install 'gptdraw[serve]')")
    from gptdraw.apps.serve import launch

    root = tmp_path_factory.mktemp("serve")
    settings = SamplingConfig(top_k=20, cfg_scale=2.0)
    GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, settings).save_pretrained(root / "model")
    pipe = GPTDrawPipeline.from_pretrained(root / "model", device="cpu")
    config = ServeConfig(out_dir=root / "out", max_images=3, queue_size=4)
    with pytest.MonkeyPatch.context() as patch:
        # build_app points GRADIO_TEMP_DIR into the output folder; the patch restores it afterwards.
        patch.setenv("GRADIO_TEMP_DIR", str(config.out_dir / "drawings"))
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        app = launch(pipe, config, host="127.0.0.1", port=free_port(), block=False)
        try:
            yield Served(url=app.local_url, app=app, config=config, model_dir=root / "model")
        finally:
            app.close()


@pytest.fixture(scope="module")
def client(served):
    gradio_client = pytest.importorskip("gradio_client", reason="the API test needs gradio_client")
    return gradio_client.Client(served.url, verbose=False, download_files=False, analytics_enabled=False)


def draw(client, prompt="a red circle", seed=0, top_k=20, top_p=1.0, temperature=1.0, cfg_scale=2.0, num_images=1):
    job = client.submit(prompt, seed, top_k, top_p, temperature, cfg_scale, num_images, api_name="/draw")
    return job, job.result(timeout=WAIT_SECONDS)


# ------------------------------------------------------------------------------ request checks
CONFIG = ServeConfig(out_dir=Path("unused"), max_images=4)


def check(**changes):
    request = dict(prompt="a red circle", seed=0, top_k=20, top_p=0.9, temperature=1.0, cfg_scale=3.0, num_images=2)
    request.update(changes)
    return check_request(**request, config=CONFIG, codebook_size=64)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt": "   "}, "the prompt is empty"),
        ({"prompt": 42}, "the prompt must be text, got int"),
        ({"prompt": None}, "the prompt must be text, got NoneType"),
        ({"prompt": "x" * 2001}, "the limit is 2000"),
        ({"num_images": 5}, "number of images must be between 1 and 4, got 5"),
        ({"num_images": 0}, "number of images must be between 1 and 4"),
        ({"num_images": 1.5}, "number of images must be a whole number"),
        ({"seed": -1}, "seed must be between 0"),
        ({"seed": "abc"}, "seed must be a whole number, got 'abc'"),
        ({"top_k": 65}, "top-k must be between 0 and 64"),
        ({"top_p": 0}, "top-p must be in (0, 1]"),
        ({"top_p": 1.5}, "top-p must be in (0, 1]"),
        ({"temperature": -0.1}, "temperature must be in [0, 5]"),
        ({"temperature": float("nan")}, "temperature must be a number"),
        ({"cfg_scale": 21}, "CFG scale must be in [0, 20]"),
        ({"cfg_scale": True}, "CFG scale must be a number"),
    ],
)
def test_bad_requests_are_explained(changes, message):
    with pytest.raises(RequestError) as error:
        check(**changes)
    assert message in str(error.value)


def test_good_request_is_normalised():
    request = check(prompt="  a red circle ", seed=7.0, num_images=3)
    assert request.prompt == "a red circle" and request.seed == 7 and isinstance(request.seed, int)
    assert request.num_images == 3 and request.top_p == 0.9


# ------------------------------------------------------------------------------ the running server
def test_client_draws_images_into_the_output_folder(served, client, layout):
    job, (picture, gallery, files, status) = draw(client, num_images=2)
    assert status.startswith("Done: 2 images")
    assert len(gallery) == 2 and len(files) == 2
    out = served.config.out_dir
    # The server keeps its drawings and Gradio's file cache in the output folder.
    for item in [picture, *files, *(entry["image"] for entry in gallery)]:
        assert Path(item["path"]).resolve().is_relative_to(out), item["path"]
    runs = list((out / "drawings").iterdir())
    # Its live frames stay until the next request starts (a browser may still fetch the last few).
    assert any({p.name for p in run.iterdir()} - {"frames"} == {"00.png", "01.png", "picture.png", "request.json"}
               for run in runs)
    # The picture filled in while it was drawn: one update per code for this 4×4 grid.
    statuses = [output[-1] for output in job.outputs()]
    drawing = [s for s in statuses if s.startswith("Drawing")]
    assert drawing[0] == f"Drawing… 1/{layout.image_len} codes" and len(drawing) == layout.image_len - 1


def test_same_seed_same_images(served, client):
    first = draw(client, prompt="a blue square", seed=3)[1]
    second = draw(client, prompt="a blue square", seed=3)[1]
    assert Path(first[2][0]["path"]).read_bytes() == Path(second[2][0]["path"]).read_bytes()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": 123}, "the prompt must be text"),
        ({"num_images": 4}, "number of images must be between 1 and 3, got 4"),
        ({"temperature": 99}, "temperature must be in [0, 5]"),
        ({"top_p": 0}, "top-p must be in (0, 1]"),
        ({"seed": "abc"}, "seed must be a whole number"),
    ],
)
def test_server_refuses_bad_requests_and_keeps_serving(served, client, changes, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message.replace("(", r"\(").replace("[", r"\[")):
        draw(client, **changes)
    assert draw(client)[1][-1].startswith("Done")


def test_over_long_prompt_is_drawn_with_a_warning(served, client):
    prompt = "a large blue square on the right and a green circle in the center " * 3
    _, (_, gallery, _, status) = draw(client, prompt=prompt)
    assert "Warning: the prompt is longer than the caption budget of 12 tokens" in status
    assert len(gallery) == 1
    records = [json.loads(p.read_text()) for p in (served.config.out_dir / "drawings").rglob("request.json")]
    assert prompt.strip() in [record["prompt"] for record in records]


def test_a_full_queue_turns_requests_away_and_the_server_goes_on(served, client):
    # Many requests at once: one is drawn, queue_size wait, the rest are turned away.
    jobs = [client.submit(f"a red circle {i}", i, 20, 1.0, 1.0, 2.0, served.config.max_images, api_name="/draw")
            for i in range(4 * (served.config.queue_size + 1))]
    finished, refused = 0, []
    for job in jobs:
        try:
            job.result(timeout=WAIT_SECONDS)
            finished += 1
        except Exception as error:  # gradio_client raises its own kinds for a refused job
            refused.append(str(error))
    assert refused, "no request was turned away: the queue is not bounded"
    assert all("queue" in message.lower() for message in refused), refused[:3]
    assert finished >= served.config.queue_size + 1  # the drawn one and the waiting ones all finish
    _, (_, _, files, status) = draw(client)  # and the server still draws
    assert status.startswith("Done") and files


# ------------------------------------------------------------------------------ the command
@pytest.fixture
def command():
    return cli.main


def test_serve_command_refuses_bad_arguments(command, tmp_path, capsys):
    assert command(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert command(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be between 1 and 65535" in capsys.readouterr().err
    assert command(["serve", "--model", str(tmp_path), "--port", "7860"]) == 2  # a folder, not a model
    assert "not a complete gptdraw model directory" in capsys.readouterr().err


def test_warm_up_compiles_every_batch_size_a_request_can_use(gpt, caption_tokenizer, image_tokenizer, layout):
    from gptdraw.gpt.sampling import DrawerConfig
    from gptdraw.apps.serve import warm_up

    options = DrawerConfig(compile=True, backend="eager")  # dynamo traces; no code generation
    pipe = GPTDrawPipeline(gpt, caption_tokenizer, image_tokenizer, layout, SamplingConfig(cfg_scale=2.0), options)
    warm_up(pipe, max_images=3)
    # Requests of 1, 2 and 3 images run batches of 1, 2 and 4, each as 2× rows for guidance.
    assert sorted(rows for rows, _, _ in pipe.drawer._caches) == [2, 4, 8]


def test_uploads_are_refused(served):
    import httpx

    before = sorted(path for path in served.config.out_dir.rglob("*") if path.is_file())
    reply = httpx.post(f"{served.url}gradio_api/upload", files={"files": ("big.png", b"x" * 10_000, "image/png")})
    assert reply.status_code == 403 and "takes no uploads" in reply.text, reply.text[:200]
    after = sorted(path for path in served.config.out_dir.rglob("*") if path.is_file())
    assert after == before  # nothing reached the disk


def test_drawings_are_kept_in_unguessable_bounded_folders(served, tmp_path):
    from gptdraw.apps.serve import DrawingService

    pipe = GPTDrawPipeline.from_pretrained(served.model_dir, device="cpu")
    service = DrawingService(pipe, ServeConfig(out_dir=tmp_path, keep_drawings=2))
    # Folders the page did not make: with --out ~, ~/drawings may hold anything.
    theirs = [tmp_path / "drawings" / "holiday", tmp_path / "drawings" / ("x" * 24)]
    for folder in theirs:
        folder.mkdir(parents=True)
        (folder / "photo.png").write_bytes(b"mine")
    for seed in range(3):
        request = check(prompt="a large blue square", seed=seed, num_images=1)
        *_, done = service.draw(request)
    runs = sorted(set((tmp_path / "drawings").iterdir()) - set(theirs))
    assert len(runs) == 2  # the oldest request's folder was deleted
    assert all(len(run.name) >= 24 and "blue" not in run.name for run in runs)  # no time, counter or prompt
    assert Path(done.files[0]).parent in runs and service.serves(done.files[0])
    assert all((folder / "photo.png").read_bytes() == b"mine" for folder in theirs)
    # A drawing left unfinished (its visitor gone, the generator closed) leaves nothing.
    updates = service.draw(check(prompt="a large blue square", seed=9, num_images=1))
    first = next(updates)
    assert service.serves(first.picture)
    updates.close()
    # (It made room when it began: the folders never outnumber keep_drawings, the one being drawn included.)
    left = set((tmp_path / "drawings").iterdir()) - set(theirs)
    assert left == {Path(done.files[0]).parent} and not service.serves(first.picture)


def test_server_bounds_and_error_messages_are_safe(tmp_path):
    with pytest.raises(ValueError, match="max_images must be at most 16"):
        ServeConfig(out_dir=tmp_path, max_images=17)
    with pytest.raises(ValueError, match="queue_size must be at most 256"):
        ServeConfig(out_dir=tmp_path, queue_size=10_000)
    with pytest.raises(ValueError, match="keep_drawings must be at least 1"):
        ServeConfig(out_dir=tmp_path, keep_drawings=0)
    with pytest.raises(RequestError) as error:
        check(seed="<img src=x onerror=alert(1)>" * 10)
    assert "<img" not in str(error.value) and "&lt;img" in str(error.value) and len(str(error.value)) < 120


def test_serve_command_passes_its_flags_to_the_server(command, served, tmp_path, monkeypatch, capsys):
    import gptdraw.apps.serve

    seen = {}
    monkeypatch.setattr(gptdraw.apps.serve, "launch", lambda pipe, config, **options: seen.update(config=config))
    args = ["serve", "--model", str(served.model_dir), "--device", "cpu", "--out", str(tmp_path / "page")]
    assert command(args) == 0
    assert seen["config"].out_dir == (tmp_path / "page").resolve() and seen["config"].monitoring is False
    assert command([*args, "--monitoring"]) == 0 and seen["config"].monitoring is True
    (tmp_path / "a-file").write_text("not a folder")
    seen.clear()
    assert command([*args[:-1], str(tmp_path / "a-file")]) == 2 and not seen  # refused before the model loads
    assert "--out" in capsys.readouterr().err


def test_the_guard_opens_monitoring_only_when_asked():
    import asyncio
    from gptdraw.apps.serve import PageGuard

    async def gradio(scope, receive, send):  # stands in for Gradio's app: every request it sees is a 200
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def status(monitoring: bool, path: str) -> int:
        sent = []

        async def send(message):
            sent.append(message)

        guard = PageGuard(gradio, service=None, fn_index=0, values=7, has_stream=lambda _: True, monitoring=monitoring)
        scope = {"type": "http", "method": "GET", "path": path, "headers": []}
        asyncio.run(guard(scope, None, send))
        return sent[0]["status"]

    for path in ("/monitoring", "/monitoring/summary"):
        assert status(False, path) == 404 and status(True, path) == 200
    assert status(False, "/") == 200 and status(False, "/gradio_api/upload_progress") == 404
