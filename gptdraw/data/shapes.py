"""The built-in `shapes` dataset: captions, rendering, the held-out split and the verifier.

This file implements the contract in SHAPES.md (shared/SHAPES.md in the design notes):
coloured circles, squares and triangles on a white S×S canvas, placed on a 3×3 grid,
described by captions such as "a small red circle in the top left and an orange
triangle at the bottom". Because every caption has a checkable meaning, `verify` can
judge any image drawn for a prompt without human eyes.

Read top to bottom:
1. the contract's constants and the scene types (`ShapeSpec`, `Scene`),
2. captions: `caption` and `parse_caption`,
3. rendering: `layout`, `draw`, `render`, `render_prompt`,
4. sampling, the held-out split and the example stream (`generate_examples`),
5. the verifier: `detect_objects`, `verify`, `score`.

Pure numpy + Pillow. Coordinates are continuous pixel units: pixel (x, y) covers
[x, x+1) × [y, y+1), so a shape's geometry is exact at every canvas size.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

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
_COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
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
                spec=ShapeSpec(spec.colour, spec.shape, spec.cell, size),
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
    colours = rng.choice(len(_COLOUR_NAMES), size=count, replace=False)
    cells = rng.choice(len(_CELL_LIST), size=count, replace=False)
    scene = []
    for colour, cell in zip(colours, cells, strict=True):
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = (
            None if rng.random() < drop_size_prob else _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
        )
        scene.append(ShapeSpec(_COLOUR_NAMES[colour], shape, _CELL_LIST[cell], size))
    return tuple(scene)


# A scene compared regardless of object order: the set of (colour, shape, cell, size).
_SceneKey = frozenset[tuple[str, str, tuple[int, int], str | None]]


def _scene_key(scene: Scene) -> _SceneKey:
    return frozenset((spec.colour, spec.shape, spec.cell, spec.size) for spec in scene)


def _keys_covering(scene: Scene) -> set[_SceneKey]:
    """The scene with its objects in any order and any of its size words dropped."""
    variants_per_object = [
        {spec, ShapeSpec(spec.colour, spec.shape, spec.cell, None)} for spec in scene
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


def heldout_prompts(seed: int = 0, n_one: int = 24, n_two: int = 24) -> HeldOut:
    """A deterministic held-out split: `n_one` one-object and `n_two` two-object sized prompts.

    The one-object prompts use distinct (colour, shape, cell) triples, so each keeps its
    other size in training; with at most half of the 162 triples held out, every colour,
    shape, cell and size still occurs in training in other combinations.
    """
    triples = list(itertools.product(_COLOUR_NAMES, SHAPES, _CELL_LIST))
    if not 0 <= n_one <= len(triples) // 2:
        raise ValueError(f"n_one must be in 0..{len(triples) // 2}, got {n_one}")
    if not 0 <= n_two <= 1000:
        raise ValueError(f"n_two must be in 0..1000, got {n_two}")
    rng = np.random.default_rng(seed)
    one_object = []
    for index in rng.permutation(len(triples))[:n_one]:
        colour, shape, cell = triples[index]
        size = _SIZE_NAMES[rng.integers(len(_SIZE_NAMES))]
        one_object.append(caption((ShapeSpec(colour, shape, cell, size),)))
    two_object: list[str] = []
    seen: set[_SceneKey] = set()
    while len(two_object) < n_two:
        scene = sample_scene(rng, two_object_prob=1.0, drop_size_prob=0.0)
        if _scene_key(scene) not in seen:
            seen.add(_scene_key(scene))
            two_object.append(caption(scene))
    return HeldOut(one_object=one_object, two_object=two_object)


def is_heldout(caption_text: str, heldout: HeldOut) -> bool:
    """Whether a caption describes a held-out prompt (in any order, with or without sizes)."""
    return heldout.holds_out(parse_caption(caption_text))


SPLITS: tuple[str, ...] = ("train", "heldout")


def make_example(
    index: int,
    image_size: int,
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
        make_example(index, image_size, seed, heldout, split, two_object_prob, drop_size_prob)
        for index in range(start, start + count)
    )


# --------------------------------------------------------------------------------------
# 5. The verifier
# --------------------------------------------------------------------------------------
# Every pixel is compared with the segment from white to each palette colour, since an
# anti-aliased or blurred edge is a mix of the two: its position along the segment
# (t: 0 = white, 1 = the colour) is how much of the pixel the object covers. Pixels at
# least half covered form connected components per colour; each object's shape is the
# one whose template, placed by the object's centroid and sized by its covered area
# (both unchanged by blur), explains the pixels best; cell and size follow from that fit.
# Thin fringes of mixed colour where objects touch (colour bleed) are not objects.

# Largest RGB distance from a colour's white-to-colour segment still read as that colour.
# The nearest colour wins in any case; this only decides when a pixel is no palette colour
# at all, and leaves room for the colour drift of a VQGAN reconstruction.
MATCH_RADIUS = 70.0
# The lightest channel level at which an image's median colour still counts as its
# (tinted) background; measuring colours from it keeps a grey-ish backdrop out of objects.
MIN_BACKGROUND_LEVEL = 200.0
# Saturated pixels (max - min channel) far from every palette colour are "other" ink, so a
# wrongly coloured object counts as an object; greyish pixels are background.
OTHER_INK_CHROMA = 80.0
# Pixels covered less than this (t) are ignored when measuring an object: noise on white.
COVERAGE_FLOOR = 0.05
# Objects with fewer half-covered pixels than this fraction of S² are specks, not objects;
# the smallest real object (a small triangle) covers 0.0162·S².
MIN_OBJECT_FRACTION = 0.004
# Fragments of one colour closer than this (fraction of S, at least 1 px) are one object.
MERGE_GAP_FRACTION = 0.02
# A fragment at most this thin (fraction of S, at least 2 px) touching a bigger object of
# another colour is that object's colour-bleed fringe; real objects are 0.18·S across.
FRINGE_WIDTH_FRACTION = 0.06
# Blurs (Gaussian sigma, px) tried on each shape template: reconstructions soften edges.
FIT_BLURS = (0.0, 0.5, 1.0, 1.5, 2.0)
# Largest shape-fit error (|pixels − template| / area) still accepted as a shape at all.
MAX_FIT_ERROR = 0.35
# Box sides (fraction of S) read as small / large: split at the midpoint of 0.18 and 0.28,
# and outside the band around both the object is neither size.
SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
SIZE_BAND = (0.12, 0.36)
# Area of each shape relative to its d×d box.
_AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
OTHER = "other"


@dataclass(frozen=True)
class DetectedObject:
    """One object the verifier found in an image."""

    colour: str  # a key of COLOURS, or "other" (saturated ink of no palette colour)
    shape: str  # one of SHAPES, or "other" when no shape fits
    cell: tuple[int, int]  # (column, row) of the box centre
    size: str  # "small", "large", or "other" when the box side fits neither
    area: float  # covered pixels (sum of per-pixel coverage)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the half-covered pixels, end exclusive
    fit_error: float  # |coverage − best template| summed, over the area: ~0.01 clean, ≤ 0.3 blurred


@dataclass(frozen=True)
class Verdict:
    """Whether an image is correct for a prompt, why not, and what was found."""

    correct: bool
    reason: str  # "" when correct; otherwise the problems, separated by "; "
    found: list[DetectedObject]


def _to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """float32 (S, S, 3) in 0..255 from a PIL image, a uint8 (S, S, 3) array, or a float array
    (S, S, 3) or (3, S, S) in [0, 1]."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    elif isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
            array = array.transpose(1, 2, 0)  # (3, S, S) → (S, S, 3)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"image array must be (S, S, 3) or (3, S, S), got shape {image.shape}")
        if np.issubdtype(array.dtype, np.floating):
            if array.size and float(array.max()) > 1.5:
                raise ValueError("a float image array must hold values in [0, 1], not 0..255")
            array = np.clip(array, 0.0, 1.0) * 255.0
        elif array.dtype != np.uint8:
            raise ValueError(
                f"image array must be uint8 or float in [0, 1], got dtype {array.dtype}"
            )
        array = array.astype(np.float32)
    else:
        raise ValueError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    height, width = array.shape[:2]
    if height != width or height < 16:
        raise ValueError(f"image must be square and at least 16 px, got {width}×{height}")
    return array


