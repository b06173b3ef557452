"""Benchmark: train an image tokenizer preset on built-in shapes images; print and save the figures.

    python bench/vq_train.py                       # shapes-f8 with the default recipe
    python bench/vq_train.py --steps 600 --set block_out_channels=32,64,64 --set num_vq_embeddings=256

Figures: wall seconds, steps/s, held-out PSNR, codebook usage and perplexity, how exact
the colours stay inside objects, and how often the shapes verifier still reads the
reconstruction as the caption's scene (the verifier that later judges the GPT's drawings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch

from common import add_out_option, machine, write_result  # bench/common.py
from gptdraw.data import shapes
from gptdraw.eval import verifier
from gptdraw.images import tensor_to_pil, uint8_to_tensor
from gptdraw.vq.train import VQTrainConfig, train_vq, zero_init_residuals
from gptdraw.vq.model import ImageTokenizer, VQConfig, vq_preset


def parse_override(text: str, fields: dict[str, dataclasses.Field]) -> tuple[str, object]:
    """"name=value" for a VQConfig or VQTrainConfig field; tuples as comma lists."""
    name, _, value = text.partition("=")
    if name not in fields:
        raise SystemExit(f"--set: unknown field {name!r}")
    current = fields[name].type
    if "tuple" in str(current):
        parts = [p for p in value.split(",") if p]
        return name, tuple(int(p) if p.lstrip("-").isdigit() else p for p in parts)
    if "bool" in str(current):
        return name, value.lower() in ("1", "true", "yes")
    if "int" in str(current) and value.lstrip("-").isdigit():
        return name, int(value)
    try:
        return name, float(value)
    except ValueError:
        return name, value


def interior_colour_error(original: np.ndarray, reconstruction: np.ndarray) -> dict:
    """Errors on object-interior pixels: non-white pixels whose 5×5 neighbourhood is one flat colour."""
    flat = np.ones(original.shape[:3], dtype=bool)
    padded = np.pad(original.astype(np.int16), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    size = original.shape[1]
    for dy in range(5):
        for dx in range(5):
            flat &= (padded[:, dy : dy + size, dx : dx + size] == original).all(axis=-1)
    interior = flat & (original != 255).any(axis=-1)
    error = np.abs(reconstruction.astype(np.int16) - original.astype(np.int16)).max(axis=-1)[interior]
    return {
        "interior_pixels": int(interior.sum()),
        "interior_mean_abs_error": round(float(error.mean()), 3) if error.size else None,
        "interior_within_8": round(float((error <= 8).mean()), 4) if error.size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shapes-f8")
    parser.add_argument("--images", type=int, default=8000, help="training images to generate")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-images", type=int, default=256, help="held-out images for the figures")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a VQConfig or VQTrainConfig field (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--save", default=None, help="also save the tokenizer to this directory")
    add_out_option(parser, "vq_train")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    vq_fields = {f.name: f for f in dataclasses.fields(VQConfig)}
    train_fields = {f.name: f for f in dataclasses.fields(VQTrainConfig)}
    vq_overrides, train_overrides = {}, {}
    for text in args.set:
        name, value = parse_override(text, {**vq_fields, **train_fields})
        (vq_overrides if name in vq_fields else train_overrides)[name] = value
    for name in ("steps", "batch_size", "lr"):
        if getattr(args, name) is not None:
            train_overrides[name] = getattr(args, name)

    config = VQTrainConfig(preset=args.preset, image_size=args.image_size, seed=args.seed,
                           eval_images=args.eval_images, **train_overrides)
    vq_config = vq_preset(args.preset, image_size=args.image_size, **vq_overrides)

    started = time.perf_counter()
    examples = list(shapes.generate_examples(args.images + args.eval_images, args.image_size, seed=args.seed, heldout=None))
    images = np.stack([np.asarray(image.convert("RGB")) for image, _ in examples])  # (N, S, S, 3) uint8
    captions = [text for _, text in examples]
    data_seconds = time.perf_counter() - started

    torch.manual_seed(config.seed)
    tokenizer = ImageTokenizer(vq_config)
    if config.zero_init_residuals:
        zero_init_residuals(tokenizer.model)  # what train_vq does for the tokenizers it builds
    measured_on = machine(torch.device("cpu"))
    cpu_before = time.process_time()
    result = train_vq(config, images, args.save, tokenizer=tokenizer)
    cpu_seconds = time.process_time() - cpu_before

    # The held-out images are the array's last eval_images (see vq_train._split_sources).
    heldout = images[-args.eval_images :]
    heldout_captions = captions[-args.eval_images :]
    with torch.no_grad():
        reconstruction = torch.cat([
            tokenizer.decode(tokenizer.encode(chunk)) for chunk in uint8_to_tensor(heldout).split(64)
        ])
    recon_uint8 = np.stack([np.asarray(image) for image in tensor_to_pil(reconstruction)])
    verdicts = [verifier.verify(image, text) for image, text in zip(recon_uint8, heldout_captions)]
    verified = [verdict.correct for verdict in verdicts]
    reasons: dict[str, int] = {}
    for verdict in verdicts:
        for reason in filter(None, verdict.reason.split("; ")):
            reason = reason.split(": ", 1)[-1]  # drop "object N: "
            reasons[reason] = reasons.get(reason, 0) + 1
    originals_verified = [verifier.verify(image, text).correct for image, text in zip(heldout, heldout_captions)]

    figures = {
        "preset": args.preset,
        "vq_config": vq_config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
        "grid": list(tokenizer.grid_size(args.image_size)),
        "training_images": args.images,
        "data_seconds": round(data_seconds, 2),
        **result.to_dict(),
        "cpu_seconds": round(cpu_seconds, 1),
        "machine": measured_on,
        **interior_colour_error(heldout, recon_uint8),
        "verifier_accuracy_reconstructions": round(float(np.mean(verified)), 4),
        "verifier_accuracy_originals": round(float(np.mean(originals_verified)), 4),
        "verifier_failures": dict(sorted(reasons.items(), key=lambda item: -item[1])[:12]),
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }
    print(json.dumps({k: v for k, v in figures.items() if k not in ("vq_config", "train_config")}, indent=2))
    write_result(figures, args.out)


if __name__ == "__main__":
    main()
