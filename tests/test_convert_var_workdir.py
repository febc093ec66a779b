"""VAR + VQVAE checkpoints -> one convert command -> an ordinary jaxar workdir whose
``load_generator(W).sample`` matches VAR's own ``autoregressive_infer_cfg`` (codes and images).

Golden data: tests/golden/make_var_workdir_golden.py (runs VAR's code; the state dicts it
wrote are re-saved here as the released files and as VAR's trainer checkpoints)."""

from pathlib import Path

import jax
import numpy as np
import pytest
from codes_setup import extracted_codes

from jaxar.convert import var, var_vae
from jaxar.generators.var import SCALE_SCHEDULES, VAR_CONFIGS, scale_schedule
from jaxar.recipes.generator import load_generator
from jaxar.recipes.tokenizer import encode_arrays

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

DATA = Path(__file__).parent / "data"
VAE = DATA / "var_orig_vae.safetensors"
MODELS = {
    "var": DATA / "var_orig_var.safetensors",
    "var_saln": DATA / "var_orig_var_saln.safetensors",
}
# the original's cfg -> jaxar's cfg_scale = 1 + cfg (jaxar.sampling.scalewise)
CFGS = {"cfg0": 1.0, "cfg1.5": 2.5, "cfg4": 5.0}


def trainer_checkpoint(model: dict, vae: dict) -> dict:
    """The layout of VAR's train.py ``ar-ckpt-*.pth``."""
    trainer = {"config": {"patch_nums": [1, 2, 3, 4]}, "var_wo_ddp": model, "vae_local": vae,
               "var_opt": {"optim": {"state": {}, "param_groups": [{"lr": 1e-4}]}}}  # fmt: skip
    return {"epoch": 3, "iter": 0, "trainer": trainer, "args": {"depth": 2, "pn": "1_2_3_4"}}


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "var_orig_golden.npz"))


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    """ "var": the released layout (.pth state dicts); "var_saln": one trainer checkpoint
    holding both the transformer and the VQVAE."""
    root = tmp_path_factory.mktemp("var")
    vae = load_file(VAE)
    torch.save(vae, root / "vae.pth")
    torch.save(load_file(MODELS["var"]), root / "var.pth")
    torch.save(trainer_checkpoint(load_file(MODELS["var_saln"]), vae), root / "ar-ckpt.pth")
    common = ["--depth", "2", "--patch-nums", "1,2,3,4"]
    var.main(["--var", str(root / "var.pth"), "--vae", str(root / "vae.pth"),
              "--workdir", str(root / "var"), *common])  # fmt: skip
    ckpt = str(root / "ar-ckpt.pth")
    var.main(["--var", ckpt, "--vae", ckpt, "--workdir", str(root / "var_saln"), *common])
    return root


@pytest.fixture(scope="module")
def generators(workdirs):
    return {name: load_generator(workdirs / name) for name in MODELS}


# (model, guidance, jaxar settings): VAR's sampler has no greedy mode, its top-1 is the greedy
# choice; one compile per case, so a few cover per-block / shared adaLN and cfg off / on.
CASES = [
    ("var", "cfg1.5", {"top_k": 1}),
    ("var", "cfg1.5", {"temperature": 0.0}),
    ("var", "cfg0", {"top_k": 1}),
    ("var_saln", "cfg4", {"top_k": 1}),
]


@pytest.mark.parametrize("name,cfg,settings", CASES)
def test_sample_matches_autoregressive_infer_cfg(generators, golden, name, cfg, settings):
    gen, key = generators[name], f"{name}_{cfg}"
    out = gen.sample(golden["labels"], jax.random.key(0), cfg_scale=CFGS[cfg], **settings)
    codes, images = out.codes, out.images
    np.testing.assert_array_equal(codes, golden["codes_" + key])
    pixels = (np.asarray(gen.tokenizer.decode(codes)) + 1) / 2
    np.testing.assert_allclose(pixels, golden["images_" + key], atol=1e-4)
    assert images.dtype == np.uint8 and np.abs(images - golden["images_" + key] * 255).max() <= 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_workdir_config_and_vqvae_encoder(generators, golden, workdirs, name):
    gen = generators[name]
    config = gen.config
    assert config["tokenizer_workdir"] == str((workdirs / name / "tokenizer").resolve())
    assert config["sampling"] == var.SAMPLING_DEFAULTS  # VAR's cfg 1.5, top-k 900, top-p 0.96
    want = "the 'trainer.var_wo_ddp' entry" if name == "var_saln" else "the top-level state dict"
    assert config["converted_from"]["weights"] == want
    assert gen.model_config.shared_aln == (name == "var_saln")
    assert gen.tokenizer.config.quant_conv_kernel == 3 and gen.tokenizer.image_size == 8
    codes = encode_arrays(gen.tokenizer, golden["image"])  # VQVAE.img_to_idxBl
    np.testing.assert_array_equal(codes, golden["image_codes"])