def _background_colour(pixels: np.ndarray) -> np.ndarray:
    """The image's light background colour: white, or the tint a reconstruction gave it.

    Objects cover at most a sixth of the canvas, so the median pixel is background; a dark
    median (no light background at all) falls back to the contract's white.
    """
    median = np.median(pixels.reshape(-1, 3), axis=0)
    return median if median.min() >= MIN_BACKGROUND_LEVEL else np.asarray(BACKGROUND, np.float32)


def _classify_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: a label (palette index, len(COLOURS) for other ink, -1 for background), and
    the coverage t of each colour, kept only for the nearest one (S, S, C)."""
    white = _background_colour(pixels)
    palette = np.asarray(list(COLOURS.values()), np.float32)
    direction = palette - white  # (C, 3): white → colour
    length2 = (direction**2).sum(axis=1)  # (C,)
    offset = pixels - white  # (S, S, 3)
    dot = offset @ direction.T  # (S, S, C)
    coverage = dot / length2  # (S, S, C): 0 = white, 1 = the colour
    # Distance to the nearest point of each white→colour segment, |offset − t·direction| with
    # t clipped to [0, 1], expanded so that no (S, S, C, 3) array is needed.
    along = np.clip(coverage, 0.0, 1.0)
    squared = (offset**2).sum(axis=-1, keepdims=True) - 2 * along * dot + along**2 * length2
    distance = np.sqrt(np.maximum(squared, 0.0))  # (S, S, C)
    best = distance.argmin(axis=-1)  # (S, S)
    best_distance = np.take_along_axis(distance, best[..., None], axis=-1)[..., 0]
    best_coverage = np.take_along_axis(coverage, best[..., None], axis=-1)[..., 0]
    labels = np.where((best_coverage >= 0.5) & (best_distance <= MATCH_RADIUS), best, -1)
    chroma = pixels.max(axis=-1) - pixels.min(axis=-1)
    # A pixel on a palette segment is that colour's soft edge however saturated, never other ink.
    labels[(best_distance > MATCH_RADIUS) & (chroma >= OTHER_INK_CHROMA)] = len(COLOURS)
    # Coverage only counts toward the colour a pixel is nearest to, so another object's
    # blurred edge never adds to this one.
    coverage = np.where(np.arange(len(COLOURS)) == best[..., None], coverage, 0.0)
    return labels, coverage


@dataclass
class _Component:
    """A connected set of pixels: its label in the label image, pixel count and box."""

    label: int  # 1..n in the label image
    area: int  # pixels
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive


def _connected_components(mask: np.ndarray) -> tuple[np.ndarray, list[_Component]]:
    """8-connected components of a boolean (H, W) mask: label image (0 = none) and components."""
    padded = np.pad(mask, ((0, 0), (1, 1))).astype(np.int8)
    change = np.diff(padded, axis=1)  # (H, W+1): +1 where a run starts, -1 one past its end
    run_rows, run_starts = np.nonzero(change == 1)
    _, run_ends = np.nonzero(change == -1)  # same row-major order as the starts
    parent = list(range(len(run_rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # A run touches one in the next row (diagonals included) when their column spans meet
    # with one pixel of slack; runs are sorted by row then column, so one sweep finds all.
    row_begin = np.searchsorted(run_rows, np.arange(mask.shape[0] + 1))
    for row in range(mask.shape[0] - 1):
        j, below_end = row_begin[row + 1], row_begin[row + 2]
        for i in range(row_begin[row], row_begin[row + 1]):
            while j < below_end and run_ends[j] < run_starts[i]:
                j += 1
            k = j
            while k < below_end and run_starts[k] <= run_ends[i]:
                parent[root(k)] = root(i)
                k += 1
    labels = np.zeros(mask.shape, np.int32)
    components: dict[int, _Component] = {}
    for i in range(len(parent)):
        row, x0, x1 = int(run_rows[i]), int(run_starts[i]), int(run_ends[i])
        r = root(i)
        if r not in components:
            components[r] = _Component(len(components) + 1, 0, (x0, row, x1, row + 1))
        component = components[r]
        labels[row, x0:x1] = component.label
        component.area += x1 - x0
        bx0, by0, bx1, by1 = component.bbox
        component.bbox = (min(bx0, x0), min(by0, row), max(bx1, x1), max(by1, row + 1))
    return labels, list(components.values())


def _gap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    """Empty pixels between two boxes (0 when they touch or overlap)."""
    return max(a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3], 0)


def _group_fragments(components: list[_Component], max_gap: int) -> list[list[_Component]]:
    """Groups of components whose boxes lie within `max_gap` px of each other (chains join)."""
    group = list(range(len(components)))
    for i, j in itertools.combinations(range(len(components)), 2):
        if group[i] != group[j] and _gap(components[i].bbox, components[j].bbox) <= max_gap:
            old, new = group[j], group[i]
            group = [new if g == old else g for g in group]
    return [
        [c for c, g in zip(components, group, strict=True) if g == key]
        for key in dict.fromkeys(group)
    ]


def _gaussian_blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a small (h, w) map, zero outside it (a sum of shifted copies)."""
    if sigma == 0:
        return values
    radius = math.ceil(3 * sigma)
    weights = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    height, width = values.shape
    padded = np.pad(values, radius)  # (h + 2r, w + 2r)
    rows = sum(w * padded[:, k : k + width] for k, w in enumerate(weights))  # (h + 2r, w)
    return sum(w * rows[k : k + height] for k, w in enumerate(weights))  # (h, w)


