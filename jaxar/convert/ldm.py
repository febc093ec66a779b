"""Names of the LDM / taming conv autoencoder (``encoder.down.i.block.j``, ``decoder.up.i``,
``mid.block_1``) -> LlamaGen's (``conv_blocks.i.res.j``, ``mid.0``), which
``jaxar.convert.llamagen_vq`` turns into jaxar ``Tokenizer`` params. Used for VAR's VQVAE
(``jaxar.convert.var_vae``) and MAR's KL-VAE (``jaxar.convert.mar_vae``).

- ``encoder.down.i.block.j`` / ``.attn.j`` / ``.downsample`` -> ``encoder.conv_blocks.i.res.j``
  / ``.attn.j`` / ``.downsample``;
- ``decoder.up.i.block.j`` / ``.attn.j`` / ``.upsample`` -> ``decoder.conv_blocks.{n-1-i}.*``
  (LDM indexes decoder levels by resolution, ``up.0`` the highest; jaxar from the lowest up);
- ``{en,de}coder.mid.block_1`` / ``attn_1`` / ``block_2`` -> ``mid.0`` / ``mid.1`` / ``mid.2``.
"""

from __future__ import annotations

import re

_RENAMES = (
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res."),
    (r"^encoder\.down\.(\d+)\.attn\.", r"encoder.conv_blocks.\1.attn."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.conv_blocks.\1.downsample."),
    (r"\.mid\.block_1\.", ".mid.0."),
    (r"\.mid\.attn_1\.", ".mid.1."),
    (r"\.mid\.block_2\.", ".mid.2."),
)
_DECODER_LEVEL = re.compile(r"^decoder\.up\.(\d+)\.(block|attn|upsample)\.")
_DECODER_PARTS = {"block": "res", "attn": "attn", "upsample": "upsample"}


def count_indices(state: dict, pattern: str) -> int:
    """How many distinct values the first group of ``pattern`` takes over ``state``'s keys."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def llamagen_key(key: str, levels: int) -> str:
    """One LDM state-dict key under LlamaGen's name; ``levels``: ``len(ch_mult)``. Keys of
    other shapes come back unchanged."""
    for pattern, repl in _RENAMES:
        key = re.sub(pattern, repl, key)
    return _DECODER_LEVEL.sub(
        lambda m: (
            f"decoder.conv_blocks.{levels - 1 - int(m.group(1))}.{_DECODER_PARTS[m.group(2)]}."
        ),
        key,
    )
