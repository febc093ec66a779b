"""Judge a generator trained on the bundled digits by an independent classifier.

    python experiments/judge_digits.py --workdir runs/maskgit_digits [--cfg_scale 2.0]

Samples ``--samples_per_class`` images of every class, classifies them with a scikit-learn
SVM trained on the real training digits and prints a JSON report (class accuracy, per-class
accuracy, forward passes per image, sampling settings); ``--grid`` also writes a PNG.
"""

import argparse
import json

from jaxar.recipes.demo import judge_generator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a train_generator workdir")
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg_scale", type=float, default=None)
    parser.add_argument("--grid", default=None, help="write a labelled PNG grid here")
    args = parser.parse_args(argv)
    sampling = {} if args.cfg_scale is None else {"cfg_scale": args.cfg_scale}
    report = judge_generator(args.workdir, args.samples_per_class, args.seed, args.grid,
                             **sampling)  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
