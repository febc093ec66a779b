"""InceptionV3 as used for FID / IS / precision-recall, in Flax linen.

This is the "FID Inception" network: the TensorFlow ``inception-2015-12-05`` graph as ported to
PyTorch by pytorch-fid (weights ``pt_inception-2015-12-05-6726825d.pth``). It differs from
torchvision's InceptionV3 in three places:

- the average pools inside Mixed_5b..5d (A blocks), Mixed_6b..6e (C blocks) and Mixed_7b (first
  E block) exclude the zero padding from the average (``count_include_pad=False``);
- the pool branch of Mixed_7c (second E block) is a 3x3 *max* pool, not an average pool;
- the classifier has 1008 classes.

Every conv is conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU. Sub-module names
mirror the PyTorch attribute names (``Mixed_6d/branch7x7dbl_3/conv``) so that conversion is a
plain renaming (see ``jaxar/convert/inception.py``).

Outputs (a dict):
- ``pool``: [B, 2048] final average pool ("pool_3"), the FID / precision-recall features;
- ``logits_unbiased``: [B, num_classes] ``pool @ W`` without the bias, the logits the reference
  Inception Score code (improved-gan, the ADM evaluator) applies softmax to;
- ``logits``: [B, num_classes] ``pool @ W + b`` (torchvision's ``fc``);
- ``spatial``: [B, h*w*7] the first 7 channels of Mixed_6d's 1x1 branch ("mixed_6/conv"),
  flattened in NHWC order: the sFID features of the ADM evaluator (17*17*7 = 2023 at 299x299).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

MIN_INPUT_SIZE = 75  # the smallest spatial size the stride pattern accepts
FID_INPUT_SIZE = 299
SPATIAL_CHANNELS = 7


@dataclasses.dataclass(frozen=True)
class InceptionConfig:
    """Hyperparameters of the FID InceptionV3.

    width_multiplier: scales every channel count (1.0 is the real network; smaller values exist
        only for fast tests and keep the same block structure and parameter names).
    num_classes: classifier width (1008 for the FID weights).
    resize_to: inputs are bilinearly resized (half-pixel centres, no antialiasing, as
        ``F.interpolate(mode="bilinear", align_corners=False)``) to this square size; ``None``
        keeps the input size (must then be >= 75).
    dtype: activation dtype (parameters stay float32).
    precision: matmul / conv precision (``"highest"`` keeps TPU convs in full float32).
    """

    width_multiplier: float = 1.0
    num_classes: int = 1008
    resize_to: int | None = FID_INPUT_SIZE
    dtype: Any = jnp.float32
    precision: str = "highest"

    def __post_init__(self):
        if not self.width_multiplier > 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.resize_to is not None and self.resize_to < MIN_INPUT_SIZE:
            raise ValueError(f"resize_to must be >= {MIN_INPUT_SIZE}, got {self.resize_to}")

    def channels(self, base: int) -> int:
        """Channel count of a layer whose full-width count is ``base``."""
        return max(1, int(round(base * self.width_multiplier)))

    @property
    def feature_dim(self) -> int:
        """Width of the pool features (2048 at full width)."""
        c = self.channels
        return c(320) + 2 * c(384) * 2 + c(192)


FID_INCEPTION = InceptionConfig()  # the real network: full width, 1008 classes, 299x299


def _conv_init():
    return nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, None, "conv_in", "conv_out")
    )


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.  # [B,H,W,C] -> [B,H',W',F]"""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)
    dtype: Any = jnp.float32
    precision: str = "highest"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            dtype=self.dtype,
            precision=self.precision,
            kernel_init=_conv_init(),
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=True,
            epsilon=1e-3,
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
            name="bn",
        )(x)
        return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
    """3x3 / stride 1 / pad 1 average that ignores the padding (TensorFlow's behaviour)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


def conv_bn(cfg: InceptionConfig, name: str, base: int, kernel, strides=1, padding=(0, 0)):
    """A ``BasicConv2d`` with ``cfg.channels(base)`` outputs (call inside a compact method)."""
    if isinstance(kernel, int):
        kernel = (kernel, kernel)
    return BasicConv2d(
        cfg.channels(base),
        tuple(kernel),
        strides,
        tuple(padding),
        dtype=cfg.dtype,
        precision=cfg.precision,
        name=name,
    )


class _Block(nn.Module):
    config: InceptionConfig

    def conv(self, name, base, kernel, strides=1, padding=(0, 0)) -> BasicConv2d:
        return conv_bn(self.config, name, base, kernel, strides, padding)


class InceptionA(_Block):
    """Mixed_5b/5c/5d (35x35). FID variant: the average pool excludes padding."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64, 1)(x)
        b5 = self.conv("branch5x5_1", 48, 1)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=(2, 2))(b5)
        b3 = self.conv("branch3x3dbl_1", 64, 1)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=(1, 1))(b3)
        bp = self.conv("branch_pool", self.pool_features, 1)(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a: 35x35 -> 17x17."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, 3, strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64, 1)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=(1, 1))(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_6b..6e (17x17, factorised 7x7). FID variant: the average pool excludes padding.

    Returns ``(output, branch1x1)``; the 1x1 branch of Mixed_6d is the sFID feature map.
    """

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        b1 = self.conv("branch1x1", 192, 1)(x)
        b7 = self.conv("branch7x7_1", c7, 1)(x)
        b7 = self.conv("branch7x7_2", c7, row[0], padding=row[1])(b7)
        b7 = self.conv("branch7x7_3", 192, col[0], padding=col[1])(b7)
        bd = self.conv("branch7x7dbl_1", c7, 1)(x)
        bd = self.conv("branch7x7dbl_2", c7, col[0], padding=col[1])(bd)
        bd = self.conv("branch7x7dbl_3", c7, row[0], padding=row[1])(bd)
        bd = self.conv("branch7x7dbl_4", c7, col[0], padding=col[1])(bd)
        bd = self.conv("branch7x7dbl_5", 192, row[0], padding=row[1])(bd)
        bp = self.conv("branch_pool", 192, 1)(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(_Block):
    """Mixed_7a: 17x17 -> 8x8."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192, 1)(x)
        b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192, 1)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(_Block):
    """Mixed_7b / 7c (8x8). FID variant: 7b averages without padding, 7c max-pools."""

    pool: str = "avg"  # "avg" (Mixed_7b) or "max" (Mixed_7c)

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 320, 1)(x)
        b3 = self.conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448, 1)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=(1, 1))(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        pooled = _max_pool_same(x) if self.pool == "max" else _avg_pool_same(x)
        bp = self.conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] float64 weights of ``F.interpolate(bilinear, align_corners=False)``.

    Source position ``(dst + 0.5) * in/out - 0.5``, clamped at 0; neighbours ``floor`` and
    ``floor + 1`` (clamped at the last pixel). Built in float64 on the host: exact to float32.
    """
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), high), frac)
    return weights


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize [B,H,W,C] -> [B,height,width,C] matching PyTorch (no antialiasing).

    Two matmuls with host-built float64 weight matrices (``jax.image.resize`` builds its
    weights in float32, off by ~1e-5 at these sizes).
    """
    rows = jnp.asarray(bilinear_matrix(x.shape[1], height), jnp.float32)
    cols = jnp.asarray(bilinear_matrix(x.shape[2], width), jnp.float32)
    highest = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=highest)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=highest)


