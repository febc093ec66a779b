"""Converter parity: LlamaGen GPT state dict (tiny torch reference, golden logits) -> jaxar GPT.

Golden data come from tests/golden/make_llamagen_gpt_golden.py; this test needs no torch
(except the optional .pt round trip)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.convert import llamagen
from jaxar.generators.gpt import GPT
from jaxar.sampling.autoregressive import sample

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "llamagen_gpt_tiny.safetensors"


@pytest.fixture(scope="module")
def converted():
    return llamagen.load_llamagen_gpt(WEIGHTS, num_heads=4)


def test_infers_config(converted):
    cfg, _ = converted
    assert (cfg.vocab_size, cfg.dim, cfg.num_layers, cfg.num_heads) == (64, 64, 2, 4)
    assert (cfg.num_classes, cfg.block_size, cfg.hidden_dim, cfg.kv_heads) == (10, 16, 192, 4)
    assert cfg.model_type == "c2i" and cfg.prefix_rope == "zero"


def test_logits_match_golden(converted):
    cfg, params = converted
    golden = np.load(DATA / "llamagen_gpt_tiny_golden.npz")
    logits = jax.jit(lambda p, c, y: GPT(cfg).apply({"params": p}, c, y))(
        params, golden["codes"], golden["labels"]
    )
    want = golden["logits"]
    rel = np.abs(np.asarray(logits) - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel
    # identity RoPE on the class token is a different model: the golden data can tell
    other = GPT(cfg.__class__(**{**cfg.__dict__, "prefix_rope": "identity"}))
    moved = jax.jit(other.apply)({"params": params}, golden["codes"], golden["labels"])
    assert np.abs(np.asarray(moved) - want).max() / np.abs(want).max() > 1e-3


def test_converted_params_sample(converted):
    cfg, params = converted
    codes = sample(cfg, params, jnp.array([1, 2]), jax.random.key(0), cfg_scale=2.0, top_k=5)
    assert codes.shape == (2, 16) and int(codes.max()) < 64


def test_pt_checkpoint_layouts(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import load_file

    state = {k: torch.from_numpy(v.copy()) for k, v in load_file(WEIGHTS).items()}
    want = llamagen.read_state_dict(WEIGHTS)
    for layout in ("model", "module", None):
        path = tmp_path / f"{layout}.pt"
        torch.save({layout: state} if layout else state, path)
        got = llamagen.read_state_dict(path)
        assert set(got) == set(want)
        np.testing.assert_array_equal(got["output.weight"], want["output.weight"])


def test_bad_checkpoints_raise(tmp_path):
    state = llamagen.read_state_dict(WEIGHTS)
    cfg = llamagen.infer_gpt_config(state, num_heads=4)
    with pytest.raises(ValueError, match="lacks"):
        llamagen.convert_gpt_state_dict({k: v for k, v in state.items() if k != "norm.weight"}, cfg)
    with pytest.raises(ValueError, match="does not use"):
        llamagen.convert_gpt_state_dict({**state, "extra.weight": np.zeros(3)}, cfg)
    with pytest.raises(ValueError, match="shape"):
        llamagen.convert_gpt_state_dict(state, cfg.__class__(**{**cfg.__dict__, "ffn_dim": 128}))
    with pytest.raises(ValueError, match="unsupported"):
        llamagen.read_state_dict(tmp_path / "weights.npz")
