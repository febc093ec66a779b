"""LlamaGen VQ converter == a torch reference with LlamaGen's parameter names (golden data).

Golden data: tests/golden/make_llamagen_vq_golden.py (torch is not needed here).
"""

import os

import numpy as np
import pytest

from jaxar.convert.llamagen_vq import convert_state_dict, load_llamagen_vq, read_state_dict
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig

DATA = os.path.join(os.path.dirname(__file__), "data")
CKPT = os.path.join(DATA, "llamagen_vq_tiny.safetensors")
CFG = TokenizerConfig(
    image_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=8, norm_groups=4,
    codebook_size=32, code_dim=4, l2_norm=True,
)  # fmt: skip


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / (np.max(np.abs(b)) + 1e-12))


@pytest.fixture(scope="module")
def converted():
    return {"params": load_llamagen_vq(CKPT, CFG)}, np.load(
        os.path.join(DATA, "llamagen_vq_tiny_golden.npz")
    )


def test_encode_matches_reference(converted):
    variables, golden = converted
    model = Tokenizer(CFG)
    latents = model.apply(variables, golden["image"], method=Tokenizer.encode)
    assert rel_err(latents, golden["latents"]) < 1e-4
    codes = model.apply(variables, golden["image"], method=Tokenizer.encode_to_codes)
    np.testing.assert_array_equal(np.asarray(codes), golden["codes"])


def test_decode_matches_reference(converted):
    variables, golden = converted
    model = Tokenizer(CFG)
    images = model.apply(variables, golden["fixed_codes"], method=Tokenizer.decode_codes)
    assert rel_err(images, np.clip(golden["decoded"], -1, 1)) < 1e-4
    recon, out = model.apply(variables, golden["image"])
    assert rel_err(recon, golden["recon"]) < 1e-4
    np.testing.assert_array_equal(np.asarray(out.codes), golden["codes"])


def test_mismatched_config_is_rejected():
    state = read_state_dict(CKPT)
    with pytest.raises(ValueError, match="does not match"):
        convert_state_dict(state, TokenizerConfig(**{**CFG.__dict__, "num_res_blocks": 2}))
    bad = dict(state)
    bad["quant_conv.weight"] = np.zeros((5, 8, 1, 1), np.float32)
    with pytest.raises(ValueError, match="shape"):
        convert_state_dict(bad, CFG)


def test_config_read_from_weights_and_cli(tmp_path):
    from jaxar.convert import llamagen_vq
    from jaxar.recipes.tokenizer import load_tokenizer

    state = read_state_dict(CKPT)
    with pytest.raises(ValueError, match="norm_groups=32"):  # LlamaGen's fixed 32 groups
        llamagen_vq.infer_tokenizer_config(state)
    assert llamagen_vq.infer_tokenizer_config(state, norm_groups=4) == CFG
    with pytest.raises(ValueError, match="not a LlamaGen VQModel"):
        llamagen_vq.infer_tokenizer_config({"x": np.zeros(1)})
    orig = os.path.join(DATA, "llamagen_orig_vq.safetensors")  # LlamaGen's own VQModel, ch=32
    with pytest.raises(SystemExit):  # --workdir needs --image-size
        llamagen_vq.main(["--checkpoint", orig, "--workdir", str(tmp_path / "w")])
    llamagen_vq.main(["--checkpoint", orig, "--out", str(tmp_path / "p.safetensors")])
    params = llamagen_vq.load_flat_params(str(tmp_path / "p.safetensors"))
    codebook = read_state_dict(orig)["quantize.embedding.weight"]
    np.testing.assert_array_equal(params["quantizer"]["codebook"], codebook)
    llamagen_vq.write_vq_workdir(CKPT, tmp_path / "w", 16, norm_groups=4)
    tokenizer = load_tokenizer(tmp_path / "w")
    assert tokenizer.config == CFG and tokenizer.image_size == 16
