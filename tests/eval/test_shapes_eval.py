"""Variety figures of the shapes evaluation, on drawings whose answer is known."""

import numpy as np

from gptdraw.data import shapes
from gptdraw.eval.shapes import variety
from gptdraw.eval.verifier import detect_objects

SIZE = 48


def drawings(prompt: str, seeds: list[int]):
    return [shapes.render_prompt(prompt, SIZE, np.random.default_rng(seed)) for seed in seeds]


def test_variety_counts_distinct_drawings_and_sizes_of_sizeless_prompts():
    small = "a small red circle in the top left"
    sizeless = "a blue square at the bottom"
    drawn = {
        small: drawings(small, [0, 0, 0, 0]),  # one picture four times
        sizeless: drawings(sizeless, [1, 2, 3, 4]),  # the renderer picks either size at random
    }
    read_back = [obj.size for image in drawn[sizeless] for obj in detect_objects(image)]
    assert read_back == ["small", "large", "large", "large"]
    figures = variety(drawn)
    assert figures["distinct"] == 0.5  # the second prompt has distinct drawings, the first not
    assert figures["sizeless_objects"] == 4 and figures["small_share"] == 0.25


def test_variety_ignores_wrong_drawings_of_sizeless_prompts():
    wrong = drawings("a large green triangle in the center", [5, 6])
    figures = variety({"a blue square at the bottom": wrong})
    assert figures["small_share"] is None and figures["sizeless_objects"] == 0
    assert figures["distinct"] == 1.0
