"""Converts the FID InceptionV3 weights (a PyTorch state dict) into a jaxar params file.

The public FID weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a port of
TensorFlow's ``inception-2015-12-05`` graph). Download them yourself, then::

    python -m jaxar.convert.inception --input pt_inception-2015-12-05-6726825d.pth \
        --output inception_fid.npz

and load the result with ``jaxar.eval.inception.load_inception_params``. Torch is only needed
to read the ``.pth`` file; ``convert_state_dict`` works on numpy arrays.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from jaxar.eval.inception import (
    FID_INCEPTION,
    InceptionConfig,
    save_inception_params,
    validate_variables,
)

# torch BatchNorm name -> (flax collection, flax name)
_BN_NAMES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torch state dict (``weights_only=True``) -> ``{name: float32 numpy array}``."""
    import torch  # only needed here

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"torch checkpoint {path!r} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
    return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _convert_key(name: str, value: np.ndarray) -> tuple[str, np.ndarray] | None:
    """One torch entry -> (flat flax key, array), or None for entries to drop."""
    parts = name.split(".")
    if parts[-1] == "num_batches_tracked":
        return None
    if parts[0] == "fc" and len(parts) == 2:
        if parts[1] == "weight":  # [num_classes, 2048] -> [2048, num_classes]
            return "params/fc_kernel", value.T
        return f"params/fc_{parts[1]}", value
    if len(parts) >= 3 and parts[-2] == "conv" and parts[-1] == "weight":
        # [out, in, kh, kw] -> [kh, kw, in, out]
        return "params/" + "/".join(parts[:-2]) + "/conv/kernel", value.transpose(2, 3, 1, 0)
    if len(parts) >= 3 and parts[-2] == "bn" and parts[-1] in _BN_NAMES:
        collection, leaf = _BN_NAMES[parts[-1]]
        return f"{collection}/" + "/".join(parts[:-2]) + f"/bn/{leaf}", value
    return f"<unrecognised>/{name}", value


def convert_state_dict(
    state_dict: Mapping[str, Any], config: InceptionConfig = FID_INCEPTION
) -> dict[str, Any]:
    """pytorch-fid FID-Inception state dict -> Flax variables ``{"params", "batch_stats"}``.

    Raises ValueError naming missing / unexpected keys or wrong shapes.
    """
    flat = {}
    for name, value in state_dict.items():
        converted = _convert_key(name, np.asarray(value, dtype=np.float32))
        if converted is not None:
            flat[converted[0]] = np.ascontiguousarray(converted[1])
    validate_variables(flat, config, "torch state dict")
    return traverse_util.unflatten_dict(flat, sep="/")


def convert_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    config: InceptionConfig = FID_INCEPTION,
) -> dict[str, Any]:
    """Reads a ``.pth`` state dict, converts it and writes a ``.npz`` / ``.safetensors`` file."""
    variables = convert_state_dict(load_torch_state_dict(input_path), config)
    save_inception_params(output_path, variables)
    return variables


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="pt_inception-2015-12-05-*.pth")
    parser.add_argument("--output", required=True, help="output .npz or .safetensors")
    parser.add_argument("--width_multiplier", type=float, default=1.0)
    parser.add_argument("--num_classes", type=int, default=1008)
    args = parser.parse_args(argv)
    config = InceptionConfig(width_multiplier=args.width_multiplier, num_classes=args.num_classes)
    variables = convert_file(args.input, args.output, config)
    count = sum(v.size for v in traverse_util.flatten_dict(variables).values())
    print(f"wrote {args.output}: {count} values")


if __name__ == "__main__":
    main()
