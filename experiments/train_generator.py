"""Train a generator on tokenized images.

python experiments/train_generator.py --config CONFIG[:ARG] --workdir DIR [--set k=v ...]
"""

import argparse

from jaxar.recipes.cli import setup
from jaxar.recipes.generator import train_generator


def main(argv=None):
    config, args = setup(argparse.ArgumentParser(description=__doc__), argv)
    train_generator(config, args.workdir)


if __name__ == "__main__":
    main()
