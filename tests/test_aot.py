"""jaxar.aot: compile a sharded train step for a fake-device mesh and read its per-device cost."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from jaxar import aot, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, H, B = 32, 64, 16  # width, hidden width, global batch
F32 = 4  # bytes


def mlp_loss(params, batch):
    hidden = jax.nn.gelu(batch["x"] @ params["w1"])  # [B, H]
    return jnp.mean((hidden @ params["w2"] - batch["y"]) ** 2)


def train_step(state, batch):
    """Momentum SGD on a two-layer MLP: (state, batch) -> (state, loss)."""
    loss, grads = jax.value_and_grad(mlp_loss)(state["params"], batch)
    momentum = jax.tree.map(lambda m, g: 0.9 * m + g, state["momentum"], grads)
    params = jax.tree.map(lambda p, m: p - 0.1 * m, state["params"], momentum)
    return {"params": params, "momentum": momentum}, loss


def abstract_inputs():
    weights = {"w1": jax.ShapeDtypeStruct((D, H), jnp.float32),
               "w2": jax.ShapeDtypeStruct((H, D), jnp.float32)}  # fmt: skip
    state = {"params": weights, "momentum": weights}
    batch = {"x": jax.ShapeDtypeStruct((B, D), jnp.float32),
             "y": jax.ShapeDtypeStruct((B, D), jnp.float32)}  # fmt: skip
    return state, batch


def specs(weight_specs):
    state = {"params": weight_specs, "momentum": weight_specs}
    batch = {"x": P(("data", "fsdp"), None), "y": P(("data", "fsdp"), None)}
    return state, batch


SHARDED = {"w1": P("fsdp", "tensor"), "w2": P("tensor", "fsdp")}
REPLICATED = {"w1": None, "w2": None}


def compile_step(mesh_shape, weight_specs=SHARDED, donate=True):
    state_specs, batch_specs = specs(weight_specs)
    return aot.compile_for_mesh(
        train_step, abstract_inputs(), mesh_shape,
        in_shardings=(state_specs, batch_specs), out_shardings=(state_specs, P()),
        donate_argnums=0 if donate else (),
    )  # fmt: skip


def test_per_device_bytes_follow_the_shardings():
    report = compile_step((2, 2, 2))
    weight_bytes = 2 * D * H * F32  # w1 + w2
    state_per_device = 2 * weight_bytes // 4  # params + momentum, split over fsdp x tensor
    batch_per_device = 2 * B * D * F32 // 4  # x + y, split over data x fsdp
    assert report.argument_bytes == state_per_device + batch_per_device
    # new state + replicated loss, plus XLA's output tuple table (one 8-byte pointer per leaf)
    assert 0 <= report.output_bytes - (state_per_device + F32) <= 8 * 5
    assert report.alias_bytes == state_per_device  # the donated state is updated in place
    assert report.peak_bytes == (
        report.argument_bytes + report.output_bytes - report.alias_bytes + report.temp_bytes
    )
    assert report.device_count == 8 and report.mesh_shape == {"data": 2, "fsdp": 2, "tensor": 2}

    replicated = compile_step((8, 1, 1), REPLICATED, donate=False)
    assert replicated.argument_bytes == 2 * weight_bytes + 2 * B * D * F32 // 8
    assert replicated.alias_bytes == 0


def test_flops_split_over_devices():
    one = compile_step((1, 1, 1))
    eight = compile_step((2, 2, 2))
    # two forward matmuls; backward: grads of w2, of the hidden layer and of w1 (not of x)
    matmul_flops = 5 * (2 * B * D * H)
    assert one.flops >= matmul_flops
    assert one.flops / 8 <= eight.flops < one.flops / 4


def test_report_json_and_summary():
    report = compile_step((1, 2, 1))
    data = json.loads(report.to_json())
    assert data == report.to_dict()
    assert data["argument_bytes"] == report.argument_bytes and data["platform"] == "cpu"
    assert "fsdp=2" in report.summary() and "MiB" in report.summary()


class Dense(nn.Module):
    @nn.compact
    def __call__(self, x):  # [B, D] -> [B, H]
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        kernel = self.param("kernel", init, (x.shape[-1], H))
        return nn.with_logical_constraint(x @ kernel, ("batch", "mlp"))


def test_logical_annotations_through_a_sharding_callable():
    model = Dense()
    x = jax.ShapeDtypeStruct((B, D), jnp.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)
    report = aot.compile_for_mesh(
        lambda variables, x: model.apply(variables, x),
        (nn.unbox(boxed), x), (1, 2, 4),
        in_shardings=lambda mesh: (sharding.logical_to_sharding(boxed, mesh),
                                   sharding.batch_sharding(mesh, 2)),
    )  # fmt: skip
    # kernel [D, H]: embed -> fsdp (2), mlp -> tensor (4); x [B, D]: batch over data x fsdp (2)
    assert report.argument_bytes == D * H * F32 // 8 + B * D * F32 // 2


@pytest.mark.parametrize(
    "mesh_shape, device_count, message",
    [((4, 2, 2), None, "xla_force_host_platform_device_count=16"),
     ((2, 2), None, "mesh_shape must give"),
     ((2, 0, 1), None, "must be >= 1"),
     ((2, 2, 1), 8, "needs 4 devices, not 8")],
)  # fmt: skip
def test_bad_meshes(mesh_shape, device_count, message):
    with pytest.raises(ValueError, match=message):
        aot.compile_for_mesh(train_step, abstract_inputs(), mesh_shape, device_count=device_count)


def test_ensure_host_devices():
    jax.devices()  # backends run with the 8 devices from conftest
    aot.ensure_host_devices(8)
    with pytest.raises(ValueError, match="already started with 8"):
        aot.ensure_host_devices(16)
    code = (
        "from jaxar import aot; aot.ensure_host_devices(12); import jax; print(jax.device_count())"
    )
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "12"


def _load_cli():
    path = os.path.join(REPO, "experiments", "aot_check.py")
    spec = importlib.util.spec_from_file_location("aot_check_cli", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cli_loads_config_and_writes_json(tmp_path, monkeypatch, capsys):
    cli = _load_cli()
    config_file = tmp_path / "tiny.py"
    config_file.write_text(
        "import ml_collections\n\n"
        "def get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'preset': arg or 'default', 'batch_size': 16})\n"
    )
    seen = {}

    def mlp_target(config, mesh_shape):
        seen["config"] = config
        state_specs, batch_specs = specs(SHARDED)
        return cli.AotTarget(train_step, abstract_inputs(), (state_specs, batch_specs),
                             (state_specs, P()), donate_argnums=0)  # fmt: skip

    monkeypatch.setattr(cli, "build_target", mlp_target)
    out_json = tmp_path / "report.json"
    argv = ["--config", f"{config_file}:tiny", "--data", "2", "--fsdp", "2", "--tensor", "2",
            "--json", str(out_json)]  # fmt: skip
    assert cli.main(argv) == 0
    assert seen["config"].preset == "tiny"
    saved = json.loads(out_json.read_text())
    assert saved == compile_step((2, 2, 2)).to_dict() | {
        "compile_seconds": saved["compile_seconds"]
    }
    assert "per device" in capsys.readouterr().out
