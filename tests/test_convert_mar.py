"""Converter parity: MAR's state dict (LTH14/mar's own code, golden outputs) -> jaxar MAR.

Golden data: tests/golden/make_mar_golden.py (a tiny MAR with random weights: 8x8 latents of
4 channels in 2x2 patches, encoder 32 wide / 4 heads, decoder 24 wide / 2 heads, buffer 4).
Needs no torch except for the ``checkpoint-last.pth`` layout tests."""

import argparse
import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxar.convert import mar as convert
from jaxar.generators.mar import MAR, MAR_CONFIGS, patchify

DATA = Path(__file__).parent / "data"
WEIGHTS = DATA / "mar_tiny.safetensors"
HEADS = dict(encoder_heads=4, decoder_heads=2)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(DATA / "mar_tiny_golden.npz"))


@pytest.fixture(scope="module")
def state():
    return convert.read_mar_weights(WEIGHTS)[0]


@pytest.fixture(scope="module")
def cfg(state):
    return convert.infer_mar_config(state, latent_dim=4, **HEADS)


def rel_err(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def forward(cfg, params, golden, mask_key):
    flat = golden["latents"].transpose(0, 2, 3, 1).reshape(2, 64, 4)  # NCHW -> [B, h*w, C]
    tokens = patchify(flat, cfg)
    np.testing.assert_array_equal(tokens, golden["tokens"])  # MAR's patchify
    apply = jax.jit(lambda p, t, y, m: MAR(cfg).apply({"params": p}, t, y, m))
    return apply(params, tokens, golden["labels"], golden[mask_key])


def test_infers_config(cfg, state):
    assert (cfg.latent_dim, cfg.latent_grid, cfg.patch_size, cfg.seq_len) == (4, 8, 2, 16)
    assert (cfg.encoder_dim, cfg.encoder_depth, cfg.encoder_heads) == (32, 2, 4)
    assert (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) == (24, 1, 2)
    assert (cfg.num_classes, cfg.buffer_size, cfg.mlp_ratio) == (10, 4, 4.0)
    assert (cfg.head_depth, cfg.head_width, cfg.token_dim) == (2, 32, 16)
    # without the tokenizer's channels the token size is one patch of 16-channel latents
    plain = convert.infer_mar_config(state, **HEADS)
    assert (plain.latent_dim, plain.patch_size, plain.latent_grid) == (16, 1, 4)
    with pytest.raises(ValueError, match="not patches of 3-channel latents"):
        convert.infer_mar_config(state, latent_dim=3, **HEADS)
    with pytest.raises(ValueError, match="heads is not in the weights.*--model"):
        convert.infer_mar_config(state)
    with pytest.raises(ValueError, match="MAR-B has encoder_dim=768 but the weights have 32"):
        convert.infer_mar_config(state, "mar_base")
    with pytest.raises(ValueError, match="buffer_size=64 disagrees with the weights: 4"):
        convert.infer_mar_config(state, buffer_size=64, **HEADS)


@pytest.mark.parametrize("scanned", [False, True])
def test_outputs_match_golden(cfg, state, golden, scanned):
    cfg = dataclasses.replace(cfg, scan_layers=scanned)
    params = convert.convert_mar_state_dict(state, cfg)
    assert ("encoder_blocks" in params) == scanned and ("encoder_blocks_1" in params) != scanned
    assert rel_err(forward(cfg, params, golden, "mask"), golden["z"]) < 1e-4
    assert rel_err(forward(cfg, params, golden, "mask_all"), golden["z_all"]) < 1e-4
    head = jax.jit(lambda p, x, t, c: MAR(cfg).apply({"params": p}, x, t, c, method=MAR.head))
    out = head(params, golden["head_x"], golden["head_t"], golden["head_c"])
    assert rel_err(out, golden["head_out"]) < 1e-4


def test_golden_tells_heads_and_mask_apart(cfg, state, golden):
    """The golden data are sensitive to the head split and to which tokens are dropped."""
    params = convert.convert_mar_state_dict(state, cfg)
    swapped = dataclasses.replace(cfg, encoder_heads=2, decoder_heads=1)
    assert rel_err(forward(swapped, params, golden, "mask"), golden["z"]) > 1e-3
    assert rel_err(forward(cfg, params, golden, "mask_all"), golden["z"]) > 1e-3
    assert golden["mask"].sum(1).tolist() == [13, 13]  # 3 known tokens per row


def test_bad_state_dicts_are_named(cfg, state):
    missing = {k: v for k, v in state.items() if k != "encoder_blocks.1.attn.proj.bias"}
    with pytest.raises(ValueError, match="lacks 'encoder_blocks.1.attn.proj.bias'"):
        convert.convert_mar_state_dict(missing, cfg)
    extra = {**state, "encoder_blocks.0.ls1.gamma": np.ones(32, np.float32)}
    with pytest.raises(ValueError, match="does not use.*encoder_blocks.0.ls1.gamma"):
        convert.convert_mar_state_dict(extra, cfg)
    wrong = {**state, "diffloss.net.res_blocks.1.mlp.2.weight": np.zeros((32, 31), np.float32)}
    with pytest.raises(ValueError, match="res_blocks_1/mlp_2/kernel: checkpoint shape"):
        convert.convert_mar_state_dict(wrong, cfg)
    with pytest.raises(ValueError, match="head_depth|lacks 'diffloss.net.res_blocks.2"):
        convert.convert_mar_state_dict(state, dataclasses.replace(cfg, head_depth=3))
    with pytest.raises(ValueError, match="not a MAR state dict"):
        convert.convert_mar_state_dict({"tok_embeddings.weight": np.zeros((4, 4))}, cfg)
    with pytest.raises(ValueError, match="not a MAR"):
        convert.read_mar_weights(DATA / "llamagen_gpt_tiny.safetensors")


def _fake_release(name: str) -> dict[str, np.ndarray]:
    """Zero-stride arrays with the shapes of a released model (only what inference reads)."""
    c = MAR_CONFIGS[name]
    shapes = {
        "class_emb.weight": (1000, c.encoder_dim),
        "z_proj.weight": (c.encoder_dim, 16),
        "encoder_pos_embed_learned": (1, 256 + 64, c.encoder_dim),
        "diffusion_pos_embed_learned": (1, 256, c.decoder_dim),
        "decoder_embed.weight": (c.decoder_dim, c.encoder_dim),
        "diffloss.net.input_proj.weight": (c.head_width, 16),
        "encoder_blocks.0.mlp.fc1.weight": (4 * c.encoder_dim, c.encoder_dim),
    }
    for stack, depth in (("encoder_blocks", c.encoder_depth), ("decoder_blocks", c.decoder_depth),
                         ("diffloss.net.res_blocks", c.head_depth)):  # fmt: skip
        shapes.update({f"{stack}.{i}.norm1.weight": (1,) for i in range(depth)})
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}


