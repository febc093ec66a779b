"""Judge a generator trained on the bundled digits against the real held-out digits.

    python experiments/judge_digits.py --workdir runs/maskgit_digits [--cfg_scale 2.0] \
        [--sampling choice_temperature=4.5 ...]

Samples ``--samples_per_class`` images of every class and prints a JSON report
(``jaxar.eval.digit_metrics``): class accuracy by a scikit-learn SVM trained on the real
training digits, and Fréchet distance, precision, recall and within-class diversity in the
hidden features of an MLP fitted on those digits, against the held-out digits; beside them the
same figures for real training digits (``real_reference``), forward passes per image and the
sampling settings. ``--sampling KEY=VALUE`` overrides a setting of the config's ``sampling``
block; ``--grid`` also writes a PNG.
"""

import argparse
import json

import ml_collections

from jaxar.recipes.cli import apply_overrides
from jaxar.recipes.demo import judge_generator


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a train_generator workdir")
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg_scale", type=float, default=None)
    parser.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--grid", default=None, help="write a labelled PNG grid here")
    args = parser.parse_args(argv)
    sampling = apply_overrides(ml_collections.ConfigDict(), [f"+{s}" for s in args.sampling])
    sampling = sampling.to_dict()
    if args.cfg_scale is not None:
        sampling["cfg_scale"] = args.cfg_scale
    report = judge_generator(args.workdir, args.samples_per_class, args.seed, args.grid,
                             **sampling)  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
