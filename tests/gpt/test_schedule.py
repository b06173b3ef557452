"""The one learning-rate schedule, as both trainers use it."""

import math

import pytest

from gptdraw.schedule import learning_rate


def test_warm_up_then_decay_to_the_floor():
    lr, warmup, total = 1e-3, 10, 110
    assert learning_rate(0, lr, warmup, total) == pytest.approx(lr / warmup)
    assert learning_rate(9, lr, warmup, total) == pytest.approx(lr)
    for schedule in ("cosine", "linear"):
        assert learning_rate(10, lr, warmup, total, schedule) == pytest.approx(lr)
        assert learning_rate(110, lr, warmup, total, schedule, 0.1) == pytest.approx(1e-4)
        assert learning_rate(500, lr, warmup, total, schedule, 0.1) == pytest.approx(1e-4)  # stays at the floor
    assert learning_rate(60, lr, warmup, total, "cosine", 0.0) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(60, lr, warmup, total, "linear", 0.0) == pytest.approx(lr / 2)
    assert learning_rate(10**6, lr, warmup, total, "constant") == lr


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        learning_rate(50, 1e-3, 10, 100, "step")
