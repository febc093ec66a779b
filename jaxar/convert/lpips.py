"""Build the LPIPS weight file read by ``jaxar.tokenizers.lpips.load_lpips_params``.

Inputs are local files only: torchvision's VGG16 ImageNet state dict (``vgg16-397923b5.pth``,
keys ``features.N.weight``/``bias``) and the LPIPS linear heads (``vgg.pth`` from the LPIPS
repository, keys ``lin{k}.model.1.weight`` of shape [1, C, 1, 1]). Torch (the ``convert``
extra) is needed to read them.

    python -m jaxar.convert.lpips --vgg vgg16-397923b5.pth --lin vgg.pth --out lpips_vgg.npz
"""

from __future__ import annotations

import argparse

import numpy as np

# torchvision ``features`` index of each conv, in order conv1_1, conv1_2, conv2_1, ...
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_NAMES = tuple(
    f"conv{b}_{i}" for b, depth in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, depth + 1)
)


def convert(vgg_state: dict[str, np.ndarray], lin_state: dict[str, np.ndarray]) -> dict:
    """Flat ``{"conv1_1.kernel": HWIO, ..., "lin0.kernel": [1, 1, C, 1]}`` float32 arrays."""
    out = {}
    for index, name in zip(VGG16_CONV_INDICES, VGG16_CONV_NAMES):
        weight = np.asarray(vgg_state[f"features.{index}.weight"], np.float32)
        out[f"{name}.kernel"] = np.transpose(weight, (2, 3, 1, 0))
        out[f"{name}.bias"] = np.asarray(vgg_state[f"features.{index}.bias"], np.float32)
    for k in range(5):
        weight = np.asarray(lin_state[f"lin{k}.model.1.weight"], np.float32)  # [1, C, 1, 1]
        out[f"lin{k}.kernel"] = np.transpose(weight, (2, 3, 1, 0))
    return out


def _load_torch(path: str) -> dict[str, np.ndarray]:
    import torch  # optional dependency ('convert' extra)

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert VGG16 + LPIPS heads to an .npz file")
    parser.add_argument("--vgg", required=True, help="torchvision vgg16 state dict (.pth)")
    parser.add_argument("--lin", required=True, help="LPIPS linear heads (vgg.pth)")
    parser.add_argument("--out", required=True, help="output .npz")
    args = parser.parse_args(argv)
    flat = convert(_load_torch(args.vgg), _load_torch(args.lin))
    np.savez(args.out, **flat)
    print(f"wrote {len(flat)} arrays to {args.out}")


if __name__ == "__main__":
    main()
