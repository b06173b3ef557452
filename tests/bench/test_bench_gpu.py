"""The GPU suite's dry run: every part of bench/gpu.py runs, with tiny sizes, on this CPU.

It is what makes the suite trustworthy before a GPU is lent: a part that breaks here would
break there, where minutes of device time are all there is.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HANG_SECONDS

pytestmark = pytest.mark.integration  # slow, end to end: `-m "not integration"` skips it

ROOT = Path(__file__).resolve().parents[2]
# A dry run times nothing: its budget and the parts' caps (a minute or two, against seconds) only guard
# against a hang, so on a loaded machine they are stretched rather than let decide the outcome.
DRY_RUN = [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--budget", str(HANG_SECONDS),
           "--cap-scale", "10"]


def test_gpu_suite_dry_run_runs_every_part_and_reruns_one(tmp_path):
    done = subprocess.run([*DRY_RUN, "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=2 * HANG_SECONDS, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu.json").read_text())
    parts = summary["parts"]
    assert summary["dry_run"] is True
    assert set(summary["ran"]) == set(parts) == {
        "ceilings", "train", "train-compile", "draw", "encode", "checks", "launch", "train-large", "train-graphs",
        "encode-compile", "draw-fp32",
    }
    assert all(record["status"] == "ok" for record in parts.values()), {n: r["status"] for n, r in parts.items()}
    # Each part measured what it is for.
    assert parts["train"]["result"]["tokens_per_s"] > 0 and parts["train"]["result"]["baseline_tokens_per_s"] > 0
    assert parts["train"]["result"]["profile"]["top_ops"]
    assert parts["train-compile"]["result"]["compile"] is True and parts["train-compile"]["result"]["profile"]["top_ops"]
    assert parts["train-large"]["result"]["log_every"] == 2 and parts["train-large"]["result"]["tokens_per_s"] > 0
    assert parts["draw"]["result"]["compiled_check"]["codes_equal"] is True
    assert parts["draw-fp32"]["result"]["compiled_check"]["codes_equal"] is True
    assert [r["variant"] for r in parts["encode-compile"]["result"]["results"]] == ["bf16+cl+compile"]
    checks = parts["checks"]["result"]
    assert checks["resume"]["passed"] and checks["resume"]["bit_identical"]
    assert checks["precision"].get("passed", True)
    launch = parts["launch"]["result"]["launch"]
    assert launch["plain"]["passed"] and launch["fsdp2"]["passed"]
    assert launch["plain"]["steps_logged"] == [1, 2, 3, 4]
    table = (tmp_path / "gpu.md").read_text()
    assert "| train, eager: tokens/s |" in table and "| stop and resume | pass |" in table

    # A part run again (after a failure on the GPU, say) is measured again; the others' records are kept.
    again = subprocess.run([*DRY_RUN, "--out", str(tmp_path), "--parts", "ceilings"], capture_output=True, text=True,
                           timeout=2 * HANG_SECONDS, cwd=ROOT)
    assert again.returncode == 0, again.stdout[-2000:]
    after = json.loads((tmp_path / "gpu.json").read_text())["parts"]
    assert list(after) == list(parts)
    assert all(after[name] == parts[name] for name in parts if name != "ceilings")  # kept, not rerun
    assert after["ceilings"]["result"] != parts["ceilings"]["result"]  # measured again
