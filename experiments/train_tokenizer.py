"""Train a tokenizer: python experiments/train_tokenizer.py --config CONFIG[:ARG] --workdir DIR

Exit status 75 (``jaxar.train.loop.PREEMPTED_EXIT_CODE``) after SIGTERM/SIGINT: the step named
in the last log line is on disk; rerun the same command to resume (no evaluation is run).
"""

import argparse

from jaxar.recipes.cli import setup
from jaxar.recipes.images import image_batches
from jaxar.recipes.tokenizer import evaluate_tokenizer, load_tokenizer, train_tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--eval_split", default="test", help="split for the final PSNR/usage")
    config, args = setup(parser, argv)
    train_tokenizer(config, args.workdir)
    batches = image_batches(config.data, split=args.eval_split)  # streamed, never all in memory
    print(evaluate_tokenizer(load_tokenizer(args.workdir), batches))


if __name__ == "__main__":
    main()
