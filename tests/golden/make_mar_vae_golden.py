"""Golden data for tests/test_convert_mar_vae.py, made by MAR's OWN KL-VAE code.

Follows LTH14/mar at commit fe470ac24afbee924668d8c5c83e9fec60af3a73 (2024-09-27; its
``models/vae.py`` last changed in e0cccf8341aa3276069a5bf2eb4bcb83bebafa4e). The source is not
vendored: ``MAR_SRC`` points at a checkout of that commit, or, without it, the script clones
https://github.com/LTH14/mar into a temporary directory and checks that commit out. Only
``models/vae.py`` is imported (by file path; it needs torch and numpy only): its
``AutoencoderKL`` (``encode`` -> ``DiagonalGaussianDistribution``, ``decode``), ``Encoder`` and
``Decoder``, run on CPU.

Tiny sizes: ``AutoencoderKL(embed_dim=4, ch_mult=(1, 2))`` whose encoder / decoder are replaced
by MAR's ``Encoder`` / ``Decoder`` with ``ch=8, ch_mult=(1, 2), num_res_blocks=2,
resolution=16, z_channels=4`` (encoder: ``double_z=True``, ``attn_resolutions=(8,)``, i.e.
attention at the lowest level as kl16's (16,) at 256 px; decoder: ``attn_resolutions=()``).
``AutoencoderKL`` hard-codes ``ch=128`` and ``Normalize`` 32 GroupNorm groups, which would make
the file megabytes; ``Normalize`` is called here with its own ``num_groups`` argument set to 4
(group sizes 2 and 4, so the channel grouping is exercised). Every parameter random (GroupNorm
scales around 1); two logvar biases of ``quant_conv`` are pushed past MAR's clamp [-30, 20].

Writes tests/data/mar_vae_tiny.safetensors (the float32 state dict, LDM names) and
tests/data/mar_vae_tiny_golden.npz (NHWC): ``image`` [2, 16, 16, 3] in [-1, 1], ``moments``
(quant_conv output, [2, 8, 8, 8]), the posterior's ``mean`` and clamped ``logvar``
([2, 8, 8, 4]), ``decoded`` = ``decode(mean)``, and ``latents`` (fixed random [2, 8, 8, 4])
with ``decoded_latents`` = ``decode(latents)``.

    MAR_SRC=/path/to/mar .venv/bin/python tests/golden/make_mar_vae_golden.py
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

COMMIT = "fe470ac24afbee924668d8c5c83e9fec60af3a73"
DATA = Path(__file__).resolve().parents[1] / "data"
SIZES = dict(ch=8, ch_mult=(1, 2), num_res_blocks=2, resolution=16, z_channels=4, dropout=0.0)
EMBED_DIM, GROUPS, IMAGE_SIZE = 4, 4, 16


def checkout(tmp: str) -> Path:
    src = os.environ.get("MAR_SRC")
    if src:
        return Path(src)
    dest = Path(tmp, "mar")
    subprocess.run(["git", "clone", "-q", "https://github.com/LTH14/mar", str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", COMMIT], check=True)
    return dest


def import_vae(src: Path):
    path = src / "models" / "vae.py"
    if not path.exists():
        raise SystemExit(f"{path} not found: set MAR_SRC to a LTH14/mar checkout ({COMMIT[:7]})")
    spec = importlib.util.spec_from_file_location("mar_vae_original", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Normalize = functools.partial(module.Normalize, num_groups=GROUPS)
    return module


def build(vae) -> torch.nn.Module:
    model = vae.AutoencoderKL(embed_dim=EMBED_DIM, ch_mult=SIZES["ch_mult"])
    model.encoder = vae.Encoder(**SIZES, attn_resolutions=(8,), double_z=True)
    model.decoder = vae.Decoder(**SIZES, attn_resolutions=())
    return model.eval()


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(noise / max(p[0].numel(), 1) ** 0.5)
        bias = model.quant_conv.bias  # logvar half: one channel above 20, one below -30
        bias[EMBED_DIM] += 25.0
        bias[EMBED_DIM + 1] -= 40.0


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vae = import_vae(checkout(tmp))
    gen = torch.Generator().manual_seed(0)
    model = build(vae)
    randomize(model, gen)
    h = IMAGE_SIZE // 2 ** (len(SIZES["ch_mult"]) - 1)
    with torch.no_grad():
        image = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1
        posterior = model.encode(image)
        decoded = model.decode(posterior.mean)
        latents = torch.randn(2, EMBED_DIM, h, h, generator=gen)
        decoded_latents = model.decode(latents)
    logvar = nhwc(posterior.logvar)
    assert logvar.max() == 20.0 and logvar.min() == -30.0, "clamp not exercised"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(DATA / "mar_vae_tiny.safetensors"))
    np.savez_compressed(
        DATA / "mar_vae_tiny_golden.npz",
        image=nhwc(image), moments=nhwc(posterior.parameters), mean=nhwc(posterior.mean),
        logvar=logvar, decoded=nhwc(decoded), latents=nhwc(latents),
        decoded_latents=nhwc(decoded_latents),
    )  # fmt: skip
    print("params:", sum(v.numel() for v in state.values()), "keys:", len(state))


if __name__ == "__main__":
    main()
