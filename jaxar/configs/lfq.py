"""ImageNet 256 tokenizer with the lfq quantizer: ``tokenizer_imagenet.py:lfq``.

python experiments/train_tokenizer.py --config experiments/configs/lfq.py --workdir DIR
"""

import os

from jaxar.recipes.cli import load_config


def get_config(arg: str = ""):
    del arg
    return load_config(os.path.join(os.path.dirname(__file__), "tokenizer_imagenet.py:lfq"))
