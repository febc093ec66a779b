"""Mutation check: plants realistic single-line bugs in core modules and reports the share the
test suite catches. ``make mutants`` (not part of ``make test``; ~15-30 min on 2 cores).

Each mutant replaces one exact snippet (it must occur once in its file) in a scratch copy of
the tree, runs the test files that cover that module (``pytest -x -q``), and counts as
caught when they fail. The working tree is never modified. Prints one JSON line per mutant
and a final JSON summary ``{"caught": n, "planted": m, "score": n / m, "stale": [...]}``;
a mutant whose snippet no longer exists is reported as stale (update this list).

    python bench/mutants.py [--only ID,ID] [--list]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str | None = None  # pytest -k expression, to keep slow files short


Q, S = "tests/test_quantizers.py", "tests/test_sampling_logits.py"
L, C = "tests/test_layers_transformer.py", "tests/test_checkpoint.py"
FAULTS = "tests/test_faults.py"

MUTANTS = [
    # quantizers
    Mutant(
        "vq-no-straight-through",
        "jaxar/quantizers/vq.py",
        "quantized=straight_through(z, quantized).astype(dtype)",
        "quantized=quantized.astype(dtype)",
        (Q,),
    ),
    Mutant(
        "vq-ema-decay-swapped",
        "jaxar/quantizers/vq.py",
        "cluster_size = decay * self.cluster_size.value + (1 - decay) * counts",
        "cluster_size = (1 - decay) * self.cluster_size.value + decay * counts",
        (Q,),
    ),
    Mutant(
        "vq-commitment-unscaled",
        "jaxar/quantizers/vq.py",
        'loss = self.beta * losses["commitment"]',
        'loss = losses["commitment"]',
        (Q,),
    ),
    Mutant(
        "st-identity-broken",
        "jaxar/quantizers/base.py",
        "return z + jax.lax.stop_gradient(quantized - z)",
        "return jax.lax.stop_gradient(quantized)",
        (Q,),
    ),
    Mutant(
        "perplexity-log2",
        "jaxar/quantizers/base.py",
        '"perplexity": jnp.exp(entropy)',
        '"perplexity": jnp.exp2(entropy)',
        (Q,),
    ),
    Mutant(
        "fsq-floor",
        "jaxar/quantizers/fsq.py",
        "return x + jax.lax.stop_gradient(jnp.round(x) - x)",
        "return x + jax.lax.stop_gradient(jnp.floor(x) - x)",
        (Q,),
    ),
    Mutant(
        "rq-residual-not-updated",
        "jaxar/quantizers/residual.py",
        "code = self._lookup(residual)",
        "code = self._lookup(jax.lax.stop_gradient(z))",
        (Q,),
    ),
    # sampling rules
    Mutant(
        "top-k-drops-kth",
        "jaxar/sampling/logits.py",
        "return jnp.where(logits < kth, -jnp.inf, logits)",
        "return jnp.where(logits <= kth, -jnp.inf, logits)",
        (S,),
    ),
    Mutant(
        "top-p-inclusive-mass",
        "jaxar/sampling/logits.py",
        "mass_before = jnp.cumsum(probs, axis=-1) - probs",
        "mass_before = jnp.cumsum(probs, axis=-1)",
        (S,),
    ),  # fmt: skip
    Mutant(
        "cfg-sign",
        "jaxar/sampling/logits.py",
        "return uncond + scale * (cond - uncond)",
        "return cond + scale * (cond - uncond)",
        (S,),
    ),
    Mutant(
        "cfg-linear-ramp",
        "jaxar/sampling/logits.py",
        "scale = 1.0 + (scale - 1.0) * step / max(total - 1, 1)",
        "scale = 1.0 + (scale - 1.0) * step / total",
        (S,),
    ),
    Mutant(
        "temperature-multiplies",
        "jaxar/sampling/logits.py",
        "return logits / jnp.maximum(jnp.asarray(temperature, logits.dtype), 1e-5)",
        "return logits * jnp.maximum(jnp.asarray(temperature, logits.dtype), 1e-5)",
        (S,),
    ),
    # subtler ones (added after the first 27 were all caught)
    Mutant(
        "top-p-may-drop-top-token",
        "jaxar/sampling/logits.py",
        "keep = keep.at[..., 0].set(True)",
        "keep = keep",
        (S,),
    ),
    Mutant(
        "cfg-interval-off-by-one",
        "jaxar/sampling/logits.py",
        "scale = jnp.where(step > interval + 1, 1.0, scale)",
        "scale = jnp.where(step > interval, 1.0, scale)",
        (S,),
    ),
    Mutant(
        "greedy-is-sampled",
        "jaxar/sampling/logits.py",
        "if isinstance(temperature, int | float) and temperature == 0:",
        "if isinstance(temperature, int | float) and temperature == 0 and False:",
        (S,),
    ),
    Mutant(
        "vq-ema-no-laplace-smoothing",
        "jaxar/quantizers/vq.py",
        "smoothed = (cluster_size + self.ema_eps) / (total + k * self.ema_eps) * total",
        "smoothed = cluster_size",
        (Q,),
    ),
    Mutant(
        "dead-code-off-by-one",
        "jaxar/quantizers/vq.py",
        "dead = unused >= self.dead_code_steps  # [K]",
        "dead = unused > self.dead_code_steps  # [K]",
        (Q,),
    ),
    Mutant(
        "gqa-head-mapping",
        "jaxar/layers/attention.py",
        "qg = q.reshape(b, t, hkv, groups, dh)",
        "qg = q.reshape(b, t, groups, hkv, dh).swapaxes(2, 3)",
        (L, "tests/test_gpt.py", "tests/test_convert_llamagen_t2i.py"),
    ),
    Mutant(
        "resume-config-unchecked",
        "jaxar/train/checkpoint.py",
        "            self.check_config(step, config)\n        items =",
        "            pass\n        items =",
        (C,),
    ),
    # attention and cache
    Mutant(
        "causal-mask-strict",
        "jaxar/layers/attention.py",
        "mask = k_pos <= q_pos if self.causal",
        "mask = k_pos < q_pos if self.causal",
        (L,),
    ),
    Mutant(
        "attention-unscaled",
        "jaxar/layers/attention.py",
        "scores = scores * (dh**-0.5)",
        "scores = scores * (dh**-0.25)",
        (L,),
    ),
    Mutant(
        "cache-index-not-advanced",
        "jaxar/layers/attention.py",
        '"index": index + k.shape[1],',
        '"index": index + 1,',
        (L, "tests/test_gpt.py"),
    ),
    Mutant(
        "rope-sin-sign",
        "jaxar/layers/rope.py",
        "sin = np.concatenate([ps, np.sin(angles)]).astype(np.float32)\n    return jnp.asarray(cos), jnp.asarray(sin)\n\n\ndef rope_table_2d(",  # noqa: E501
        "sin = np.concatenate([ps, -np.sin(angles)]).astype(np.float32)\n    return jnp.asarray(cos), jnp.asarray(sin)\n\n\ndef rope_table_2d(",  # noqa: E501
        (L, "tests/test_gpt.py"),
    ),
    # checkpoint restore and preemption
    Mutant(
        "restore-oldest-step",
        "jaxar/train/checkpoint.py",
        "steps = sorted(self.manager.all_steps(), reverse=True)",
        "steps = sorted(self.manager.all_steps())",
        (C,),
    ),
    Mutant(
        "restore-skips-iterator",
        "jaxar/train/checkpoint.py",
        '            _set_iterator_state(data_iter, restored["data"])\n        return restored["state"]',  # noqa: E501
        '            pass\n        return restored["state"]',
        (C,),
    ),
    Mutant(
        "fallback-without-moving",
        "jaxar/train/checkpoint.py",
        "(self.directory / str(err.step)).rename(target)",
        "target.mkdir(parents=True)",
        (FAULTS,),
        "damaged",
    ),  # fmt: skip
    Mutant(  # the bug of issue #17: wait for pending saves, then claim the step is saved
        "stop-claims-unsaved-step",
        "jaxar/train/loop.py",
        "    run.log(done)\n    run.save_and_confirm(state, done)\n    stop = Preempted(",
        "    run.log(done)\n    run.checkpointer.wait_until_finished()\n    stop = Preempted(",
        (FAULTS,),
        "random_moments",
    ),
    # converters
    Mutant(
        "t2i-fc2-untransposed",
        "jaxar/convert/llamagen.py",
        '"fc2": {"kernel": _linear(tracked["cls_embedding.cap_proj.fc2.weight"])},',
        '"fc2": {"kernel": tracked["cls_embedding.cap_proj.fc2.weight"]},',
        ("tests/test_convert_llamagen_gpt.py", "tests/test_convert_llamagen_t2i.py"),
    ),
    Mutant(
        "gpt-out-proj-order",
        "jaxar/convert/llamagen.py",
        '"kernel": _linear(state[p + "attention.wo.weight"]).reshape(cfg.num_heads, hd, dim)',
        '"kernel": state[p + "attention.wo.weight"].reshape(cfg.num_heads, hd, dim)',
        ("tests/test_convert_llamagen_gpt.py", "tests/test_convert_llamagen_t2i.py"),
    ),
    Mutant(
        "var-proj-untransposed",
        "jaxar/convert/var.py",
        'state[p + "attn.proj.weight"].T.reshape(h, c // h, c)',
        'state[p + "attn.proj.weight"].reshape(h, c // h, c)',
        ("tests/test_convert_var.py",),
    ),
    Mutant(
        "vq-conv-layout",
        "jaxar/convert/llamagen_vq.py",
        "return np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO",
        "return np.transpose(value, (3, 2, 1, 0))  # OIHW -> HWIO",
        ("tests/test_convert_llamagen_vq.py",),
    ),
    # metrics
    Mutant(
        "fid-trace-sign",
        "jaxar/eval/metrics.py",
        "np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean",
        "np.trace(sigma1) + np.trace(sigma2) - tr_covmean",
        ("tests/test_fid_metrics.py",),
    ),
    Mutant(
        "psnr-no-square",
        "jaxar/eval/image_metrics.py",
        "10.0 * jnp.log10(data_range**2 / jnp.where(mse == 0, 1, mse))",
        "10.0 * jnp.log10(data_range / jnp.where(mse == 0, 1, mse))",
        ("tests/test_image_metrics.py",),
    ),
    # recipes
    Mutant(
        "generator-raw-weights",
        "jaxar/recipes/generator.py",
        'params = restored["ema_params"] if use_ema and restored.get("ema_params") else None',
        "params = None",
        ("tests/test_recipes.py",),
        "demo",
    ),
]


def _copy_tree(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _run_tests(tree: Path, mutant: Mutant, timeout: float) -> tuple[bool, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    if mutant.select:
        cmd += ["-k", mutant.select]
    start = time.monotonic()
    try:
        result = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, timeout=timeout)
        failed = result.returncode != 0
    except subprocess.TimeoutExpired:
        failed = True  # a hang is a caught bug too
    return failed, time.monotonic() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--skip_baseline", action="store_true", help="trust the clean tree")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    if args.list:
        for m in mutants:
            print(m.id, m.path, " ".join(m.tests))
        return {}
    caught, stale, results = 0, [], []
    with tempfile.TemporaryDirectory(prefix="jaxar_mutants_") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        if not args.skip_baseline:  # the covering tests must pass before any bug is planted
            for group in sorted({(m.tests, m.select) for m in mutants}, key=str):
                failed, _ = _run_tests(tree, Mutant("baseline", "", "", "", *group), args.timeout)
                if failed:
                    raise SystemExit(f"baseline failure (no bug planted) in {group}")
        for mutant in mutants:
            target = tree / mutant.path
            original = target.read_text()
            if original.count(mutant.old) != 1:
                stale.append(mutant.id)
                print(json.dumps({"id": mutant.id, "stale": True}), flush=True)
                continue
            target.write_text(original.replace(mutant.old, mutant.new))
            try:
                failed, seconds = _run_tests(tree, mutant, args.timeout)
            finally:
                target.write_text(original)
            caught += failed
            results.append({"id": mutant.id, "caught": failed, "seconds": round(seconds, 1)})
            print(json.dumps(results[-1]), flush=True)
    planted = len(results)
    summary = {
        "caught": caught,
        "planted": planted,
        "score": round(caught / planted, 3) if planted else None,
        "survived": [r["id"] for r in results if not r["caught"]],
        "stale": stale,
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
