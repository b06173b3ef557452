"""The corpus of malformed inputs (bench/bad_inputs.py), a quick pass: no tracebacks, no hangs,
no good example lost."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bad_inputs_cause_no_tracebacks_hangs_or_losses(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bad_inputs.py"), "--per-kind", "5", "--seed", "3",
                           "--out", str(tmp_path / "bad.json")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "bad.json").read_text())
    assert result["bad_inputs_tried"] >= 90
    assert (result["tracebacks"], result["hangs"], result["good_examples_lost"]) == (0, 0, 0), result
