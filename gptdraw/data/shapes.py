"""The built-in `shapes` dataset: captions, rendering and the held-out split.

This file implements the contract in SHAPES.md (shared/SHAPES.md in the design notes):
coloured circles, squares and triangles on a white S×S canvas, placed on a 3×3 grid,
described by captions such as "a small red circle in the top left and an orange
triangle at the bottom". Because every caption has a checkable meaning, the verifier
(gptdraw.eval.verifier) can judge any image drawn for a prompt without human eyes.

Read top to bottom:
1. the contract's constants and the scene types (`ShapeSpec`, `Scene`),
2. captions: `caption` and `parse_caption`,
3. rendering: `layout`, `draw`, `render`, `render_prompt`,
4. sampling, the held-out split and the example stream (`generate_examples`).

Pure numpy + Pillow. Coordinates are continuous pixel units: pixel (x, y) covers
[x, x+1) × [y, y+1), so a shape's geometry is exact at every canvas size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

# --------------------------------------------------------------------------------------
# 1. The contract
# --------------------------------------------------------------------------------------

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Object size d as a fraction of the canvas side S.
SIZES: dict[str, float] = {"small": 0.18, "large": 0.28}
# (column, row) of the 3×3 grid → the phrase a caption uses for it.
CELLS: dict[tuple[int, int], str] = {
    (0, 0): "in the top left",
    (1, 0): "at the top",
    (2, 0): "in the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "in the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "in the bottom right",
}
# Largest random offset of an object's centre from its cell centre, per axis, as a fraction of S.
JITTER = 0.02
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE, IMAGE_SIZE_MULTIPLE = 32, 256, 16

# Sub-samples per pixel and axis when computing how much of a pixel a shape covers:
# 4×4 gives smooth edges, while fully covered pixels keep the exact palette colour.
SUPERSAMPLE = 4

_PHRASE_TO_CELL: dict[str, tuple[int, int]] = {phrase: cell for cell, phrase in CELLS.items()}
_SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
"""The colour names in palette order: a colour's index is its class label (gptdraw.eval.verifier)."""
_CELL_LIST: tuple[tuple[int, int], ...] = tuple(CELLS)
_OBJECT_SEPARATOR = " and "


@dataclass(frozen=True)
class ShapeSpec:
    """One object of a scene, as a caption names it."""

    colour: str  # a key of COLOURS
    shape: str  # one of SHAPES
    cell: tuple[int, int]  # (column, row) of the 3×3 grid, each 0..2
    size: str | None  # a key of SIZES, or None: the caption names no size (either size fits)

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(
                f"unknown colour {self.colour!r}; expected one of {', '.join(COLOURS)}"
            )
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {', '.join(SHAPES)}")
        if self.size is not None and self.size not in SIZES:
            raise ValueError(
                f"unknown size {self.size!r}; expected one of {', '.join(SIZES)} or None"
            )
        try:
            cell = (int(self.cell[0]), int(self.cell[1]))
        except (TypeError, IndexError, ValueError):
            raise ValueError(f"cell must be a (column, row) pair, got {self.cell!r}") from None
        if len(self.cell) != 2 or cell not in CELLS:
            raise ValueError(f"cell {self.cell!r} is not a (column, row) pair with each in 0..2")
        object.__setattr__(self, "cell", cell)  # normalise lists / numpy ints to a tuple of ints


# One or two objects; two objects sit in different cells and have different colours.
Scene = tuple[ShapeSpec, ...]


def check_scene(scene: Sequence[ShapeSpec]) -> Scene:
    """`scene` as a tuple, checked against the contract; ValueError names the broken rule."""
    scene = tuple(scene)
    if not 1 <= len(scene) <= 2:
        raise ValueError(f"a scene has 1 or 2 objects, got {len(scene)}")
    for spec in scene:
        if not isinstance(spec, ShapeSpec):
            raise ValueError(f"scene items must be ShapeSpec, got {type(spec).__name__}")
    if len(scene) == 2:
        first, second = scene
        if first.cell == second.cell:
            raise ValueError(
                f"two objects in the same cell {first.cell}; they must sit in different cells"
            )
        if first.colour == second.colour:
            raise ValueError(f"two objects of the same colour {first.colour!r}; they must differ")
    return scene


