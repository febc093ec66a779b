"""Orbax checkpoints across meshes, config checks, eval restore and NaN stops."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from PIL import Image

from jaxar.data.global_batch import host_to_global
from jaxar.sharding import abstract_with_sharding, make_mesh
from jaxar.train.checkpoint import Checkpointer, config_differences, restore_for_eval
from jaxar.train.images import LABEL_HEIGHT, save_image_grid
from jaxar.train.loop import NonFiniteError, TrainConfig, fit
from jaxar.train.optimizer import OptimizerConfig, make_optimizer
from jaxar.train.state import create_train_state
from jaxar.train.step import jit_train_step, make_train_step
from tests.resume_worker import make_iterator, make_records, make_task

OPT = OptimizerConfig(learning_rate=1e-2, warmup_steps=0, total_steps=10)
CONFIG = {"model": {"width": 32}, "num_steps": 10}


def _batch(n=8):
    records = make_records()[:n]
    return {k: np.stack([r[k] for r in records]) for k in records[0]}


def _state_on(mesh):
    task, optimizer = make_task(), make_optimizer(OPT)
    return task, optimizer, *create_train_state(task, optimizer, jax.random.key(0), _batch(), mesh)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A state after one step on an (8, 1, 1) mesh, saved at step 1 with an iterator."""
    workdir = tmp_path_factory.mktemp("ckpt")
    mesh = make_mesh(8, 1, 1)
    task, optimizer, state, shardings = _state_on(mesh)
    step = jit_train_step(make_train_step(task.loss_fn, optimizer, 0.9), mesh, shardings, None)
    state, _ = step(state, host_to_global(_batch(), mesh), jax.random.key(1))
    data_iter = make_iterator()
    next(data_iter), next(data_iter)
    checkpointer = Checkpointer(workdir)
    checkpointer.save(1, state, data_iter, CONFIG)
    checkpointer.close()
    return workdir, jax.device_get(state), data_iter.get_state()


def _assert_same_values_and_shardings(restored, expected, shardings):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), expected)
    for array, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
        assert array.sharding.is_equivalent_to(sharding, array.ndim)


@pytest.mark.parametrize("mesh_sizes", [(2, 2, 2), (1, 1, 1)])
def test_restore_on_other_mesh(saved, mesh_sizes):
    workdir, expected, iterator_state = saved
    devices = jax.devices()[: int(np.prod(mesh_sizes))]
    mesh = make_mesh(*mesh_sizes, devices=devices)
    _, _, fresh, shardings = _state_on(mesh)
    data_iter = make_iterator()
    checkpointer = Checkpointer(workdir)
    restored = checkpointer.restore_latest(
        abstract_with_sharding(fresh, shardings), data_iter, CONFIG
    )
    checkpointer.close()
    _assert_same_values_and_shardings(restored, expected, shardings)
    assert data_iter.get_state() == iterator_state
    if mesh_sizes == (2, 2, 2):
        kernel = restored.params["Dense_0"]["kernel"]
        assert len({str(s.index) for s in kernel.addressable_shards}) == 4  # really split


def test_config_mismatch_raises(saved, tmp_path):
    workdir, _, _ = saved
    _, _, fresh, shardings = _state_on(make_mesh(8, 1, 1))
    checkpointer = Checkpointer(workdir)
    changed = {"model": {"width": 64}, "num_steps": 10}
    with pytest.raises(ValueError, match=r"model\.width"):
        checkpointer.restore_latest(abstract_with_sharding(fresh, shardings), None, changed)
    longer = {"model": {"width": 32}, "num_steps": 50}  # run length may change
    assert checkpointer.restore_latest(abstract_with_sharding(fresh, shardings), None, longer)
    checkpointer.close()
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == [
        "b.c",
        "d",
    ]


def test_restore_for_eval_without_target(saved):
    workdir, expected, _ = saved
    state, config = restore_for_eval(workdir)
    assert config == CONFIG
    assert set(state) == {"step", "params", "ema_params", "model_state"}
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), expected.params)
    jax.tree.map(
        np.testing.assert_array_equal, jax.device_get(state["ema_params"]), expected.ema_params
    )
    mesh = make_mesh(2, 2, 2)
    on_mesh, _ = restore_for_eval(workdir, mesh=mesh)
    kernel = on_mesh["params"]["Dense_0"]["kernel"]
    assert isinstance(kernel.sharding, NamedSharding) and kernel.sharding.mesh == mesh


