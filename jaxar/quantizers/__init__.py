"""Quantizers: linen modules mapping latents [B, h, w, D] to discrete codes and back (and the
KL bottleneck of continuous tokenizers, which keeps float latents)."""

from jaxar.quantizers.base import QuantizerOutput, straight_through, usage_and_perplexity
from jaxar.quantizers.fsq import FiniteScalarQuantizer
from jaxar.quantizers.gaussian import DiagonalGaussianBottleneck
from jaxar.quantizers.ibq import IndexBackpropQuantizer
from jaxar.quantizers.lfq import LookupFreeQuantizer
from jaxar.quantizers.multiscale import MultiScaleQuantizer
from jaxar.quantizers.residual import ResidualQuantizer
from jaxar.quantizers.vq import VectorQuantizer

QUANTIZERS = {
    "vq": VectorQuantizer,
    "rq": ResidualQuantizer,
    "msvq": MultiScaleQuantizer,
    "fsq": FiniteScalarQuantizer,
    "lfq": LookupFreeQuantizer,
    "ibq": IndexBackpropQuantizer,
    "kl": DiagonalGaussianBottleneck,  # continuous latents, not codes
}

__all__ = [
    "QUANTIZERS",
    "DiagonalGaussianBottleneck",
    "FiniteScalarQuantizer",
    "IndexBackpropQuantizer",
    "LookupFreeQuantizer",
    "MultiScaleQuantizer",
    "QuantizerOutput",
    "ResidualQuantizer",
    "VectorQuantizer",
    "straight_through",
    "usage_and_perplexity",
]