# --------------------------------------------------------------------------------------
# 2. Captions
# --------------------------------------------------------------------------------------


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _object_caption(spec: ShapeSpec) -> str:
    words = ([spec.size] if spec.size is not None else []) + [spec.colour, spec.shape]
    return " ".join([_article(words[0]), *words, CELLS[spec.cell]])


def caption(scene: Sequence[ShapeSpec]) -> str:
    """The caption of `scene` in the SHAPES.md grammar, e.g. "an orange triangle at the bottom"."""
    return _OBJECT_SEPARATOR.join(_object_caption(spec) for spec in check_scene(scene))


def _parse_object(part: str, text: str) -> ShapeSpec:
    where = f"in caption {text!r}, object {part!r}"
    words = part.split(" ")
    if len(words) < 4:
        raise ValueError(f"{where}: too short; expected 'a [size] <colour> <shape> <position>'")
    article, rest = words[0], words[1:]
    if article not in ("a", "an"):
        raise ValueError(f"{where}: starts with {article!r}, expected 'a' or 'an'")
    if article != _article(rest[0]):
        raise ValueError(f"{where}: use {_article(rest[0])!r} before {rest[0]!r}, not {article!r}")
    size = rest[0] if rest[0] in SIZES else None
    if size is not None:
        rest = rest[1:]
    if len(rest) < 3:
        raise ValueError(f"{where}: too short; expected 'a [size] <colour> <shape> <position>'")
    colour, shape, phrase = rest[0], rest[1], " ".join(rest[2:])
    if colour not in COLOURS:
        raise ValueError(
            f"{where}: unknown colour {colour!r}; expected one of {', '.join(COLOURS)}"
        )
    if shape not in SHAPES:
        raise ValueError(f"{where}: unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if phrase not in _PHRASE_TO_CELL:
        known = ", ".join(map(repr, CELLS.values()))
        raise ValueError(f"{where}: unknown position {phrase!r}; expected one of {known}")
    return ShapeSpec(colour=colour, shape=shape, cell=_PHRASE_TO_CELL[phrase], size=size)


def parse_caption(text: str) -> Scene:
    """Parse a caption in the SHAPES.md grammar (any case, any spacing); else a clear ValueError."""
    if not isinstance(text, str):
        raise ValueError(f"a caption must be a string, got {type(text).__name__}")
    normal = " ".join(text.lower().split())
    if not normal:
        raise ValueError("empty caption")
    parts = normal.split(_OBJECT_SEPARATOR)
    if len(parts) > 2:
        raise ValueError(f"caption {text!r} names {len(parts)} objects; the grammar allows 1 or 2")
    scene = tuple(_parse_object(part, text) for part in parts)
    try:
        return check_scene(scene)
    except ValueError as error:
        raise ValueError(f"caption {text!r}: {error}") from None


# --------------------------------------------------------------------------------------
# 3. Rendering
# --------------------------------------------------------------------------------------


def check_image_size(image_size: int) -> int:
    """`image_size` if the contract allows it (32..256, a multiple of 16), else ValueError."""
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
        or image_size % IMAGE_SIZE_MULTIPLE
    ):
        raise ValueError(
            f"image size {image_size!r} is not allowed: use {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, "
            f"a multiple of {IMAGE_SIZE_MULTIPLE}"
        )
    return int(image_size)


@dataclass(frozen=True)
class Placement:
    """Where one object is drawn: its spec with a concrete size, its box centre and side (px)."""

    spec: ShapeSpec  # spec.size is never None here
    cx: float  # box centre, x
    cy: float  # box centre, y
    d: float  # box side (circle diameter, square side, triangle base and height)


