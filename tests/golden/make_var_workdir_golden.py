"""Golden data for tests/test_convert_var_workdir.py, made by VAR's OWN code.

Follows FoundationVision/VAR at commit 78b95394fc5896192e3a003e4b295f8ea743c48f
(2025-11-10). The source is not vendored: point ``VAR_SRC`` at a checkout of that commit
(``git clone https://github.com/FoundationVision/VAR``); this script imports ``models.var``
(``VAR``, ``autoregressive_infer_cfg``), ``models.vqvae`` (``VQVAE``: ``img_to_idxBl``,
``fhat_to_img``) and ``models.basic_vae`` (``Encoder``, ``Decoder``) from it and runs them on
CPU (flash-attn / xformers are optional there). ``huggingface_hub`` (imported by
``models/var.py`` only for its ``VARHF`` wrapper) is replaced by an empty stand-in module when
it is not installed; nothing here uses it.

Tiny sizes, every parameter random (rounded to float16, the stored precision):
- VQVAE: ``VQVAE(vocab_size=16, z_channels=4, ch=32, v_patch_nums=(1, 2, 3, 4))`` (3x3
  quant_conv / post_quant_conv, 4 partially shared Phi) whose encoder / decoder are VAR's
  ``Encoder`` / ``Decoder`` with ``ch=32, ch_mult=(1, 1), num_res_blocks=1`` (``VQVAE``
  hard-codes ch_mult=(1, 1, 2, 2, 4); GroupNorm needs 32 | width): 8 x 8 images, 4 x 4 latents.
- VAR: ``VAR(vae, num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=(1, 2, 3, 4))``
  with ``attn_l2_norm=True`` and per-block adaLN (the d16-d30 layout) and a second one with
  ``shared_aln=True`` (the d36 layout).

Writes tests/data/var_orig_{var,var_saln,vae}.safetensors (float16 state dicts) and
tests/data/var_orig_golden.npz: ``labels``; for cfg 0 / 1.5 / 4 with ``top_k=1`` (VAR's sampler
has no greedy mode; top-1 is its greedy choice) the codes ``autoregressive_infer_cfg`` drew
(scales concatenated, [B, 30]) and its images (NHWC, in [0, 1]); an image and its VQVAE codes.

    VAR_SRC=/path/to/VAR .venv/bin/python tests/golden/make_var_workdir_golden.py
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

DATA = Path(__file__).resolve().parents[1] / "data"
PATCH_NUMS = (1, 2, 3, 4)
LABELS = [0, 3, 4]
CFGS = {"cfg0": 0.0, "cfg1.5": 1.5, "cfg4": 4.0}


def original():
    src = os.environ.get("VAR_SRC")
    if not src or not Path(src, "models", "var.py").exists():
        raise SystemExit("set VAR_SRC to a VAR checkout (commit 78b9539)")
    sys.path.insert(0, src)
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:  # only VARHF uses it
        sys.modules["huggingface_hub"] = types.SimpleNamespace(PyTorchModelHubMixin=object)
    from models import basic_vae, var, vqvae

    return var, vqvae, basic_vae


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random (norm scales around 1), rounded to float16 precision."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("scale_mul_1H11"):
                value = 1.0 + 0.3 * noise  # log attention scale
            elif "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif "emb" in name or "pos_" in name or name.endswith("ada_gss"):
                value = noise
            else:
                value = noise * (0.5 / max(p[0].numel(), 1) ** 0.5)
            p.copy_(value.half().float())


def build(var, vqvae, basic_vae, gen):
    vae = vqvae.VQVAE(vocab_size=16, z_channels=4, ch=32, v_patch_nums=PATCH_NUMS, test_mode=True)
    sizes = dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, dropout=0.0)
    vae.encoder, vae.decoder = basic_vae.Encoder(**sizes), basic_vae.Decoder(**sizes)
    kwargs = dict(num_classes=5, depth=2, embed_dim=32, num_heads=2, patch_nums=PATCH_NUMS,
                  attn_l2_norm=True, flash_if_available=False,
                  fused_if_available=False)  # fmt: skip
    models = {
        "var": var.VAR(vae, shared_aln=False, **kwargs),
        "var_saln": var.VAR(vae, shared_aln=True, **kwargs),
    }
    for module in (vae, *models.values()):
        randomize(module, gen)
        module.eval()
    with torch.no_grad():
        vae.quantize.embedding.weight.mul_(2.0)  # spread the codebook: several codes in use
    return vae, models


def sample(var, model, cfg: float):
    """Runs ``autoregressive_infer_cfg`` and records the codes its sampler returned."""
    drawn, inner = [], var.sample_with_top_k_top_p_

    def recording(*args, **kwargs):
        idx = inner(*args, **kwargs)
        drawn.append(idx[:, :, 0].clone())
        return idx

    var.sample_with_top_k_top_p_ = recording
    try:
        images = model.autoregressive_infer_cfg(
            len(LABELS), torch.tensor(LABELS), g_seed=0, cfg=cfg, top_k=1, top_p=0.0
        )
    finally:
        var.sample_with_top_k_top_p_ = inner
    return torch.cat(drawn, 1), images


def main() -> None:
    var, vqvae, basic_vae = original()
    gen = torch.Generator().manual_seed(0)
    vae, models = build(var, vqvae, basic_vae, gen)
    golden = {"labels": np.asarray(LABELS, np.int32)}
    with torch.no_grad():
        for model_name, model in models.items():
            for cfg_name, cfg in CFGS.items():
                codes, images = sample(var, model, cfg)
                key = f"{model_name}_{cfg_name}"
                golden["codes_" + key] = codes.numpy().astype(np.int32)
                golden["images_" + key] = images.permute(0, 2, 3, 1).numpy()
        image = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
        golden["image"] = image.permute(0, 2, 3, 1).numpy()
        golden["image_codes"] = torch.cat(vae.img_to_idxBl(image), 1).numpy().astype(np.int32)
    for name, module in (("vae", vae), *models.items()):
        state = {k: v.half().contiguous() for k, v in module.state_dict().items()}
        save_file(state, DATA / f"var_orig_{name}.safetensors")
    np.savez_compressed(DATA / "var_orig_golden.npz", **golden)
    print({k: v.shape for k, v in golden.items()})
    print("distinct codes:", {k: len(np.unique(v)) for k, v in golden.items() if "codes" in k})


if __name__ == "__main__":
    main()
