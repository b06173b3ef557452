"""The built-in shapes dataset: caption grammar, rendering, held-out split and verifier."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gptdraw.data import shapes
from gptdraw.eval import verifier
from gptdraw.data.shapes import ShapeSpec

SIZES_TO_TEST = (32, 48, 64, 128, 256)


def spec(colour: str, shape: str, cell: tuple[int, int], size: str | None = None) -> ShapeSpec:
    return ShapeSpec(colour=colour, shape=shape, cell=cell, size=size)


def draw_scene(scene: tuple[ShapeSpec, ...], image_size: int, seed: int = 0) -> Image.Image:
    return shapes.render(scene, image_size, np.random.default_rng(seed))


# ---------------------------------------------------------------------------- captions


def test_caption_round_trip_on_random_scenes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        scene = shapes.sample_scene(rng, two_object_prob=0.5, drop_size_prob=0.3)
        text = shapes.caption(scene)
        assert shapes.parse_caption(text) == scene
        assert shapes.caption(shapes.parse_caption(text)) == text


def test_contract_examples_parse():
    assert shapes.parse_caption("a small red circle in the top left") == (
        spec("red", "circle", (0, 0), "small"),
    )
    assert shapes.parse_caption("an orange triangle at the bottom") == (
        spec("orange", "triangle", (1, 2)),
    )
    assert shapes.parse_caption(
        "a large blue square on the right and a green circle in the center"
    ) == (spec("blue", "square", (2, 1), "large"), spec("green", "circle", (1, 1)))


def test_parse_ignores_case_and_spacing():
    assert shapes.parse_caption("  A   Small RED circle\tin the TOP left ") == shapes.parse_caption(
        "a small red circle in the top left"
    )


def test_article_rule():
    assert shapes.caption((spec("orange", "circle", (1, 1)),)) == "an orange circle in the center"
    assert shapes.caption((spec("orange", "circle", (1, 1), "small"),)) == (
        "a small orange circle in the center"
    )
    assert shapes.caption((spec("red", "square", (0, 1)),)) == "a red square on the left"
    rng = np.random.default_rng(1)
    for _ in range(1000):
        text = shapes.caption(shapes.sample_scene(rng))
        for part in text.split(" and "):
            article, next_word = part.split(" ")[:2]
            assert article == ("an" if next_word == "orange" else "a"), text
    with pytest.raises(ValueError, match="'an' before 'orange'"):
        shapes.parse_caption("a orange circle in the center")
    with pytest.raises(ValueError, match="'a' before 'small'"):
        shapes.parse_caption("an small orange circle in the center")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello world",
        "a pink circle in the center",
        "a red hexagon at the top",
        "a red circle somewhere nice",
        "a huge red circle at the top",
        "the red circle at the top",
        "a red circle",
        "a red circle at the top and",
        "a red circle at the top and a red square at the bottom",  # same colour
        "a red circle at the top and a blue square at the top",  # same cell
        "a red circle at the top and a blue square at the bottom and a green circle on the left",
        "a red circle at the top, please",
    ],
)
def test_parse_rejects_garbage(text):
    with pytest.raises(ValueError):
        shapes.parse_caption(text)


def test_parse_rejects_non_string():
    with pytest.raises(ValueError, match="string"):
        shapes.parse_caption(None)  # type: ignore[arg-type]


def test_shape_spec_checks_and_normalises():
    assert spec("red", "circle", [np.int64(2), 1]).cell == (2, 1)  # type: ignore[arg-type]
    for bad in (
        dict(colour="pink", shape="circle", cell=(0, 0), size=None),
        dict(colour="red", shape="oval", cell=(0, 0), size=None),
        dict(colour="red", shape="circle", cell=(3, 0), size=None),
        dict(colour="red", shape="circle", cell=(0, 0, 0), size=None),
        dict(colour="red", shape="circle", cell=(0, 0), size="huge"),
    ):
        with pytest.raises(ValueError):
            ShapeSpec(**bad)


# ---------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("image_size", [0, 16, 31, 40, 272, 48.0, True])
def test_render_rejects_bad_sizes(image_size):
    with pytest.raises(ValueError, match="image size"):
        draw_scene((spec("red", "circle", (1, 1), "small"),), image_size)


def test_render_geometry_and_exact_interior_colour():
    size_px = 64
    scene = (spec("blue", "square", (1, 1), "large"),)
    image = draw_scene(scene, size_px)
    assert image.mode == "RGB" and image.size == (size_px, size_px)
    pixels = np.asarray(image)
    blue = np.all(pixels == shapes.COLOURS["blue"], axis=-1)
    white = np.all(pixels == shapes.BACKGROUND, axis=-1)
    side = shapes.SIZES["large"] * size_px  # 17.92 px
    # Fully covered pixels: the side minus at most one partial pixel at each edge.
    assert (side - 2) ** 2 <= blue.sum() <= side**2
    assert blue[size_px // 2, size_px // 2] and white[0, 0] and white[-1, -1]
    # Every pixel is white, exact blue, or an edge blend between them.
    assert (blue | white).sum() + 4 * (side + 1) >= size_px**2


def test_triangle_points_up():
    pixels = np.asarray(draw_scene((spec("green", "triangle", (1, 1), "large"),), 128))
    covered = np.any(pixels != 255, axis=-1)
    rows = np.nonzero(covered.any(axis=1))[0]
    widths = covered[rows].sum(axis=1)
    assert widths[0] <= 3 and widths[-1] >= 0.9 * shapes.SIZES["large"] * 128


def test_generation_is_deterministic_and_resumable():
    first = list(shapes.generate_examples(20, 48, seed=7, heldout=None))
    again = list(shapes.generate_examples(20, 48, seed=7, heldout=None))
    other = list(shapes.generate_examples(20, 48, seed=8, heldout=None))
    assert [c for _, c in first] == [c for _, c in again]
    pairs = zip(first, again, strict=True)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in pairs)
    assert [c for _, c in first] != [c for _, c in other]
    resumed = list(shapes.generate_examples(5, 48, seed=7, heldout=None, start=15))
    assert [c for _, c in resumed] == [c for _, c in first[15:]]
    assert np.array_equal(np.asarray(resumed[0][0]), np.asarray(first[15][0]))
    image, text = shapes.make_example(3, 48, seed=7, heldout=None)
    assert text == first[3][1] and np.array_equal(np.asarray(image), np.asarray(first[3][0]))


def test_two_object_scenes_have_different_cells_and_colours():
    rng = np.random.default_rng(2)
    for _ in range(2000):
        first, second = shapes.sample_scene(rng, two_object_prob=1.0)
        assert first.cell != second.cell and first.colour != second.colour


def test_sampling_mix_follows_probabilities():
    rng = np.random.default_rng(3)
    scenes = [
        shapes.sample_scene(rng, two_object_prob=0.5, drop_size_prob=0.2) for _ in range(4000)
    ]
    two = np.mean([len(s) == 2 for s in scenes])
    no_size = np.mean([o.size is None for s in scenes for o in s])
    assert 0.45 < two < 0.55 and 0.16 < no_size < 0.24


# ---------------------------------------------------------------------------- held-out split


def test_heldout_prompts_are_deterministic_and_well_formed():
    heldout = shapes.heldout_prompts(seed=0, n_one=24, n_two=24)
    assert heldout == shapes.heldout_prompts(seed=0, n_one=24, n_two=24)
    assert heldout != shapes.heldout_prompts(seed=1, n_one=24, n_two=24)
    assert len(heldout.one_object) == len(set(heldout.one_object)) == 24
    assert len(heldout.two_object) == len(set(heldout.two_object)) == 24
    for prompt in heldout.one_object:
        (only,) = shapes.parse_caption(prompt)
        assert only.size is not None
    for prompt in heldout.two_object:
        assert all(o.size is not None for o in shapes.parse_caption(prompt))
    with pytest.raises(ValueError):
        shapes.heldout_prompts(n_one=200)


def test_evaluation_sets_share_no_prompt_and_no_one_object_triple():
    tuning, report = shapes.evaluation_sets()
    assert tuning == shapes.heldout_prompts(0)  # the held-out set the quickstart always had
    assert set(tuning.prompts).isdisjoint(report.prompts)
    def triples(prompts):
        return {(spec.colour, spec.shape, spec.cell) for prompt in prompts for spec in shapes.parse_caption(prompt)}

    assert triples(tuning.one_object).isdisjoint(triples(report.one_object))
    assert len(report.one_object) == len(report.two_object) == 24
    # Left to chance, two seeds' sets share prompts: that is what `avoid` prevents.
    assert set(tuning.prompts) & set(shapes.heldout_prompts(1).prompts)


def test_heldout_union_and_sizeless_prompts():
    tuning, report = shapes.heldout_prompts(0, n_one=3, n_two=2), shapes.heldout_prompts(1, n_one=3, n_two=2)
    both = shapes.heldout_union([tuning, report, tuning])
    assert both.prompts == tuning.one_object + report.one_object + tuning.two_object + report.two_object
    assert all(both.holds_out(shapes.parse_caption(p)) for p in tuning.prompts + report.prompts)
    assert shapes.without_sizes("a small red circle in the top left and a large blue square at the bottom") == (
        "a red circle in the top left and a blue square at the bottom")
    assert shapes.without_sizes("an orange triangle on the left") == "an orange triangle on the left"


def test_heldout_never_generated_for_training():
    heldout = shapes.heldout_prompts()
    forbidden = set(heldout.prompts)
    for prompt in heldout.one_object:
        (only,) = shapes.parse_caption(prompt)
        forbidden.add(shapes.caption((ShapeSpec(only.colour, only.shape, only.cell, None),)))
    captions = [text for _, text in shapes.generate_examples(5000, 32, seed=0, heldout=heldout)]
    assert not forbidden & set(captions)
    assert not any(shapes.is_heldout(text, heldout) for text in captions)
    # Every colour, shape, cell and size still occurs in training.
    seen = [o for text in captions for o in shapes.parse_caption(text)]
    assert {o.colour for o in seen} == set(shapes.COLOURS)
    assert {o.shape for o in seen} == set(shapes.SHAPES)
    assert {o.cell for o in seen} == set(shapes.CELLS)
    assert {o.size for o in seen} == {*shapes.SIZES, None}
    # Each held-out one-object combination stays trainable at its other size.
    for prompt in heldout.one_object:
        (only,) = shapes.parse_caption(prompt)
        other_size = "large" if only.size == "small" else "small"
        other = shapes.caption((ShapeSpec(only.colour, only.shape, only.cell, other_size),))
        assert not shapes.is_heldout(other, heldout)


def test_is_heldout_covers_order_and_dropped_sizes():
    heldout = shapes.HeldOut(
        one_object=["a small red circle in the top left"],
        two_object=["a large blue square on the right and a small green circle in the center"],
    )
    assert shapes.is_heldout("a small red circle in the top left", heldout)
    assert shapes.is_heldout("a red circle in the top left", heldout)
    assert not shapes.is_heldout("a large red circle in the top left", heldout)
    assert shapes.is_heldout(
        "a small green circle in the center and a large blue square on the right", heldout
    )
    assert shapes.is_heldout("a blue square on the right and a green circle in the center", heldout)
    assert not shapes.is_heldout(
        "a small blue square on the right and a small green circle in the center", heldout
    )
    with pytest.raises(ValueError, match="held-out prompt"):
        shapes.HeldOut(one_object=["a red circle in the top left"], two_object=[])


def test_heldout_split_streams_the_heldout_prompts():
    heldout = shapes.heldout_prompts(n_one=2, n_two=1)
    texts = [text for _, text in shapes.generate_examples(6, 32, seed=0, heldout=heldout, split="heldout")]
    assert texts == heldout.prompts * 2
    with pytest.raises(ValueError, match="split"):
        shapes.generate_examples(1, 32, seed=0, heldout=heldout, split="valid")
    with pytest.raises(ValueError, match="HeldOut"):
        shapes.generate_examples(1, 32, seed=0, heldout=None, split="heldout")
    with pytest.raises(ValueError, match="image size"):
        shapes.generate_examples(1, 33, seed=0, heldout=None)


# ---------------------------------------------------------------------------- verifier


def test_verifier_accepts_every_generator_image_at_every_size():
    heldout = shapes.heldout_prompts()
    counts = {32: 100, 48: 100, 64: 60, 128: 30, 256: 20}
    correct = total = 0
    failures = []
    for size_px, count in counts.items():
        for image, text in shapes.generate_examples(count, size_px, seed=size_px, heldout=heldout):
            verdict = verifier.verify(image, text)
            correct += verdict.correct
            total += 1
            if not verdict.correct:
                failures.append((size_px, text, verdict.reason))
    assert total == 310
    assert correct == total, failures[:5]


def degrade(image: Image.Image, blur: float, noise: float, seed: int) -> np.ndarray:
    """A reconstruction-like copy: Gaussian blur, then additive Gaussian noise (0..255 scale)."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    noisy = blurred + np.random.default_rng(seed).normal(0.0, noise, blurred.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("blur", [0.5, 1.0])
