"""bench/compare_originals.py without the original sources: jaxar's side runs, both
original sides are skipped with a message (no network, tiny models)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "compare_originals.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("compare_originals", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_originals_tiny_without_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("VAR_SRC", raising=False)
    monkeypatch.setenv("LLAMAGEN_SRC", str(tmp_path))  # a path without LlamaGen's files
    record = load_bench().main(["--tiny", "--repeats", "1", "--batch", "1"])
    assert "lacks" in record["sources"]["llamagen"]["skipped"]
    assert "VAR_SRC not set" in record["sources"]["var"]["skipped"]
    assert [(r["case"], r["batch"]) for r in record["results"]] == [("gpt", 1), ("var", 1)]
    for result in record["results"]:
        assert "skipped" in result["original"]
        assert "ratio_original_over_jaxar" not in result
        jaxar = result["jaxar"]
        assert jaxar["s_per_call"] > 0 and jaxar["s_per_image"] > 0
        assert jaxar["floor_s_per_call"] > 0
        assert 0 < jaxar["floor_fraction"] <= 1.5
