"""MAR KL-VAE converter == MAR's own ``AutoencoderKL`` (golden data, torch not needed here).

Golden data: tests/golden/make_mar_vae_golden.py (LTH14/mar's models/vae.py, tiny sizes,
GroupNorm with 4 groups).
"""

import os

import numpy as np
import pytest

from jaxar.convert import mar_vae
from jaxar.quantizers.gaussian import split_moments
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "mar_vae_tiny.safetensors")
CFG = TokenizerConfig(
    image_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=2, z_channels=4, norm_groups=4,
    quantizer="kl", code_dim=4, double_z=True, decoder_attn=False,
)  # fmt: skip


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.fixture(scope="module")
def golden():
    return np.load(os.path.join(DATA, "mar_vae_tiny_golden.npz"))


@pytest.fixture(scope="module")
def state():
    return mar_vae.read_state_dict(CKPT)


@pytest.fixture(scope="module")
def variables():
    return {"params": mar_vae.load_mar_vae(CKPT, CFG)}


def test_encode_matches_reference(variables, golden):
    model = Tokenizer(CFG)
    moments = model.apply(variables, golden["image"], method=Tokenizer.encode)
    assert rel_err(moments, golden["moments"]) < 1e-4
    mean, logvar = split_moments(moments)  # the bottleneck's split (logvar clamped)
    assert rel_err(mean, golden["mean"]) < 1e-4
    assert rel_err(logvar, golden["logvar"]) < 1e-4
    codes = model.apply(variables, golden["image"], method=Tokenizer.encode_to_codes)
    assert rel_err(codes, golden["mean"]) < 1e-4  # eval: the posterior mean


def test_decode_matches_reference(variables, golden):
    model = Tokenizer(CFG)
    decoded = model.apply(variables, golden["mean"], method=Tokenizer.decode_latents)
    assert rel_err(decoded, golden["decoded"]) < 1e-4
    decoded = model.apply(variables, golden["latents"], method=Tokenizer.decode_latents)
    assert rel_err(decoded, golden["decoded_latents"]) < 1e-4