def test_verifier_tolerates_blur_and_noise_at_48(blur):
    examples = list(shapes.generate_examples(100, 48, seed=11, heldout=None))
    correct = sum(
        verifier.verify(degrade(image, blur, 6.0, i), text).correct
        for i, (image, text) in enumerate(examples)
    )
    assert correct >= 95


def test_verifier_tolerates_a_tinted_background():
    # A reconstruction may darken everything a little: the backdrop becomes light grey.
    examples = list(shapes.generate_examples(60, 128, seed=5, heldout=None))
    correct = 0
    for image, text in examples:
        softened = np.asarray(image.filter(ImageFilter.GaussianBlur(0.7)), np.float32)
        correct += verifier.verify((softened * 0.9).astype(np.uint8), text).correct
    assert correct == len(examples)


PROMPT = "a small red circle in the center"


@pytest.mark.parametrize("size_px", [32, 48, 128])
@pytest.mark.parametrize(
    ("scene", "reason"),
    [
        ((spec("blue", "circle", (1, 1), "small"),), "object 1: colour blue, expected red"),
        ((spec("red", "square", (1, 1), "small"),), "object 1: shape square, expected circle"),
        ((spec("red", "triangle", (1, 1), "small"),), "object 1: shape triangle, expected circle"),
        ((spec("red", "circle", (0, 1), "small"),), "object 1: cell (0,1), expected (1,1)"),
        ((spec("red", "circle", (1, 1), "large"),), "object 1: size large, expected small"),
        (
            (spec("red", "circle", (1, 1), "small"), spec("green", "square", (2, 2), "small")),
            "expected 1 object, found 2",
        ),
        ((), "expected 1 object, found 0"),
    ],
)
def test_verifier_rejects_wrong_images(size_px, scene, reason):
    if scene:
        image = draw_scene(scene, size_px)
    else:
        image = Image.new("RGB", (size_px, size_px), shapes.BACKGROUND)
    verdict = verifier.verify(image, PROMPT)
    assert not verdict.correct
    assert verdict.reason == reason


