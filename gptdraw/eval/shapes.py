"""Quality on the built-in data: draw held-out prompts and let the shapes verifier judge them."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from gptdraw.eval.verifier import score
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


def evaluate_shapes(
    pipe: GPTDrawPipeline,
    prompts: list[str],
    images_per_prompt: int = 4,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **settings,
) -> dict:
    """Verifier accuracy of the model on shapes prompts (overall, one- and two-object).

    With out_dir: writes samples.png (every drawing, labelled) and eval.json there.
    """
    drawn = draw_prompts(pipe, prompts, images_per_prompt, seed, progress=progress, **settings)
    result = score(drawn)
    result["images_per_prompt"] = images_per_prompt
    result["settings"] = pipe.settings(**settings).to_dict()
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        images, labels = [], []
        for prompt, pictures in drawn.items():
            for picture in pictures:
                images.append(picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST))
                labels.append(prompt)
        make_grid(images, columns=2 * images_per_prompt, labels=labels).save(out_dir / "samples.png")
        (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
