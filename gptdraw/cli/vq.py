"""`gptdraw vq …`: convert pretrained VQGANs, encode images to codes, decode codes, measure reconstructions.

    gptdraw vq convert SRC --out DIR [--config model.yaml]
    gptdraw vq encode  --vq DIR --out codes.npy IMAGE [IMAGE ...]
    gptdraw vq decode  --vq DIR --out OUTDIR codes.npy
    gptdraw vq eval    --vq DIR IMAGES_DIR [--inception inception-2015-12-05.pt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from gptdraw.cli import UserError
from gptdraw.cli.train_vq import add_train_vq_parser

# numpy, torch, diffusers and the gptdraw modules built on them load inside the handlers,
# so that building the parser, `--help` and argument errors stay fast.
if TYPE_CHECKING:
    import torch

INPUT_RANGES = {"-1,1": (-1.0, 1.0), "0,1": (0.0, 1.0)}


def register(subparsers) -> None:
    parser = subparsers.add_parser("vq", help="the image tokenizer (VQGAN): vq train|convert|encode|decode|eval",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="vq_command", required=True, metavar="SUBCOMMAND")
    add_train_vq_parser(commands, "train", "train an image tokenizer (VQGAN) from scratch")

    convert = commands.add_parser(
        "convert",
        help="turn a pretrained VQGAN into a gptdraw image-tokenizer directory",
        description="SRC: a taming-transformers or MoVQGAN .ckpt, a dalle-mini folder (flax_model.msgpack + "
        "config.json), a diffusers VQModel or pipeline folder, or a Hugging Face Hub id (downloaded when "
        "the network allows).",
    )
    convert.add_argument("source", metavar="SRC", help="checkpoint file, model folder or hub id")
    convert.add_argument("--out", required=True, type=Path, help="gptdraw image-tokenizer directory to write")
    convert.add_argument("--config", type=Path, help="taming model.yaml (default: found beside the .ckpt, or read "
                         "from the weights)")
    convert.add_argument("--image-size", type=int, help="default image size of the tokenizer (default: the "
                         "model's training resolution, 256 when unknown)")
    convert.add_argument("--input-range", type=_input_range, metavar="LOW,HIGH", help="pixel range the network "
                         "expects: --input-range=-1,1 or --input-range=0,1 (default: known per source)")
    convert.add_argument("--local-only", action="store_true", help="never download: SRC must be a local path")
    convert.set_defaults(func=run_convert)

    encode = commands.add_parser("encode", help="encode images to a (N, h, w) integer array of codes")
    encode.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    _add_tokenizer_options(encode)
    encode.add_argument("--out", required=True, type=Path, help="codes .npy to write (image paths go beside it, "
                        "in a .txt of the same name)")
    encode.add_argument("--image-size", type=int, help="resize and centre-crop to this size (default: the "
                        "tokenizer's)")
    encode.set_defaults(func=run_encode)

    decode = commands.add_parser("decode", help="decode a codes .npy to one PNG per row")
    decode.add_argument("codes", type=Path, metavar="CODES_NPY")
    _add_tokenizer_options(decode)
    decode.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    decode.set_defaults(func=run_decode)

    evaluate = commands.add_parser("eval", help="PSNR, SSIM, codebook usage, perplexity and rFID of reconstructions")
    evaluate.add_argument("images_dir", type=Path, metavar="IMAGES_DIR")
    _add_tokenizer_options(evaluate)
    evaluate.add_argument("--image-size", type=int, help="resize and centre-crop to this size (default: the "
                          "tokenizer's)")
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N images (by name)")
    evaluate.add_argument("--inception", type=Path, help="TorchScript Inception (inception-2015-12-05.pt) for "
                          "rFID; without it rFID is skipped. TorchScript is a program: pass only a file you trust")
    evaluate.add_argument("--grid", type=Path, default=Path("vq_eval.png"), help="side-by-side PNG of originals "
                          "and reconstructions (default: %(default)s)")
    evaluate.add_argument("--grid-images", type=int, default=8, help="image pairs in the grid (default: %(default)s)")
    evaluate.add_argument("--json", type=Path, help="also write the metrics to this JSON file")
    evaluate.set_defaults(func=run_eval)


def _add_tokenizer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-tokenizer", "--vq", dest="vq", required=True, type=Path,
                        help="gptdraw image-tokenizer directory")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def _input_range(text: str) -> tuple[float, float]:
    if text not in INPUT_RANGES:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(INPUT_RANGES)}, got {text!r}")
    return INPUT_RANGES[text]


def _device(name: str | None) -> torch.device:
    from gptdraw.runtime import resolve_device

    return resolve_device(name)  # a device this machine lacks is one line


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def run_convert(args: argparse.Namespace) -> int:
    from gptdraw.vq.convert import convert_to_directory

    _positive("--image-size", args.image_size)
    tokenizer, converted = convert_to_directory(
        args.source,
        args.out,
        config_path=args.config,
        image_size=args.image_size,
        input_range=args.input_range,
        allow_download=not args.local_only,
    )
    config = tokenizer.config
    rows, columns = tokenizer.grid_size()
    print(f"converted {converted.source_format} VQGAN {args.source} → {args.out}")
    print(f"  f{config.downsample_factor}, {config.num_vq_embeddings:,} codes of dimension {config.vq_embed_dim}, "
          f"{config.norm_type} norms; {config.image_size} px → {rows}×{columns} = {rows * columns:,} codes")
    print(f"  input range [{config.input_range[0]:g}, {config.input_range[1]:g}]")
    for note in converted.notes:
        print(f"  {note}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from gptdraw.data.decode import load_images
    from gptdraw.images import uint8_to_tensor
    from gptdraw.vq.model import ImageTokenizer

    _positive("--batch-size", args.batch_size)
    _positive("--image-size", args.image_size)
    if args.out.suffix != ".npy":
        raise UserError(f"--out must be a .npy file, got {args.out}")
    device = _device(args.device)
    tokenizer = ImageTokenizer.from_pretrained(args.vq, device=device)
    size = args.image_size or tokenizer.config.image_size
    tokenizer.grid_size(size)  # a clear error now rather than after loading images
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"images not found: {', '.join(missing[:5])}")

    codes, encoded = [], []
    with tqdm(total=len(args.images), desc="vq encode", unit="img") as progress:
        for start in range(0, len(args.images), args.batch_size):
            pixels, kept, bad = load_images(args.images[start:start + args.batch_size], size)
            for problem in bad:
                print(f"skipped unreadable image {problem}")
            if kept:
                codes.append(tokenizer.encode(uint8_to_tensor(pixels).to(device)).cpu().numpy())
                encoded.extend(kept)
            progress.update(len(kept) + len(bad))
    if not codes:
        raise UserError("none of the images could be read")
    array = np.concatenate(codes).astype(np.int64)  # (N, h, w)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, array)
    paths_file = args.out.with_suffix(".txt")
    paths_file.write_text("".join(f"{path}\n" for path in encoded))
    skipped = len(args.images) - len(encoded)
    print(f"wrote {args.out}: {array.shape[0]} images × {array.shape[1]}×{array.shape[2]} codes (int64); "
          f"image paths in {paths_file}" + (f"; skipped {skipped} unreadable" if skipped else ""))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm import tqdm

    from gptdraw.images import tensor_to_pil
    from gptdraw.vq.model import ImageTokenizer

    _positive("--batch-size", args.batch_size)
    if not args.codes.is_file():
        raise FileNotFoundError(f"codes file not found: {args.codes}")
    try:
        array = np.load(args.codes, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise UserError(f"cannot read {args.codes} as a .npy array: {error}") from error
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{args.codes} holds {array.dtype} values; codes must be integers")
    if array.ndim == 2:
        array = array[None]  # a single (h, w) grid
    if array.ndim != 3 or array.size == 0:
        raise UserError(f"{args.codes} has shape {array.shape}; expected (N, h, w) codes")
    device = _device(args.device)
    tokenizer = ImageTokenizer.from_pretrained(args.vq, device=device)
    args.out.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(array) - 1)))
    for start in tqdm(range(0, len(array), args.batch_size), desc="vq decode", unit="batch"):
        codes = torch.from_numpy(array[start:start + args.batch_size].astype(np.int64)).to(device)
        for offset, image in enumerate(tensor_to_pil(tokenizer.decode(codes))):
            image.save(args.out / f"{start + offset:0{width}d}.png")
    print(f"wrote {len(array)} PNGs of {array.shape[1] * tokenizer.downsample_factor}×"
          f"{array.shape[2] * tokenizer.downsample_factor} px to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from gptdraw.data.decode import image_files
    from gptdraw.vq.metrics import evaluate_reconstruction
    from gptdraw.vq.model import ImageTokenizer

    _positive("--batch-size", args.batch_size)
    _positive("--image-size", args.image_size)
    _positive("--limit", args.limit)
    paths = image_files(args.images_dir, recursive=False)
    if args.limit:
        paths = paths[: args.limit]
    if not paths:
        raise UserError(f"no images (png, jpg, webp, …) in {args.images_dir}")
    device = _device(args.device)
    tokenizer = ImageTokenizer.from_pretrained(args.vq, device=device)
    report = evaluate_reconstruction(
        tokenizer,
        paths,
        image_size=args.image_size,
        batch_size=args.batch_size,
        inception_path=args.inception,
        grid_path=args.grid,
        grid_images=args.grid_images,
        device=device,
    )
    print(f"images:          {report.images} at {report.image_size} px" +
          (f" (skipped {report.skipped} unreadable)" if report.skipped else ""))
    print(f"PSNR:            {report.psnr:.2f} dB")
    print(f"SSIM:            {report.ssim:.4f}")
    print(f"codebook usage:  {report.codes_used:,} / {report.codebook_size:,} codes ({report.codebook_usage:.1%})")
    print(f"perplexity:      {report.perplexity:.1f}")
    print(f"rFID:            {report.rfid:.3f} ({report.rfid_note})" if report.rfid is not None
          else f"rFID:            {report.rfid_note}")
    if report.grid_path:
        print(f"side by side:    {report.grid_path}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"metrics:         {args.json}")
    return 0