def test_verifier_rejects_a_missing_object_and_swapped_colours():
    prompt = "a red circle on the left and a blue square on the right"
    one = draw_scene((spec("red", "circle", (0, 1)),), 64)
    assert verifier.verify(one, prompt).reason == "expected 2 objects, found 1"
    swapped = draw_scene((spec("blue", "circle", (0, 1)), spec("red", "square", (2, 1))), 64)
    assert not verifier.verify(swapped, prompt).correct
    right = draw_scene((spec("blue", "square", (2, 1)), spec("red", "circle", (0, 1))), 64)
    assert verifier.verify(right, prompt).correct


def test_verifier_sizeless_prompt_accepts_both_sizes():
    for size in shapes.SIZES:
        image = draw_scene((spec("yellow", "triangle", (2, 0), size),), 48)
        assert verifier.verify(image, "a yellow triangle in the top right").correct


def test_verifier_counts_off_palette_ink_as_an_object():
    image = draw_scene((spec("red", "circle", (0, 0), "small"),), 64)
    pixels = np.asarray(image).copy()
    pixels[40:54, 40:54] = (0, 200, 200)  # a cyan square: no palette colour
    verdict = verifier.verify(pixels, "a small red circle in the top left")
    assert verdict.reason == "expected 1 object, found 2"
    assert {o.colour for o in verdict.found} == {"red", "other"}


