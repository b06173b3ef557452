"""`gptdraw prepare` (pre-encode a data source into shards), `gptdraw data inspect`, and
`gptdraw data emoji` (real captioned pictures from installed emoji sets, as folder sources)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

# Torch-free modules only, so that `--help` and argument errors stay fast; the handlers import the rest.
from gptdraw.cli import UserError, claimed_out
from gptdraw.cli.config_flags import add_config_flags, apply_config_file, given_fields, read_config_file
from gptdraw.data.prepare_config import PrepareConfig
from gptdraw.runtime import PRECISIONS, resolve_device

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """`gptdraw data prepare|inspect`, and `gptdraw prepare` as the older spelling."""
    data = subparsers.add_parser("data", help="prepare and look at datasets (data prepare|inspect|emoji)")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    add_prepare_parser(data_commands, "prepare", "decode, tokenize and VQ-encode a data source into pre-encoded shards")
    add_prepare_parser(subparsers, "prepare", "the same as `gptdraw data prepare`")
    inspect = data_commands.add_parser(
        "inspect", help="print a dataset's counts and draw a few examples back from their codes")
    inspect.add_argument("directory", help="dataset folder written by gptdraw prepare")
    inspect.add_argument("--split", choices=("train", "eval"), default="train")
    inspect.add_argument("--out", help="write a PNG grid of examples decoded from their codes")
    inspect.add_argument("--image-tokenizer", "--vq", dest="image_tokenizer",
                         help="image tokenizer folder (default: the one recorded in the manifest); "
                         "--vq is its older name")
    inspect.add_argument("--count", type=int, default=16, help="examples in the grid (default 16)")
    inspect.add_argument("--no-verify", action="store_true", help="skip the shard checksum check")
    inspect.set_defaults(func=run_inspect)
    emoji = data_commands.add_parser(
        "emoji", help="write real captioned pictures from installed emoji sets as folder sources (train, heldout)")
    emoji.add_argument("--out", required=True, help="folder to write OUT/train, OUT/heldout and OUT/emoji.json into")
    from gptdraw.data.emoji import CREDITS, EmojiConfig

    add_config_flags(emoji, EmojiConfig, choices={"sets": list(CREDITS)}, title="emoji settings")
    emoji.set_defaults(func=run_emoji)


def add_prepare_parser(subparsers: argparse._SubParsersAction, name: str, help: str) -> None:
    from gptdraw.data.sources import FORMATS

    prepare = subparsers.add_parser(
        name,
        help=help,
        description="Pre-encode image–caption pairs once: SOURCE is 'shapes', an img2dataset output folder "
        "(webdataset/parquet/files), a folder of images with .txt captions, a CSV/TSV/JSONL manifest, a "
        "datasets save_to_disk folder or 'hf:ID'. Rerunning resumes; under `accelerate launch` the "
        "shards are split across processes. Settings come from PrepareConfig's defaults, then --config, "
        "then the flags.",
    )
    prepare.add_argument("source", help="what to read (see above)")
    prepare.add_argument("--out", required=True, help="dataset folder to write (resumed if it exists)")
    prepare.add_argument("--image-tokenizer", "--vq", dest="image_tokenizer", required=True,
                         help="image tokenizer folder (written by save_pretrained); --vq is its older name")
    prepare.add_argument("--config", help="YAML or JSON file of PrepareConfig fields")
    prepare.add_argument("--device", help="encoding device (default: this process's accelerator, else cpu)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_flags(prepare, PrepareConfig, title="PrepareConfig fields (default: its own, then --config's)")
    prepare.add_argument("--dtype", dest="precision", choices=PRECISIONS, help="the older name of --precision")

    reading = prepare.add_argument_group("source options (each source format takes some of them)")
    reading.add_argument("--format", choices=FORMATS, help="source format (default: detected)")
    reading.add_argument("--image-column", help="image column/key of a manifest, parquet or HF dataset")
    reading.add_argument("--text-column", help="caption column/key of a manifest, parquet or HF dataset")
    reading.add_argument("--split", help="Hugging Face dataset split (default train)")
    reading.add_argument("--url-map",
                         help="for manifests of URLs: JSON object or TSV 'url<TAB>path' of downloaded files")
    reading.add_argument("--allow-outside-paths", action="store_true",
                         help="let a manifest name images outside its own folder (absolute or ../ paths)")
    reading.add_argument("--count", type=int, help="shapes: number of examples")
    reading.add_argument("--image-size", type=int, help="shapes: canvas size (default: the VQGAN's image size)")
    reading.add_argument("--seed", type=int, help="shapes: the stream's seed (default: ShapesSource's)")
    prepare.set_defaults(func=run_prepare)


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    """The run's PrepareConfig: its defaults, then the --config file, then the flags."""
    config = PrepareConfig()
    if args.config:
        config = apply_config_file(config, read_config_file(args.config), args.config)
    return dataclasses.replace(config, **given_fields(args, PrepareConfig))


