"""Evaluate a generator or a tokenizer, or build a reference batch; writes a JSON report.

    python experiments/evaluate.py generator --workdir runs/gpt --reference ref.npz \
        --inception_weights inception_fid.npz --num_samples 50000 --out report.json
    python experiments/evaluate.py tokenizer --workdir runs/tok --split test \
        --inception_weights inception_fid.npz --out report.json
    python experiments/evaluate.py reference --data_from runs/tok --split test \
        --output ref.npz --inception_weights inception_fid.npz

``--random_inception_weights SEED`` replaces the real weights for smoke tests only: the
numbers are then not comparable with anything else. See docs/EVALUATION.md.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxar.eval.evaluate import REFERENCE_STATISTICS, load_inception, make_reference_npz
from jaxar.eval.reference_npz import load_reference
from jaxar.recipes.evaluation import evaluate_generator, evaluate_tokenizer_dataset, stored_config


def _add_inception_flags(parser: argparse.ArgumentParser) -> None:
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--inception_weights", help="converted FID Inception (.npz/.safetensors)")
    weights.add_argument(
        "--random_inception_weights", type=int, metavar="SEED",
        help="random Inception weights: smoke tests only, the numbers are not comparable",
    )  # fmt: skip
    parser.add_argument("--inception_resize", type=int, default=299, help="input size (>= 75)")
    parser.add_argument(
        "--inception_width", type=float, default=1.0,
        help="channel multiplier, only with random weights (fast smoke tests)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=64, help="sampling / Inception batch")
    parser.add_argument("--out", help="write the JSON report here (it is always printed)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generator", help="FID / sFID / IS / precision-recall of samples")
    gen.add_argument("--workdir", required=True, help="a train_generator workdir")
    gen.add_argument("--reference", required=True, help="ADM reference batch .npz")
    gen.add_argument("--num_samples", type=int, default=50000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--cfg_scale", type=float, help="default: the checkpoint's sampling config")
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top_k", type=int)
    gen.add_argument("--top_p", type=float)
    gen.add_argument("--samples_npz", help="also write the samples here (ADM layout)")
    gen.add_argument("--reference_statistics", choices=REFERENCE_STATISTICS, default="auto")
    gen.add_argument("--no_precision_recall", action="store_true")
    tok = sub.add_parser("tokenizer", help="rFID, PSNR, SSIM, codebook usage on a split")
    tok.add_argument("--workdir", required=True, help="a train_tokenizer workdir")
    tok.add_argument("--split", default="test")
    tok.add_argument("--limit", type=int, help="use only the first LIMIT images")
    ref = sub.add_parser("reference", help="build a reference batch from a dataset split")
    source = ref.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_from", help="a training workdir whose data config is used")
    source.add_argument("--config", help="an experiment config file[:ARG] with a data field")
    ref.add_argument("--split", default="test")
    ref.add_argument("--limit", type=int)
    ref.add_argument("--output", required=True, help="the reference .npz to write")
    for command in (gen, tok, ref):
        _add_inception_flags(command)
    return parser


def _inception(args):
    return load_inception(
        args.inception_weights,
        random_seed=args.random_inception_weights,
        resize_to=args.inception_resize,
        width_multiplier=args.inception_width,
        batch_size=args.batch_size,
    )


def _reference(args, inception):
    from jaxar.recipes.cli import load_config
    from jaxar.recipes.images import image_arrays

    if args.data_from:
        data = stored_config(args.data_from)["data"]
    else:
        data = load_config(args.config).data
    images, _ = image_arrays(data, split=args.split, limit=args.limit)
    return make_reference_npz(images, args.output, inception)


def run(args) -> dict:
    if args.command == "generator":  # a bad reference fails before any slow work
        load_reference(args.reference, require_statistics=False, load_images=False)
    inception = _inception(args)
    if args.command == "reference":
        return _reference(args, inception)
    if args.command == "tokenizer":
        return evaluate_tokenizer_dataset(
            args.workdir, inception=inception, split=args.split, limit=args.limit,
            batch_size=args.batch_size,
        )  # fmt: skip
    sampling = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p")}
    return evaluate_generator(
        args.workdir,
        reference_npz=args.reference,
        inception=inception,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        cfg_scale=args.cfg_scale,
        sampling={k: v for k, v in sampling.items() if v is not None},
        samples_npz=args.samples_npz,
        reference_statistics=args.reference_statistics,
        with_precision_recall=not args.no_precision_recall,
    )


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