def test_verifier_rejects_a_shape_that_is_none_of_the_three():
    pixels = np.full((64, 64, 3), 255, np.uint8)
    pixels[26:38, 20:44] = shapes.COLOURS["green"]  # a 2:1 rectangle
    (found,) = verifier.detect_objects(pixels)
    assert found.shape == "other"
    assert not verifier.verify(pixels, "a small green square in the center").correct


def test_verifier_merges_fragments_of_one_object():
    image = draw_scene((spec("purple", "square", (1, 1), "large"),), 64)
    pixels = np.asarray(image).copy()
    pixels[:, 32] = 255  # a 1-px white cut through the square
    verdict = verifier.verify(pixels, "a large purple square in the center")
    assert verdict.correct, verdict.reason


def test_verifier_ignores_colour_bleed_where_two_objects_touch():
    # Red beside blue blends to purple along the seam once the image is softened.
    size_px = 32
    side = shapes.SIZES["large"] * size_px
    red = shapes.Placement(spec("red", "square", (1, 1), "large"), cx=0.52 * size_px, cy=16, d=side)
    blue = shapes.Placement(
        spec("blue", "circle", (2, 1), "large"), cx=0.813 * size_px, cy=16, d=side
    )
    soft = (
        shapes.draw([red, blue], size_px)
        .resize((16, 16), Image.BILINEAR)
        .resize((32, 32), Image.BILINEAR)
    )
    verdict = verifier.verify(
        soft, "a large red square in the center and a large blue circle on the right"
    )
    assert verdict.correct, verdict.reason
    assert [o.colour for o in verdict.found] == ["red", "blue"]


