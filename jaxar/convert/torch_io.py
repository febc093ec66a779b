"""Reading the originals' checkpoint files safely: no pickled code is ever executed.

``.pt``/``.pth``/``.bin``/``.ckpt`` go through ``torch.load(weights_only=True)`` with exactly
the classes the originals' training scripts pickle allow-listed (``SAFE_GLOBALS``:
LlamaGen stores its ``argparse.Namespace`` under ``"args"``; VAR stores plain dicts); any
other pickled class is refused with an error naming it. ``.safetensors`` is read directly.

Layouts unwrapped by ``select_weights`` (first match wins, EMA weights preferred):

- a plain state dict (released weights, FSDP consolidations);
- ``{"ema": ...}`` (LlamaGen training with ``--ema``) before ``{"model": ...}`` (LlamaGen
  training, DDP), ``{"module": ...}`` (DeepSpeed), ``{"state_dict": ...}``;
- ``{"trainer": {"var_wo_ddp": ..., "vae_local": ...}}`` (VAR's ``ar-ckpt-*.pth``).

torch is the optional ``convert`` extra and is imported only when a torch file is read.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import numpy as np
from etils import epath

# The only non-tensor classes the originals' checkpoints hold (LlamaGen: train args).
SAFE_GLOBALS = (argparse.Namespace,)
# Wrapper keys, in order of preference, for each kind of weights.
WRAPPERS = {
    "model": ("ema", "model", "module", "state_dict", "trainer.var_wo_ddp"),
    "vae": ("ema", "model", "module", "state_dict", "trainer.vae_local"),
}
_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.")


def load_file(path: str | epath.PathLike) -> Any:
    """The raw object stored in a checkpoint file (tensors stay torch tensors)."""
    path = epath.Path(path)
    name = path.name
    if name.endswith(".safetensors"):
        from safetensors.numpy import load as load_bytes

        return load_bytes(path.read_bytes())
    if not name.endswith((".pt", ".pth", ".bin", ".ckpt")):
        raise ValueError(
            f"unsupported checkpoint {str(path)!r}: expected .pt/.pth/.bin/.ckpt/.safetensors"
        )
    import pickle

    import torch  # optional dependency ('convert' extra)

    with path.open("rb") as f, torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            allowed = [c.__module__ + "." + c.__qualname__ for c in SAFE_GLOBALS]
            raise ValueError(
                f"refusing to load {str(path)!r}: it pickles {_pickled_name(err)}, which is "
                f"not among the classes the originals' checkpoints hold {allowed}; loading it "
                "would run code"
            ) from None


def _pickled_name(err: Exception) -> str:
    """The offending global of torch's weights-only error (or its first line)."""
    match = re.search(r"GLOBAL (\S+)", str(err))
    return repr(match.group(1)) if match else str(err).strip().splitlines()[0]


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(_is_array(v) for v in value.values())


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ in ("Tensor", "Parameter")


def _lookup(raw: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(raw, dict) or key not in raw:
            return None
        raw = raw[key]
    return raw


def select_weights(raw: Any, path: str, kind: str = "model") -> tuple[dict[str, np.ndarray], str]:
    """(flat name -> float32 numpy state dict, which entry was used) of a loaded file.

    ``kind``: "model" (a GPT / VAR / VQ model) or "vae" (VAR's VQVAE inside a trainer file)."""
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a dict of weights, got {type(raw).__name__}")
    if _is_state_dict(raw):
        return _as_numpy(raw), "the top-level state dict"
    for key in WRAPPERS[kind]:
        value = _lookup(raw, key)
        if _is_state_dict(value):
            return _as_numpy(value), f"the {key!r} entry"
    nested = {k: sorted(v)[:6] for k, v in raw.items() if isinstance(v, dict)}
    raise ValueError(
        f"{path}: found no weights; top-level keys {sorted(raw)[:12]}, nested dicts {nested}; "
        f"expected a state dict or one of {list(WRAPPERS[kind])}"
    )


def _as_numpy(state: dict) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        if not isinstance(value, np.ndarray):
            value = value.detach().float().numpy()
        out[key] = np.asarray(value, np.float32)
    return out


def read_weights(
    path: str | epath.PathLike, kind: str = "model"
) -> tuple[dict[str, np.ndarray], str]:
    """Loads a checkpoint safely and unwraps its weights -> (state dict, source description)."""
    return select_weights(load_file(path), str(path), kind)
