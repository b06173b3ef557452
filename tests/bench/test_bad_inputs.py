"""The corpus of malformed inputs (bench/bad_inputs.py), a quick pass: no tracebacks, hangs, losses,
leaks or bad values accepted, in any family. It runs in this process (each case under the bench's
own limit of CASE_SECONDS, a hang guard), about 30 s on one shared core, a third of it the served page."""

import json

import torch

from conftest import load_bench


def test_the_corpus_judges_a_case_by_what_the_user_would_see(tmp_path):
    bad_inputs = load_bench("bad_inputs")
    corpus = bad_inputs.Corpus()
    with corpus.family("judged"):
        corpus.run("a clear error", lambda: int("x"))
        corpus.run("a crash", lambda: [][1])
        corpus.run("a bad value taken", lambda: None, refused=True)
        assert corpus.command("a bad flag", ["generate", "x", "--model", "m", "--num-images", "two"]) == 2
        assert corpus.command("a missing model", ["generate", "x", "--model", str(tmp_path / "none"),
                                                  "--out", str(tmp_path / "out")], refused=False) == 2
    tally = corpus.families["judged"]
    assert (tally.tried, tally.tracebacks, tally.accepted, tally.lost) == (5, 1, 1, 1), tally
    assert corpus.cases["tracebacks"] == ["judged: a crash: IndexError: list index out of range"]


def test_bad_inputs_cause_no_tracebacks_hangs_losses_or_leaks(tmp_path):
    bad_inputs = load_bench("bad_inputs")
    threads = torch.get_num_threads()
    try:
        returned = bad_inputs.main(["--quick", "--seed", "3", "--out", str(tmp_path / "bad.json")])
    finally:
        torch.set_num_threads(threads)  # the bench takes one thread; the tests after it keep theirs
    result = json.loads((tmp_path / "bad.json").read_text())
    assert result["bad_inputs_tried"] == returned["bad_inputs_tried"] >= 250
    assert list(result["families"]) == list(bad_inputs.FAMILIES)
    assert all(family["tried"] > 0 for family in result["families"].values()), result["families"]
    counts = ("tracebacks", "hangs", "good_examples_lost", "leaks", "accepted")
    assert {count: result[count] for count in counts} == dict.fromkeys(counts, 0), result
    assert 0 < result["peak_memory_mib"] < 2048
