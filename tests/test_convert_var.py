"""VAR / VQVAE-quantizer conversion vs golden torch outputs (tests/golden/make_var_golden.py)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxar.convert.var import (
    convert_vae_quantizer,
    convert_var_state_dict,
    load_vae_quantizer,
    load_var,
)
from jaxar.generators.var import VAR, VARConfig, split_scales
from jaxar.quantizers.multiscale import MultiScaleQuantizer

DATA = "tests/data/"
CFG = VARConfig(
    vocab_size=16, code_dim=4, depth=2, embed_dim=32, num_heads=2, num_classes=5,
    patch_nums=(1, 2, 3, 4), attn_l2_norm=True, shared_aln=False,
)  # fmt: skip
CFG_SALN = VARConfig(**{**CFG.__dict__, "attn_l2_norm": False, "shared_aln": True})
QUANTIZER = MultiScaleQuantizer(codebook_size=16, code_dim=4, scales=(1, 2, 3, 4), num_phi=4)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA + "var_tiny_golden.npz"))


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.fixture(scope="module")
def quantizer_params():
    return load_vae_quantizer(DATA + "var_tiny_vae.safetensors", QUANTIZER)


def test_quantizer_codes_fhat_and_inputs_match(golden, quantizer_params):
    variables = {"params": quantizer_params}
    codes = QUANTIZER.apply(variables, golden["f"], method=QUANTIZER.encode_to_codes)
    flat = np.concatenate([np.asarray(c).reshape(len(c), -1) for c in codes], axis=1)
    np.testing.assert_array_equal(flat, golden["codes"])
    maps = split_scales(golden["codes"], CFG.patch_nums)
    f_hat = QUANTIZER.apply(variables, maps, method=QUANTIZER.decode_codes)
    assert rel_err(f_hat, golden["f_hat"]) < 1e-4
    inputs = QUANTIZER.apply(variables, maps, method=QUANTIZER.next_scale_inputs)
    assert rel_err(inputs, golden["inputs"]) < 1e-4


@pytest.mark.parametrize("cfg,weights,key", [
    (CFG, "var_tiny.safetensors", "logits"),
    (CFG_SALN, "var_tiny_saln.safetensors", "logits_saln"),
])  # fmt: skip
def test_var_logits_match(golden, cfg, weights, key):
    params = load_var(DATA + weights, cfg)
    logits = VAR(cfg).apply({"params": params}, golden["labels"], golden["inputs"])
    assert logits.shape == golden[key].shape
    assert rel_err(logits, golden[key]) < 1e-4


def test_wrong_config_or_file_is_rejected():
    state = load_file(DATA + "var_tiny.safetensors")
    with pytest.raises(ValueError, match="blocks"):
        convert_var_state_dict(state, VARConfig(**{**CFG.__dict__, "depth": 3}))
    with pytest.raises(ValueError, match="unconverted|lacks"):
        convert_var_state_dict(state, CFG_SALN)  # l2-norm checkpoint, shared-aln config
    with pytest.raises(ValueError, match="shape"):
        convert_var_state_dict(state, VARConfig(**{**CFG.__dict__, "vocab_size": 17}))
    with pytest.raises(ValueError, match="not a VAR"):
        convert_var_state_dict({"foo": np.zeros(1)}, CFG)
    with pytest.raises(ValueError, match="not a VAR VQVAE"):
        convert_vae_quantizer(state, QUANTIZER)
    with pytest.raises(ValueError, match="unsupported checkpoint"):
        load_var(DATA + "var_tiny_golden.npz", CFG)