def test_missing_or_corrupt_checkpoint_names_path(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        restore_for_eval(tmp_path)
    workdir, _, _ = saved
    broken = tmp_path / "broken"
    shutil.copytree(workdir / "checkpoints", broken / "checkpoints")
    for data_dir in list((broken / "checkpoints" / "1" / "state").rglob("d")):
        shutil.rmtree(data_dir, ignore_errors=True)  # array bytes gone, metadata kept
    with pytest.raises(ValueError, match=str(broken / "checkpoints" / "1")):
        restore_for_eval(broken)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = TrainConfig(
        num_steps=10,
        optimizer=OPT,
        log_every=5,
        checkpoint_every=2,
        sample_every=2,
        progress_bar=False,
    )
    with pytest.raises(NonFiniteError, match="step 6"):
        fit(
            make_task(nan_from_step=5),
            make_iterator(),
            config=config,
            workdir=tmp_path,
            mesh=make_mesh(8, 1, 1),
            rng_seed=0,
        )
    checkpointer = Checkpointer(tmp_path)
    assert checkpointer.latest_step() == 4
    checkpointer.close()
    state, _ = restore_for_eval(tmp_path)
    assert int(state["step"]) == 4
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state["params"])))
    # Logs and sample grids of the good steps were written.
    assert sorted(os.listdir(tmp_path / "samples")) == [f"step_{s:08d}.png" for s in (2, 4)]
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [5]
    assert os.listdir(tmp_path / "tensorboard")


def test_save_image_grid(tmp_path):
    images = np.arange(5 * 4 * 6 * 3, dtype=np.uint8).reshape(5, 4, 6, 3)
    grid = save_image_grid(images, tmp_path / "grid.png", nrow=2, labels=list("abcde"))
    assert grid.shape == (3 * (4 + LABEL_HEIGHT + 2) + 2, 2 * (6 + 2) + 2, 3)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), grid)
    plain = save_image_grid(images, tmp_path / "plain.png", nrow=2, padding=0)
    assert np.array_equal(plain[4:8, 6:12], images[3])
    with pytest.raises(ValueError, match="uint8"):
        save_image_grid(images.astype(np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels"):
        save_image_grid(images, tmp_path / "x.png", labels=["a"])


def test_restore_latest_restores_the_newest_kept_step(tmp_path):
    mesh = make_mesh(8, 1, 1)
    _, _, state, shardings = _state_on(mesh)
    checkpointer = Checkpointer(tmp_path, keep=3, async_save=False)
    saved = {}
    for step in (1, 2, 3, 4):  # keeps 2, 3, 4
        state = state.replace(
            step=jax.numpy.asarray(step, jax.numpy.int32),
            params=jax.tree.map(lambda x: x + 1.0, state.params),
        )
        checkpointer.save(step, state)
        saved[step] = jax.device_get(state.params)
    assert checkpointer.all_steps() == [2, 3, 4]
    restored = checkpointer.restore_latest(abstract_with_sharding(state, shardings))
    checkpointer.close()
    assert int(restored.step) == 4
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), saved[4])


def test_a_failed_forced_save_is_an_error(tmp_path, monkeypatch):
    from jaxar.train.checkpoint import CheckpointError

    _, _, state, _ = _state_on(make_mesh(8, 1, 1))
    checkpointer = Checkpointer(tmp_path, async_save=False)
    monkeypatch.setattr(checkpointer.manager, "save", lambda *a, **k: False)
    with pytest.raises(CheckpointError, match="declined the forced save of step 5"):
        checkpointer.save(5, state, force=True)
    checkpointer.close()


def test_run_dirs_are_checked_before_the_first_step(tmp_path):
    from jaxar.train.loop import check_run_dirs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "checkpoints").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"checkpoint directory .*a/checkpoints .*file"):
        check_run_dirs(tmp_path / "a")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="workdir .*file"):
        check_run_dirs(tmp_path / "file" / "run")
    (tmp_path / "b" / "samples").mkdir(parents=True)
    (tmp_path / "b" / "samples" / "x").write_text("")
    check_run_dirs(tmp_path / "b")  # existing folders are fine; probes leave nothing behind
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoints", "samples", "tensorboard"]
    os.chmod(tmp_path / "b" / "samples", 0o500)
    try:
        if os.access(tmp_path / "b" / "samples", os.W_OK):
            pytest.skip("running as a user who can write read-only folders (root)")
        with pytest.raises(PermissionError, match="samples directory .* not writable"):
            check_run_dirs(tmp_path / "b")
    finally:
        os.chmod(tmp_path / "b" / "samples", 0o700)


def test_fit_fails_fast_on_a_checkpoints_file(tmp_path):
    (tmp_path / "checkpoints").write_text("oops")
    config = TrainConfig(num_steps=2, optimizer=OPT, progress_bar=False)
    start = __import__("time").monotonic()
    with pytest.raises(NotADirectoryError, match="checkpoints"):
        fit(make_task(), make_iterator(), config=config, workdir=tmp_path,
            mesh=make_mesh(8, 1, 1), rng_seed=0)  # fmt: skip
    assert __import__("time").monotonic() - start < 10
