"""The end-to-end demo on the bundled digits (CPU, under 10 minutes).

    python experiments/demo.py --workdir runs/demo

Trains a VQ tokenizer and a small LlamaGen GPT, samples every class with CFG, writes
``samples_grid.png`` and ``report.json`` (tokenizer PSNR, class accuracy of the samples as
judged by an independent scikit-learn classifier trained on real digits).
"""

import argparse
import json

from jaxar.recipes.demo import run_demo


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--tokenizer_steps", type=int, default=None, help="default: config")
    parser.add_argument("--generator_steps", type=int, default=None, help="default: config")
    parser.add_argument("--samples_per_class", type=int, default=10)
    parser.add_argument("--cfg_scale", type=float, default=None, help="default: config")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = run_demo(
        args.workdir, args.tokenizer_steps, args.generator_steps, args.samples_per_class,
        args.cfg_scale, args.seed,
    )  # fmt: skip
    print(json.dumps(report, indent=2))
    print(f"grid: {args.workdir}/samples_grid.png")


if __name__ == "__main__":
    main()
