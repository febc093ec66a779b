"""The convert commands' configs, resolved on the FULL-SIZE released layouts (names and shapes
from the originals' constructors: tests/golden/make_release_shapes.py) without the weights:
zero-strided arrays stand in for them. Shows the flags the issue's commands pass suffice and
give the presets the papers describe."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from jaxar.convert import llamagen, llamagen_vq, var, var_vae
from jaxar.generators.gpt import GPT_CONFIGS
from jaxar.generators.var import SCALE_SCHEDULES, VAR_CONFIGS
from jaxar.tokenizers.autoencoder import PRESETS

SHAPES = json.loads((Path(__file__).parent / "data" / "release_shapes.json").read_text())


def fake(name: str) -> dict[str, np.ndarray]:
    """A state dict of the release ``name`` whose arrays take no memory."""
    return {k: np.broadcast_to(np.float32(0), tuple(v)) for k, v in SHAPES[name].items()}


def test_llamagen_gpt_b_256():
    vq = llamagen_vq.infer_tokenizer_config(fake("llamagen_vq16"))
    assert vq == PRESETS["vq16"]
    state = fake("llamagen_gpt_b")
    cfg = llamagen.infer_gpt_config(state, "GPT-B", 256, vq.downsample_factor)
    want = dataclasses.replace(GPT_CONFIGS["GPT-B"], ffn_dim=cfg.hidden_dim)
    assert cfg == want and (cfg.block_size, cfg.vocab_size, cfg.num_classes) == (256, 16384, 1000)
    assert cfg.hidden_dim == 2048  # LlamaGen's SwiGLU rule for 768, read from w1
    with pytest.raises(ValueError, match="pass --preset \\['GPT-B'\\]"):
        llamagen.infer_gpt_config(state, None, 256, 16)
    with pytest.raises(ValueError, match="preset GPT-L has dim=1024"):
        llamagen.infer_gpt_config(state, "GPT-L", 256, 16)


def test_var_d16_and_its_vqvae():
    vae = var_vae.infer_vqvae_config(fake("var_vae"), 256)
    assert vae == PRESETS["var_vqvae"] and vae.scales == SCALE_SCHEDULES[256]
    state = fake("var_d16")
    cfg = var.infer_var_config(state, 16, vae.scales)
    assert cfg == VAR_CONFIGS["VAR-d16"]
    with pytest.raises(ValueError, match="680 positions over 10 scales.*2240"):
        var.infer_var_config(state, 16, SCALE_SCHEDULES[512])
    with pytest.raises(ValueError, match="--depth 20, but the checkpoint has 16 blocks"):
        var.infer_var_config(state, 20)