def _cell_centre(index: int, image_size: int) -> float:
    return (2 * index + 1) / 6 * image_size


def layout(
    scene: Sequence[ShapeSpec], image_size: int, rng: np.random.Generator
) -> list[Placement]:
    """Place each object: a random size where the spec names none, then a ±JITTER·S offset."""
    scene, size_px = check_scene(scene), check_image_size(image_size)
    placements = []
    for spec in scene:
        size = spec.size if spec.size is not None else _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
        jitter_x, jitter_y = rng.uniform(-JITTER, JITTER, size=2) * size_px
        placements.append(
            Placement(
                spec=replace(spec, size=size),
                cx=_cell_centre(spec.cell[0], size_px) + jitter_x,
                cy=_cell_centre(spec.cell[1], size_px) + jitter_y,
                d=SIZES[size] * size_px,
            )
        )
    return placements


def shape_coverage(
    shape: str, cx: float, cy: float, d: float, window: tuple[int, int, int, int]
) -> np.ndarray:
    """How much of each pixel of `window` = (x0, y0, x1, y1) the shape covers: (y1-y0, x1-x0)."""
    x0, y0, x1, y1 = window
    offsets = (np.arange(SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets).reshape(1, -1)  # (1, w*k)
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets).reshape(-1, 1)  # (h*k, 1)
    half = d / 2
    if shape == "circle":
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    elif shape == "square":
        inside = (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    elif shape == "triangle":
        # Apex at the top centre of the box: the half-width grows by 1/2 per unit of depth.
        depth = ys - (cy - half)
        inside = (depth >= 0) & (depth <= d) & (np.abs(xs - cx) <= depth / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    height, width = y1 - y0, x1 - x0
    inside = inside.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE)  # (h, k, w, k)
    return inside.mean(axis=(1, 3), dtype=np.float32)


def _box_window(cx: float, cy: float, d: float, image_size: int) -> tuple[int, int, int, int]:
    half = d / 2
    return (
        max(0, math.floor(cx - half)),
        max(0, math.floor(cy - half)),
        min(image_size, math.ceil(cx + half)),
        min(image_size, math.ceil(cy + half)),
    )


def draw(placements: Sequence[Placement], image_size: int) -> Image.Image:
    """Draw placed objects, flat colour with anti-aliased edges, on a white S×S RGB canvas."""
    size_px = check_image_size(image_size)
    canvas = np.full((size_px, size_px, 3), BACKGROUND, dtype=np.float32)
    for placement in placements:
        x0, y0, x1, y1 = window = _box_window(placement.cx, placement.cy, placement.d, size_px)
        spec = placement.spec
        alpha = shape_coverage(spec.shape, placement.cx, placement.cy, placement.d, window)
        alpha = alpha[..., None]  # (h, w, 1)
        region = canvas[y0:y1, x0:x1]  # (h, w, 3), a view: blending writes into the canvas
        region[:] = region * (1 - alpha) + np.asarray(COLOURS[spec.colour], np.float32) * alpha
    return Image.fromarray(np.rint(canvas).astype(np.uint8), "RGB")


def render(scene: Sequence[ShapeSpec], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw `scene` on an S×S canvas; random jitter, and a random size where the spec names none."""
    return draw(layout(scene, image_size, rng), image_size)


def render_prompt(prompt: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw any prompt in the grammar (e.g. a reference image for evaluation)."""
    return render(parse_caption(prompt), image_size, rng)


# --------------------------------------------------------------------------------------
# 4. Sampling, the held-out split, the example stream
# --------------------------------------------------------------------------------------


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def sample_scene(
    rng: np.random.Generator, two_object_prob: float = 0.5, drop_size_prob: float = 0.2
) -> Scene:
    """A random scene: 2 objects with `two_object_prob`, each without size with `drop_size_prob`."""
    _check_probability("two_object_prob", two_object_prob)
    _check_probability("drop_size_prob", drop_size_prob)
    count = 2 if rng.random() < two_object_prob else 1
    colours = rng.choice(len(COLOUR_NAMES), size=count, replace=False)
    cells = rng.choice(len(_CELL_LIST), size=count, replace=False)
    scene = []
    for colour, cell in zip(colours, cells, strict=True):
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = (
            None if rng.random() < drop_size_prob else _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
        )
        scene.append(ShapeSpec(colour=COLOUR_NAMES[colour], shape=shape, cell=_CELL_LIST[cell], size=size))
    return tuple(scene)


# A scene compared regardless of object order: the set of (colour, shape, cell, size).
_SceneKey = frozenset[tuple[str, str, tuple[int, int], str | None]]


def _scene_key(scene: Scene) -> _SceneKey:
    return frozenset((spec.colour, spec.shape, spec.cell, spec.size) for spec in scene)


def _keys_covering(scene: Scene) -> set[_SceneKey]:
    """The scene with its objects in any order and any of its size words dropped."""
    variants_per_object = [
        {spec, replace(spec, size=None)} for spec in scene
    ]
    return {_scene_key(variant) for variant in itertools.product(*variants_per_object)}


@dataclass
class HeldOut:
    """Prompts kept out of training, to measure how well the model composes unseen combinations.

    A training caption is held out when it describes a held-out scene: the same objects in
    either order, with or without their size words (so the size-less form of each one-object
    prompt is held out too).
    """

    # Read once, at construction: build a new HeldOut rather than editing these lists.
    one_object: list[str]  # one-object captions, each naming a size
    two_object: list[str]  # two-object captions, each naming both sizes
    _keys: set[_SceneKey] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._keys = set()
        for expected, prompts in ((1, self.one_object), (2, self.two_object)):
            for prompt in prompts:
                scene = parse_caption(prompt)
                if len(scene) != expected or any(spec.size is None for spec in scene):
                    raise ValueError(
                        f"held-out prompt {prompt!r} must name {expected} object(s), "
                        "each with a size"
                    )
                self._keys |= _keys_covering(scene)

    @property
    def prompts(self) -> list[str]:
        """All held-out prompts: the one-object ones, then the two-object ones."""
        return self.one_object + self.two_object

    def holds_out(self, scene: Sequence[ShapeSpec]) -> bool:
        """Whether a training caption for `scene` would leak a held-out prompt."""
        return _scene_key(check_scene(scene)) in self._keys


def heldout_prompts(seed: int = 0, n_one: int = 24, n_two: int = 24, avoid: HeldOut | None = None) -> HeldOut:
    """A deterministic held-out split: `n_one` one-object and `n_two` two-object sized prompts.

    The one-object prompts use distinct (colour, shape, cell) triples, so each keeps its
    other size in training; with at most half of the 162 triples held out, every colour,
    shape, cell and size still occurs in training in other combinations. With `avoid`, no
    prompt of it and none of its one-object triples is chosen again.
    """
    triples = list(itertools.product(COLOUR_NAMES, SHAPES, _CELL_LIST))
    taken = set() if avoid is None else {
        (spec.colour, spec.shape, spec.cell) for prompt in avoid.one_object for spec in parse_caption(prompt)
    }
    if not 0 <= n_one <= len(triples) // 2 - len(taken):
        raise ValueError(f"n_one must be in 0..{len(triples) // 2 - len(taken)}, got {n_one}")
    if not 0 <= n_two <= 1000:
        raise ValueError(f"n_two must be in 0..1000, got {n_two}")
    rng = np.random.default_rng(seed)
    one_object = []
    for index in rng.permutation(len(triples)):
        colour, shape, cell = triples[index]
        if len(one_object) == n_one:
            break
        if (colour, shape, cell) in taken:
            continue
        size = _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
        one_object.append(caption((ShapeSpec(colour=colour, shape=shape, cell=cell, size=size),)))
    two_object: list[str] = []
    seen: set[_SceneKey] = set() if avoid is None else set(avoid._keys)
    while len(two_object) < n_two:
        scene = sample_scene(rng, two_object_prob=1.0, drop_size_prob=0.0)
        if _scene_key(scene) not in seen:
            seen.add(_scene_key(scene))
            two_object.append(caption(scene))
    return HeldOut(one_object=one_object, two_object=two_object)


def evaluation_sets(seed: int = 0) -> tuple[HeldOut, HeldOut]:
    """The two held-out sets of the built-in data: sampling and recipes are tuned on the first,
    figures are reported on the second, and training leaves out both. They share no prompt and
    no one-object (colour, shape, cell)."""
    tuning = heldout_prompts(seed)
    return tuning, heldout_prompts(seed + 1, avoid=tuning)


def heldout_union(sets: Sequence[HeldOut]) -> HeldOut:
    """One HeldOut that leaves out every prompt of `sets` (duplicates kept once)."""
    one = list(dict.fromkeys(prompt for held in sets for prompt in held.one_object))
    two = list(dict.fromkeys(prompt for held in sets for prompt in held.two_object))
    return HeldOut(one_object=one, two_object=two)


def without_sizes(prompt: str) -> str:
    """The prompt with its size words dropped ("a red circle at the top"), which means either size."""
    return caption(tuple(replace(spec, size=None) for spec in parse_caption(prompt)))


def is_heldout(caption_text: str, heldout: HeldOut) -> bool:
    """Whether a caption describes a held-out prompt (in any order, with or without sizes)."""
    return heldout.holds_out(parse_caption(caption_text))


SPLITS: tuple[str, ...] = ("train", "heldout")


def make_example(
    index: int,
    image_size: int,
    *,
    seed: int,
    heldout: HeldOut | None,
    split: str = "train",
    two_object_prob: float = 0.5,
    drop_size_prob: float = 0.2,
) -> tuple[Image.Image, str]:
    """Example `index` of a stream: it depends only on (seed, index), so a run can resume anywhere.

    split="train": a random scene whose caption is not held out (re-sampled until it is not).
    split="heldout": the held-out prompts in turn (index modulo their count), each freshly drawn.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    if split == "heldout":
        if heldout is None or not heldout.prompts:
            raise ValueError("split 'heldout' needs a HeldOut with at least one prompt")
        prompt = heldout.prompts[index % len(heldout.prompts)]
        return render_prompt(prompt, image_size, rng), prompt
    scene = sample_scene(rng, two_object_prob, drop_size_prob)
    while heldout is not None and heldout.holds_out(scene):
        scene = sample_scene(rng, two_object_prob, drop_size_prob)
    return render(scene, image_size, rng), caption(scene)


def generate_examples(
    count: int,
    image_size: int,
    *,
    seed: int,
    heldout: HeldOut | None,
    split: str = "train",
    start: int = 0,
    two_object_prob: float = 0.5,
    drop_size_prob: float = 0.2,
) -> Iterator[tuple[Image.Image, str]]:
    """Examples `start` .. `start + count - 1` as (image, caption); same arguments, same output.

    Arguments are checked here, before the first example is drawn.
    """
    check_image_size(image_size)
    _check_probability("two_object_prob", two_object_prob)
    _check_probability("drop_size_prob", drop_size_prob)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if split == "heldout" and (heldout is None or not heldout.prompts):
        raise ValueError("split 'heldout' needs a HeldOut with at least one prompt")
    if count < 0 or start < 0 or seed < 0:
        raise ValueError(
            f"count, start and seed must be non-negative, got {count}, {start}, {seed}"
        )
    return (
        make_example(index, image_size, seed=seed, heldout=heldout, split=split, two_object_prob=two_object_prob,
                     drop_size_prob=drop_size_prob)
        for index in range(start, start + count)
    )
