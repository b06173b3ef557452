"""Quality on the built-in data: draw held-out prompts and let the shapes verifier judge them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from gptdraw.data.shapes import without_sizes
from gptdraw.eval.verifier import score, verify
from gptdraw.images import make_grid
from gptdraw.pipeline import GPTDrawPipeline


def draw_prompts(
    pipe: GPTDrawPipeline, prompts: list[str], images_per_prompt: int, seed: int, batch_prompts: int = 16, progress: bool = True, **settings
) -> dict[str, list[Image.Image]]:
    """Draws images_per_prompt images for each prompt, a few prompts per batch."""
    drawn: dict[str, list[Image.Image]] = {}
    batches = range(0, len(prompts), batch_prompts)
    for number, start in enumerate(tqdm(batches, desc="draw", unit="batch", disable=not progress)):
        chunk = prompts[start : start + batch_prompts]
        images = pipe(chunk, num_images_per_prompt=images_per_prompt, seed=seed + number, **settings)
        for index, prompt in enumerate(chunk):
            drawn[prompt] = images[index * images_per_prompt : (index + 1) * images_per_prompt]
    return drawn


def variety(drawn: dict[str, list[Image.Image]]) -> dict:
    """Whether the model draws more than one picture per prompt.

    distinct: the share of prompts with at least two different drawings among theirs.
    small_share: of the objects in correct drawings of prompts that name no size, the share drawn
    small (training draws half small, half large; None when no such drawing was correct).
    """
    several = [len({np.asarray(image).tobytes() for image in images}) >= 2 for images in drawn.values() if len(images) >= 2]
    sizes = []
    for prompt, images in drawn.items():
        if without_sizes(prompt) != prompt:
            continue  # the prompt names sizes
        for image in images:
            verdict = verify(image, prompt)
            if verdict.correct:
                sizes += [found.size for found in verdict.found]
    return {
        "distinct": sum(several) / len(several) if several else None,
        "small_share": sizes.count("small") / len(sizes) if sizes else None,
        "sizeless_objects": len(sizes),
    }


def evaluate_shapes(
    pipe: GPTDrawPipeline,
    prompts: list[str],
    images_per_prompt: int = 4,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **settings,
) -> dict:
    """Verifier accuracy of the model on shapes prompts (overall, one- and two-object), and the
    variety of its drawings (see `variety`), for which the prompts are also drawn without their sizes.

    With out_dir: writes samples.png (every drawing of `prompts`, labelled) and eval.json there.
    """
    sizeless = [p for p in dict.fromkeys(without_sizes(prompt) for prompt in prompts) if p not in prompts]
    drawn = draw_prompts(pipe, prompts + sizeless, images_per_prompt, seed, progress=progress, **settings)
    named = {prompt: drawn[prompt] for prompt in prompts}
    result = score(named)
    result["sizeless_accuracy"] = score({prompt: drawn[prompt] for prompt in sizeless})["accuracy"] if sizeless else None
    result["variety"] = variety(drawn)
    result["images_per_prompt"] = images_per_prompt
    result["settings"] = pipe.settings(**settings).to_dict()
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        images, labels = [], []
        for prompt, pictures in named.items():
            for picture in pictures:
                images.append(picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST))
                labels.append(prompt)
        make_grid(images, columns=2 * images_per_prompt, labels=labels).save(out_dir / "samples.png")
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
