"""The corpus of malformed inputs (bench/bad_inputs.py), a quick pass: no tracebacks, no hangs,
no good example lost. It runs in this process (each case under the bench's own limit of
CASE_SECONDS, a hang guard: the slowest case takes about 0.3 s)."""

import json

import torch

from conftest import load_bench


def test_bad_inputs_cause_no_tracebacks_hangs_or_losses(tmp_path):
    bad_inputs = load_bench("bad_inputs")
    threads = torch.get_num_threads()
    try:
        returned = bad_inputs.main(["--per-kind", "5", "--seed", "3", "--out", str(tmp_path / "bad.json")])
    finally:
        torch.set_num_threads(threads)  # the bench takes one thread; the tests after it keep theirs
    result = json.loads((tmp_path / "bad.json").read_text())
    assert result["bad_inputs_tried"] == returned["bad_inputs_tried"] >= 90
    assert (result["tracebacks"], result["hangs"], result["good_examples_lost"]) == (0, 0, 0), result
