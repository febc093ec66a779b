"""Builds golden data for the LlamaGen GPT converter test (run once; needs torch).

A tiny torch re-implementation of LlamaGen's c2i ``Transformer`` (same parameter names,
shapes and maths: fused wqkv, 2D RoPE whose class-token rows are zero, SwiGLU, RMSNorm),
with random weights. Writes
  tests/data/llamagen_gpt_tiny.safetensors    the state dict (float16 to stay small)
  tests/data/llamagen_gpt_tiny_golden.npz     codes, labels and teacher-forced logits

Usage: .venv/bin/python tests/golden/make_llamagen_gpt_golden.py
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

VOCAB, DIM, HEADS, LAYERS, GRID, CLASSES, HIDDEN = 64, 64, 4, 2, 4, 10, 192
HEAD_DIM, EPS = DIM // HEADS, 1e-5
DATA = Path(__file__).resolve().parents[1] / "data"


def random_state_dict(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def normal(*shape, std=0.2):
        return torch.randn(*shape, generator=gen) * std

    sd = {
        "tok_embeddings.weight": normal(VOCAB, DIM, std=1.0),
        "cls_embedding.embedding_table.weight": normal(CLASSES + 1, DIM, std=1.0),
        "norm.weight": 1.0 + normal(DIM, std=0.1),
        "output.weight": normal(VOCAB, DIM),
    }
    for i in range(LAYERS):
        p = f"layers.{i}."
        sd[p + "attention.wqkv.weight"] = normal(3 * DIM, DIM)  # rows: q | k | v
        sd[p + "attention.wo.weight"] = normal(DIM, DIM)
        sd[p + "feed_forward.w1.weight"] = normal(HIDDEN, DIM)
        sd[p + "feed_forward.w3.weight"] = normal(HIDDEN, DIM)
        sd[p + "feed_forward.w2.weight"] = normal(DIM, HIDDEN)
        sd[p + "attention_norm.weight"] = 1.0 + normal(DIM, std=0.1)
        sd[p + "ffn_norm.weight"] = 1.0 + normal(DIM, std=0.1)
    # stored weights are float16; the reference runs in float32 on exactly those values
    return {k: v.half() for k, v in sd.items()}


def rope_2d(grid: int, n_elem: int, prefix: int, base: float = 10000.0) -> torch.Tensor:
    """[prefix + grid**2, n_elem // 2, 2] (cos, sin); prefix rows are zero (as LlamaGen)."""
    half = n_elem // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angle = torch.outer(torch.arange(grid).float(), freqs)
    grid_angle = torch.cat(
        [angle[:, None, :].expand(-1, grid, -1), angle[None, :, :].expand(grid, -1, -1)], dim=-1
    ).flatten(0, 1)
    table = torch.stack([grid_angle.cos(), grid_angle.sin()], dim=-1)
    return torch.cat([torch.zeros(prefix, n_elem // 2, 2), table])


def rotate(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:  # x [B, L, H, Dh]
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    out = torch.stack(
        [pairs[..., 0] * cos - pairs[..., 1] * sin, pairs[..., 1] * cos + pairs[..., 0] * sin], -1
    )
    return out.flatten(3)


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def forward(sd: dict[str, torch.Tensor], codes: torch.Tensor, labels: torch.Tensor):
    """Teacher-forced logits [B, L, V]: input [cls, codes[:, :-1]] (LlamaGen training)."""
    w = {k: v.float() for k, v in sd.items()}
    h = torch.cat(
        [
            w["cls_embedding.embedding_table.weight"][labels][:, None],
            w["tok_embeddings.weight"][codes[:, :-1]],
        ],
        dim=1,
    )
    b, seq, _ = h.shape
    table = rope_2d(GRID, HEAD_DIM, prefix=1)[:seq]
    for i in range(LAYERS):
        p = f"layers.{i}."
        x = rms_norm(h, w[p + "attention_norm.weight"])
        q, k, v = (x @ w[p + "attention.wqkv.weight"].T).split([DIM, DIM, DIM], dim=-1)
        q, k, v = (t.reshape(b, seq, HEADS, HEAD_DIM) for t in (q, k, v))
        q, k = rotate(q, table), rotate(k, table)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        h = h + att.transpose(1, 2).reshape(b, seq, DIM) @ w[p + "attention.wo.weight"].T
        x = rms_norm(h, w[p + "ffn_norm.weight"])
        gate = F.silu(x @ w[p + "feed_forward.w1.weight"].T) * (
            x @ w[p + "feed_forward.w3.weight"].T
        )
        h = h + gate @ w[p + "feed_forward.w2.weight"].T
    return rms_norm(h, w["norm.weight"]) @ w["output.weight"].T


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    sd = random_state_dict(gen)
    codes = torch.randint(0, VOCAB, (3, GRID * GRID), generator=gen)
    labels = torch.tensor([0, 7, 9])
    with torch.no_grad():
        logits = forward(sd, codes, labels)
    DATA.mkdir(exist_ok=True)
    stored = dict(sd, freqs_cis=rope_2d(GRID, HEAD_DIM, prefix=1))  # a buffer the loader skips
    save_file(
        {k: v.contiguous() for k, v in stored.items()}, DATA / "llamagen_gpt_tiny.safetensors"
    )
    np.savez_compressed(
        DATA / "llamagen_gpt_tiny_golden.npz",
        codes=codes.numpy().astype(np.int32),
        labels=labels.numpy().astype(np.int32),
        logits=logits.numpy().astype(np.float32),
    )
    print("wrote", DATA, "logits std", float(logits.std()))


if __name__ == "__main__":
    main()
