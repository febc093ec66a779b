"""Conv blocks: shapes, shortcut, attention equivariance, annotations, bad configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.layers.conv import AttnBlock, Downsample, ResnetBlock, Upsample, group_norm


def key(seed):
    """Cheap-to-compile PRNG key for parameter init."""
    return jax.random.key(seed, impl="unsafe_rbg")


X = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))


def test_resnet_block_shapes_and_shortcut():
    block = ResnetBlock(16, norm_groups=4)
    variables = block.init(key(1), X)
    assert block.apply(variables, X).shape == (2, 8, 8, 16)
    assert "nin_shortcut" in variables["params"]
    same = ResnetBlock(8, norm_groups=4)
    same_vars = same.init(key(1), X)
    assert "nin_shortcut" not in same_vars["params"]
    # conv2 zeroed -> the block is the identity (residual form)
    params = jax.tree.map(lambda x: x, nn.unbox(same_vars["params"]))
    params["conv2"] = jax.tree.map(jnp.zeros_like, params["conv2"])
    np.testing.assert_allclose(same.apply({"params": params}, X), X, atol=1e-6)


def test_attention_is_permutation_equivariant():
    block = AttnBlock(norm_groups=4)
    variables = block.init(key(2), X)
    perm = np.random.default_rng(0).permutation(64)
    flat = X.reshape(2, 64, 8)
    permuted = flat[:, perm].reshape(2, 8, 8, 8)
    out = block.apply(variables, X).reshape(2, 64, 8)
    out_perm = block.apply(variables, permuted).reshape(2, 64, 8)
    np.testing.assert_allclose(out[:, perm], out_perm, atol=1e-5)
    assert not np.allclose(out, flat)


def test_resampling_shapes_and_nearest_upsample():
    down = Downsample()
    assert down.apply(down.init(key(0), X), X).shape == (2, 4, 4, 8)
    up = Upsample(with_conv=False)
    y = up.apply({}, X)
    assert y.shape == (2, 16, 16, 8)
    np.testing.assert_array_equal(y[:, ::2, ::2], X)
    np.testing.assert_array_equal(y[:, 1::2, 1::2], X)
    pool = Downsample(with_conv=False).apply({}, X)
    np.testing.assert_allclose(pool[:, 0, 0], X[:, :2, :2].mean(axis=(1, 2)), atol=1e-6)


def test_params_carry_logical_axes():
    variables = ResnetBlock(16, norm_groups=4).init(key(1), X)
    specs = nn.get_partition_spec(variables)["params"]
    assert tuple(specs["conv1"]["kernel"]) == (None, None, "conv_in", "conv_out")
    assert tuple(specs["norm1"]["scale"]) == ("conv_out",)


def test_group_count_must_divide_channels():
    with pytest.raises(ValueError, match="groups"):
        group_norm(3, 8)
    with pytest.raises(ValueError, match="groups"):
        ResnetBlock(16, norm_groups=3).init(key(0), X)
