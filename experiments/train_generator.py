"""Train a generator on tokenized images.

python experiments/train_generator.py --config CONFIG[:ARG] --workdir DIR [--set k=v ...]

Exit status 75 (``jaxar.train.loop.PREEMPTED_EXIT_CODE``) after SIGTERM/SIGINT: the step named
in the last log line is on disk; rerun the same command to resume.
"""

import argparse

from jaxar.recipes.cli import setup
from jaxar.recipes.generator import train_generator


def main(argv=None):
    config, args = setup(argparse.ArgumentParser(description=__doc__), argv)
    train_generator(config, args.workdir)


if __name__ == "__main__":
    main()
