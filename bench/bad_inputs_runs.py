"""bench/bad_inputs.py's families of whole runs: tampered model directories, CLI and config values,
kills inside the model export, two runs on one folder, and a full disk.

Each family runs `gptdraw` commands in this process (gptdraw.cli.main, through Corpus.command)
and, where a run is killed or runs out of space, runs the same command again and checks that
nothing was lost: the model loads, and is the one an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TAMPERINGS_FILE = ROOT / "tests" / "test_model_dir_untrusted.py"
"""The one table of model-directory tamperings (CASES) and the tiny model they are applied to (FIXTURE)."""
QUICK_TAMPERINGS = ("config is /dev/zero", "config is a FIFO", "a million layers", "header length lies",
                    "NaN weights", "tokenizer of 100 MB")
"""The quick pass's tamperings: the ones that once read forever, blocked, took minutes or drew blanks."""
TINY_GPT = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16}}


class Killed(BaseException):
    """Stands for a SIGKILL inside a run: nothing of the run's own error handling catches it."""


@dataclass
class Runs:
    """What the families share: a tiny prepared dataset, its image tokenizer, a tiny model."""

    work: Path
    data: Path
    vq_dir: Path
    config: Path
    model: Path

    def train_argv(self, out: Path, *flags: str) -> list[str]:
        """A two-step `gptdraw train` of a tiny GPT (its flags after the defaults, so they win)."""
        return ["train", "--data", str(self.data), "--config", str(self.config), "--max-steps", "2",
                "--micro-batch-size", "4", "--warmup-steps", "1", "--precision", "fp32", "--eval-every", "0",
                "--sample-every", "0", "--checkpoint-every", "2", "--log-every", "1", "--seed", "1", *flags,
                "--out", str(out)]

    def prepare_argv(self, out: Path, *flags: str) -> list[str]:
        return ["data", "prepare", "shapes", "--count", "24", "--shard-size", "8", "--image-tokenizer",
                str(self.vq_dir), "--workers", "0", "--no-progress", "--device", "cpu", *flags, "--out", str(out)]

    def generate_argv(self, out: Path | str, *flags: str, model: Path | None = None) -> list[str]:
        return ["generate", "a red circle", "--model", str(model or self.model), "--device", "cpu", *flags,
                "--out", str(out)]


