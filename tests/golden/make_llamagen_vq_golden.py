"""Builds the golden data for tests/test_convert_llamagen_vq.py (needs torch; run from repo root).

A tiny torch model with LlamaGen's ``VQModel`` structure and parameter names (written here
from the architecture description: encoder.conv_in, encoder.conv_blocks.N.res.M.*, attn,
downsample, mid, norm_out, conv_out, quant_conv, quantize.embedding, post_quant_conv, decoder.*)
with random weights. Saves its state dict to tests/data/llamagen_vq_tiny.safetensors and, in
tests/data/llamagen_vq_tiny_golden.npz (all NHWC): an image, its pre-quantization latents,
codes and reconstruction, and the decoding of fixed random codes.

    .venv/bin/python tests/golden/make_llamagen_vq_golden.py
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

CFG = dict(in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, groups=4)
CODEBOOK_SIZE, CODE_DIM = 32, 4
IMAGE_SIZE = 16


def norm(c):
    return nn.GroupNorm(CFG["groups"], c, eps=1e-6, affine=True)


class Res(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # b, hw, c
        k = self.k(h).flatten(2)  # b, c, hw
        v = self.v(h).flatten(2)
        attn = torch.softmax(torch.bmm(q, k) / c**0.5, dim=2)  # b, hw(q), hw(k)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level(res, attn, resample_name=None, resample=None):
    block = nn.Module()
    block.res, block.attn = nn.ModuleList(res), nn.ModuleList(attn)
    if resample is not None:
        setattr(block, resample_name, resample)
    return block


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        ch, mult, n = CFG["ch"], CFG["ch_mult"], CFG["num_res_blocks"]
        self.conv_in = nn.Conv2d(CFG["in_channels"], ch, 3, 1, 1)
        self.conv_blocks = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            last = i == len(mult) - 1
            res = [Res(cin if j == 0 else ch * m, ch * m) for j in range(n)]
            cin = ch * m
            attn = [Attn(cin) for _ in range(n)] if last else []
            self.conv_blocks.append(level(res, attn, "downsample", None if last else Down(cin)))
        self.mid = nn.ModuleList([Res(cin, cin), Attn(cin), Res(cin, cin)])
        self.norm_out, self.conv_out = norm(cin), nn.Conv2d(cin, CFG["z_channels"], 3, 1, 1)

    def forward(self, x):
        h = self.conv_in(x)
        for block in self.conv_blocks:
            for j, r in enumerate(block.res):
                h = r(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "downsample"):
                h = block.downsample(h)
        for m in self.mid:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        ch, mult, n = CFG["ch"], CFG["ch_mult"], CFG["num_res_blocks"]
        cin = ch * mult[-1]
        self.conv_in = nn.Conv2d(CFG["z_channels"], cin, 3, 1, 1)
        self.mid = nn.ModuleList([Res(cin, cin), Attn(cin), Res(cin, cin)])
        self.conv_blocks = nn.ModuleList()
        for i, m in enumerate(reversed(mult)):
            res = [Res(cin if j == 0 else ch * m, ch * m) for j in range(n + 1)]
            cin = ch * m
            attn = [Attn(cin) for _ in range(n + 1)] if i == 0 else []
            up = Up(cin) if i != len(mult) - 1 else None
            self.conv_blocks.append(level(res, attn, "upsample", up))
        self.norm_out, self.conv_out = norm(cin), nn.Conv2d(cin, CFG["in_channels"], 3, 1, 1)

    def forward(self, z):
        h = self.conv_in(z)
        for m in self.mid:
            h = m(h)
        for block in self.conv_blocks:
            for j, r in enumerate(block.res):
                h = r(h)
                if len(block.attn):
                    h = block.attn[j](h)
            if hasattr(block, "upsample"):
                h = block.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Quantize(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(CODEBOOK_SIZE, CODE_DIM)
        self.register_buffer("codebook_used", torch.zeros(64))

    def codebook(self):
        return F.normalize(self.embedding.weight, dim=-1)

    def codes(self, z):  # z: b c h w -> b h w
        flat = F.normalize(z.permute(0, 2, 3, 1).reshape(-1, CODE_DIM), dim=-1)
        e = self.codebook()
        d = (flat**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * flat @ e.T
        return d.argmin(1).reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes):  # b h w -> b c h w
        return self.codebook()[codes].permute(0, 3, 1, 2)


class VQModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()
        self.quantize = Quantize()
        self.quant_conv = nn.Conv2d(CFG["z_channels"], CODE_DIM, 1)
        self.post_quant_conv = nn.Conv2d(CODE_DIM, CFG["z_channels"], 1)

    def decode_codes(self, codes):
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes)))


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def main():
    torch.manual_seed(0)
    model = VQModel().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial GroupNorm affine params
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
        image = torch.rand(2, CFG["in_channels"], IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
        latents = model.quant_conv(model.encoder(image))
        codes = model.quantize.codes(latents)
        recon = model.decode_codes(codes)
        h = IMAGE_SIZE // 2 ** (len(CFG["ch_mult"]) - 1)
        fixed = torch.randint(
            0, CODEBOOK_SIZE, (2, h, h), generator=torch.Generator().manual_seed(1)
        )
        decoded = model.decode_codes(fixed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, "tests/data/llamagen_vq_tiny.safetensors")
    np.savez_compressed(
        "tests/data/llamagen_vq_tiny_golden.npz",
        image=nhwc(image), latents=nhwc(latents), codes=codes.numpy().astype(np.int32),
        recon=nhwc(recon), fixed_codes=fixed.numpy().astype(np.int32), decoded=nhwc(decoded),
    )  # fmt: skip
    print("params:", sum(v.numel() for v in state.values()))


if __name__ == "__main__":
    main()
