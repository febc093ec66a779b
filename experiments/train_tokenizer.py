"""Train a tokenizer: python experiments/train_tokenizer.py --config CONFIG[:ARG] --workdir DIR"""

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