def source_options(args: argparse.Namespace, image_size: int) -> dict:
    """The options `open_source` takes from the flags; the shapes canvas defaults to `image_size`."""
    if args.source == "shapes" or args.format == "shapes":
        if args.count is None:
            raise UserError("the shapes source needs --count")
        return {"count": args.count, "image_size": args.image_size or image_size, "seed": args.seed}
    if args.count is not None or args.image_size is not None:
        raise UserError("--count and --image-size apply to the shapes source only")
    return {"image_column": args.image_column, "text_column": args.text_column, "split": args.split,
            "url_map": args.url_map, "allow_outside_paths": args.allow_outside_paths or None}


def run_prepare(args: argparse.Namespace) -> int:
    config = prepare_config(args)
    if args.device is not None:
        resolve_device(args.device)  # a device this machine lacks is refused before any work
    with claimed_out(args) as out:  # checked, and held against a second run on it until the end
        return prepare_into(out, args, config)


def prepare_into(out: Path, args: argparse.Namespace, config: PrepareConfig) -> int:
    """`gptdraw prepare`'s work, once its settings are checked and its --out is held."""
    import torch
    from accelerate import PartialState

    from gptdraw.data.prepare import caption_tokenizer_for, prepare
    from gptdraw.data.sources import open_source
    from gptdraw.vq.model import ImageTokenizer

    vq_dir = Path(args.image_tokenizer)
    image_tokenizer = ImageTokenizer.from_pretrained(vq_dir)
    source = open_source(args.source, format=args.format, **source_options(args, image_tokenizer.config.image_size))

    # cpu=True where there is no CUDA: only then does accelerate see several CPU processes
    # started by a launcher as one job (otherwise each would think it is alone and redo every shard).
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    caption_tokenizer = caption_tokenizer_for(source, out, config, is_main_process=state.is_main_process,
                                              wait_for_everyone=state.wait_for_everyone)
    result = prepare(
        source,
        out,
        config,
        image_tokenizer=image_tokenizer,
        caption_tokenizer=caption_tokenizer,
        device=args.device or state.device,
        rank=state.process_index,
        world_size=state.num_processes,
        progress=not args.no_progress,
        image_tokenizer_path=str(vq_dir.resolve()),
    )
    if result.complete:
        print(summary(result))
    return 0


def _counts(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items())) or "none"


def summary(result) -> str:
    """The end-of-run report: written and skipped examples by reason."""
    lines = [
        f"prepared {result.out_dir}: {result.examples} training examples"
        + (f", {result.eval_examples} eval examples" if result.eval_examples or result.eval_skipped else ""),
        f"  skipped: {_counts(result.skipped)}",
    ]
    if result.eval_examples or result.eval_skipped:
        lines.append(f"  eval skipped: {_counts(result.eval_skipped)}")
    lines.append(f"  truncated captions: {result.truncated}")
    lines.append(
        f"  this run: {result.shards_written} shards written, {result.shards_reused} already done, "
        f"{result.items_processed} items in {result.seconds:.1f} s ({result.images_per_s:.1f} items/s)"
    )
    return "\n".join(lines)