def _fit_shape(
    coverage: np.ndarray, origin: tuple[int, int]
) -> tuple[str, float, float, float, float]:
    """Best shape for an object's coverage map, a crop of the image at `origin` = (x, y).

    Returns (shape, box centre x, box centre y, side d, fit error) in image pixels. Each
    shape's template is placed by the object's centroid and sized by its covered area (both
    unchanged by blur) and blurred by each of FIT_BLURS in turn, so that a blurred square
    still fits a square best rather than a circle.
    """
    ox, oy = origin
    height, width = coverage.shape
    area = float(coverage.sum())
    ys, xs = np.nonzero(coverage)
    weights = coverage[ys, xs]
    mx = ox + float((weights * (xs + 0.5)).sum() / area)  # centroid, pixel centres at +0.5
    my = oy + float((weights * (ys + 0.5)).sum() / area)
    margin = math.ceil(3 * max(FIT_BLURS))
    best, best_squared = (OTHER, mx, my, math.sqrt(area), math.inf), math.inf
    for shape in SHAPES:
        d = math.sqrt(area / _AREA_FACTOR[shape])
        # A triangle's centroid lies 2/3 down its box; the others' at the box centre.
        cy = my - d / 6 if shape == "triangle" else my
        # Compare over the object's pixels and the template's box together (plus room for
        # blur), so a template that spills past the object is charged for it.
        left, top = mx - ox - d / 2, cy - oy - d / 2  # template box corner, in the crop
        x0 = max(0, min(math.floor(left), int(xs.min())) - margin)
        y0 = max(0, min(math.floor(top), int(ys.min())) - margin)
        x1 = min(width, max(math.ceil(left + d), int(xs.max()) + 1) + margin)
        y1 = min(height, max(math.ceil(top + d), int(ys.max()) + 1) + margin)
        observed = coverage[y0:y1, x0:x1]
        template = shape_coverage(shape, mx - ox, cy - oy, d, (x0, y0, x1, y1))
        for sigma in FIT_BLURS:
            blurred = _gaussian_blur(template, sigma)
            blurred = np.where(blurred >= COVERAGE_FLOOR, blurred, 0.0)  # as the observation
            residual = observed - blurred
            # Least squares picks the shape (noise hurts it least); the L1 mismatch, a fraction
            # of the area, says whether even the best shape fits at all.
            squared = float((residual**2).sum())
            if squared < best_squared:
                best_squared = squared
                best = (shape, mx, cy, d, float(np.abs(residual).sum()) / area)
    if best[4] > MAX_FIT_ERROR:
        best = (OTHER, *best[1:])
    return best


