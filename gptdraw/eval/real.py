"""Quality on real pictures: a model's drawings of held-out captions against the real pictures.

    gptdraw evaluate --model MODEL --data DATA --inception FILE

DATA is a folder of image–caption pairs with train/ and heldout/ folder sources (as `gptdraw
data emoji` writes). Each held-out caption is drawn; the figures are

- FID and KID between the drawings and the real held-out pictures (Inception features), beside
  the same figures for two baselines: random codes decoded (the ceiling: a model that learnt
  nothing) and the image tokenizer's reconstructions of the real pictures (the floor: the best a
  drawing through this tokenizer can be); `fid_gap_closed` says how far from one to the other
  the drawings got;
- retrieval accuracy: the share of drawings whose feature lies nearest (top 1, and among the
  nearest 5) the real pictures of their own subject, caption fidelity without CLIP, for held-out
  captions and for captions the model trained on; the subject of an emoji caption is its name
  without a skin tone, of any other caption the caption itself;
- tone accuracy, for captions that name a skin tone (held out, and as "training_tone" the held-out
  subjects' training captions that name one, `training_prompts` of them): the share of drawings
  whose skin is the named tone, read from pixels against each tone's colour as the training
  pictures of the named set show it; beside it, the same reader on the real held-out pictures and
  on the tokenizer's reconstructions of them (what the reader and the tokenizer allow);
- style accuracy, for captions that name an emoji set (pooled sets): the share of drawings that a
  style probe (logistic regression on Inception features of the training pictures, as the image
  tokenizer reconstructs them) puts in the named set;
- with `gptdraw data emoji`'s data, retrieval, tone and style again for each kind of held-out
  caption apart ("by_kind"): "tone", a (subject, skin tone) pair no training picture shows, and
  "style", a subject drawn in the other sets only.

It writes DIR/evaluation.json and DIR/pairs.png (each real held-out picture beside its drawings).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from gptdraw.data.emoji import CREDITS, SKIN_TONES, split_tone
from gptdraw.eval.inception import (
    LinearProbe, frechet_distance, inception_features, interval, kernel_distance, retrieval_ranks, self_retrieval_ranks,
)
from gptdraw.images import make_grid

TONE_DISTANCE = 24.0
"""A pixel shows a tone when it lies within this RGB distance of the tone's colour."""


def read_pairs(folder: Path, limit: int = 0) -> list[tuple[Image.Image, str]]:
    """(picture, caption) of a folder source's NAME.png + NAME.txt, sorted by name."""
    files = sorted(path for path in folder.glob("*.png") if path.with_suffix(".txt").is_file())
    if limit:
        files = files[:limit]
    if not files:
        raise FileNotFoundError(f"no pictures with .txt captions in {folder}")
    return [(Image.open(path).convert("RGB"), path.with_suffix(".txt").read_text().strip()) for path in files]