def test_config_read_from_weights(state):
    with pytest.raises(ValueError, match="norm_groups=32"):  # LDM's fixed 32 groups
        mar_vae.infer_kl_config(state)
    assert mar_vae.infer_kl_config(state, norm_groups=4) == CFG
    with pytest.raises(ValueError, match="not an LDM/MAR AutoencoderKL"):
        mar_vae.infer_kl_config({"x": np.zeros(1)})
    # single_z: the encoder's conv_out as wide as z_channels
    single = dict(state)
    single["encoder.conv_out.weight"] = np.zeros((4, 16, 3, 3), np.float32)
    single["encoder.conv_out.bias"] = np.zeros(4, np.float32)
    single["quant_conv.weight"] = np.zeros((8, 4, 1, 1), np.float32)
    assert not mar_vae.infer_kl_config(single, norm_groups=4).double_z
    unvariational = dict(state, **{"quant_conv.weight": np.zeros((4, 8, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="use_variational=False"):
        mar_vae.infer_kl_config(unvariational)
    high = dict(state, **{"encoder.down.0.attn.0.q.weight": np.zeros((8, 8, 1, 1))})
    with pytest.raises(ValueError, match=r"encoder\.down\.0\.attn"):
        mar_vae.infer_kl_config(high)


def _with_decoder_attn(state):
    out = dict(state)
    for j in range(3):  # up.1 = the lowest of 2 levels, num_res_blocks + 1 blocks
        prefix = f"decoder.up.1.attn.{j}."
        for name in ("norm.weight", "norm.bias", "q.bias", "k.bias", "v.bias", "proj_out.bias"):
            out[prefix + name] = np.full(16, j + 1.0, np.float32)
        for name in ("q", "k", "v", "proj_out"):
            out[prefix + name + ".weight"] = np.ones((16, 16, 1, 1), np.float32)
    return out


def test_decoder_attention_is_read_and_converted(state):
    attn_state = _with_decoder_attn(state)
    cfg = mar_vae.infer_kl_config(attn_state, norm_groups=4)
    assert cfg.decoder_attn and cfg.__dict__ == {**CFG.__dict__, "decoder_attn": True}
    params = mar_vae.convert_state_dict(attn_state, cfg)
    block = params["decoder"]["conv_blocks_0_attn_2"]  # jaxar's level 0 = LDM's up.1
    np.testing.assert_array_equal(block["norm"]["scale"], np.full(16, 3.0))
    assert block["q"]["kernel"].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"unexpected \['decoder\.up\.1\.attn\.0\.k\.bias'"):
        mar_vae.convert_state_dict(attn_state, CFG)  # config without decoder attention


def test_bad_keys_and_shapes_are_named(state):
    assert mar_vae.convert_state_dict(dict(state, **{"loss.logvar": np.zeros(())}), CFG)
    missing = {k: v for k, v in state.items() if k != "decoder.up.0.block.1.conv2.weight"}
    with pytest.raises(ValueError, match=r"missing \['decoder/conv_blocks_1_res_1/conv2/kernel'"):
        mar_vae.convert_state_dict(missing, CFG)
    extra = dict(state, **{"encoder.down.0.block.0.temb_proj.weight": np.zeros((8, 512))})
    with pytest.raises(ValueError, match=r"unexpected \['encoder\.down\.0\.block\.0\.temb_proj"):
        mar_vae.convert_state_dict(extra, CFG)
    with pytest.raises(ValueError, match=r"unexpected parameter 'encoder\.conv_in\.running_mean'"):
        mar_vae.convert_state_dict(
            dict(state, **{"encoder.conv_in.running_mean": np.zeros(8)}), CFG
        )
    with pytest.raises(ValueError, match=r"unexpected parameter 'decoder'"):
        mar_vae.convert_state_dict(dict(state, decoder=np.zeros(1)), CFG)
    wrong = dict(state, **{"post_quant_conv.weight": np.zeros((4, 5, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"post_quant_conv\.weight \(-> post_quant_conv/kernel\)"):
        mar_vae.convert_state_dict(wrong, CFG)
    with pytest.raises(ValueError, match="does not match"):
        mar_vae.convert_state_dict(state, TokenizerConfig(**{**CFG.__dict__, "num_res_blocks": 1}))


def test_cli_writes_flat_params(tmp_path, state):
    from jaxar.convert.llamagen_vq import load_flat_params

    with pytest.raises(SystemExit):  # --workdir or --out, not both
        mar_vae.main(["--vae", CKPT, "--workdir", str(tmp_path / "w"), "--out", "x.safetensors"])
    out = str(tmp_path / "p.safetensors")
    mar_vae.main(["--vae", CKPT, "--out", out, "--norm-groups", "4"])
    params = load_flat_params(out)
    np.testing.assert_array_equal(
        params["decoder"]["conv_blocks_0_upsample"]["conv"]["bias"],
        state["decoder.up.1.upsample.conv.bias"],
    )
    np.testing.assert_array_equal(
        params["encoder"]["conv_blocks_1_attn_1"]["q"]["kernel"],
        np.transpose(state["encoder.down.1.attn.1.q.weight"], (2, 3, 1, 0)),
    )


def test_workdir_latents_and_round_trip(tmp_path, golden):
    from jaxar.recipes.tokenizer import load_tokenizer

    workdir = tmp_path / "kl"
    assert mar_vae.write_kl_workdir(CKPT, workdir, 16, 0.2325, norm_groups=4) == CFG
    tokenizer = load_tokenizer(workdir)
    assert tokenizer.config == CFG and tokenizer.image_size == 16
    latents = np.asarray(tokenizer.encode(golden["image"]))
    assert latents.shape == (2, 64, 4)  # [B, h * w, code_dim]
    assert rel_err(latents, 0.2325 * golden["mean"].reshape(2, 64, 4)) < 1e-4
    images = tokenizer.decode(latents)
    assert rel_err(images, np.clip(golden["decoded"], -1, 1)) < 1e-4
    with pytest.raises(FileExistsError):  # nothing is overwritten
        mar_vae.write_kl_workdir(CKPT, workdir, 16, 0.5, norm_groups=4)
    np.testing.assert_allclose(np.asarray(load_tokenizer(workdir).encode(golden["image"])), latents)


def test_workdir_per_channel_scale(tmp_path, golden):
    from jaxar.recipes.tokenizer import load_tokenizer

    scale = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    mar_vae.main(
        ["--vae", CKPT, "--workdir", str(tmp_path / "w"), "--image-size", "16",
         "--norm-groups", "4", "--latent-scale", "1.0"]
    )  # fmt: skip
    tokenizer = load_tokenizer(tmp_path / "w")
    assert rel_err(tokenizer.encode(golden["image"]), golden["mean"].reshape(2, 64, 4)) < 1e-4
    mar_vae.write_kl_workdir(CKPT, tmp_path / "c", 16, scale, norm_groups=4)
    tokenizer = load_tokenizer(tmp_path / "c")
    latents = tokenizer.encode(golden["image"])
    assert rel_err(latents, golden["mean"].reshape(2, 64, 4) * scale) < 1e-4
    assert rel_err(tokenizer.decode(latents), np.clip(golden["decoded"], -1, 1)) < 1e-4
