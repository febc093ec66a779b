"""Encode a dataset split to ArrayRecord code shards with a trained tokenizer.

python experiments/extract_codes.py --config CONFIG[:ARG] --workdir GENERATOR_WORKDIR \
    [--split train] [--set tokenizer_workdir=...] [--set codes_dir=gs://BUCKET/codes] \
    [--set codes.augment=ten_crop] [--rebuild]

Run it on every host of a pod at once (the same flags as training): each process encodes its
own shards on its local devices. Codes go to ``codes_dir`` (default ``<workdir>/codes``) under
``<split>/``; a killed run is resumed by running it again (finished shards are kept).
``train_generator`` reads them (and runs this step itself when they are missing).
"""

import argparse
import json

import jax

from jaxar.recipes.cli import setup
from jaxar.recipes.extraction import codes_dir_for, extract_codes
from jaxar.recipes.tokenizer import load_tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--split", default="train", help="data split to encode")
    parser.add_argument(
        "--rebuild", action="store_true", help="redo codes made with other settings"
    )
    config, args = setup(parser, argv)
    if not config.get("tokenizer_workdir"):
        parser.error("the config sets no tokenizer_workdir (use --set tokenizer_workdir=DIR)")
    codes_dir, owned = codes_dir_for(config, args.workdir)
    tokenizer = load_tokenizer(config.tokenizer_workdir)
    index = extract_codes(config, tokenizer, codes_dir, args.split, rebuild=args.rebuild or owned)
    if jax.process_index() == 0:
        summary = {k: index[k] for k in ("num_examples", "num_source", "num_shards", "augment")}
        print(json.dumps({"codes_dir": str(codes_dir / args.split), **summary}))


if __name__ == "__main__":
    main()
