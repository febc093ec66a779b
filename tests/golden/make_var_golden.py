"""Builds the golden data for tests/test_convert_var.py (needs torch; run from the repo root).

Tiny torch models with the parameter names and shapes of VAR's released checkpoints, written
here from the architecture description (``word_embed``, ``class_emb``, ``pos_start``,
``pos_1LC``, ``lvl_embed``, ``shared_ada_lin.1``, ``blocks.N.{attn.mat_qkv, attn.q_bias,
attn.v_bias, attn.zero_k_bias, attn.scale_mul_1H11, attn.proj, ffn.fc1, ffn.fc2, ada_lin.1 |
ada_gss}``, ``head_nm.ada_lin.1``, ``head``; buffers ``lvl_1L``, ``attn_bias_for_masking``) and
of the VQVAE's quantizer (``quantize.embedding``, ``quantize.quant_resi.qresi_ls.N``,
``quantize.ema_vocab_hit_SV``), with random weights. Saves under tests/data/:

- var_tiny.safetensors (attn_l2_norm=True, per-block adaLN: the released layout),
  var_tiny_saln.safetensors (shared adaLN, plain scaled attention), var_tiny_vae.safetensors;
- var_tiny_golden.npz: labels, a latent map ``f`` [B, h, w, C] (NHWC), its multi-scale codes
  (concatenated [B, L]), the teacher inputs [B, L - 1, C], f_hat of the codes [B, h, w, C]
  and both models' logits [B, L, V].

    .venv/bin/python tests/golden/make_var_golden.py
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

V, CVAE, DEPTH, C, HEADS, NUM_CLASSES = 16, 4, 2, 32, 2, 5
PATCH_NUMS = (1, 2, 3, 4)
L = sum(p * p for p in PATCH_NUMS)
NUM_PHI = 4
BATCH = 3


def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


class SelfAttention(nn.Module):
    def __init__(self, l2_norm):
        super().__init__()
        self.l2_norm, self.dh = l2_norm, C // HEADS
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(C)), nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        if l2_norm:
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, HEADS, 1, 1), 4.0).log())
        self.proj = nn.Linear(C, C)

    def forward(self, x, bias):
        b, n, _ = x.shape
        qkv = F.linear(
            x, self.mat_qkv.weight, torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        )
        q, k, v = qkv.view(b, n, 3, HEADS, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        if self.l2_norm:
            mul = self.scale_mul_1H11.clamp_max(math.log(100)).exp()
            q, k, scale = F.normalize(q, dim=-1) * mul, F.normalize(k, dim=-1), 1.0
        else:
            scale = 0.25 / math.sqrt(self.dh)
        attn = (q * scale) @ k.transpose(-2, -1) + bias
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, C))


class FFN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, shared_aln, l2_norm):
        super().__init__()
        self.attn, self.ffn, self.shared_aln = SelfAttention(l2_norm), FFN(), shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))

    def forward(self, x, cond, bias):
        mods = self.ada_gss + cond if self.shared_aln else self.ada_lin(cond).view(-1, 1, 6, C)
        g1, g2, s1, s2, t1, t2 = mods.unbind(2)
        x = x + self.attn(layer_norm(x) * (s1 + 1) + t1, bias) * g1
        return x + self.ffn(layer_norm(x) * (s2 + 1) + t2) * g2


class HeadNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 2 * C))

    def forward(self, x, cond):
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, C).unbind(2)
        return layer_norm(x) * (scale + 1) + shift


class TinyVAR(nn.Module):
    def __init__(self, shared_aln, l2_norm):
        super().__init__()
        self.shared_aln = shared_aln
        self.word_embed = nn.Linear(CVAE, C)
        self.class_emb = nn.Embedding(NUM_CLASSES + 1, C)
        self.pos_start = nn.Parameter(torch.randn(1, PATCH_NUMS[0] ** 2, C))
        self.pos_1LC = nn.Parameter(torch.randn(1, L, C))
        self.lvl_embed = nn.Embedding(len(PATCH_NUMS), C)
        if shared_aln:
            self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        self.blocks = nn.ModuleList([Block(shared_aln, l2_norm) for _ in range(DEPTH)])
        lvl = torch.cat([torch.full((p * p,), i) for i, p in enumerate(PATCH_NUMS)]).view(1, L, 1)
        self.register_buffer("lvl_1L", lvl[:, :, 0].contiguous())
        mask = torch.where(lvl >= lvl.transpose(1, 2), 0.0, -torch.inf).reshape(1, 1, L, L)
        self.register_buffer("attn_bias_for_masking", mask)
        self.head_nm, self.head = HeadNorm(), nn.Linear(C, V)

    def forward(self, labels, inputs):
        cond = self.class_emb(labels)
        sos = cond[:, None] + self.pos_start
        x = torch.cat([sos, self.word_embed(inputs)], 1)
        x = x + self.lvl_embed(self.lvl_1L) + self.pos_1LC
        block_cond = self.shared_ada_lin(cond).view(-1, 1, 6, C) if self.shared_aln else cond
        for block in self.blocks:
            x = block(x, block_cond, self.attn_bias_for_masking)
        return self.head(self.head_nm(x, cond))


class Quantizer(nn.Module):
    """VAR's VectorQuantizer2 with partially shared Phi (share_quant_resi=4, ratio 0.5)."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, CVAE)
        self.quant_resi = nn.Module()
        self.quant_resi.qresi_ls = nn.ModuleList(
            [nn.Conv2d(CVAE, CVAE, 3, padding=1) for _ in range(NUM_PHI)]
        )
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(PATCH_NUMS), V))
        k = NUM_PHI
        self.ticks = np.linspace(1 / 3 / k, 1 - 1 / 3 / k, k)

    def phi(self, h, si):
        conv = self.quant_resi.qresi_ls[
            int(np.argmin(np.abs(self.ticks - si / (len(PATCH_NUMS) - 1))))
        ]
        return h * 0.5 + conv(h) * 0.5

    def up(self, idx, si):  # [B, l] -> [B, C, H, W]
        b, pn, last = idx.shape[0], PATCH_NUMS[si], PATCH_NUMS[-1]
        h = self.embedding(idx).transpose(1, 2).reshape(b, CVAE, pn, pn)
        if si != len(PATCH_NUMS) - 1:
            h = F.interpolate(h, size=(last, last), mode="bicubic")
        return self.phi(h, si)

    def encode(self, f):  # [B, C, H, W] -> list of [B, l]
        rest, out = f.clone(), []
        for si, pn in enumerate(PATCH_NUMS):
            r = (
                rest
                if si == len(PATCH_NUMS) - 1
                else F.interpolate(rest, size=(pn, pn), mode="area")
            )
            r = r.permute(0, 2, 3, 1).reshape(-1, CVAE)
            d = (r.square().sum(1, keepdim=True) + self.embedding.weight.square().sum(1)
                 - 2 * r @ self.embedding.weight.T)  # fmt: skip
            idx = d.argmin(1).view(f.shape[0], -1)
            rest = rest - self.up(idx, si)
            out.append(idx)
        return out

    def f_hat(self, codes):
        return sum(self.up(idx, si) for si, idx in enumerate(codes))

    def teacher_inputs(self, codes):
        f_hat, out = 0.0, []
        for si in range(len(PATCH_NUMS) - 1):
            f_hat = f_hat + self.up(codes[si], si)
            nxt = PATCH_NUMS[si + 1]
            out.append(
                F.interpolate(f_hat, size=(nxt, nxt), mode="area").flatten(2).transpose(1, 2)
            )
        return torch.cat(out, 1)