def test_verifier_reports_what_it_found():
    image = draw_scene((spec("orange", "triangle", (2, 2), "large"),), 128)
    (found,) = verifier.verify(image, "a large orange triangle in the bottom right").found
    assert (found.colour, found.shape, found.cell, found.size) == (
        "orange",
        "triangle",
        (2, 2),
        "large",
    )
    side = shapes.SIZES["large"] * 128
    assert abs(found.area - side**2 / 2) < 0.02 * side**2
    x0, y0, x1, y1 = found.bbox
    assert abs((x1 - x0) - side) <= 2 and abs((y1 - y0) - side) <= 2


def test_verifier_accepts_arrays_in_both_layouts():
    image = draw_scene((spec("green", "circle", (0, 2), "large"),), 48)
    prompt = "a large green circle in the bottom left"
    hwc = np.asarray(image)
    chw = hwc.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert verifier.verify(hwc, prompt).correct and verifier.verify(chw, prompt).correct
    with pytest.raises(ValueError, match="square"):
        verifier.verify(hwc[:, :40], prompt)
    with pytest.raises(ValueError, match="0, 1"):
        verifier.verify(hwc.astype(np.float32), prompt)
    with pytest.raises(ValueError, match="dtype"):
        verifier.verify(hwc.astype(np.int32), prompt)
    with pytest.raises(ValueError):
        verifier.verify(image, "draw me a cat")


def test_score_splits_one_and_two_object_accuracy():
    one = "a small red circle in the center"
    two = "a red circle on the left and a blue square on the right"
    good_one = draw_scene(shapes.parse_caption(one), 48)
    bad_one = draw_scene((spec("red", "square", (1, 1), "small"),), 48)
    good_two = draw_scene(shapes.parse_caption(two), 48)
    result = verifier.score({one: [good_one, bad_one, good_one, good_one], two: good_two})
    assert result["images"] == 5 and result["correct"] == 4
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["one_object"] == pytest.approx(0.75)
    assert result["two_object"] == pytest.approx(1.0)
    assert result["per_prompt"] == {one: 0.75, two: 1.0}
    assert result["reasons"] == {"object 1: shape square, expected circle": 1}
    assert verifier.score({one: good_one})["two_object"] is None
