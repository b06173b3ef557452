"""Training as separate processes: two-process DDP (gloo) equals one process, and a run
killed with SIGKILL resumes to exactly the losses of an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import HANG_SECONDS, tiny_vq_config
from gptdraw.vq.model import ImageTokenizer

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it

TRAIN_FLAGS = [
    "--preset", "tiny", "--max-steps", "6", "--lr", "3e-3", "--warmup-steps", "2", "--precision", "fp32",
    "--eval-every", "0", "--sample-every", "0", "--log-every", "1", "--checkpoint-every", "3", "--seed", "1",
]


@pytest.fixture(scope="module")
def data_dir(shapes_data):
    return shapes_data.data_dir


def env():
    # One thread per process: two processes share the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def losses(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def run_train(data_dir, out, *extra, launcher=(), extra_env=None):
    command = [*launcher, "-m", "gptdraw.cli", "train", "--data", str(data_dir), "--out", str(out), *TRAIN_FLAGS, *extra]
    result = subprocess.run(command, env={**env(), **(extra_env or {})}, capture_output=True, text=True,
                            timeout=HANG_SECONDS)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_process_ddp_equals_one_process(data_dir, tmp_path, optimizer):
    run_train(data_dir, tmp_path / "one", "--micro-batch-size", "16", "--optimizer", optimizer, launcher=(sys.executable,))
    # `accelerate launch` starts two processes that join one gloo group: on a machine without
    # GPUs, --multi_gpu with ACCELERATE_USE_CPU=1 is Accelerate's multi-CPU (DDP over gloo) mode.
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533")
    # The Muon run also checkpoints by time (a minute's billionth: at every log step), in the
    # background: both processes take part in each checkpoint the main one's clock calls for.
    timed = ("--checkpoint-minutes", "1e-9", "--async-checkpoint") if optimizer == "muon" else ()
    run_train(data_dir, tmp_path / "two", "--micro-batch-size", "8", "--optimizer", optimizer, *timed,
              launcher=launcher, extra_env={"ACCELERATE_USE_CPU": "1"})
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == list(range(1, 7))
    kept = sorted(path.name for path in (tmp_path / "two" / "checkpoints").iterdir())
    assert kept == (["step-00000005", "step-00000006"] if timed else ["step-00000003", "step-00000006"])
    first = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["tokens_seen"] == 16 * 75  # both processes counted: 2 × 8 sequences of 75 targets
    # Stated tolerance: float32 sums reduced in another order across processes; Muon orthogonalises
    # its update in bfloat16 (torch's choice), where a last-bit difference of a gradient can round
    # another way. A process whose gradients were not averaged would be off by about 1e-2.
    tolerance = {"adamw": 1e-5, "muon": 2e-4}[optimizer]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=tolerance), step


def test_sigkill_and_resume_equals_uninterrupted(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "straight", "--micro-batch-size", "8", "--max-steps", "10", launcher=(sys.executable,))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "gptdraw.cli", "train", "--data", str(data_dir), "--out", str(out), *TRAIN_FLAGS,
               "--micro-batch-size", "8", "--max-steps", "10"]
    process = subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it once it has passed a checkpoint (step 3) and is part-way to the next, however long
    # that takes; the deadline only guards against a hang.
    deadline = time.monotonic() + HANG_SECONDS
    metrics = out / "metrics.jsonl"
    while process.poll() is None:
        if metrics.exists() and any(json.loads(l)["step"] >= 4 for l in metrics.read_text().splitlines() if l.strip()):
            break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run logged no step 4 in {HANG_SECONDS} s: hung")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=HANG_SECONDS)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    rerun = run_train(data_dir, out, "--micro-batch-size", "8", "--max-steps", "10", launcher=(sys.executable,))
    resumed_from = re.search(r"resuming from \S+ \(step (\d+)\)", rerun.stderr)
    assert resumed_from and int(resumed_from[1]) >= 3, "the rerun did not start from the checkpoint"
    straight, resumed = losses(tmp_path / "straight"), losses(out)
    assert sorted(resumed) == list(range(1, 11))
    for step in straight:
        assert resumed[step] == straight[step], step


def test_wrong_image_tokenizer_is_refused(data_dir, tmp_path):
    other = ImageTokenizer(tiny_vq_config(image_size=32))
    other.save_pretrained(tmp_path / "other_vq")
    result = subprocess.run(
        [sys.executable, "-m", "gptdraw.cli", "train", "--data", str(data_dir), "--out", str(tmp_path / "run"),
         "--vq", str(tmp_path / "other_vq"), *TRAIN_FLAGS],
        env=env(), capture_output=True, text=True, timeout=HANG_SECONDS,
    )
    assert result.returncode == 2
    assert "not the one" in result.stderr and "Traceback" not in result.stderr
