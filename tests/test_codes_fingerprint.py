"""Runs describe themselves (#17 part 4): a generator stores a resolved tokenizer reference;
codes carry the tokenizer fingerprint and data config and are never reused for another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import codes_setup
import jax
import numpy as np
import pytest

from jaxar.data.codes import read_index
from jaxar.recipes.extraction import StaleCodesError, ensure_codes
from jaxar.recipes.generator import _load_generator_tokenizer, load_generator, train_generator
from jaxar.recipes.images import check_data_config
from jaxar.recipes.tokenizer import load_tokenizer
from jaxar.train.checkpoint import restore_for_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    images, tok_a = codes_setup.shared_setup(tmp_path_factory, 1)
    _, tok_b = codes_setup.shared_setup(tmp_path_factory, 2)
    return tmp_path_factory.mktemp("fingerprint"), images, tok_a, tok_b


def _shard_bytes(split_dir):
    return {p.name: p.read_bytes() for p in sorted(split_dir.glob("*.array_record"))}


def test_tokenizer_fingerprint_names_the_weights(setup):
    _, _, tok_a, tok_b = setup
    a, again, b = load_tokenizer(tok_a), load_tokenizer(tok_a), load_tokenizer(tok_b)
    assert a.fingerprint == again.fingerprint != b.fingerprint
    assert (a.step, b.step) == (1, 2)
    assert a.reference()["workdir"] == os.path.abspath(tok_a)


def test_codes_follow_the_tokenizer_under_a_workdir(setup, tmp_path, monkeypatch):
    _, images, tok_a, tok_b = setup
    config = codes_setup.generator_config(images, tok_a, steps=1)
    split_dir = ensure_codes(config, load_tokenizer(tok_a), tmp_path)
    index_a, codes_a = read_index(split_dir), _shard_bytes(split_dir)
    assert index_a["meta"]["tokenizer"]["fingerprint"] == load_tokenizer(tok_a).fingerprint
    assert index_a["meta"]["data"]["path"] == str(images) and index_a["num_examples"] == 32
    # Same tokenizer: reused, nothing extracted.
    from jaxar.recipes import extraction

    calls = []
    monkeypatch.setattr(extraction, "extract_split", lambda *a, **k: calls.append(a))
    assert ensure_codes(config, load_tokenizer(tok_a), tmp_path) == split_dir and not calls
    monkeypatch.undo()
    # The tokenizer under the workdir changes (same path, other weights): extracted again.
    swapped = shutil.copytree(tok_b, tmp_path / "swap")
    config.tokenizer_workdir = str(swapped)
    ensure_codes(config, load_tokenizer(swapped), tmp_path)
    index_b = read_index(split_dir)
    assert index_b["meta"]["tokenizer"]["fingerprint"] == load_tokenizer(tok_b).fingerprint
    assert _shard_bytes(split_dir) != codes_a
    # A user-given codes_dir made by another tokenizer stops the run instead.
    config.codes_dir = str(tmp_path / "codes")
    with pytest.raises(StaleCodesError, match="meta.tokenizer"):
        ensure_codes(config, load_tokenizer(tok_a), None)
    # ... and so does another data config (here: the image folder).
    other = codes_setup.write_image_folder(tmp_path / "other", 16, seed=1)
    config.data.path = str(other)
    with pytest.raises(StaleCodesError, match="meta.data"):
        ensure_codes(config, load_tokenizer(swapped), None)


@pytest.mark.slow
def test_generator_stores_a_resolved_tokenizer_reference(setup, tmp_path, monkeypatch):
    root, images, tok_a, tok_b = setup
    monkeypatch.chdir(root)
    config = codes_setup.generator_config(images, os.path.relpath(tok_a, root), steps=1)
    train_generator(config, tmp_path / "gen")
    _, stored = restore_for_eval(tmp_path / "gen")
    tokenizer = load_tokenizer(tok_a)
    assert stored["tokenizer_workdir"] == os.path.abspath(tok_a)
    assert stored["tokenizer_ref"] == json.loads(json.dumps(tokenizer.reference()))
    monkeypatch.chdir(tmp_path)  # loads from anywhere
    generator = load_generator(tmp_path / "gen")
    assert generator.tokenizer.fingerprint == tokenizer.fingerprint
    out = generator.sample([0, 1], jax.random.key(0))
    codes, images_out = out.codes, out.images
    assert codes.shape == (2, 64) and images_out.shape == (2, 16, 16, 1)
    # A moved tokenizer: the override finds it; the fingerprint matches, so no warning.
    moved = shutil.copytree(tok_a, tmp_path / "moved")
    shutil.rmtree(tmp_path / "gen" / "codes")
    assert load_generator(tmp_path / "gen", tokenizer_workdir=moved).tokenizer.workdir == str(moved)
    # Old checkpoints name the tokenizer by a plain tokenizer_workdir string.
    old = _load_generator_tokenizer({"tokenizer_workdir": str(moved)}, None, True)
    assert old.fingerprint == tokenizer.fingerprint
    # Resuming the generator on another tokenizer is refused, naming the fingerprint.
    config.tokenizer_workdir = str(tok_b)
    config.train.num_steps = 2
    with pytest.raises(ValueError, match="tokenizer_ref.fingerprint"):
        train_generator(config, tmp_path / "gen")


def test_missing_data_fields_are_named():
    with pytest.raises(ValueError, match=r"data.name='folder' needs data.path"):
        check_data_config({"name": "folder", "image_size": 16, "channels": 1})
    with pytest.raises(ValueError, match=r"needs data.tfds_name"):
        check_data_config({"name": "tfds", "image_size": 16, "channels": 1})
    with pytest.raises(ValueError, match=r"needs data.image_size"):
        check_data_config({"name": "digits", "channels": 1})
    with pytest.raises(ValueError, match="accepted"):
        check_data_config({"name": "webdataset", "image_size": 16, "channels": 1})
    ok = {"name": "folder", "train_path": "x", "image_size": 16, "channels": 1}
    assert check_data_config(ok, "train") == ok


@pytest.mark.slow
def test_extract_codes_script_writes_flip_codes(setup, tmp_path):
    _, images, tok_a, _ = setup
    script = os.path.join(REPO, "experiments", "extract_codes.py")
    config_file = tmp_path / "config.py"
    config_file.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
        "import codes_setup\n"
        f"def get_config(arg=''):\n"
        f"    return codes_setup.generator_config({str(images)!r}, {str(tok_a)!r}, steps=1)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, script, "--config", str(config_file), "--workdir", str(tmp_path / "g"),
         "--set", "codes.augment=flip"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["num_examples"] == 64 and summary["augment"] == "flip"
    index = read_index(tmp_path / "g" / "codes" / "train")
    assert np.all([s["records"] == 16 for s in index["shards"]])
