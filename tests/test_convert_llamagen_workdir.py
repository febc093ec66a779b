"""LlamaGen GPT + VQ checkpoints -> one convert command -> an ordinary jaxar workdir whose
``load_generator(W).sample`` matches LlamaGen's own ``generate()`` + ``VQModel.decode_code``.

Golden data: tests/golden/make_llamagen_workdir_golden.py (runs LlamaGen's code; the state
dicts it wrote are re-saved here in the layouts LlamaGen's scripts write)."""

import argparse
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from codes_setup import extracted_codes

from jaxar.convert import llamagen, torch_io
from jaxar.recipes.generator import load_generator
from jaxar.recipes.tokenizer import encode_arrays, load_tokenizer

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

DATA = Path(__file__).parent / "data"
GPT, VQ = DATA / "llamagen_orig_gpt.safetensors", DATA / "llamagen_orig_vq.safetensors"
MODES = {  # golden name -> jaxar sampling settings
    "greedy_cfg2": dict(cfg_scale=2.0, temperature=0.0),
    "top1_cfg2": dict(cfg_scale=2.0, top_k=1),
    "greedy_nocfg": dict(cfg_scale=1.0, temperature=0.0),
}


class Unexpected:
    """A class no checkpoint of the originals pickles."""


def training_checkpoint(state: dict, ema: bool) -> dict:
    """The layout of LlamaGen's train_c2i.py / vq_train.py checkpoints."""
    args = argparse.Namespace(gpt_model="GPT-B", image_size=256, ema=ema, lr=1e-4)
    out = {"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
           "steps": 7, "args": args}  # fmt: skip
    if ema:  # the raw weights differ: the converter must pick the EMA ones
        out["model"] = {k: v * 0.5 for k, v in state.items()}
        out["ema"] = state
    return out


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "llamagen_orig_golden.npz"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamagen")
    gpt_pt, vq_pt = root / "gpt.pt", root / "vq.pt"
    torch.save(training_checkpoint(load_file(GPT), ema=True), gpt_pt)
    torch.save(training_checkpoint(load_file(VQ), ema=False), vq_pt)
    work = root / "work"
    llamagen.main(["--gpt", str(gpt_pt), "--vq", str(vq_pt), "--num-heads", "4",
                   "--image-size", "8", "--workdir", str(work)])  # fmt: skip
    return work


@pytest.fixture(scope="module")
def generator(workdir):
    return load_generator(workdir)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_sample_matches_llamagen_generate(generator, golden, mode):
    out = generator.sample(golden["labels"], jax.random.key(0), **MODES[mode])
    codes, images = out.codes, out.images
    np.testing.assert_array_equal(codes, golden["codes_" + mode])
    pixels = np.asarray(generator.tokenizer.decode(codes))
    np.testing.assert_allclose(pixels, golden["pixels_" + mode], atol=1e-4)
    want = np.round((golden["pixels_" + mode] + 1) * 127.5)
    assert images.dtype == np.uint8 and np.abs(images - want).max() <= 1


def test_workdir_config_and_tokenizer(workdir, generator, golden):
    config = generator.config
    assert config["tokenizer_workdir"] == str((workdir / "tokenizer").resolve())
    assert config["sampling"] == llamagen.SAMPLING_DEFAULTS  # LlamaGen's cfg 2.0
    assert config["converted_from"]["weights"] == "the 'ema' entry"
    assert generator.model_config.block_size == 16 and generator.model_config.num_heads == 4
    tokenizer = load_tokenizer(config["tokenizer_workdir"])  # a valid tokenizer_workdir
    codes = encode_arrays(tokenizer, golden["image"]).reshape(golden["image_codes"].shape)
    np.testing.assert_array_equal(codes, golden["image_codes"])
    with pytest.raises(FileExistsError, match="already holds"):
        llamagen.main(["--gpt", str(GPT), "--tokenizer-workdir", str(workdir / "tokenizer"),
                       "--num-heads", "4", "--workdir", str(workdir)])  # fmt: skip


def test_sample_script_runs_on_the_workdir(workdir, tmp_path):
    from experiments.sample import main

    main(["--workdir", str(workdir), "--out", str(tmp_path), "--num_samples", "4",
          "--batch_size", "4", "--top_k", "1"])  # fmt: skip
    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["arr_0"].shape == (4, 8, 8, 3) and samples["arr_0"].dtype == np.uint8
    assert (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("layout", ["plain", "model", "module", "state_dict", "trainer"])
def test_every_layout_reads_the_same_weights(tmp_path, layout):
    state = load_file(GPT)
    wrapped = {
        "plain": state,
        "model": training_checkpoint(state, ema=False),
        "module": {"module": {"module." + k: v for k, v in state.items()}},
        "state_dict": {"state_dict": state, "epoch": 3},
        "trainer": {"trainer": {"var_wo_ddp": state, "config": {"x": 1}}, "args": {"d": 16}},
    }[layout]
    torch.save(wrapped, tmp_path / "w.pth")
    got, source = torch_io.read_weights(tmp_path / "w.pth")
    want = {k: v.float().numpy() for k, v in state.items()}
    assert set(got) == set(want) and (layout == "plain") == ("top-level" in source)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value)