@pytest.mark.parametrize("name,heads", [("MAR-B", 12), ("MAR-L", 16), ("MAR-H", 16)])
def test_released_models_are_recognised(name, heads):
    """mar_base / mar_large / mar_huge (models/mar.py): heads 12 / 16 / 16, KL-16 latents."""
    cfg = convert.infer_mar_config(_fake_release(name), latent_dim=16)
    assert cfg == MAR_CONFIGS[name]
    assert (cfg.encoder_heads, cfg.decoder_heads, cfg.buffer_size) == (heads, heads, 64)
    model = {"MAR-B": "mar_base", "MAR-L": "mar_large", "MAR-H": "mar_huge"}[name]
    assert convert.infer_mar_config(_fake_release(name), model) == cfg


def test_checkpoint_last_prefers_model_ema(tmp_path, cfg, state):
    torch = pytest.importorskip("torch")
    model = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    ema = {k: v + 0.5 for k, v in model.items()}
    ckpt = {"model": model, "model_ema": ema, "epoch": 3, "scaler": {"scale": 65536.0},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "args": argparse.Namespace(model="mar_base", buffer_size=4)}  # fmt: skip
    path = tmp_path / "checkpoint-last.pth"
    torch.save(ckpt, path)
    got, source = convert.read_mar_weights(path)
    assert source == "the 'model_ema' entry"
    np.testing.assert_allclose(got["z_proj.weight"], state["z_proj.weight"] + 0.5)
    loaded_cfg, params = convert.load_mar(path, latent_dim=4, **HEADS)
    assert loaded_cfg == cfg
    np.testing.assert_allclose(params["mask_token"], state["mask_token"] + 0.5)
    _, plain = convert.load_mar(path, use_ema=False, latent_dim=4, **HEADS)
    np.testing.assert_array_equal(plain["mask_token"], state["mask_token"])
    # save_model without EMA stores model_ema=None: the model weights are used
    torch.save({**ckpt, "model_ema": None}, path)
    assert convert.read_mar_weights(path)[1] == "the 'model' entry"
    torch.save({"optimizer": ckpt["optimizer"]}, tmp_path / "opt.pth")
    with pytest.raises(ValueError, match="found no weights"):
        convert.read_mar_weights(tmp_path / "opt.pth")