def run_emoji(args: argparse.Namespace) -> int:
    from gptdraw.data.emoji import EmojiConfig, write_emoji_folder

    config = dataclasses.replace(EmojiConfig(), **given_fields(args, EmojiConfig))
    summary = write_emoji_folder(args.out, config)
    counts = summary["counts"]
    print(f"{counts['train']} training pictures in {args.out}/train, {counts['heldout']} held out in "
          f"{args.out}/heldout ({len(summary['heldout_pairs'])} subject–tone pairs"
          + (f", {len(summary['heldout_style_pairs'])} subject–set pairs" if summary["heldout_style_pairs"] else "")
          + f"), {counts['unreadable']} unreadable; "
          f"next: gptdraw data prepare {args.out}/train --out DATA --image-tokenizer VQ_DIR")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from gptdraw.data.shards import ShardDataset

    if args.count < 1:
        raise UserError("--count must be positive")
    dataset = ShardDataset(args.directory, verify=not args.no_verify, split=args.split)
    manifest = dataset.manifest
    print(f"{dataset.directory}: {len(dataset)} examples in {len(manifest['shards'])} shards "
          f"({manifest['split']} split)")
    print(f"  skipped: {_counts(manifest['skipped'])}; truncated captions: {manifest['truncated_captions']}")
    print(f"  image size {manifest['image_size']} px → grid {manifest['grid'][0]}×{manifest['grid'][1]} codes "
          f"from a {manifest['codebook_size']}-entry codebook; {manifest['text_len']} caption tokens")
    source = {key: value for key, value in manifest["source"].items() if key != "files"}
    print(f"  source: {json.dumps(source)}")
    if manifest.get("splits"):
        print(f"  other splits: {', '.join(manifest['splits'])}")
    for index in range(min(3, len(dataset))):
        print(f"  [{index}] {dataset.key(index)}: {dataset.caption(index)}")
    if args.out:
        write_grid(dataset, args.out, args.image_tokenizer or manifest.get("image_tokenizer_path"), args.count)
        print(f"wrote {args.out}")
    return 0


def write_grid(dataset, out: str, vq_dir: str | None, count: int) -> None:
    """Decode the first `count` examples from their codes and save them as a captioned PNG grid."""
    import torch
    from PIL import Image

    from gptdraw.data.prepare import image_tokenizer_identity
    from gptdraw.images import make_grid, tensor_to_pil
    from gptdraw.vq.model import ImageTokenizer

    if not vq_dir or not Path(vq_dir).is_dir():
        raise UserError(f"no image tokenizer to decode with ({vq_dir or 'none recorded'}): pass --image-tokenizer DIR")
    tokenizer = ImageTokenizer.from_pretrained(vq_dir)
    recorded = dataset.manifest["image_tokenizer"].get("weights_sha256")
    if image_tokenizer_identity(tokenizer)["weights_sha256"] != recorded:
        logger.warning("%s is not the image tokenizer this dataset was encoded with: the pictures will be wrong",
                       vq_dir)
    count = min(count, len(dataset))
    if count == 0:
        raise UserError(f"{dataset.directory} has no examples to draw")
    _, codes = dataset.get_batch(list(range(count)))
    with torch.no_grad():
        images = tokenizer.decode(codes.view(count, *dataset.grid))  # (B, 3, H, W)
    labels = [dataset.caption(index) for index in range(count)]
    pictures = tensor_to_pil(images)
    # Small tiles are enlarged (pixel-exact) so that the captions under them stay readable.
    scale = max(1, 128 // pictures[0].width)
    pictures = [picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
                for picture in pictures]
    grid = make_grid(pictures, columns=min(count, 4), labels=labels)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
