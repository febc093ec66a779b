"""Golden data for tests/test_convert_mar.py, made by MAR's OWN code.

Follows LTH14/mar at commit fe470ac24afbee924668d8c5c83e9fec60af3a73 (2024-09-27). The source
is not vendored: ``MAR_SRC`` points at a checkout of that commit, else the script clones the
repository into a temporary folder and checks the commit out. It imports ``models.mar``
(``MAR``: ``patchify``, ``random_masking``, ``forward_mae_encoder``, ``forward_mae_decoder``,
its ``diffloss.net``, ``models/diffloss.py``'s ``SimpleMLPAdaLN``) and runs them on CPU.

MAR needs timm's ``vision_transformer.Block``: MAR's environment pins timm 0.9.12, install it
into a side folder (``pip install --no-deps --target DIR timm==0.9.12``, then
``PYTHONPATH=DIR``; it is no dependency of jaxar). timm imports torchvision at import time for
parts MAR never uses; when torchvision cannot be imported (no build matching the installed
torch) empty stand-in modules take its place.

A tiny MAR: ``img_size=128, vae_stride=16, patch_size=2, vae_embed_dim=4`` (8x8 latents, 4x4
tokens of 16 values), encoder 32 wide, 2 blocks, 4 heads; decoder 24 wide, 1 block, 2 heads
(widths and heads differ so transposes and head splits show); 10 classes, buffer_size 4,
diffusion head 2 blocks 32 wide; LayerNorm eps 1e-6 (as ``mar_base`` passes it). Every
parameter is random (including the ones MAR zero-initialises: adaLN, the head's final layer,
``mask_token``, ``fake_latent``, position embeddings), rounded to float16 (the stored
precision).

Writes tests/data/mar_tiny.safetensors (the float16 state dict) and
tests/data/mar_tiny_golden.npz:

- ``latents`` [2, 4, 8, 8] (NCHW, MAR's layout), ``tokens`` = ``patchify(latents)``;
- ``labels`` [2]: row 1 is 10 = the null class, i.e. the ``fake_latent`` class embedding
  (what ``sample_tokens`` uses for CFG's unconditional half);
- ``mask`` [2, 16] from ``random_masking`` (seeded orders and ratio), ``z`` the decoder
  output ``forward_mae_decoder(forward_mae_encoder(tokens, mask, cls), mask)`` [2, 16, 24];
  ``z_all`` for the all-masked first sampling step (``mask_all``);
- ``head_x`` [6, 16], ``head_t`` [6] (int), ``head_c`` [6, 24], ``head_out`` [6, 32]:
  ``diffloss.net(head_x, head_t, head_c)``.

    PYTHONPATH=/path/to/timm-0.9.12 [MAR_SRC=/path/to/mar] \
        .venv/bin/python tests/golden/make_mar_golden.py
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

COMMIT = "fe470ac24afbee924668d8c5c83e9fec60af3a73"
REPO = "https://github.com/LTH14/mar"
DATA = Path(__file__).resolve().parents[1] / "data"
SIZES = dict(img_size=128, vae_stride=16, patch_size=2, vae_embed_dim=4,
             encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=4,
             decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0,
             class_num=10, buffer_size=4, diffloss_d=2, diffloss_w=32, attn_dropout=0.0,
             proj_dropout=0.0, num_sampling_steps="100")  # fmt: skip


def checkout(tmp: str) -> str:
    src = os.environ.get("MAR_SRC")
    if src:
        if not Path(src, "models", "mar.py").exists():
            raise SystemExit(f"MAR_SRC={src} is not a checkout of {REPO}")
        return src
    src = str(Path(tmp) / "mar")
    subprocess.run(["git", "clone", "-q", REPO, src], check=True)
    subprocess.run(["git", "-C", src, "checkout", "-q", COMMIT], check=True)
    return src


class _Anything(type):
    def __getattr__(cls, name):
        return _Anything(name, (), {})


def stub_torchvision() -> None:
    """Empty stand-ins for the torchvision modules timm imports (MAR uses none of them);
    ``InterpolationMode`` stays missing so timm takes its PIL fallback."""

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__") or name == "InterpolationMode":
                raise AttributeError(name)
            return _Anything(name, (), {})

    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc",
                 "torchvision.datasets", "torchvision.transforms",
                 "torchvision.transforms.functional"):  # fmt: skip
        module = Stub(name)
        module.__path__ = []
        sys.modules[name] = module


def original(src: str):
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure to load: MAR needs none of it
        for name in [n for n in sys.modules if n.startswith("torchvision")]:
            del sys.modules[name]
        stub_torchvision()
    import timm

    if timm.__version__ != "0.9.12":
        print(f"note: timm {timm.__version__} (MAR's environment pins 0.9.12)")
    sys.path.insert(0, src)
    from models import mar

    return mar


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random (LayerNorm scales around 1), rounded to float16 precision."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name or "_ln" in name) and name.endswith("weight"):
                value = 1.0 + 0.2 * noise
            elif p.ndim == 1:  # biases
                value = 0.2 * noise
            elif name in ("class_emb.weight", "fake_latent", "mask_token") or "pos_embed" in name:
                value = noise
            else:  # Linear [out, in]
                value = noise / p.shape[1] ** 0.5
            p.copy_(value.half().float())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mar = original(checkout(tmp))
        torch.manual_seed(0)
        norm = functools.partial(torch.nn.LayerNorm, eps=1e-6)
        model = mar.MAR(norm_layer=norm, **SIZES)
        randomize(model, torch.Generator().manual_seed(0))
        model.eval()

        gen = torch.Generator().manual_seed(1)
        latents = torch.randn(2, 4, 8, 8, generator=gen)
        labels = np.array([3, 10])  # 10: the null class (fake_latent)
        np.random.seed(0)
        orders = torch.tensor(np.stack([np.random.permutation(model.seq_len) for _ in range(2)]))
        with torch.no_grad():
            tokens = model.patchify(latents)
            mask = model.random_masking(tokens, orders)
            cls = torch.cat([model.class_emb(torch.tensor(labels[:1])), model.fake_latent])
            z = model.forward_mae_decoder(model.forward_mae_encoder(tokens, mask, cls), mask)
            mask_all = torch.ones_like(mask)
            z_all = model.forward_mae_decoder(
                model.forward_mae_encoder(tokens, mask_all, cls), mask_all
            )
            head_x = torch.randn(6, model.token_embed_dim, generator=gen)
            head_t = torch.tensor([0, 1, 10, 250, 500, 999])
            head_c = torch.randn(6, SIZES["decoder_embed_dim"], generator=gen)
            head_out = model.diffloss.net(head_x, head_t, head_c)
        masked = int(mask[0].sum())
        assert 0 < masked < model.seq_len, masked  # some known tokens, some dropped
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        DATA.mkdir(parents=True, exist_ok=True)
        save_file(state, str(DATA / "mar_tiny.safetensors"))
        arrays = dict(latents=latents, tokens=tokens, mask=mask.bool(), z=z,
                      mask_all=mask_all.bool(), z_all=z_all, head_x=head_x, head_t=head_t,
                      head_c=head_c, head_out=head_out)  # fmt: skip
        out = {k: v.numpy() for k, v in arrays.items()}
        np.savez_compressed(DATA / "mar_tiny_golden.npz", labels=labels, **out)
        print(f"{len(state)} tensors, {masked}/{model.seq_len} masked; z {tuple(z.shape)}")


if __name__ == "__main__":
    main()
