"""FID InceptionV3: golden parity with a torch reference, shapes, params files, converter."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxar.eval import inception as inception_lib
from jaxar.eval.inception import (
    InceptionConfig,
    InceptionV3,
    expected_variable_shapes,
    load_inception_params,
    save_inception_params,
)

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN_WEIGHTS = os.path.join(DATA, "inception_golden_weights.pth")
GOLDEN_OUTPUTS = os.path.join(DATA, "inception_golden_outputs.npz")
OUTPUT_KEYS = ("pool", "logits", "logits_unbiased", "spatial")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN_OUTPUTS) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def golden_config(golden):
    return InceptionConfig(
        width_multiplier=float(golden["width_multiplier"]), resize_to=int(golden["size"])
    )


@pytest.fixture(scope="module")
def converted(golden_config):
    pytest.importorskip("torch")
    from jaxar.convert.inception import convert_state_dict, load_torch_state_dict

    return convert_state_dict(load_torch_state_dict(GOLDEN_WEIGHTS), golden_config)


def _relative_error(out, ref):
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


def _run(config, variables, images):
    return jax.tree.map(np.asarray, jax.jit(InceptionV3(config).apply)(variables, images))


def test_golden_parity(golden, golden_config, converted):
    out = _run(golden_config, converted, jnp.asarray(golden["images"]))
    for key in OUTPUT_KEYS:
        assert out[key].shape == golden[key].shape, key
        assert _relative_error(out[key], golden[key]) < 1e-4, key


def _avg_pool_with_padding(x):
    return inception_lib.nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


@pytest.mark.parametrize(
    "name, replacement",
    [
        ("_avg_pool_same", _avg_pool_with_padding),  # torchvision: padding counted in averages
        ("_max_pool_same", inception_lib._avg_pool_same),  # torchvision: Mixed_7c averages
    ],
)
def test_golden_parity_detects_torchvision_pooling(
    golden, golden_config, converted, monkeypatch, name, replacement
):
    """The golden data tells the FID variant apart from torchvision's pooling."""
    monkeypatch.setattr(inception_lib, name, replacement)
    out = _run(golden_config, converted, jnp.asarray(golden["images"]))
    assert _relative_error(out["pool"], golden["pool"]) > 1e-3


def test_params_file_round_trip(tmp_path, golden, golden_config, converted):
    for name in ("params.npz", "params.safetensors"):
        path = tmp_path / name
        save_inception_params(path, converted)
        loaded = load_inception_params(path, golden_config)
        flat_a = jax.tree_util.tree_leaves_with_path(loaded)
        flat_b = dict(jax.tree_util.tree_leaves_with_path(converted))
        assert len(flat_a) == len(flat_b) == len(expected_variable_shapes(golden_config))
        for path_key, value in flat_a:
            np.testing.assert_array_equal(np.asarray(value), flat_b[path_key])


def test_convert_cli(tmp_path, golden, golden_config):
    pytest.importorskip("torch")
    from jaxar.convert.inception import main

    out_path = tmp_path / "fid_small.npz"
    width = str(golden_config.width_multiplier)
    main(["--input", GOLDEN_WEIGHTS, "--output", str(out_path), "--width_multiplier", width])
    variables = load_inception_params(out_path, golden_config)
    out = _run(golden_config, variables, jnp.asarray(golden["images"][:1]))
    assert _relative_error(out["pool"], golden["pool"][:1]) < 1e-4


def test_convert_errors_name_the_problem(golden_config):
    pytest.importorskip("torch")
    from jaxar.convert.inception import convert_state_dict, load_torch_state_dict

    state = load_torch_state_dict(GOLDEN_WEIGHTS)
    broken = dict(state)
    del broken["Mixed_6d.branch1x1.bn.running_var"]
    broken["AuxLogits.fc.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="Mixed_6d/branch1x1/bn/var") as err:
        convert_state_dict(broken, golden_config)
    assert "AuxLogits.fc.weight" in str(err.value)
    with pytest.raises(
        ValueError, match=r"wrong shapes.*Conv2d_1a_3x3/bn/mean: got \(2,\), expected \(32,\)"
    ):
        convert_state_dict(state, InceptionConfig())  # full width expected
    with pytest.raises(FileNotFoundError):
        load_torch_state_dict("/nonexistent/pt_inception.pth")


def test_full_width_shapes():
    model = InceptionV3(InceptionConfig())
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8)  # resized to 299
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], images)
    assert out["pool"].shape == (2, 2048)
    assert out["logits"].shape == out["logits_unbiased"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    shapes = expected_variable_shapes(InceptionConfig())
    assert shapes["params/fc_kernel"] == (2048, 1008)
    assert shapes["params/Mixed_7c/branch3x3dbl_1/conv/kernel"] == (1, 1, 2048, 448)
    assert shapes["batch_stats/Mixed_5b/branch_pool/bn/mean"] == (32,)
    assert len(shapes) == 94 * 5 + 2
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert total == 23_885_392  # FID Inception incl. the 1008-way fc


def test_params_are_annotated():
    from jaxar.sharding import LOGICAL_AXES

    config = InceptionConfig(width_multiplier=1 / 16, resize_to=None)
    x = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    variables = jax.eval_shape(InceptionV3(config).init, jax.random.key(0), x)
    is_box = lambda v: isinstance(v, inception_lib.nn.Partitioned)  # noqa: E731
    boxes = jax.tree_util.tree_leaves_with_path(variables["params"], is_leaf=is_box)
    assert boxes and all(is_box(box) for _, box in boxes)
    for path, box in boxes:
        assert set(box.names) - {None} <= set(LOGICAL_AXES), path
        if jax.tree_util.keystr(path).endswith("['kernel']"):
            assert box.names == (None, None, "conv_in", "conv_out"), path


def test_bad_inputs(tmp_path):
    small = InceptionConfig(width_multiplier=1 / 16, resize_to=None)
    init = lambda shape, dtype=jnp.float32: jax.eval_shape(  # noqa: E731
        InceptionV3(small).init, jax.random.key(0), jax.ShapeDtypeStruct(shape, dtype)
    )
    with pytest.raises(ValueError, match="at least 75x75"):
        init((1, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\[B,H,W,3\]"):
        init((1, 80, 80, 1))
    with pytest.raises(ValueError, match="uint8 or float"):
        init((1, 80, 80, 3), jnp.int32)
    with pytest.raises(ValueError, match="resize_to"):
        InceptionConfig(resize_to=64)
    with pytest.raises(FileNotFoundError, match="convert"):
        load_inception_params(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        load_inception_params(garbage)
    np.savez(tmp_path / "wrong.npz", **{"params/fc_kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="missing keys.*wrong shapes.*fc_kernel"):
        load_inception_params(tmp_path / "wrong.npz")