def tokenizer_workdir(path: Path, image_size: int = 16, **fields) -> Path:
    """A randomly initialised tiny tokenizer as a converted-tokenizer workdir: 16 px images,
    8x8 latents of 4 channels (the golden MAR's grid)."""
    from jaxar.convert.workdir import tokenizer_config, write_workdir
    from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig

    tok = TokenizerConfig(ch=8, ch_mult=(1, 1), num_res_blocks=1, z_channels=4, norm_groups=4,
                          code_dim=4, codebook_size=16, **fields)  # fmt: skip
    images = np.zeros((1, image_size, image_size, 3), np.float32)
    params = nn.unbox(Tokenizer(tok).init(jax.random.key(0), images)["params"])
    config = tokenizer_config(tok, image_size, {"test": True})
    write_workdir(path, {"model": params}, config)
    return path


def test_workdir_needs_a_continuous_tokenizer(tmp_path):
    vq = tokenizer_workdir(tmp_path / "vq", quantizer="vq")
    with pytest.raises(ValueError, match="continuous.*quantizer 'vq'"):
        convert.main(["--mar", str(WEIGHTS), "--workdir", str(tmp_path / "gen"),
                      "--tokenizer-workdir", str(vq), "--encoder-heads", "4",
                      "--decoder-heads", "2"])  # fmt: skip
    assert not (tmp_path / "gen").exists()


def test_workdir_holds_the_converted_model(tmp_path, golden):
    """write_mar_workdir over a real (tiny, random) KL tokenizer workdir: load_generator
    rebuilds the model, its params reproduce the golden z, and one sampler call gives float
    latents decoded to uint8 images."""
    from jaxar.recipes.generator import load_generator
    from jaxar.recipes.tokenizer import write_latent_scale

    tok = tokenizer_workdir(tmp_path / "tok", quantizer="kl")
    write_latent_scale(tok, 0.5)
    cfg = convert.write_mar_workdir(WEIGHTS, tmp_path / "gen", tok, **HEADS)
    gen = load_generator(tmp_path / "gen")
    config = gen.config
    assert config["model"]["family"] == "mar" and config["data"]["image_size"] == 16
    assert config["tokenizer_workdir"] == str(tok.resolve())
    assert config["sampling"] == {**convert.SAMPLING_DEFAULTS, "cfg_scale": 2.9}
    assert config["converted_from"]["weights"] == "the top-level state dict"
    assert gen.model_config == cfg and cfg.patch_size == 2 and not cfg.scan_layers
    np.testing.assert_allclose(gen.tokenizer.latent_scale, [0.5] * 4)
    z = forward(cfg, gen.params, golden, "mask")
    assert rel_err(z, golden["z"]) < 1e-4
    out = gen.sample([1, 3], 0, num_iter=2, num_sampling_steps=2)
    assert out.codes.shape == (2, 64, 4) and np.issubdtype(out.codes.dtype, np.floating)
    assert out.images.shape == (2, 16, 16, 3) and out.images.dtype == np.uint8
    with pytest.raises(FileExistsError):
        convert.write_mar_workdir(WEIGHTS, tmp_path / "gen", tok, **HEADS)
    big = tokenizer_workdir(tmp_path / "tok32", 32, quantizer="kl")  # 16x16 latents
    with pytest.raises(ValueError, match="8x8 latent grid, the tokenizer.*16x16 at 32 px"):
        convert.write_mar_workdir(WEIGHTS, tmp_path / "gen2", big, **HEADS)