def tamperings():
    """(CASES, FIXTURE) of tests/test_model_dir_untrusted.py, imported under a name of its own."""
    spec = importlib.util.spec_from_file_location("bench_model_dir_tamperings", TAMPERINGS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CASES, module.FIXTURE


def make_runs(work: Path, vq, captions) -> Runs:
    """The bench's tiny image tokenizer at 32 px (the least `data prepare` takes), saved, and 32
    shapes prepared with it (8 held out)."""
    from gptdraw.data.prepare import prepare
    from gptdraw.data.prepare_config import PrepareConfig
    from gptdraw.data.sources import open_source
    from gptdraw.vq.model import ImageTokenizer

    runs = work / "runs"
    torch.manual_seed(0)
    vq = ImageTokenizer(replace(vq.config, image_size=32)).eval()
    vq.save_pretrained(runs / "vq")
    prepare(open_source("shapes", count=32, image_size=32, seed=0), runs / "data",
            PrepareConfig(workers=0, eval_count=8), image_tokenizer=vq, caption_tokenizer=captions, progress=False,
            image_tokenizer_path=str(runs / "vq"))
    (runs / "tiny.json").write_text(json.dumps(TINY_GPT))
    _, fixture = tamperings()
    return Runs(runs, runs / "data", runs / "vq", runs / "tiny.json", fixture)


def model_files(out: Path) -> dict[str, bytes]:
    """Every file of the model directory in `out`, by path, with its bytes."""
    from gptdraw.gpt.train import EXPORT_NAME
    from gptdraw.model_dir import MODEL_CONFIG_NAME, PARTS

    files = {name: (out / name).read_bytes() for name in (MODEL_CONFIG_NAME, EXPORT_NAME) if (out / name).is_file()}
    for part in PARTS:
        files |= {str(path.relative_to(out)): path.read_bytes() for path in sorted((out / part).rglob("*"))
                  if path.is_file()}
    return files


def check_not_lost(corpus, name: str, out: Path, clean: dict[str, bytes]) -> None:
    """The model in `out` must load and draw, and be the clean run's, byte for byte."""
    from gptdraw.pipeline import GPTDrawPipeline

    try:
        images = GPTDrawPipeline.from_pretrained(out, device="cpu", precision="fp32")(["a red circle"], seed=0)
        assert len(images) == 1
    except Exception as error:  # noqa: BLE001 - any failure to load is a lost model
        corpus.count("lost", name, f"the model does not load: {str(error)[:200]}")
        return
    if model_files(out) != clean:
        corpus.count("lost", name, "the model differs from an uninterrupted run's")


# ----------------------------------------------------------------------------- tampered model directories
def model_dir_cases(corpus, runs: Runs, quick: bool) -> None:
    """Each tampering of tests/test_model_dir_untrusted.py through GPTDrawPipeline.from_pretrained,
    `gptdraw generate` and `gptdraw serve`: each must be refused (in one line, by the CLI)."""
    from gptdraw.pipeline import GPTDrawPipeline

    cases, fixture = tamperings()
    for index, name in enumerate(QUICK_TAMPERINGS if quick else sorted(cases)):
        tamper, _ = cases[name]
        model = Path(shutil.copytree(fixture, runs.work / "tampered" / f"{index:02d}" / "model"))
        tamper(model)
        corpus.run(f"from_pretrained: {name}", refused=True,
                   function=lambda: GPTDrawPipeline.from_pretrained(model, device="cpu", precision="fp32"))
        corpus.command(f"generate: {name}", runs.generate_argv(model.parent / "drawn", model=model))
        corpus.command(f"serve: {name}", ["serve", "--model", str(model), "--device", "cpu", "--port", "1",
                                          "--out", str(model.parent / "served")])


# ----------------------------------------------------------------------------- CLI and config values
@contextlib.contextmanager
def read_only_folder(work: Path):
    """A folder no process may write into, or None where this machine cannot make one: a read-only
    tmpfs for root (who ignores permission bits), else a folder without write permission."""
    folder = work / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def value_cases(runs: Runs, work: Path, read_only: Path | None) -> list[tuple[str, list[str], bool]]:
    """(name, argv, refused) of every CLI value tried; the first of each command must succeed."""
    (work / "a-file").write_text("not a folder")
    os.mkfifo(work / "config.fifo")
    (work / "big.json").write_bytes(b" " * (5 * 2**20) + b"{}")
    (work / "cut.yaml").write_text("max_steps: [1, 2\n")
    fresh = iter(range(10**6))

    def out() -> Path:
        return work / f"out-{next(fresh)}"

    outs = {"a file": work / "a-file", "under a file": work / "a-file" / "run", "empty": ""}
    if read_only is not None:
        outs["read-only"] = read_only / "run"
    devices = ["bogus", "cuda:99", "meta", ""] + ([] if torch.cuda.is_available() else ["cuda"])
    configs = {"/dev/zero": "/dev/zero", "a FIFO": work / "config.fifo", "5 MB": work / "big.json",
               "a folder": work, "cut YAML": work / "cut.yaml", "missing": work / "missing.json"}
    cases = [("generate", runs.generate_argv(out()), False)]
    cases += [(f"generate --device {device!r}", runs.generate_argv(out(), "--device", device), True)
              for device in devices]
    cases += [(f"generate --out {kind}", runs.generate_argv(path), True) for kind, path in outs.items()]
    cases += [(f"generate {' '.join(flags)}", runs.generate_argv(out(), *flags), True) for flags in (
        ("--cfg-scale", "nan"), ("--cfg-scale", "inf"), ("--cfg-scale", "-inf"), ("--temperature", "nan"),
        ("--temperature", "-1"), ("--top-p", "nan"), ("--top-k", "2e6"), ("--top-k", "-1"),
        ("--num-images", "100000"), ("--num-images", "0"), ("--num-images", "-3"), ("--batch-size", "0"),
        ("--max-images", "0"), ("--seed", str(2**64)), ("--seed", "-1"), ("--seed", "1.5"))]
    many = ["generate", *["a red circle"] * 10_001, "--model", str(runs.model), "--device", "cpu", "--out", str(out())]
    cases.append(("generate with 10,001 prompts", many, True))
    cases.append(("train", runs.train_argv(out()), False))
    cases += [(f"train {' '.join(flags)}", runs.train_argv(out(), *flags), True) for flags in (
        ("--checkpoint-every", "0"), ("--log-every", "0"), ("--grad-clip", "nan"), ("--eval-batches", "0"),
        ("--seed", str(2**64)), ("--lr", "nan"), ("--lr", "inf"), ("--micro-batch-size", "0"),
        ("--warmup-steps", "-1"), ("--max-steps", "-1"), ("--grad-accum", "0"))]
    cases += [(f"train --config {kind}", runs.train_argv(out(), "--config", str(path)), True)
              for kind, path in configs.items()]
    cases += [(f"train --out {kind}", runs.train_argv(path), True) for kind, path in outs.items()]
    cases.append(("data prepare", runs.prepare_argv(out()), False))
    cases += [(f"data prepare --device {device!r}", runs.prepare_argv(out(), "--device", device), True)
              for device in devices]
    cases += [(f"data prepare --config {kind}", runs.prepare_argv(out(), "--config", str(path)), True)
              for kind, path in configs.items()]
    cases += [(f"data prepare --out {kind}", runs.prepare_argv(path), True) for kind, path in outs.items()]
    return cases


def cli_value_cases(corpus, runs: Runs, quick: bool) -> None:
    """Odd flag and --config values: each refused in one line before any work (nothing written
    where --out was fresh), the good ones beside them drawing or training as usual."""
    work = runs.work / "values"
    work.mkdir()
    with read_only_folder(work) as read_only:
        if read_only is None:
            corpus.notes.append("values: no read-only --out tried (root here may not mount a read-only tmpfs)")
        cases = value_cases(runs, work, read_only)
        if quick:  # the three good runs and every fourth bad value
            cases = [case for index, case in enumerate(cases) if not case[2] or index % 4 == 0]
        for name, argv, refused in cases:
            out = Path(argv[-1])
            fresh = out.name.startswith("out-")
            corpus.command(name, argv, refused=refused)
            if refused and fresh and out.exists():
                if any(out.iterdir()):
                    corpus.count("accepted", name, f"refused, but it wrote into {out}")
                else:
                    corpus.notes.append(f"values: {name}: refused, but it left an empty --out folder")


# ----------------------------------------------------------------------------- kills inside the export
@contextlib.contextmanager
def killed_at_export_rename(index: int, after: bool):
    """Makes the final export of a run die at its os.replace number `index` (before or after the
    rename itself), as a SIGKILL landing there would; yields the renames seen, to tell whether it did."""
    import gptdraw.gpt.train as training

    real_replace, real_export = os.replace, training.TrainingRun.export
    renames: list[str] = []
    final = [False]

    def export(self, step):
        final[0] = step == self.config.max_steps
        try:
            return real_export(self, step)
        finally:
            final[0] = False

    def replace(source, target, *args, **kwargs):
        if not final[0]:
            return real_replace(source, target, *args, **kwargs)
        number = len(renames)
        renames.append(Path(target).name)
        if number == index and not after:
            raise Killed(f"before rename {index} ({Path(target).name})")
        real_replace(source, target, *args, **kwargs)
        if number == index and after:
            raise Killed(f"after rename {index} ({Path(target).name})")

    training.TrainingRun.export, os.replace = export, replace
    try:
        yield renames
    finally:
        training.TrainingRun.export, os.replace = real_export, real_replace


def export_kill_cases(corpus, runs: Runs, quick: bool) -> None:
    """A run killed at each rename of its final export (replace_directory renames the old part
    aside, then the new one in), then the same command again: the model must load and be whole."""
    work = runs.work / "kills"
    clean = work / "clean"
    corpus.command("uninterrupted run", runs.train_argv(clean), refused=False)
    clean_files = model_files(clean)
    # Renames 0 and 1 are transformer/'s: between them there is no transformer/ on disk.
    points = [(1, False), (1, True)] if quick else [(index, after) for index in range(64) for after in (False, True)]
    for index, after in points:
        name = f"killed {'after' if after else 'before'} export rename {index}"
        out = work / f"{index}-{after}"
        with killed_at_export_rename(index, after) as renames:
            try:
                corpus.command(name, runs.train_argv(out), refused=False)
                died = False
            except Killed:
                died = True
        if not died:  # past the export's last rename: every point is tried
            corpus.tally.tried -= 1
            corpus.notes.append(f"kills: the final export has {len(renames)} renames ({', '.join(renames)})")
            shutil.rmtree(out, ignore_errors=True)
            break
        if corpus.command(f"{name}, rerun", runs.train_argv(out), refused=False) == 0:
            check_not_lost(corpus, name, out, clean_files)
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------- two runs on one folder
def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def two_run_cases(corpus, runs: Runs, quick: bool) -> None:
    """A second run on a folder another run holds is refused in one line and changes nothing in it;
    the first run, still training, finishes unharmed; a lock left by a dead run is taken over."""
    from gptdraw.run_lock import lock_path, run_lock

    work = runs.work / "two-runs"
    second = {"train": lambda out: runs.train_argv(out, "--seed", "2"), "data prepare": runs.prepare_argv,
              "vq train": lambda out: ["vq", "train", "--steps", "1", "--device", "cpu", "--out", str(out)],
              "quickstart": lambda out: ["quickstart", "--out", str(out)]}
    for command, argv in second.items():
        out = work / command.replace(" ", "-")
        out.mkdir(parents=True)
        (out / "kept.txt").write_text("the holder's")
        with run_lock(out, command="the holder"), run_lock(out, command="the holder", beside=True):
            before = tree_bytes(out)
            status = corpus.command(f"{command} on a held --out", argv(out))
        if status is not None and status != 0 and tree_bytes(out) != before:
            corpus.count("lost", f"{command} on a held --out", "refused, but it changed the holder's folder")
    # A real first run in a thread of this process (the lock is per open file, so it holds against
    # this thread too), held between two steps while the second run is tried.
    first_out = work / "first"
    holding, go_on, first_status = threading.Event(), threading.Event(), []

    import gptdraw.gpt.train as training

    real_take_step = training.TrainingRun.take_step

    def take_step(self, step):
        if step == 1:
            holding.set()
            go_on.wait(60)  # a hang guard only: released as soon as the second run is refused
        return real_take_step(self, step)

    training.TrainingRun.take_step = take_step
    try:
        from gptdraw.cli import main as gptdraw_main

        thread = threading.Thread(target=lambda: first_status.append(gptdraw_main(runs.train_argv(first_out))))
        thread.start()
        if wait_for(holding.is_set, 60):
            corpus.command("train while another train runs", runs.train_argv(first_out, "--seed", "2"))
        else:
            corpus.count("hangs", "the first run never reached its second step")
        go_on.set()
        thread.join(120)
    finally:
        training.TrainingRun.take_step = real_take_step
    corpus.tally.tried += 1
    saved_seed = json.loads((first_out / "train_config.json").read_text()).get("seed") if first_out.is_dir() else None
    if first_status != [0] or saved_seed != 1:
        corpus.count("lost", "the first of two runs", f"exit {first_status}, train_config seed {saved_seed}")
    else:
        check_not_lost(corpus, "the first of two runs", first_out, model_files(first_out))
    # A lock file whose holder died (its note says so, no process holds it): the next run takes it.
    stale = work / "stale"
    stale.mkdir()
    lock_path(stale).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "killed", "since": "then"}))
    corpus.command("train after a killed run's lock", runs.train_argv(stale), refused=False)


