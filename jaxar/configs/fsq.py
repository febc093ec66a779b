"""ImageNet 256 tokenizer with the fsq quantizer: ``tokenizer_imagenet.py:fsq``.

python experiments/train_tokenizer.py --config experiments/configs/fsq.py --workdir DIR
"""

import os

from jaxar.recipes.cli import load_config


def get_config(arg: str = ""):
    del arg
    return load_config(os.path.join(os.path.dirname(__file__), "tokenizer_imagenet.py:fsq"))