def test_sample_script_runs_on_the_workdir(workdirs, tmp_path):
    from experiments.sample import main

    main(["--workdir", str(workdirs / "var"), "--out", str(tmp_path), "--num_samples", "5",
          "--batch_size", "5"])  # fmt: skip
    with np.load(tmp_path / "samples.npz") as samples:
        assert samples["arr_0"].shape == (5, 8, 8, 3)
        np.testing.assert_array_equal(samples["arr_1"], np.arange(5))


def test_config_is_read_and_cross_checked():
    state = var.read_state_dict(MODELS["var"])
    cfg = var.infer_var_config(state, 2, (1, 2, 3, 4))
    assert (cfg.vocab_size, cfg.code_dim, cfg.embed_dim, cfg.num_heads) == (16, 4, 32, 2)
    assert (cfg.num_classes, cfg.attn_l2_norm, cfg.shared_aln) == (5, True, False)
    with pytest.raises(ValueError, match="--depth 16, but the checkpoint has 2 blocks"):
        var.infer_var_config(state, 16, (1, 2, 3, 4))
    with pytest.raises(ValueError, match="30 positions over 4 scales.*--image-size"):
        var.infer_var_config(state, 2, (1, 2, 3, 5))
    plain = {k: v for k, v in state.items() if "scale_mul" not in k}
    with pytest.raises(ValueError, match="pass --num-heads"):
        var.infer_var_config(plain, 2, (1, 2, 3, 4))
    vae = var.read_state_dict(VAE)
    with pytest.raises(ValueError, match="schedules for image sizes"):
        var_vae.infer_vqvae_config(vae, 8)  # 4x4 latents: no VAR schedule, pass the scales
    with pytest.raises(ValueError, match="last scale 16 != latent size 4"):
        var_vae.infer_vqvae_config(vae, 8, SCALE_SCHEDULES[256])


def test_released_presets_and_schedules():
    assert scale_schedule(512)[-1] == 32 and scale_schedule(256)[-1] == 16
    d36 = VAR_CONFIGS["VAR-d36"]
    assert d36.shared_aln and d36.patch_nums == SCALE_SCHEDULES[512] and d36.seq_len == 2240
    for depth in (16, 20, 24, 30, 36):
        cfg = VAR_CONFIGS[f"VAR-d{depth}"]
        assert (cfg.embed_dim, cfg.num_heads, cfg.depth) == (64 * depth, depth, depth)
    with pytest.raises(ValueError, match="schedules for image sizes"):
        scale_schedule(384)


def test_converted_vqvae_is_a_tokenizer_workdir_for_training(workdirs, tmp_path):
    """train_generator accepts W/tokenizer for a VAR: it encodes digits and trains 2 steps."""
    import ml_collections

    from jaxar.recipes.generator import train_generator

    c = ml_collections.ConfigDict()
    c.seed, c.mesh = 0, dict(data=-1, fsdp=1, tensor=1)
    c.data = dict(name="digits", image_size=8, channels=3, batch_size=8, seed=0)
    c.tokenizer_workdir = str(workdirs / "var" / "tokenizer")
    c.model = dict(family="var", preset="VAR-tiny", depth=1, num_classes=10)
    c.loss = dict()
    c.train = dict(num_steps=2, log_every=2, checkpoint_every=2, sample_every=0,
                   keep_checkpoints=1, progress_bar=False, async_checkpoints=False,
                   optimizer=dict(learning_rate=1e-3, warmup_steps=1, total_steps=2))  # fmt: skip
    c.sampling = dict(cfg_scale=1.5, top_k=1)
    train_generator(c, tmp_path / "gen")
    codes = extracted_codes(tmp_path / "gen" / "codes" / "train")  # by train_generator
    assert codes.shape[1] == 30 and codes.max() < 16
    trained = load_generator(tmp_path / "gen")
    assert trained.model_config.patch_nums == (1, 2, 3, 4)
