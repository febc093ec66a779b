"""Whole evaluations: generator / tokenizer / reference batch, library and CLI.

A tiny tokenizer and GPT are trained for a few steps with the recipes (module fixture); the
Inception is a 1/16-width random network at 75x75 (the real one compiles slowly on CPU).
"""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from jaxar.data import load_digits
from jaxar.eval.evaluate import load_inception, make_reference_npz, score_features, to_rgb_uint8
from jaxar.eval.reference_npz import load_reference, save_reference
from jaxar.recipes.evaluation import evaluate_generator, evaluate_tokenizer_dataset
from jaxar.recipes.generator import train_generator
from jaxar.recipes.tokenizer import train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(REPO, "experiments", "evaluate.py")
WIDTH, RESIZE, SEED = 1 / 16, 75, 3
INCEPTION_FLAGS = [
    "--random_inception_weights", str(SEED), "--inception_width", str(WIDTH),
    "--inception_resize", str(RESIZE), "--batch_size", "16",
]  # fmt: skip


def _train(num_steps: int) -> dict:
    return dict(
        num_steps=num_steps, log_every=num_steps, checkpoint_every=num_steps, sample_every=0,
        keep_checkpoints=1, ema_decay=0.5, progress_bar=False, async_checkpoints=False,
        optimizer=dict(learning_rate=3e-3, warmup_steps=1, total_steps=num_steps),
    )  # fmt: skip


def _tokenizer_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=16, channels=1, batch_size=16, seed=0)
    c.tokenizer = dict(
        preset="digits_vq", ch=8, z_channels=8, norm_groups=4, codebook_size=32, code_dim=4
    )
    c.loss = dict(recon_loss="l2", codebook_weight=1.0, perceptual_weight=0.0, disc_weight=0.0)
    c.train = _train(4)
    c.preview_count = 4
    return c


def _generator_config(tokenizer_workdir: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=16, channels=1, batch_size=16, seed=0)
    c.tokenizer_workdir = tokenizer_workdir
    c.model = dict(family="gpt", preset="GPT-tiny", num_layers=1, dim=32, num_heads=2)
    c.loss = dict(label_smoothing=0.0)
    c.train = _train(4)
    c.sampling = dict(cfg_scale=1.5, temperature=1.0, top_k=0, top_p=1.0)
    return c


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tokenizer, generator = str(root / "tokenizer"), str(root / "generator")
    train_tokenizer(_tokenizer_config(), tokenizer)
    train_generator(_generator_config(tokenizer), generator)
    return {"root": root, "tokenizer": tokenizer, "generator": generator}


@pytest.fixture(scope="module")
def inception():
    return load_inception(random_seed=SEED, resize_to=RESIZE, width_multiplier=WIDTH, batch_size=16)


@pytest.fixture(scope="module")
def reference(workdirs, inception):
    """The held-out digits (180 images) as a reference batch with statistics."""
    images, _ = load_digits(image_size=16, channels=1, split="test")
    path = str(workdirs["root"] / "reference.npz")
    summary = make_reference_npz(images, path, inception)
    assert summary["num_images"] == len(images)
    return path


def test_to_rgb_uint8_repeats_grey_and_rounds_floats():
    grey = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(1, 2, 3, 2)[..., :1]
    rgb = to_rgb_uint8(grey)
    assert rgb.shape == (1, 2, 3, 3) and np.all(rgb == grey)
    floats = np.array([-1.0, 0.0, 1.0], np.float32).reshape(1, 1, 3, 1)
    np.testing.assert_array_equal(to_rgb_uint8(floats)[0, 0, :, 0], [0, 128, 255])
    with pytest.raises(ValueError, match="N,H,W,1"):
        to_rgb_uint8(np.zeros((2, 4, 4, 2), np.uint8))