# ----------------------------------------------------------------------------- a full disk
@contextlib.contextmanager
def small_disk(work: Path, size: str = "8m"):
    """A real filesystem of `size` (tmpfs) to fill up, or None where this machine lets no one mount it."""
    disk = work / "disk"
    disk.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fills `disk` but for about `leave` bytes; returns the filler (delete it to free the space)."""
    filler = disk / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * max(shutil.disk_usage(disk).free - leave, 0))
    return filler


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".gptdraw")}


def full_disk_cases(corpus, runs: Runs, quick: bool) -> None:
    """`train` and `data prepare` on a disk filled to leave a few bytes up to most of what the run
    writes: one line (exit 1), then, with space freed, the same command finishes the same run."""
    work = runs.work / "full-disk"
    clean = {"train": work / "clean-train", "data prepare": work / "clean-data"}
    argv = {"train": runs.train_argv, "data prepare": runs.prepare_argv}
    for command, out in clean.items():
        corpus.command(f"{command} with room", argv[command](out), refused=False)
    fractions = (0.0, 0.5) if quick else (0.0, 0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95)
    with small_disk(work) as disk:
        if disk is None:
            corpus.notes.append("full disk: no tmpfs could be mounted here; ENOSPC injected into the writers instead")
            return injected_full_disk_cases(corpus, runs, work, clean["train"])
        for command, clean_out in clean.items():
            written = sum(len(data) for data in tree_bytes(clean_out).values())
            for fraction in fractions:
                name = f"{command} with {fraction:.0%} of its bytes free"
                out = disk / command.replace(" ", "-")
                filler = fill(disk, int(written * fraction))
                corpus.command(name, argv[command](out), refused=None)  # one line if the disk fills, or done
                filler.unlink()
                if corpus.command(f"{name}, rerun with space", argv[command](out), refused=False) == 0:
                    if command == "train":
                        check_not_lost(corpus, name, out, model_files(clean_out))
                    elif tree_bytes(out) != tree_bytes(clean_out):
                        corpus.count("lost", name, "the dataset differs from one prepared with room")
                shutil.rmtree(out, ignore_errors=True)


def injected_full_disk_cases(corpus, runs: Runs, work: Path, clean_out: Path) -> None:
    """Where no small disk can be mounted: the checkpoint's weights fail as a full disk makes them
    (the OSError of a write, and safetensors' own error), then the same command with space again."""
    import gptdraw.gpt.checkpoint as checkpoint
    from safetensors import SafetensorError

    real = checkpoint.save_file
    for error in (OSError(errno.ENOSPC, "No space left on device"),
                  SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")):
        name = f"train, {type(error).__name__} ENOSPC writing a checkpoint"
        out = work / f"injected-{type(error).__name__}"

        def full(*args, error=error, **kwargs):
            raise error

        checkpoint.save_file = full
        try:
            corpus.command(name, runs.train_argv(out), refused=True)
        finally:
            checkpoint.save_file = real
        if corpus.command(f"{name}, rerun", runs.train_argv(out), refused=False) == 0:
            check_not_lost(corpus, name, out, model_files(clean_out))