def test_unexpected_pickled_class_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": load_file(GPT), "args": Unexpected()}, path)
    with pytest.raises(ValueError, match="Unexpected") as err:
        torch_io.read_weights(path)
    assert str(path) in str(err.value)
    torch.save({"optimizer": {"lr": 1.0}, "steps": 3}, path)
    with pytest.raises(ValueError, match=r"found no weights; top-level keys \['optimizer'"):
        torch_io.read_weights(path)


def test_missing_or_inconsistent_hyperparameters_say_what_to_pass(tmp_path):
    state = llamagen.read_state_dict(GPT)
    with pytest.raises(ValueError, match="pass --preset"):
        llamagen.infer_gpt_config(state, image_size=64, downsample=16)
    with pytest.raises(ValueError, match="--image-size"):
        llamagen.infer_gpt_config(state, num_heads=4)  # no freqs_cis in this file
    with pytest.raises(ValueError, match="inconsistent tokens per image"):
        llamagen.infer_gpt_config(state, image_size=64, downsample=16, num_heads=4, block_size=25)
    with pytest.raises(ValueError, match="preset GPT-B has dim=768"):
        llamagen.infer_gpt_config(state, "GPT-B", image_size=64, downsample=16)
    cfg = llamagen.infer_gpt_config(state, image_size=64, downsample=16, num_heads=4)
    assert (cfg.vocab_size, cfg.num_classes, cfg.dim, cfg.num_layers) == (32, 10, 64, 2)
    with pytest.raises(SystemExit, match="--image-size"):
        llamagen.main(["--gpt", str(GPT), "--vq", str(VQ), "--num-heads", "4",
                       "--workdir", str(tmp_path / "w")])  # fmt: skip


def test_cli_prints_the_resolved_config(tmp_path, capsys, workdir):
    tokenizer = str(workdir / "tokenizer")
    llamagen.main(["--gpt", str(GPT), "--tokenizer-workdir", tokenizer, "--num-heads", "4",
                   "--cfg-scale", "1.5", "--workdir", str(tmp_path)])  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["config"]["block_size"] == 16
    assert load_generator(tmp_path).config["sampling"]["cfg_scale"] == 1.5


def test_evaluate_script_runs_on_the_workdir(workdir, tmp_path):
    """FID against a reference batch (random 1/16-width Inception: a smoke test of the path)."""
    from experiments.evaluate import main
    from jaxar.eval.reference_npz import save_reference

    reference = tmp_path / "reference.npz"
    save_reference(reference, np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), np.uint8))
    out = tmp_path / "report.json"
    argv = ["generator", "--workdir", str(workdir), "--reference", str(reference),
            "--num_samples", "8", "--top_k", "1", "--out", str(out),
            "--random_inception_weights", "0", "--inception_width", "0.0625",
            "--inception_resize", "75", "--batch_size", "8", "--no_precision_recall"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert np.isfinite(report["fid"]) and report["fid"] > 0


def test_converted_tokenizer_is_a_tokenizer_workdir_for_training(workdir, tmp_path):
    """train_generator accepts W/tokenizer: it encodes a dataset with it and trains 2 steps."""
    import ml_collections

    from jaxar.recipes.generator import train_generator

    c = ml_collections.ConfigDict()
    c.seed, c.mesh = 0, dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=8, channels=3, batch_size=8, seed=0)
    c.tokenizer_workdir = str(workdir / "tokenizer")
    c.model = dict(family="gpt", preset="GPT-tiny", num_layers=1, dim=32, num_heads=2)
    c.loss = dict(label_smoothing=0.0)
    c.train = dict(num_steps=2, log_every=2, checkpoint_every=2, sample_every=0,
                   keep_checkpoints=1, progress_bar=False, async_checkpoints=False,
                   optimizer=dict(learning_rate=1e-3, warmup_steps=1, total_steps=2))  # fmt: skip
    c.sampling = dict(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)
    train_generator(c, tmp_path / "gen")
    codes = extracted_codes(tmp_path / "gen" / "codes" / "train")  # by train_generator
    assert codes.shape[1] == 16 and codes.max() < 32
    trained = load_generator(tmp_path / "gen")
    assert trained.model_config.vocab_size == 32 and trained.model_config.block_size == 16
