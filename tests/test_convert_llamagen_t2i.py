"""LlamaGen t2i with padded captions: jaxar's caption masks (teacher forcing, prefill and
decoding) == LlamaGen's own ``generate(emb_masks=...)`` and training forward.

Golden data: tests/golden/make_llamagen_workdir_golden.py (``t2i_*`` entries)."""

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxar.convert import llamagen
from jaxar.generators.gpt import GPT, caption_attention_mask
from jaxar.sampling.autoregressive import make_sampler, sample

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "llamagen_orig_golden.npz"))


@pytest.fixture(scope="module")
def converted():
    return llamagen.load_llamagen_gpt(
        DATA / "llamagen_orig_t2i.safetensors", num_heads=4, block_size=16
    )


def test_config_is_t2i_with_120_caption_tokens(converted):
    cfg, _ = converted
    assert (cfg.model_type, cfg.cls_token_num, cfg.caption_dim) == ("t2i", 120, 8)


def test_teacher_forced_logits_with_caption_mask(converted, golden):
    cfg, params = converted
    logits = jax.jit(lambda p, c, y, m: GPT(cfg).apply({"params": p}, c, y, caption_mask=m))(
        params, golden["t2i_codes_top1_cfg2"], golden["t2i_captions"], golden["t2i_masks"]
    )
    want = golden["t2i_logits"]
    assert np.abs(np.asarray(logits) - want).max() / np.abs(want).max() < 1e-4


@pytest.mark.parametrize("name,settings,masked", [
    ("top1_cfg2", dict(cfg_scale=2.0, top_k=1), True),
    ("greedy_nocfg", dict(cfg_scale=1.0, temperature=0.0), True),
    ("unmasked_top1_cfg2", dict(cfg_scale=2.0, top_k=1), False),
])  # fmt: skip
def test_sampling_with_caption_mask_matches_generate(converted, golden, name, settings, masked):
    cfg, params = converted
    sampler = make_sampler(cfg, **settings)
    mask = golden["t2i_masks"] if masked else None
    codes = sampler(params, golden["t2i_captions"], jax.random.key(0), mask)
    np.testing.assert_array_equal(np.asarray(codes), golden["t2i_codes_" + name])
    if name == "top1_cfg2":  # the convenience API takes the mask too
        again = sample(cfg, params, golden["t2i_captions"], jax.random.key(1), caption_mask=mask,
                       **settings)  # fmt: skip
        np.testing.assert_array_equal(np.asarray(again), golden["t2i_codes_" + name])


def test_mask_semantics_and_errors(converted, golden):
    mask = caption_attention_mask(np.array([[0, 1, 1]]), np.arange(5), 5)[0]
    assert not mask[1:, 0].any() and mask[0, 0]  # padded key: only seen by itself
    assert mask[4].tolist() == [False, True, True, True, True] and not mask[2, 3]
    cfg, params = converted
    sampler = make_sampler(cfg, cfg_scale=2.0, top_k=1)
    with pytest.raises(ValueError, match="caption_mask must be"):
        sampler(params, golden["t2i_captions"], jax.random.key(0), golden["t2i_masks"][:, :5])
