"""Parameter names and shapes of the released LlamaGen GPT-B / VQ-16 and VAR-d16 / VQVAE
checkpoints, built by the originals' own constructors (for tests/test_convert_release_shapes.py,
which resolves the convert commands' configs on full-size layouts without the weights).

Follows LlamaGen ce98ec41803a74a90ce68c40ababa9eaeffeb4ec and VAR
78b95394fc5896192e3a003e4b295f8ea743c48f (see make_llamagen_workdir_golden.py /
make_var_workdir_golden.py for ``LLAMAGEN_SRC`` / ``VAR_SRC``). Builds the models on CPU with
random init (about 3 GB of memory) and writes only ``{model: {name: shape}}`` to
tests/data/release_shapes.json:

- ``llamagen_gpt_b``: ``GPT_B(vocab_size=16384, block_size=256, num_classes=1000)`` (c2i_B_256);
- ``llamagen_vq16``: ``VQ_16()`` (vq_ds16_c2i.pt);
- ``var_d16``, ``var_vae``: ``build_vae_var(depth=16, ...)`` as VAR's train.py calls it
  (var_d16.pth, vae_ch160v4096z32.pth).

    LLAMAGEN_SRC=... VAR_SRC=... .venv/bin/python tests/golden/make_release_shapes.py
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "data" / "release_shapes.json"


def _import(env: str, *modules: str):
    src = os.environ.get(env)
    if not src:
        raise SystemExit(f"set {env} to a checkout of the original")
    sys.path.insert(0, src)
    try:
        return [importlib.import_module(m) for m in modules]
    finally:
        sys.path.remove(src)


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def main() -> None:
    out = {}
    gpt, vq_model = _import("LLAMAGEN_SRC", "autoregressive.models.gpt",
                            "tokenizer.tokenizer_image.vq_model")  # fmt: skip
    out["llamagen_gpt_b"] = shapes(gpt.GPT_B(vocab_size=16384, block_size=256, num_classes=1000))
    out["llamagen_vq16"] = shapes(vq_model.VQ_16())
    for name in [m for m in sys.modules if m == "utils" or m.startswith("utils.")]:
        del sys.modules[name]  # LlamaGen's utils package; VAR has its own
    if "huggingface_hub" not in sys.modules:
        try:
            import huggingface_hub  # noqa: F401
        except ImportError:  # only VARHF uses it
            sys.modules["huggingface_hub"] = types.SimpleNamespace(PyTorchModelHubMixin=object)
    (models,) = _import("VAR_SRC", "models")
    vae, var = models.build_vae_var(
        device="cpu", V=4096, Cvae=32, ch=160, share_quant_resi=4, num_classes=1000, depth=16,
        shared_aln=False, attn_l2_norm=True, flash_if_available=False, fused_if_available=False,
    )  # fmt: skip
    out["var_d16"], out["var_vae"] = shapes(var), shapes(vae)
    lines = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(out.items())]
    OUT.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # one model per line
    print({k: len(v) for k, v in out.items()})


if __name__ == "__main__":
    main()
