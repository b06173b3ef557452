"""The shapes verifier: does a drawn image show what its shapes caption says?

Every caption of the built-in shapes data (gptdraw.data.shapes, shared/SHAPES.md) has a
checkable meaning, so `verify` judges any image drawn for a prompt without human eyes:
`detect_objects` finds the coloured objects, and each is matched to the caption's objects by
colour, shape, cell and size. `score` gives a set of drawings' accuracy.

Pure numpy + Pillow.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gptdraw.data.shapes import (
    BACKGROUND, COLOUR_NAMES, COLOURS, SHAPES, SIZES, Scene, ShapeSpec, parse_caption, shape_coverage,
)


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
            colour = COLOUR_NAMES[label]
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
