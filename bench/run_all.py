"""Runs every benchmark script with small, fast settings and gathers their JSON in one document.

Each script runs in its own process (CPU unless ``--platform`` says otherwise) with the quick
flags below; its JSON output is parsed and every headline figure is paired with the floor (or
baseline) it is compared against. The document is printed at the end and written to ``--out``.

  .venv/bin/python bench/run_all.py [--out bench_results.json] [--only train_step sample_gpt]

The quick settings aim at under 10 minutes in total on a 2-core CPU; for the full-size figures
run the scripts themselves with their defaults (see ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Figure = dict[str, Any]


def _figure(
    name: str, value: Any, unit: str, floor: Any, basis: str, lower_is_better: bool = False
) -> Figure:
    """One measured figure and the floor (or baseline) it is compared against (None: unknown).

    ``vs_floor`` is floor / value for times and counts (lower is better) and value / floor
    for rates: 1.0 means at the floor; against a baseline, above 1.0 means better than it.
    """
    ratio = None
    if isinstance(value, (int, float)) and isinstance(floor, (int, float)) and value and floor:
        ratio = floor / value if lower_is_better else value / floor
    return {
        "figure": name,
        "value": value,
        "unit": unit,
        "floor": floor,
        "floor_basis": basis,
        "vs_floor": ratio,
    }


def train_step_figures(docs: list[dict]) -> list[Figure]:
    d = docs[-1]
    floor_s = d["model_flops_per_step"] / d["matmul_flops_per_s"]
    basis = "model FLOPs per step / measured f32 matmul rate"
    return [
        _figure("step time (median)", d["step_s_median"], "s/step", floor_s, basis, True),
        _figure(
            "tokens/s",
            d["tokens_per_s"],
            "tokens/s",
            d["tokens_per_s"] * d["step_s_median"] / floor_s,
            basis,
        ),
    ]


def sample_gpt_figures(docs: list[dict]) -> list[Figure]:
    figures = []
    for row in docs[-1]["results"]:
        memory, compute = row["floor_memory_s_per_step"], row["floor_compute_s_per_step"]
        basis = "max(weights+KV bytes / read bandwidth, FLOPs / matmul rate)"
        basis += f" ({'memory' if memory >= compute else 'compute'} bound)"
        figures.append(
            _figure(
                f"batch {row['batch']}: time per token step",
                row["s_per_step"],
                "s/step",
                max(memory, compute),
                basis,
                True,
            )
        )
    return figures


def sample_var_figures(docs: list[dict]) -> list[Figure]:
    figures = []
    for d in docs:
        floor = d.get("floor_images_per_s")  # if the script reports one
        basis = d.get("floor_basis", "floor_images_per_s from bench/sample_var.py")
        if floor is None:
            basis = "no floor reported by bench/sample_var.py"
        figures.append(
            _figure(
                f"batch {d['batch']}: images/s ({d['preset']})",
                d["images_per_s"],
                "images/s",
                floor,
                basis,
            )
        )
        figures.append(
            _figure(
                f"batch {d['batch']}: forward passes per image",
                d["forward_passes_per_image"],
                "passes",
                d["tokens_per_image"],
                "one pass per token (raster-order AR over the same tokens)",
                True,
            )
        )
    return figures


def accelerator_figures(docs: list[dict]) -> list[Figure]:
    rows = docs[-1]["results"]
    plain = rows["plain"]
    figures = []
    for name, row in rows.items():
        if name == "plain":
            continue
        figures.append(
            _figure(
                f"{name}: wall time per batch",
                row["best_s"],
                "s/batch",
                plain["best_s"],
                "plain sampler (same model, same batch)",
                True,
            )
        )
        figures.append(
            _figure(
                f"{name}: forward passes per image",
                row["passes_per_image"],
                "passes",
                plain["passes_per_image"],
                "plain sampler: one pass per token",
                True,
            )
        )
        figures.append(
            _figure(
                f"{name}: class accuracy",
                row["accuracy"],
                "accuracy",
                plain["accuracy"],
                "plain sampler accuracy",
            )
        )
    return figures


def tokenizer_figures(docs: list[dict]) -> list[Figure]:
    d = docs[-1]
    size = f"{d['preset']} {d['image_size']}x{d['image_size']}"
    basis = "XLA cost_analysis FLOPs / measured f32 matmul rate"
    return [
        _figure(
            f"{direction} images/s ({size})",
            d[direction]["images_per_s"],
            "images/s",
            d[direction]["floor_images_per_s"],
            basis,
        )
        for direction in ("encode", "decode")
    ]


# name -> (script, quick flags, figure extractor)
BENCHES: dict[str, tuple[str, list[str], Callable[[list[dict]], list[Figure]]]] = {
    "train_step": (
        "bench/train_step.py",
        ["--batch", "1", "--iters", "2", "--layers", "2", "--dim", "256"],
        train_step_figures,
    ),
    "sample_gpt": (
        "bench/sample_gpt.py",
        ["--preset", "GPT-B", "--layers", "2", "--tokens", "64", "--batch", "1", "4"],
        sample_gpt_figures,
    ),
    "sample_var": (
        "bench/sample_var.py",
        ["--preset", "VAR-digits", "--batch", "1", "8"],
        sample_var_figures,
    ),
    "accelerators": (
        "bench/accelerators.py",
        ["--steps", "150", "--per-class", "5", "--iters", "1"],
        accelerator_figures,
    ),
    "tokenizer_throughput": (
        "bench/tokenizer_throughput.py",
        ["--preset", "vq16", "--image_size", "64", "--iters", "2"],
        tokenizer_figures,
    ),
}


def parse_json_documents(text: str) -> list[dict]:
    """Every JSON object printed in ``text`` whose first line starts a line (indented
    documents and JSON lines alike); other output is skipped."""
    decoder, docs, pos = json.JSONDecoder(), [], 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            return docs
        if start > 0 and text[start - 1] != "\n":
            pos = start + 1
            continue
        try:
            doc, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        if isinstance(doc, dict):
            docs.append(doc)
        pos = end


def run_bench(name: str, timeout: float, platform_name: str) -> dict[str, Any]:
    """Runs one script; returns its seconds, exit status, figures and raw JSON."""
    script, flags, figures_of = BENCHES[name]
    env = dict(os.environ, JAX_PLATFORMS=platform_name)
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, os.path.join(REPO, script), *flags]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        status, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as err:
        status, stdout, stderr = "timeout", err.stdout or "", err.stderr or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        stderr = stderr.decode() if isinstance(stderr, bytes) else stderr
    record = {
        "script": script,
        "flags": flags,
        "seconds": round(time.perf_counter() - start, 1),
        "returncode": status,
    }
    docs = parse_json_documents(stdout)
    if status != 0 or not docs:
        record["error"] = (stderr or stdout)[-2000:]
        return record
    try:
        record["figures"] = figures_of(docs)
    except (KeyError, TypeError, ZeroDivisionError) as err:  # a script changed its output
        record["error"] = f"could not read figures: {err!r}"
    record["raw"] = docs
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per script")
    parser.add_argument("--platform", default="cpu", help="JAX_PLATFORMS for the scripts")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {}
    for name in args.only or list(BENCHES):
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        results[name] = run_bench(name, args.timeout, args.platform)
        print(
            f"[run_all] {name}: {results[name]['seconds']} s, status {results[name]['returncode']}",
            file=sys.stderr,
            flush=True,
        )
    document = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "total_s": round(time.perf_counter() - start, 1),
        "benches": results,
    }
    text = json.dumps(document, indent=1, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