def spread(items: list, count: int) -> list:
    """At most `count` items taken evenly from the list."""
    return items[:: max(1, len(items) // max(1, count))][:count]


def caption_body(caption: str) -> str:
    """The caption without the set a pooled set's caption names last: "waving hand, light skin tone"."""
    return caption.rsplit(", ", 1)[0] if style_of(caption) else caption


def subject_of(caption: str) -> str:
    return split_tone(caption_body(caption))[0]


def style_of(caption: str) -> str | None:
    """The emoji set a pooled set's caption names last ("red apple, openmoji"), or None."""
    parts = caption.rsplit(", ", 1)
    return parts[1] if len(parts) == 2 and parts[1] in CREDITS else None


def tone_of_caption(caption: str) -> str | None:
    return split_tone(caption_body(caption))[1]


def tone_colours(pairs: list[tuple[Image.Image, str]]) -> dict[str, np.ndarray]:
    """Each skin tone's colour, as the training pictures show it: the commonest colour of pictures
    of that tone among colours rare in pictures of the other tones."""
    counts: dict[str, Counter] = {tone: Counter() for tone in SKIN_TONES.values()}
    for image, caption in pairs:
        tone = tone_of_caption(caption)
        if tone is not None:
            pixels = np.asarray(image).reshape(-1, 3) // 8 * 8 + 4  # coarse bins, robust to resizing
            counts[tone].update(map(tuple, pixels[(pixels < 240).any(axis=1)]))
    colours = {}
    for tone, counter in counts.items():
        others = sum((c for t, c in counts.items() if t != tone), Counter())
        total_others = max(1, sum(others.values()))
        total = max(1, sum(counter.values()))
        score = {colour: n / total - others[colour] / total_others for colour, n in counter.items()}
        if score:
            colours[tone] = np.asarray(max(score, key=score.get), np.float64)
    return colours


def tone_palettes(pairs: list[tuple[Image.Image, str]]) -> dict[str | None, dict[str, np.ndarray]]:
    """tone_colours of each pooled set's own training pictures (key: the set), and of all of them
    (key None: for captions that name no set, or a set that does not draw every tone). Each set
    paints skin its own way: read with one palette for all, half of the real held-out pictures of
    five pooled sets are given the wrong tone (a Noto "medium" is a Fluent "medium-light")."""
    palettes = {None: tone_colours(pairs)}
    for style in sorted({style_of(caption) for _, caption in pairs} - {None}):
        colours = tone_colours([pair for pair in pairs if style_of(pair[1]) == style])
        if set(colours) == set(palettes[None]):
            palettes[style] = colours
    return palettes


def read_caption_tone(image: Image.Image, caption: str, palettes: dict[str | None, dict[str, np.ndarray]]) -> str | None:
    """The tone an image shows, read with the palette of the set its caption names."""
    return read_tone(image, palettes.get(style_of(caption), palettes[None]))


def tone_figures(drawings: list[tuple[Image.Image, str]], palettes: dict[str | None, dict[str, np.ndarray]],
                 prefix: str = "tone") -> dict:
    """PREFIX_accuracy (with its 95% interval, resampling whole captions) and PREFIX_drawings: how
    often the drawings of captions that name a skin tone show that tone ({} when none names one)."""
    toned = [(image, caption) for image, caption in drawings if tone_of_caption(caption) is not None]
    if not toned:
        return {}
    read = np.array([read_caption_tone(image, caption, palettes) == tone_of_caption(caption) for image, caption in toned])
    return {f"{prefix}_accuracy": float(read.mean()),
            f"{prefix}_accuracy_interval": list(interval(read, [caption for _, caption in toned])),
            f"{prefix}_drawings": len(toned)}


def read_tone(image: Image.Image, colours: dict[str, np.ndarray]) -> str | None:
    """The tone whose colour covers most pixels of the image (None when none shows)."""
    pixels = np.asarray(image.convert("RGB"), np.float64).reshape(-1, 3)
    covered = {tone: int((np.linalg.norm(pixels - colour, axis=1) < TONE_DISTANCE).sum()) for tone, colour in colours.items()}
    best = max(covered, key=covered.get) if covered else None
    return best if best is not None and covered[best] > 0 else None


def reconstruct(pipe, pictures: list[Image.Image]) -> list[Image.Image]:
    """The pictures through the model's image tokenizer (encoded, decoded), at the drawings' size."""
    from gptdraw.images import pil_to_tensor

    size = pipe.layout.grid[0] * pipe.image_tokenizer.downsample_factor
    out = []
    for start in range(0, len(pictures), 32):
        codes = pipe.image_tokenizer.encode(pil_to_tensor(pictures[start : start + 32], size).to(pipe.device))  # (B, h, w)
        out += pipe.decode_partial(codes.reshape(codes.shape[0], -1))
    return out


def baselines(pipe, reconstructions: list[Image.Image], count: int, seed: int) -> dict[str, list[Image.Image]]:
    """The pictures a drawing's FID is placed between: `count` random code grids decoded (what a
    model that learnt nothing draws) and the image tokenizer's reconstructions of the real pictures
    (the best any drawing through this tokenizer can be)."""
    generator = torch.Generator().manual_seed(seed)
    random_codes = torch.randint(0, pipe.layout.codebook_size, (count, pipe.layout.image_len), generator=generator)
    random_pictures = [image for start in range(0, count, 32) for image in pipe.decode_partial(random_codes[start : start + 32])]
    return {"random_codes": random_pictures, "reconstructions": reconstructions}


def gap_closed(drawn: float, ceiling: float, floor: float) -> float | None:
    """How much of the distance from the ceiling (random codes) to the floor (reconstructions) the
    drawings cover: 1 at the floor, 0 at the ceiling (None when the two baselines coincide)."""
    return (ceiling - drawn) / (ceiling - floor) if ceiling != floor else None


def retrieval_figures(ranks: np.ndarray, captions: list[str], prefix: str) -> dict:
    """PREFIX_top1 / PREFIX_top5: the share of ranks within 1 / 5, each with its 95% interval
    (PREFIX_top1_interval), resampling whole captions (a caption's drawings are not independent)."""
    figures = {}
    for top in (1, 5):
        hits = ranks <= top
        figures[f"{prefix}_top{top}"] = float(hits.mean()) if len(hits) else None
        figures[f"{prefix}_top{top}_interval"] = list(interval(hits, captions[: len(hits)]))
    return figures


DISTINCT = 0.02
"""Two drawings are distinct when their pixels differ by more than this on average (in [0, 1]):
a memorised model draws one picture, give or take a few codes."""


def variety(drawn: dict[str, list[Image.Image]]) -> float | None:
    """The share of captions with at least two distinct drawings (DISTINCT) among theirs."""
    several = []
    for images in drawn.values():
        if len(images) < 2:
            continue
        pixels = [np.asarray(image, np.float32) / 255 for image in images]
        several.append(any(np.abs(a - b).mean() > DISTINCT for i, a in enumerate(pixels) for b in pixels[i + 1:]))
    return float(np.mean(several)) if several else None


def heldout_kinds(data: Path) -> dict[str, str]:
    """Which unseen combination each held-out caption asks for: "tone", a (subject, skin tone) pair
    drawn in no training picture, or "style", a subject that training drew in the other sets only.
    From DATA/emoji.json, where `gptdraw data emoji` lists the pairs it held out ({} without it:
    other data has no such kinds)."""
    summary_path = data / "emoji.json"
    if not summary_path.is_file():
        return {}
    try:
        summary = json.loads(summary_path.read_text())
        held_tones = {(subject, tone) for subject, tone in summary["heldout_pairs"]}
        prompts = list(summary["heldout_prompts"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{summary_path} is not the summary `gptdraw data emoji` writes ({error!r})") from None
    return {caption: "tone" if (subject_of(caption), tone_of_caption(caption)) in held_tones else "style"
            for caption in prompts}


HALVES = ("all", "tuning", "report")


def heldout_half(pairs: list[tuple[Image.Image, str]], half: str) -> list[tuple[Image.Image, str]]:
    """The held-out pairs of one half: captions in sorted order alternate between the tuning half
    (choose sampling settings by it) and the report half (quote it); "all" keeps every pair."""
    if half not in HALVES:
        raise ValueError(f"unknown half {half!r}; choose one of {', '.join(HALVES)}")
    if half == "all":
        return pairs
    captions = sorted({caption for _, caption in pairs})
    kept = set(captions[HALVES.index(half) - 1 :: 2])
    return [pair for pair in pairs if pair[1] in kept]


def which_pictures(heldout: list[tuple[Image.Image, str]]) -> tuple[int, str | None]:
    """A memo key part that tells one half's held-out pictures from the other's."""
    return len(heldout), heldout[0][1] if heldout else None


def remembered(memo: dict | None, key, compute):
    """compute(), or what it gave for `key` in `memo` the last time (memo None: always computed)."""
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def inception_figures(pipe, inception, heldout, real_heldout: list[Image.Image], reconstructions: list[Image.Image],
                      reference, drawings, learnt_drawings, seed: int, memo: dict | None = None,
                      kinds: dict[str, str] | None = None) -> dict:
    """FID and KID with their baselines, retrieval, and with pooled sets style accuracy (see the
    module doc). heldout / reference: (picture, caption) pairs, real_heldout the held-out pictures
    at the drawings' size, reconstructions the same through the image tokenizer; drawings /
    learnt_drawings: (picture, caption) of held-out and training captions. memo: features of the
    real pictures and the baselines kept from an earlier call with the same image tokenizer and
    pictures (a sampling sweep draws again, the real pictures stay).
    kinds: each held-out caption's kind (heldout_kinds): retrieval and style are also given for
    each kind apart, under "by_kind"."""
    kinds = kinds or {}
    size = real_heldout[0].width
    halfway = which_pictures(heldout)
    # The reference pictures are the same for both halves (all held-out subjects' and others'): kept apart.
    heldout_features = remembered(memo, ("heldout", halfway), lambda: inception_features(inception, real_heldout))
    reference_features = remembered(memo, ("reference", len(reference), size), lambda: inception_features(
        inception, [image.resize((size, size), Image.LANCZOS) for image, _ in reference]))
    real_features = np.concatenate([heldout_features, reference_features])  # (held-out + reference, D)
    real_subjects = [subject_of(c) for _, c in heldout] + [subject_of(c) for _, c in reference]
    drawn_features = inception_features(inception, [image for image, _ in drawings])
    drawn_captions = [caption for _, caption in drawings]
    heldout_captions = [caption for _, caption in heldout]

    def ranks_of(features: np.ndarray, captions: list[str]) -> np.ndarray:
        return retrieval_ranks(features, [subject_of(c) for c in captions], real_features, real_subjects)

    def retrieval(features: np.ndarray, captions: list[str], prefix: str) -> dict:
        return retrieval_figures(ranks_of(features, captions), captions, prefix)

    drawn_ranks = ranks_of(drawn_features, drawn_captions)
    baseline_features = remembered(memo, ("baselines", halfway, len(drawings)), lambda: {
        name: inception_features(inception, pictures)
        for name, pictures in baselines(pipe, reconstructions, len(drawings), seed).items()})
    fid = {name: frechet_distance(heldout_features, features) for name, features in baseline_features.items()}
    kid = {name: kernel_distance(heldout_features, features, subset_size=min(100, len(features)))
           for name, features in baseline_features.items()}
    figures = {
        "reference_pictures": len(reference),
        "fid": frechet_distance(heldout_features, drawn_features),
        "kid": kernel_distance(heldout_features, drawn_features, subset_size=min(100, len(drawings))),
        "fid_baselines": fid,
        "kid_baselines": kid,
        **retrieval_figures(drawn_ranks, drawn_captions, "retrieval"),
        "retrieval_chance": 1 / len(set(real_subjects)),
        "retrieval_subjects": len(set(real_subjects)),
        # What the metric reaches through this tokenizer: the reconstructions of the real held-out pictures.
        **retrieval(baseline_features["reconstructions"], heldout_captions, "reconstructions_retrieval"),
    }
    # ... and what it reaches at all: the real held-out pictures themselves, each against its
    # subject's other pictures (leave-one-out).
    own = self_retrieval_ranks(real_features, real_subjects)[: len(heldout_captions)]  # (held-out pictures,)
    placed = own > 0  # a subject with one picture has nothing to be compared with
    figures.update(retrieval_figures(own[placed], [c for c, keep in zip(heldout_captions, placed) if keep],
                                     "real_retrieval"))
    figures["fid_gap_closed"] = gap_closed(figures["fid"], fid["random_codes"], fid["reconstructions"])
    figures["kid_gap_closed"] = gap_closed(figures["kid"], kid["random_codes"], kid["reconstructions"])
    if learnt_drawings:
        learnt_features = inception_features(inception, [image for image, _ in learnt_drawings])
        learnt_captions = [caption for _, caption in learnt_drawings]
        figures["training_captions"] = len(set(learnt_captions))
        figures.update(retrieval(learnt_features, learnt_captions, "training_retrieval"))
    styled = [index for index, caption in enumerate(drawn_captions) if style_of(caption) is not None]
    reference_styles = [style_of(c) for _, c in reference]
    if styled and len(set(reference_styles)) >= 2 and None not in reference_styles:
        # Pooled sets: is a drawing in the style its caption names? A probe fitted on the training
        # pictures decides, as the tokenizer reconstructs them: fitted on the real pictures it would
        # take blur for a style (a smooth 3-D render looks more like a blur than a flat drawing does).
        probe = remembered(memo, "style_probe", lambda: LinearProbe(
            inception_features(inception, reconstruct(pipe, [image for image, _ in reference])), reference_styles))
        figures["style_accuracy"] = probe.accuracy(drawn_features[styled], [style_of(drawn_captions[i]) for i in styled])
        figures["style_probe_accuracy"] = probe.accuracy(baseline_features["reconstructions"],
                                                         [style_of(c) for c in heldout_captions])
    figures["by_kind"] = {}
    for kind in sorted(set(kinds.values())):
        chosen = [index for index, caption in enumerate(drawn_captions) if kinds.get(caption) == kind]
        if not chosen:
            continue
        captions = [drawn_captions[index] for index in chosen]
        part = {"captions": len(set(captions)), **retrieval_figures(drawn_ranks[chosen], captions, "retrieval")}
        if "style_accuracy" in figures and all(style_of(caption) is not None for caption in captions):
            part["style_accuracy"] = probe.accuracy(drawn_features[chosen], [style_of(c) for c in captions])
        figures["by_kind"][kind] = part
    return figures


def evaluate_real_pictures(pipe, data: str | Path, inception, out_dir: str | Path, images_per_prompt: int = 2,
                           other_subjects: int = 300, training_prompts: int = 100, half: str = "all", seed: int = 0,
                           progress: bool = True, memo: dict | None = None, candidates: int = 1, **settings) -> dict:
    """Draws DATA/heldout's captions with `pipe` and scores them (see the module doc); without an
    `inception` network only the tone accuracy is measured.

    other_subjects: training pictures of subjects that are not held out, taken evenly, beside all
    those of the held-out subjects, as the pictures retrieval chooses among.
    training_prompts: captions of those training pictures also drawn, to measure retrieval on
    captions the model learnt, and as many toned training captions of the held-out subjects, to
    measure tone on them (0: none).
    half: which held-out captions are drawn (heldout_half): tune sampling settings on "tuning",
    quote figures of "report".
    memo: a dict to pass to every call that evaluates a model with the same image tokenizer on the
    same DATA with the same sizes (a sampling sweep, or GPTs trained on the same codes): the real
    pictures' and the baselines' features are computed once.
    candidates: drawings made for each one kept: with more than 1, each caption's drawings are the
    best images_per_prompt of images_per_prompt × candidates by how much more likely the model finds
    them under the caption than under the blank one (`gptdraw best-of`; DALL·E and Parti rerank).
    """
    from gptdraw.editing import best_of
    from gptdraw.eval.shapes import draw_prompts

    data, out_dir = Path(data), Path(out_dir)
    all_heldout = read_pairs(data / "heldout")
    heldout = heldout_half(all_heldout, half)
    if not heldout:
        raise ValueError(f"the {half} half of {data / 'heldout'} holds no pictures: too few held out to halve")
    training = read_pairs(data / "train")
    heldout_subjects = {subject_of(caption) for _, caption in all_heldout}  # the same retrieval choices for both halves
    own = [pair for pair in training if subject_of(pair[1]) in heldout_subjects]
    others = [pair for pair in training if subject_of(pair[1]) not in heldout_subjects]
    others = spread(others, other_subjects)
    reference = own + others
    size = pipe.layout.grid[0] * pipe.image_tokenizer.downsample_factor  # the drawings' side
    prompts = list(dict.fromkeys(caption for _, caption in heldout))
    learnt = list(dict.fromkeys(caption for _, caption in others))
    learnt = spread(learnt, training_prompts) if inception is not None else []
    # Training captions of the held-out subjects that name a tone ("farmer, dark skin tone, noto" when
    # "farmer, medium skin tone, noto" is held out): is a missed tone not learnt, or not carried over?
    toned = [caption for caption in dict.fromkeys(c for _, c in own) if tone_of_caption(caption) is not None]
    toned = spread(toned, training_prompts)
    if candidates > 1:
        drawn = {prompt: best_of(pipe, prompt, images_per_prompt * candidates, images_per_prompt, seed + number,
                                 **settings).images
                 for number, prompt in enumerate(tqdm(prompts + learnt + toned, desc="best-of", unit="caption",
                                                      disable=not progress))}
    else:
        drawn = draw_prompts(pipe, prompts + learnt + toned, images_per_prompt, seed, progress=progress, **settings)
    drawings = [(image, prompt) for prompt in prompts for image in drawn[prompt]]
    learnt_drawings = [(image, prompt) for prompt in learnt for image in drawn[prompt]]
    toned_drawings = [(image, prompt) for prompt in toned for image in drawn[prompt]]

    real_heldout = [image.resize((size, size), Image.LANCZOS) for image, _ in heldout]
    result = {
        "half": half, "heldout_captions": len(prompts), "drawings": len(drawings), "real_heldout": len(real_heldout),
        "image_size": size, "settings": pipe.settings(**settings).to_dict(), "candidates": candidates,
        "variety": variety({prompt: drawn[prompt] for prompt in prompts}),
    }
    reconstructions = remembered(memo, ("reconstructions", which_pictures(heldout)),
                                 lambda: reconstruct(pipe, real_heldout))
    kinds = heldout_kinds(data)
    if inception is not None:
        result.update(inception_figures(pipe, inception, heldout, real_heldout, reconstructions, reference, drawings,
                                        learnt_drawings, seed, memo, kinds))
    palettes = tone_palettes(training)  # the tones' colours from training pictures only
    heldout_captions = [caption for _, caption in heldout]
    result.update(tone_figures(drawings, palettes))
    result.update(tone_figures(toned_drawings, palettes, "training_tone"))
    # Its ceilings: the tone reader on the real held-out pictures, and on them through the tokenizer.
    result.update(tone_figures(list(zip(real_heldout, heldout_captions)), palettes, "real_tone"))
    result.update(tone_figures(list(zip(reconstructions, heldout_captions)), palettes, "reconstructions_tone"))
    for kind in sorted(set(kinds.values())):
        of_kind = tone_figures([(image, caption) for image, caption in drawings if kinds.get(caption) == kind], palettes)
        if of_kind:
            result.setdefault("by_kind", {}).setdefault(kind, {}).update(of_kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures, labels = [], []
    for (real, caption), scaled in zip(heldout[:24], real_heldout[:24]):
        pictures += [scaled] + drawn[caption]
        labels += [f"real: {caption}"] + [caption] * len(drawn[caption])
    make_grid([p.resize((size * 2, size * 2), Image.NEAREST) for p in pictures], columns=1 + images_per_prompt,
              labels=labels).save(out_dir / "pairs.png")
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