def _size_name(d: float, image_size: int) -> str:
    fraction = d / image_size
    if not SIZE_BAND[0] <= fraction <= SIZE_BAND[1]:
        return OTHER
    return "small" if fraction < SIZE_SPLIT else "large"


def _cell_of(cx: float, cy: float, image_size: int) -> tuple[int, int]:
    def index(v: float) -> int:
        return min(2, max(0, int(v * 3 // image_size)))

    return index(cx), index(cy)


@dataclass(frozen=True)
class _Candidate:
    """Fragments of one colour that may form an object."""

    label: int  # palette index, or len(COLOURS) for other ink
    component_labels: np.ndarray  # (S, S) label image of this colour's components
    members: list[int]  # the labels of the fragments in component_labels
    area: int  # half-covered pixels
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), end exclusive


def _find_candidates(labels: np.ndarray, min_area: float, max_gap: int) -> list[_Candidate]:
    """Connected fragments per colour, grouped when close, without specks."""
    candidates = []
    for label in np.unique(labels[labels >= 0]):
        component_labels, components = _connected_components(labels == label)
        for group in _group_fragments(components, max_gap):
            area = sum(c.area for c in group)
            if area < min_area:
                continue
            bbox = (
                min(c.bbox[0] for c in group),
                min(c.bbox[1] for c in group),
                max(c.bbox[2] for c in group),
                max(c.bbox[3] for c in group),
            )
            candidates.append(
                _Candidate(int(label), component_labels, [c.label for c in group], area, bbox)
            )
    return candidates


def _is_fringe(candidate: _Candidate, others: list[_Candidate], max_gap: int, thin: float) -> bool:
    """Whether a candidate is only the edge of a bigger object of another colour.

    Decoders and codecs bleed colour at edges: off-palette ink around an object, or a thin
    strip of a mixed colour (red beside blue reads as purple) where two objects touch.
    """
    x0, y0, x1, y1 = candidate.bbox
    is_thin = min(x1 - x0, y1 - y0) <= thin
    return any(
        other.label != candidate.label
        and other.area > candidate.area
        and _gap(candidate.bbox, other.bbox) <= max_gap
        and (candidate.label == len(COLOURS) or is_thin)
        for other in others
    )


def detect_objects(image: Image.Image | np.ndarray) -> list[DetectedObject]:
    """Every object in an image (colour, shape, cell, size, area, box), sorted by cell."""
    pixels = _to_rgb_array(image)
    size_px = pixels.shape[0]
    labels, coverage = _classify_pixels(pixels)
    max_gap = max(1, round(MERGE_GAP_FRACTION * size_px))
    candidates = _find_candidates(labels, MIN_OBJECT_FRACTION * size_px**2, max_gap)
    thin = max(2.0, FRINGE_WIDTH_FRACTION * size_px)
    edge = max(2, math.ceil(0.05 * size_px))  # how far an object's soft edge may reach
    found = []
    for candidate in candidates:
        if _is_fringe(candidate, candidates, max_gap, thin):
            continue
        bx0, by0, bx1, by1 = candidate.bbox
        # Work on a crop with room for the soft edge and for any shape template to spill.
        reach = max(bx1 - bx0, by1 - by0) // 2 + math.ceil(3 * max(FIT_BLURS)) + edge
        x0, y0 = max(0, bx0 - reach), max(0, by0 - reach)
        x1, y1 = min(size_px, bx1 + reach), min(size_px, by1 + reach)
        mask = np.isin(candidate.component_labels[y0:y1, x0:x1], candidate.members)
        label = candidate.label
        if label == len(COLOURS):
            colour, object_coverage = OTHER, mask.astype(np.float32)
        else:
            colour = _COLOUR_NAMES[label]
            # The object's pixels plus its soft edge: nearby pixels of its colour that no
            # other fragment of that colour claims.
            near = np.zeros_like(mask)
            near[
                max(0, by0 - edge - y0) : by1 + edge - y0, max(0, bx0 - edge - x0) : bx1 + edge - x0
            ] = True
            claimed_elsewhere = (labels[y0:y1, x0:x1] == label) & ~mask
            object_coverage = np.clip(coverage[y0:y1, x0:x1, label], 0.0, 1.0)
            keep = mask | (near & ~claimed_elsewhere & (object_coverage >= COVERAGE_FLOOR))
            object_coverage = np.where(keep, object_coverage, 0.0).astype(np.float32)
        shape, cx, cy, d, error = _fit_shape(object_coverage, (x0, y0))
        found.append(
            DetectedObject(
                colour=colour,
                shape=shape,
                cell=_cell_of(cx, cy, size_px),
                size=_size_name(d, size_px),
                area=float(object_coverage.sum()),
                bbox=candidate.bbox,
                fit_error=error,
            )
        )
    return sorted(found, key=lambda o: (o.cell[1], o.cell[0], o.bbox))


def _format_cell(cell: tuple[int, int]) -> str:
    return f"({cell[0]},{cell[1]})"


def _pair_objects(
    scene: Scene, found: list[DetectedObject]
) -> list[tuple[ShapeSpec, DetectedObject]]:
    """Pair each named object with a found one: by colour first, then the leftovers in order."""
    pairs: dict[int, DetectedObject] = {}
    unmatched = list(found)
    for i, spec in enumerate(scene):
        match = next((o for o in unmatched if o.colour == spec.colour), None)
        if match is not None:
            pairs[i] = match
            unmatched.remove(match)
    for i in range(len(scene)):
        if i not in pairs:
            # Prefer the leftover in the named cell, so the reason names the wrong colour only.
            match = next((o for o in unmatched if o.cell == scene[i].cell), unmatched[0])
            pairs[i] = match
            unmatched.remove(match)
    return [(scene[i], pairs[i]) for i in range(len(scene))]


def verify(image: Image.Image | np.ndarray, prompt: str) -> Verdict:
    """Is the image correct for the prompt (SHAPES.md): exactly the named objects, each as named?"""
    scene = parse_caption(prompt)
    found = detect_objects(image)
    if len(found) != len(scene):
        plural = "s" if len(scene) > 1 else ""
        return Verdict(False, f"expected {len(scene)} object{plural}, found {len(found)}", found)
    problems = []
    for number, (spec, obj) in enumerate(_pair_objects(scene, found), start=1):
        if obj.colour != spec.colour:
            problems.append(f"object {number}: colour {obj.colour}, expected {spec.colour}")
        if obj.shape != spec.shape:
            problems.append(f"object {number}: shape {obj.shape}, expected {spec.shape}")
        if obj.cell != spec.cell:
            found_cell, named_cell = _format_cell(obj.cell), _format_cell(spec.cell)
            problems.append(f"object {number}: cell {found_cell}, expected {named_cell}")
        if spec.size is not None and obj.size != spec.size:
            problems.append(f"object {number}: size {obj.size}, expected {spec.size}")
        elif spec.size is None and obj.size == OTHER:
            problems.append(f"object {number}: size is neither small nor large")
    return Verdict(not problems, "; ".join(problems), found)


ImageLike = Image.Image | np.ndarray


def score(images_by_prompt: Mapping[str, ImageLike | Sequence[ImageLike]]) -> dict:
    """Verify images drawn for prompts; accuracy overall, on one-object and on two-object prompts.

    Returns {"accuracy", "one_object", "two_object"} (None where there were no images of that
    kind), the counts {"images", "one_object_images", "two_object_images", "correct"},
    "per_prompt" (prompt → accuracy) and "reasons" (failure reason → count).
    """
    # Check every prompt first, so a typo fails before any slow work.
    scenes = {prompt: parse_caption(prompt) for prompt in images_by_prompt}
    correct = {1: 0, 2: 0}
    total = {1: 0, 2: 0}
    per_prompt: dict[str, float | None] = {}
    reasons: dict[str, int] = {}
    for prompt, images in images_by_prompt.items():
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        kind = len(scenes[prompt])
        right = 0
        for image in images:
            verdict = verify(image, prompt)
            right += verdict.correct
            if not verdict.correct:
                reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1
        correct[kind] += right
        total[kind] += len(images)
        per_prompt[prompt] = right / len(images) if images else None

    def ratio(right: int, count: int) -> float | None:
        return right / count if count else None

    return {
        "accuracy": ratio(correct[1] + correct[2], total[1] + total[2]),
        "one_object": ratio(correct[1], total[1]),
        "two_object": ratio(correct[2], total[2]),
        "images": total[1] + total[2],
        "one_object_images": total[1],
        "two_object_images": total[2],
        "correct": correct[1] + correct[2],
        "per_prompt": per_prompt,
        "reasons": dict(sorted(reasons.items(), key=lambda item: -item[1])),
    }