def test_load_inception_needs_exactly_one_source(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_inception()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_inception(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="only for random"):
        load_inception(str(tmp_path / "missing.npz"), width_multiplier=0.5)


def test_reference_batch_layout_and_self_fid(reference, inception):
    batch = load_reference(reference)
    assert batch.images.shape[1:] == (16, 16, 3) and batch.images.dtype == np.uint8
    assert batch.mu.shape == (inception.config.feature_dim,)
    assert batch.mu_s is not None
    # The same features give FID 0 (stored statistics vs recomputed ones).
    features = inception(iter([batch.images]))
    report = score_features(features, reference, inception, reference_statistics="stored")
    assert abs(report["fid"]) < 1e-3 and abs(report["sfid"]) < 1e-3
    assert report["fid_reference"] == "stored mu/sigma"
    assert report["precision"] == 1.0 and report["recall"] == 1.0


def test_evaluate_generator_library_and_cli(workdirs, reference, inception, tmp_path):
    samples = str(tmp_path / "samples.npz")
    report = evaluate_generator(
        workdirs["generator"], reference_npz=reference, inception=inception, num_samples=20,
        batch_size=16, seed=1, cfg_scale=2.0, samples_npz=samples,
    )  # fmt: skip
    for key in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert np.isfinite(report[key]), key
    assert report["fid"] > 0  # a 4-step generator's samples differ from the real digits
    assert report["fid_reference"] == "arr_0 features"  # random Inception: recomputed stats
    assert report["sampling"]["cfg_scale"] == 2.0 and report["num_samples"] == 20
    stored = load_reference(samples, require_statistics=False)
    assert stored.images.shape == (20, 16, 16, 3)
    np.testing.assert_array_equal(stored.labels, np.arange(20) % 10)
    # The CLI with the same seed and batch size writes the same samples and report.
    out, cli_samples = tmp_path / "report.json", str(tmp_path / "cli_samples.npz")
    argv = ["generator", "--workdir", workdirs["generator"], "--reference", reference,
            "--num_samples", "20", "--seed", "1", "--cfg_scale", "2.0", "--samples_npz",
            cli_samples, "--out", str(out), *INCEPTION_FLAGS]  # fmt: skip
    assert _cli(argv) == 0
    cli_report = json.loads(out.read_text())
    assert cli_report["inception"]["weights"] == f"random:{SEED}"
    np.testing.assert_allclose(cli_report["fid"], report["fid"], rtol=1e-6)
    cli_images = load_reference(cli_samples, require_statistics=False).images
    np.testing.assert_array_equal(cli_images, stored.images)


def test_evaluate_tokenizer_dataset(workdirs, inception):
    report = evaluate_tokenizer_dataset(
        workdirs["tokenizer"], inception=inception, split="test", limit=40, batch_size=16
    )
    for key in ("rfid", "psnr", "ssim", "codebook_usage", "perplexity"):
        assert np.isfinite(report[key]), key
    assert report["rfid"] > 0 and report["num_images"] == 40
    assert 0 < report["codebook_usage"] <= 1
    # Streamed in batches of 16, it equals the whole-split computation.
    from jaxar.eval.metrics import feature_statistics, frechet_distance
    from jaxar.recipes.images import image_arrays
    from jaxar.recipes.tokenizer import evaluate_tokenizer, load_tokenizer
    from jaxar.train.checkpoint import restore_for_eval

    tokenizer = load_tokenizer(workdirs["tokenizer"])
    _, config = restore_for_eval(workdirs["tokenizer"])
    images, _ = image_arrays(config["data"], split="test", limit=40)
    recon = np.asarray(tokenizer.reconstruct(images))
    real, fake = inception([to_rgb_uint8(images)])["pool"], inception([to_rgb_uint8(recon)])["pool"]
    expected = frechet_distance(*feature_statistics(real), *feature_statistics(fake))
    np.testing.assert_allclose(report["rfid"], expected, rtol=1e-4, atol=1e-6)
    whole = evaluate_tokenizer(tokenizer, images, batch_size=40)
    for key in ("psnr", "ssim", "codebook_usage", "perplexity"):
        np.testing.assert_allclose(report[key], whole[key], rtol=1e-5, err_msg=key)


def _cli(argv):
    from experiments.evaluate import main

    return main(argv)


def test_cli_reference(workdirs, tmp_path, capsys):
    ref_path = tmp_path / "ref.npz"
    argv = ["reference", "--data_from", workdirs["tokenizer"], "--split", "test", "--limit",
            "24", "--output", str(ref_path), *INCEPTION_FLAGS]  # fmt: skip
    assert _cli(argv) == 0
    assert load_reference(ref_path).images.shape == (24, 16, 16, 3)
    assert json.loads(capsys.readouterr().out)["num_images"] == 24


def test_cli_tokenizer(workdirs, tmp_path):
    out = tmp_path / "tok.json"
    argv = ["tokenizer", "--workdir", workdirs["tokenizer"], "--limit", "40",
            "--out", str(out), *INCEPTION_FLAGS]  # fmt: skip
    assert _cli(argv) == 0
    assert set(json.loads(out.read_text())) >= {"rfid", "psnr", "ssim", "codebook_usage"}


def test_cli_reports_bad_references_without_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    argv = ["generator", "--workdir", str(tmp_path), "--reference", str(missing),
            *INCEPTION_FLAGS]  # fmt: skip
    assert _cli(argv) == 2
    assert "not found" in capsys.readouterr().err
    not_npz = tmp_path / "bad.npz"
    not_npz.write_text("hello")
    assert _cli([*argv[:4], str(not_npz), *INCEPTION_FLAGS]) == 2
    assert "not an .npz" in capsys.readouterr().err
    no_arr0 = tmp_path / "no_arr0.npz"
    np.savez(no_arr0, mu=np.zeros(3))
    assert _cli([*argv[:4], str(no_arr0), *INCEPTION_FLAGS]) == 2
    assert "lacks ['arr_0']" in capsys.readouterr().err
    grey = tmp_path / "grey.npz"
    np.savez(grey, arr_0=np.zeros((2, 4, 4, 1), np.uint8))
    assert _cli([*argv[:4], str(grey), *INCEPTION_FLAGS]) == 2
    assert "[N, H, W, 3]" in capsys.readouterr().err


def test_cli_process_exit_code_and_message(tmp_path):
    bad = tmp_path / "bad_stats.npz"
    save_reference(bad, np.zeros((2, 4, 4, 3), np.uint8))
    with np.load(bad) as data:
        np.savez(bad, arr_0=data["arr_0"], mu=np.zeros(3), sigma=np.zeros((2, 2)))
    cmd = [sys.executable, CLI, "generator", "--workdir", str(tmp_path), "--reference", str(bad),
           *INCEPTION_FLAGS]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "mu must be [D] and sigma [D, D]" in result.stderr


def test_stats_of_another_network_are_named(workdirs, reference, inception, tmp_path):
    other = tmp_path / "other.npz"
    batch = load_reference(reference)
    save_reference(other, batch.images, np.zeros(7), np.eye(7))
    features = inception(iter([batch.images[:8]]))
    with pytest.raises(ValueError, match="different network"):
        score_features(features, other, inception, reference_statistics="stored")
