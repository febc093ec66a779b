"""Golden data for the Flax FID InceptionV3 (tests/test_inception.py).

Builds the FID InceptionV3 in PyTorch (independent code following pytorch-fid's FID variant:
torchvision's block layout and attribute names, the FIDInceptionA/C/E_1 average pools with
``count_include_pad=False``, the max-pool branch of FIDInceptionE_2, 1008 classes) with every
channel count scaled by WIDTH (the full network is ~95 MB), random weights and calibrated,
non-trivial BatchNorm running statistics. Writes to tests/data/:

- inception_golden_weights.pth: the torch state dict (float16 values, pytorch-fid's names);
- inception_golden_outputs.npz: two uint8 images [2, H, W, 3] and the float64 reference outputs
  (pool, logits, logits_unbiased, spatial) computed as pytorch-fid does: x/255, bilinear resize
  (align_corners=False) to SIZE, 2x-1, network.

Run: .venv/bin/python tests/golden/make_inception_golden.py
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WIDTH = 1 / 16
NUM_CLASSES = 1008
IMAGE_SIZE = 96  # stored images
SIZE = 107  # network input after resizing: the smallest giving Mixed_7c a 2x2 map
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")


def ch(c: int) -> int:
    return max(1, int(round(c * WIDTH)))


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, ch(cout), bias=False, **kw)
        self.bn = nn.BatchNorm2d(ch(cout), eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def avg_no_pad(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(ch(48), 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)
        self.out_channels = ch(64) + ch(64) + ch(96) + ch(pool_features)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_no_pad(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(64), 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(ch(96), 96, kernel_size=3, stride=2)
        self.out_channels = ch(384) + ch(96) + cin

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(ch(c7), c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(ch(c7), 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(ch(c7), c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(ch(c7), c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(ch(c7), c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(ch(c7), 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)
        self.out_channels = 4 * ch(192)
        self.last_branch1x1 = None

    def forward(self, x):
        b1 = self.branch1x1(x)
        self.last_branch1x1 = b1
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(avg_no_pad(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(ch(192), 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(ch(192), 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(ch(192), 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(ch(192), 192, kernel_size=3, stride=2)
        self.out_channels = ch(320) + ch(192) + cin

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(b7))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """pool="avg": FIDInceptionE_1 (no-pad average); pool="max": FIDInceptionE_2."""

    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(ch(384), 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(ch(384), 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(ch(448), 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(ch(384), 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(ch(384), 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)
        self.out_channels = ch(320) + 4 * ch(384) + ch(192)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = avg_no_pad(x)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(ch(32), 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(ch(32), 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(ch(64), 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(ch(80), 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(ch(192), 32)
        self.Mixed_5c = FIDInceptionA(self.Mixed_5b.out_channels, 64)
        self.Mixed_5d = FIDInceptionA(self.Mixed_5c.out_channels, 64)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels)
        self.Mixed_6b = FIDInceptionC(self.Mixed_6a.out_channels, 128)
        self.Mixed_6c = FIDInceptionC(self.Mixed_6b.out_channels, 160)
        self.Mixed_6d = FIDInceptionC(self.Mixed_6c.out_channels, 160)
        self.Mixed_6e = FIDInceptionC(self.Mixed_6d.out_channels, 192)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels)
        self.Mixed_7b = FIDInceptionE(self.Mixed_7a.out_channels, "avg")
        self.Mixed_7c = FIDInceptionE(self.Mixed_7b.out_channels, "max")
        self.fc = nn.Linear(self.Mixed_7c.out_channels, NUM_CLASSES)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        spatial = self.Mixed_6d.last_branch1x1[:, :7].permute(0, 2, 3, 1).flatten(1)
        return {
            "pool": pool,
            "logits": self.fc(pool),
            "logits_unbiased": pool @ self.fc.weight.T,
            "spatial": spatial,
        }


def golden_images() -> np.ndarray:
    """Two fixed uint8 images [2, IMAGE_SIZE, IMAGE_SIZE, 3]: smooth patterns plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    a = np.stack([np.sin(6 * xx), np.cos(4 * yy), np.sin(3 * (xx + yy))], -1)
    b = np.stack([xx * yy, np.cos(9 * xx * yy), (xx - yy) ** 2], -1)
    imgs = np.stack([a, b]) * 0.4 + 0.5 + 0.1 * rng.standard_normal((2, IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(np.round(imgs * 255), 0, 255).astype(np.uint8)


def preprocess(images: np.ndarray) -> torch.Tensor:
    """As pytorch-fid: [0,1] NCHW, bilinear resize (align_corners=False), then 2x-1."""
    x = torch.from_numpy(images).double().permute(0, 3, 1, 2) / 255.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def calibration_inputs(count: int = 16) -> torch.Tensor:
    """Varied smooth random images in [-1, 1] [count, 3, SIZE, SIZE] (random Fourier sums)."""
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, SIZE), torch.linspace(0, 1, SIZE), indexing="ij")
    freq = torch.rand(count, 3, 4, 2, generator=g, dtype=torch.float64) * 12
    phase = torch.rand(count, 3, 4, 1, 1, generator=g, dtype=torch.float64) * 6.3
    arg = freq[..., 0, None, None] * xx + freq[..., 1, None, None] * yy + phase
    x = torch.sin(arg).mean(2) * (0.5 + torch.rand(count, 1, 1, 1, generator=g))
    x = x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.clamp(-1, 1).double()


def build_model() -> FIDInceptionV3:
    torch.manual_seed(0)
    model = FIDInceptionV3().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None  # running stats = (cumulative) batch statistics
        # Calibrate the running statistics on random inputs so activations stay O(1),
        # then perturb them: non-trivial mean / var that the port must apply exactly.
        model.train()
        model(calibration_inputs())
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn_like(m.running_mean))
                m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
                # Near-constant channels would amplify rounding errors: floor their variance.
                m.running_var.clamp_(min=0.3 * float(m.running_var.median()))
        # Round every value to float16 so the stored weights are exactly what is evaluated.
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().double())
    return model


def main() -> None:
    model = build_model()
    images = golden_images()
    with torch.no_grad():
        outputs = model(preprocess(images))
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.save(state, os.path.join(OUT_DIR, "inception_golden_weights.pth"))
    arrays = {k: v.numpy().astype(np.float64) for k, v in outputs.items()}
    np.savez(
        os.path.join(OUT_DIR, "inception_golden_outputs.npz"),
        images=images,
        width_multiplier=np.float64(WIDTH),
        size=np.int64(SIZE),
        **arrays,
    )
    print({k: v.shape for k, v in arrays.items()}, "std(pool)", arrays["pool"].std())


if __name__ == "__main__":
    main()