def preprocess_images(images: jax.Array, resize_to: int | None) -> jax.Array:
    """uint8 [0,255] or float [-1,1] images [B,H,W,3] -> float32 [-1,1] [B,S,S,3]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [B,H,W,3], got shape {images.shape}")
    if images.dtype == jnp.uint8:
        x = images.astype(jnp.float32) / 127.5 - 1.0
    elif jnp.issubdtype(images.dtype, jnp.floating):
        x = images.astype(jnp.float32)
    else:
        raise ValueError(f"images must be uint8 or float in [-1, 1], got dtype {images.dtype}")
    if resize_to is not None and x.shape[1:3] != (resize_to, resize_to):
        x = resize_bilinear(x, resize_to, resize_to)
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
        raise ValueError(
            f"InceptionV3 needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, got "
            f"{x.shape[1]}x{x.shape[2]}; set resize_to"
        )
    return x


class InceptionV3(nn.Module):
    """The FID InceptionV3.  images [B,H,W,3] -> dict (see module docstring)."""

    config: InceptionConfig = FID_INCEPTION

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        x = preprocess_images(images, cfg.resize_to).astype(cfg.dtype)
        x = conv_bn(cfg, "Conv2d_1a_3x3", 32, 3, strides=2)(x)
        x = conv_bn(cfg, "Conv2d_2a_3x3", 32, 3)(x)
        x = conv_bn(cfg, "Conv2d_2b_3x3", 64, 3, padding=(1, 1))(x)
        x = _max_pool_reduce(x)
        x = conv_bn(cfg, "Conv2d_3b_1x1", 80, 1)(x)
        x = conv_bn(cfg, "Conv2d_4a_3x3", 192, 3)(x)
        x = _max_pool_reduce(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(cfg, pool_features, name=name)(x)
        x = InceptionB(cfg, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160)):
            x, branch1x1 = InceptionC(cfg, c7, name=name)(x)
            if name == "Mixed_6d":
                spatial = branch1x1[..., :SPATIAL_CHANNELS]  # [B, 17, 17, 7] at 299x299
        x, _ = InceptionC(cfg, 192, name="Mixed_6e")(x)
        x = InceptionD(cfg, name="Mixed_7a")(x)
        x = InceptionE(cfg, "avg", name="Mixed_7b")(x)
        x = InceptionE(cfg, "max", name="Mixed_7c")(x)
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, 2048]
        kernel = self.param(
            "fc_kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "vocab")),
            (pool.shape[-1], cfg.num_classes),
        )
        bias = self.param(
            "fc_bias",
            nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            (cfg.num_classes,),
        )
        logits_unbiased = jnp.dot(pool, kernel, precision=cfg.precision)  # [B, num_classes]
        return {
            "pool": pool,
            "logits_unbiased": logits_unbiased,
            "logits": logits_unbiased + bias,
            "spatial": spatial.reshape(spatial.shape[0], -1).astype(jnp.float32),
        }


def expected_variable_shapes(config: InceptionConfig = FID_INCEPTION) -> dict[str, tuple]:
    """Flat ``"collection/module/.../name" -> shape`` of the variables of ``config``."""
    model = InceptionV3(dataclasses.replace(config, resize_to=None))
    dummy = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
    abstract = jax.eval_shape(lambda x: nn.unbox(model.init(jax.random.key(0), x)), dummy)
    flat = traverse_util.flatten_dict(abstract, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def random_inception_variables(
    config: InceptionConfig = FID_INCEPTION, seed: int = 0
) -> dict[str, Any]:
    """Random variables built on the host with numpy (fast; ``jit(init)`` compiles slowly).

    He-normal conv kernels, unit BatchNorm scale / variance, zero bias / mean; for tests and
    smoke runs only (FID numbers need the converted FID weights).
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in expected_variable_shapes(config).items():
        leaf = key.rsplit("/", 1)[-1]
        if leaf in ("kernel", "fc_kernel"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif leaf in ("scale", "var"):
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        flat[key] = jnp.asarray(value, jnp.float32)
    return traverse_util.unflatten_dict(flat, sep="/")


def validate_variables(flat: Mapping[str, Any], config: InceptionConfig, source: str) -> None:
    """Raises ValueError naming missing / unexpected keys and wrong shapes."""
    expected = expected_variable_shapes(config)
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = [
        f"{k}: got {tuple(np.shape(flat[k]))}, expected {expected[k]}"
        for k in sorted(set(expected) & set(flat))
        if tuple(np.shape(flat[k])) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"wrong shapes {wrong[:8]}{' ...' if len(wrong) > 8 else ''}")
    if problems:
        raise ValueError(
            f"{source} does not hold InceptionV3 variables for {config}: " + "; ".join(problems)
        )


def save_inception_params(path: str | os.PathLike, variables: Mapping[str, Any]) -> None:
    """Writes ``{"params": ..., "batch_stats": ...}`` as a flat .npz or .safetensors file."""
    flat = {
        k: np.asarray(v, dtype=np.float32)
        for k, v in traverse_util.flatten_dict(nn.unbox(dict(variables)), sep="/").items()
    }
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file(flat, path)
    elif path.endswith(".npz"):
        np.savez(path, **flat)
    else:
        raise ValueError(f"params file must end in .npz or .safetensors, got {path!r}")


def load_inception_params(
    path: str | os.PathLike, config: InceptionConfig = FID_INCEPTION
) -> dict[str, Any]:
    """Loads a converted params file (.npz / .safetensors) -> ``{"params", "batch_stats"}``.

    Raises FileNotFoundError for a missing file and ValueError for an unreadable file or one
    whose keys / shapes do not match ``config`` (the offending keys are named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception params file {path!r} not found; convert the FID weights with "
            "`python -m jaxar.convert.inception --input pt_inception-2015-12-05-6726825d.pth "
            "--output inception_fid.npz`"
        )
    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            flat = load_file(path)
        else:
            with np.load(path, allow_pickle=False) as data:
                flat = {k: data[k] for k in data.files}
    except Exception as e:  # noqa: BLE001 - any reader failure means a malformed file
        raise ValueError(f"cannot read Inception params file {path!r}: {e}") from e
    validate_variables(flat, config, f"params file {path!r}")
    flat = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in flat.items()}
    return traverse_util.unflatten_dict(flat, sep="/")
