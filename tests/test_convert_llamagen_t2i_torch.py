"""Converter parity for a LlamaGen t2i GPT with grouped-query attention.

The checkpoint is built here: random weights with LlamaGen's names and shapes (caption
projection ``cap_proj.fc1`` [dim, caption_dim] and the square ``cap_proj.fc2`` [dim, dim];
fused ``wqkv`` with fewer key/value heads than query heads), and the reference logits come
from a small torch forward written from LlamaGen's ``gpt.py`` maths (caption MLP with
tanh-GELU and no biases, zero RoPE rows for the caption tokens, ``repeat_interleave`` of the
key/value heads, SwiGLU, RMSNorm, logits from position ``cls_token_num - 1``). A square
kernel left untransposed keeps every shape right, so only the values can tell.
"""

import jax
import numpy as np
import pytest

from jaxar.convert import llamagen
from jaxar.generators.gpt import GPT
from tests.golden.make_llamagen_gpt_golden import rope_2d, rotate

torch = pytest.importorskip("torch")
F = torch.nn.functional

VOCAB, DIM, HEADS, KV_HEADS, LAYERS, GRID, HIDDEN = 48, 64, 4, 2, 2, 4, 96
CAPTION_DIM, CAPTION_TOKENS, EPS = 24, 3, 1e-5
HEAD_DIM = DIM // HEADS


def _state_dict(gen):
    def normal(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    kv = KV_HEADS * HEAD_DIM
    sd = {
        "tok_embeddings.weight": normal(VOCAB, DIM, std=1.0),
        "cls_embedding.cap_proj.fc1.weight": normal(DIM, CAPTION_DIM, std=0.4),
        "cls_embedding.cap_proj.fc2.weight": normal(DIM, DIM, std=0.4),
        "cls_embedding.uncond_embedding": normal(CAPTION_TOKENS, CAPTION_DIM),
        "norm.weight": 1.0 + normal(DIM, std=0.1),
        "output.weight": normal(VOCAB, DIM),
    }
    for i in range(LAYERS):
        p = f"layers.{i}."
        sd[p + "attention.wqkv.weight"] = normal(DIM + 2 * kv, DIM)  # rows: q | k | v
        sd[p + "attention.wo.weight"] = normal(DIM, DIM)
        sd[p + "feed_forward.w1.weight"] = normal(HIDDEN, DIM)
        sd[p + "feed_forward.w3.weight"] = normal(HIDDEN, DIM)
        sd[p + "feed_forward.w2.weight"] = normal(DIM, HIDDEN)
        sd[p + "attention_norm.weight"] = 1.0 + normal(DIM, std=0.1)
        sd[p + "ffn_norm.weight"] = 1.0 + normal(DIM, std=0.1)
    return sd


def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _torch_logits(w, codes, caption):
    """Teacher-forced logits [B, L, V] of LlamaGen's t2i Transformer."""
    prefix = F.gelu(caption @ w["cls_embedding.cap_proj.fc1.weight"].T, approximate="tanh")
    prefix = prefix @ w["cls_embedding.cap_proj.fc2.weight"].T
    h = torch.cat([prefix, w["tok_embeddings.weight"][codes[:, :-1]]], dim=1)
    b, seq, _ = h.shape
    table = rope_2d(GRID, HEAD_DIM, prefix=CAPTION_TOKENS)[:seq]
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"layers.{i}."
        x = _rms(h, w[p + "attention_norm.weight"])
        q, k, v = (x @ w[p + "attention.wqkv.weight"].T).split([DIM, kv, kv], dim=-1)
        q = rotate(q.reshape(b, seq, HEADS, HEAD_DIM), table)
        k = rotate(k.reshape(b, seq, KV_HEADS, HEAD_DIM), table)
        v = v.reshape(b, seq, KV_HEADS, HEAD_DIM)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
        v = v.repeat_interleave(HEADS // KV_HEADS, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + att.transpose(1, 2).reshape(b, seq, DIM) @ w[p + "attention.wo.weight"].T
        x = _rms(h, w[p + "ffn_norm.weight"])
        gate = F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (
            x @ w[p + "feed_forward.w3.weight"].T
        )
        h = h + gate @ w[p + "feed_forward.w2.weight"].T
    logits = _rms(h, w["norm.weight"]) @ w["output.weight"].T
    return logits[:, CAPTION_TOKENS - 1 :]


@pytest.fixture(scope="module")
def case():
    gen = torch.Generator().manual_seed(0)
    sd = _state_dict(gen)
    codes = torch.randint(0, VOCAB, (2, GRID * GRID), generator=gen)
    caption = torch.randn(2, CAPTION_TOKENS, CAPTION_DIM, generator=gen)
    with torch.no_grad():
        want = _torch_logits(sd, codes, caption).numpy()
    state = {k: v.numpy() for k, v in sd.items()}
    return state, codes.numpy().astype(np.int32), caption.numpy(), want


def test_infers_t2i_grouped_query_config(case):
    state, _, _, _ = case
    cfg = llamagen.infer_gpt_config(state, num_heads=HEADS, block_size=GRID * GRID)
    assert cfg.model_type == "t2i" and cfg.caption_dim == CAPTION_DIM
    assert (cfg.cls_token_num, cfg.num_kv_heads, cfg.kv_heads) == (CAPTION_TOKENS, 2, 2)
    assert (cfg.vocab_size, cfg.dim, cfg.num_layers, cfg.hidden_dim) == (VOCAB, DIM, 2, HIDDEN)


def test_t2i_logits_match_the_torch_forward(case):
    state, codes, caption, want = case
    cfg = llamagen.infer_gpt_config(state, num_heads=HEADS, block_size=GRID * GRID)
    params = llamagen.convert_gpt_state_dict(state, cfg)
    logits = np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, codes, caption))
    assert logits.shape == want.shape == (2, GRID * GRID, VOCAB)
    rel = np.abs(logits - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel
    # the caption projection matters: the square fc2 kernel transposed is a different model
    fc2 = params["cls_embedding"]["fc2"]["kernel"]
    swapped = {**params, "cls_embedding": {**params["cls_embedding"], "fc2": {"kernel": fc2.T}}}
    other = np.asarray(jax.jit(GPT(cfg).apply)({"params": swapped}, codes, caption))
    assert np.abs(other - want).max() / np.abs(want).max() > 1e-2


def test_converted_caption_projection_and_kv_heads(case):
    """The converted kernels against the state dict, piece by piece (numpy only)."""
    state, _, _, _ = case
    cfg = llamagen.infer_gpt_config(state, num_heads=HEADS, block_size=GRID * GRID)
    params = llamagen.convert_gpt_state_dict(state, cfg)
    cap = params["cls_embedding"]
    np.testing.assert_array_equal(
        cap["fc1"]["kernel"], state["cls_embedding.cap_proj.fc1.weight"].T
    )
    np.testing.assert_array_equal(
        cap["fc2"]["kernel"], state["cls_embedding.cap_proj.fc2.weight"].T
    )
    np.testing.assert_array_equal(cap["uncond_embedding"], state["cls_embedding.uncond_embedding"])
    wqkv = state["layers.1.attention.wqkv.weight"]
    attention = params["layers_1"]["attention"]
    kv = KV_HEADS * HEAD_DIM
    for name, rows, heads in (
        ("query", wqkv[:DIM], HEADS),
        ("key", wqkv[DIM : DIM + kv], KV_HEADS),
        ("value", wqkv[DIM + kv :], KV_HEADS),
    ):
        np.testing.assert_array_equal(
            attention[name]["kernel"], rows.T.reshape(DIM, heads, HEAD_DIM), err_msg=name
        )
