"""Conv tokenizers: encoder + quantizer + decoder, their losses and training task."""

from jaxar.tokenizers.autoencoder import (
    PRESETS,
    Decoder,
    Encoder,
    Tokenizer,
    TokenizerConfig,
    get_preset,
    vq16,
)
from jaxar.tokenizers.losses import LossConfig
from jaxar.tokenizers.task import make_tokenizer_task

__all__ = [
    "PRESETS",
    "Decoder",
    "Encoder",
    "LossConfig",
    "Tokenizer",
    "TokenizerConfig",
    "get_preset",
    "make_tokenizer_task",
    "vq16",
]