def randomize(module, std=0.3):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "scale_mul" in name else std))


def main():
    torch.manual_seed(0)
    quant, var, var_saln = Quantizer(), TinyVAR(False, True), TinyVAR(True, False)
    for m in (quant, var, var_saln):
        randomize(m)
    with torch.no_grad():
        quant.embedding.weight.mul_(3.0)  # spread the codebook so several codes are used
        f = torch.randn(BATCH, CVAE, PATCH_NUMS[-1], PATCH_NUMS[-1]) * 1.5
        codes = quant.encode(f)
        inputs = quant.teacher_inputs(codes)
        labels = torch.tensor([0, 3, NUM_CLASSES])  # the last row is the null class
        golden = {
            "labels": labels.numpy().astype(np.int32),
            "f": f.permute(0, 2, 3, 1).numpy(),
            "codes": torch.cat(codes, 1).numpy().astype(np.int32),
            "inputs": inputs.numpy(),
            "f_hat": quant.f_hat(codes).permute(0, 2, 3, 1).numpy(),
            "logits": var(labels, inputs).numpy(),
            "logits_saln": var_saln(labels, inputs).numpy(),
        }
    save_file({"quantize." + k: v.contiguous() for k, v in quant.state_dict().items()},
              "tests/data/var_tiny_vae.safetensors")  # fmt: skip
    save_file(
        {k: v.contiguous() for k, v in var.state_dict().items()}, "tests/data/var_tiny.safetensors"
    )
    save_file({k: v.contiguous() for k, v in var_saln.state_dict().items()},
              "tests/data/var_tiny_saln.safetensors")  # fmt: skip
    np.savez("tests/data/var_tiny_golden.npz", **golden)
    print({k: v.shape for k, v in golden.items()}, "codes used:", np.unique(golden["codes"]).size)


if __name__ == "__main__":
    main()
