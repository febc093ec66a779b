"""Meshes, logical rules and sharded init (jaxar.sharding)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxar.sharding import (
    DEFAULT_RULES,
    batch_sharding,
    logical_to_sharding,
    make_mesh,
    rules_with_overrides,
    sharded_init,
)


def test_make_mesh_sizes():
    mesh = make_mesh(2, 2, 2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert mesh.axis_names == ("data", "fsdp", "tensor")


def test_make_mesh_fills_minus_one():
    assert dict(make_mesh(-1, 2, 1).shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert dict(make_mesh(1, -1, 2).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert dict(make_mesh(devices=jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize(
    "sizes, match",
    [
        ((-1, -1, 1), "at most one"),
        ((3, 1, 1), "needs 3 devices"),
        ((0, 1, 1), "positive"),
        ((-1, 3, 1), "cannot be split"),
    ],
)
def test_make_mesh_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(*sizes)


def test_rules_with_overrides():
    rules = dict(rules_with_overrides({"embed": None}))
    assert rules["embed"] is None and rules["mlp"] == "tensor"
    with pytest.raises(ValueError, match="unknown logical axes"):
        rules_with_overrides({"width": None})


class _Annotated(nn.Module):
    @nn.compact
    def __call__(self, x):  # [B, 8] -> [B, 16]
        init = nn.with_logical_partitioning(nn.initializers.normal(), ("embed", "mlp"))
        bias = nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",))
        return nn.Dense(16, kernel_init=init, bias_init=bias)(x)


def test_sharded_init_places_kernel_on_fsdp_tensor():
    mesh = make_mesh(2, 2, 2)
    model = _Annotated()
    x = jnp.ones((4, 8))
    params, shardings = sharded_init(lambda k: model.init(k, x), mesh, jax.random.key(0))
    kernel = params["params"]["Dense_0"]["kernel"]
    assert isinstance(kernel, jax.Array) and kernel.shape == (8, 16)  # unboxed
    assert shardings["params"]["Dense_0"]["kernel"].spec == P("fsdp", "tensor")
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (4, 8)
    assert params["params"]["Dense_0"]["bias"].sharding.spec == P("tensor")
    # The same key gives the same values unsharded (up to float rounding of eager vs jit).
    reference = nn.unbox(model.init(jax.random.key(0), x))
    np.testing.assert_allclose(kernel, reference["params"]["Dense_0"]["kernel"], rtol=1e-6)


def test_logical_to_sharding_replicates_unannotated_and_batch_spec():
    mesh = make_mesh(2, 2, 2)
    tree = {"w": jnp.ones((2, 2))}
    assert logical_to_sharding(tree, mesh, DEFAULT_RULES)["w"].spec == P()
    assert batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
