"""Times the ORIGINAL LlamaGen and VAR samplers (PyTorch) against jaxar's, same settings.

Method: per case (``gpt``: LlamaGen GPT, ``var``: VAR) and batch size, both sides get the same
architecture (the original is built from jaxar's config), random weights, fp32 and the same
sampling settings. Each side is warmed up first (jaxar: compiled ahead of time, then one call;
torch: one call), then the calls are interleaved, original, jaxar, original, jaxar, ...
``--repeats`` times, and the median is reported (seconds per call and per image, and the
ratio original / jaxar: above 1 means jaxar is faster).

* gpt: LlamaGen's own ``generate()`` (autoregressive/models/generate.py; prefill + one
  forward per token with its KV cache) against ``jaxar.sampling.autoregressive.make_sampler``,
  both with CFG (batch doubled), top-k, top-p, temperature and ``block_size`` tokens. Both
  zero-init the output head; it is redrawn N(0, 0.02) on both sides so logits are not flat.
* var: ``VAR.autoregressive_infer_cfg`` against ``make_scalewise_sampler`` (VAR's linear CFG
  ramp: VAR's ``cfg`` c is jaxar's ``cfg_scale`` 1 + c), top-k 900 (capped at the vocabulary),
  top-p 0.96. The pixel decode is excluded on both sides: the original's
  ``VQVAE.fhat_to_img`` is replaced by a no-op (it then returns ``f_hat`` rescaled, one tiny
  elementwise op); jaxar's sampler is built without a decoder and returns ``f_hat``.
  VAR's ``huggingface_hub`` import (only for its hub wrapper) is stubbed when absent.
* ``--dtype bfloat16``: jaxar's compute dtype (and KV cache); the originals stay fp32. See
  ``--dtype bfloat16`` samples jaxar's side with ``precision="bfloat16"`` (bf16 weights,
  activations and KV cache; the floors count 2 bytes per weight).

Floors (a side's ``floor_fraction`` = floor time / measured time; 1 is the physical limit):
  memory floor of a step  = (weight bytes + KV-cache bytes read) / read bandwidth
  compute floor of a step = FLOPs of the step / matmul rate
  floor of a step = max of the two; a call's floor is the sum over its steps (GPT: one step
  per token, ``sample_gpt.step_costs``; VAR: one cached pass per scale,
  ``sample_var.scale_costs``). The ceilings are measured on this machine by ``common``
  (best matmul rate, best of the elementwise and the read-only bandwidth); with ``--device``
  they are the nominal ``--peak-tflops`` and ``--hbm-gbps`` (H200 defaults).

CPU timings need idle cores: torch uses ``--torch-threads`` (default: all CPUs) OpenMP threads,
which stall when another process holds a core (the JSON records the load average before and
after; compare with ``--torch-threads 1`` on a shared machine).

Sources are never vendored: ``LLAMAGEN_SRC`` / ``VAR_SRC`` point at checkouts of
github.com/FoundationVision/LlamaGen and /VAR, imported at run time. A side whose variable is
missing or whose path lacks the expected files is skipped (``"skipped"`` in the JSON); jaxar
still runs. The commit is read from ``LLAMAGEN_COMMIT`` / ``VAR_COMMIT``, else from the
checkout's git.

  LLAMAGEN_SRC=path/to/LlamaGen VAR_SRC=path/to/VAR \\
    .venv/bin/python bench/compare_originals.py --case all --batch 1,8 --repeats 3
  .venv/bin/python bench/compare_originals.py --tiny --repeats 1        # seconds, for tests
  .venv/bin/python bench/compare_originals.py --device                  # GPU/TPU + CUDA torch
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import statistics
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sample_gpt  # noqa: E402
import sample_var  # noqa: E402
from common import (  # noqa: E402
    machine_info,
    matmul_ceiling,
    memory_bandwidth,
    print_json,
    read_bandwidth,
)

from jaxar.sampling.autoregressive import make_sampler  # noqa: E402
from jaxar.sampling.base import at_precision, cast_params  # noqa: E402
from jaxar.sampling.scalewise import make_scalewise_sampler  # noqa: E402

# repository, env variable of the checkout, of its commit, and the files the bench imports from it
SOURCES = {
    "llamagen": (
        "github.com/FoundationVision/LlamaGen",
        "LLAMAGEN_SRC",
        "LLAMAGEN_COMMIT",
        ("autoregressive/models/gpt.py", "autoregressive/models/generate.py"),
    ),
    "var": (
        "github.com/FoundationVision/VAR",
        "VAR_SRC",
        "VAR_COMMIT",
        ("models/var.py", "models/vqvae.py", "dist.py"),
    ),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=("gpt", "var", "all"), default="all")
    p.add_argument("--batch", type=lambda s: [int(b) for b in s.split(",")], default=[1, 8])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side (median)")
    p.add_argument("--gpt-preset", default="GPT-B")
    p.add_argument("--var-preset", default="VAR-d16")
    p.add_argument("--tiny", action="store_true", help="GPT-tiny / VAR-tiny, for tests")
    p.add_argument("--device", action="store_true", help="default JAX backend, CUDA torch")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="--device: dense peak")
    p.add_argument("--hbm-gbps", type=float, default=4800.0, help="--device: memory GB/s")
    p.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="jaxar")
    p.add_argument("--cfg-scale", type=float, default=4.0, help="LlamaGen's (= jaxar's)")
    p.add_argument("--top-k", type=int, default=2000, help="GPT (LlamaGen sample_c2i)")
    p.add_argument("--top-p", type=float, default=1.0, help="GPT")
    p.add_argument("--temperature", type=float, default=1.0, help="GPT")
    p.add_argument("--var-cfg", type=float, default=1.5, help="VAR's cfg (jaxar: 1 + cfg)")
    args = p.parse_args(argv)
    if args.tiny:
        args.gpt_preset, args.var_preset = "GPT-tiny", "VAR-tiny"
    return args


# ----------------------------------------------------------------------------- sources


def locate(name: str) -> tuple[str | None, dict[str, Any]]:
    """The checkout of ``name`` and its description, or ``(None, {"skipped": why})``."""
    repo, var, commit_var, needed = SOURCES[name]
    src = os.environ.get(var)
    if not src:
        return None, {"skipped": f"{var} not set: point it at a checkout of {repo}"}
    missing = [f for f in needed if not (Path(src) / f).is_file()]
    if missing:
        return None, {"skipped": f"{var}={src} lacks {missing}"}
    commit = os.environ.get(commit_var)
    if not commit:
        git = subprocess.run(
            ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        commit = git.stdout.strip() if git.returncode == 0 else f"unknown (set {commit_var})"
    return src, {"src": src, "commit": commit}


def import_from(src: str, names: list[str], stubs: dict[str, types.ModuleType] | None = None):
    """Imports the modules ``names`` with ``src`` first on sys.path, each checkout's top-level
    packages fresh: LlamaGen and VAR both have a top-level ``utils``, so whatever this
    import adds under the checkout's top-level names is dropped from sys.modules afterwards
    (the returned modules keep their references). ``stubs`` stand in for absent modules
    during the import only."""
    tops = {p.name.removesuffix(".py") for p in Path(src).iterdir()}
    owned = lambda key: key.split(".")[0] in tops or key in (stubs or {})  # noqa: E731
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if owned(k)}
    sys.modules.update(stubs or {})
    sys.path.insert(0, src)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(src)
        for key in [k for k in sys.modules if owned(k)]:
            del sys.modules[key]
        sys.modules.update(saved)


def huggingface_hub_stub() -> dict[str, types.ModuleType]:
    """VAR's models/var.py imports ``huggingface_hub.PyTorchModelHubMixin`` at module level,
    only for its ``VARHF`` hub wrapper, which is not on the timed path. When the package is
    absent, an empty stand-in class lets the module import."""
    try:
        importlib.import_module("huggingface_hub")
        return {}
    except ImportError:
        stub = types.ModuleType("huggingface_hub")
        stub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
        return {"huggingface_hub": stub}


# ----------------------------------------------------------------------------- timing


def torch_device(args) -> tuple[str | None, str | None]:
    """(torch device, None) or (None, why the torch side is skipped)."""
    try:
        import torch
    except ImportError as err:
        return None, f"torch not importable ({err}), torch side skipped"
    torch.set_num_threads(args.torch_threads)
    if not args.device:
        return "cpu", None
    if not torch.cuda.is_available():
        return None, "--device: torch.cuda.is_available() is False, torch side skipped"
    torch.set_float32_matmul_precision("high")  # TF32, like XLA's default f32 dots on GPU
    return "cuda", None


def torch_info(device: str | None) -> dict[str, Any]:
    if device is None:
        return {}
    import torch

    return {
        "version": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def torch_sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(sides: dict[str, Any], repeats: int) -> dict[str, list[float]]:
    """Warm-up call of every side, then ``repeats`` rounds of one timed call per side in
    turn. ``sides``: name -> zero-argument function that returns once its work is done."""
    for run in sides.values():
        run()
    times = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def floor(steps: list[tuple[float, float]], ceilings: dict[str, float]) -> dict[str, float]:
    """Floor of one call from its steps' (bytes, FLOPs): the sum of each step's max."""
    memory = [b / ceilings["bytes_per_s"] for b, _ in steps]
    compute = [f / ceilings["flops_per_s"] for _, f in steps]
    return {
        "floor_s_per_call": sum(max(m, c) for m, c in zip(memory, compute)),
        "floor_memory_s_per_call": sum(memory),
        "floor_compute_s_per_call": sum(compute),
    }


def summary(times: list[float], batch: int, steps, ceilings) -> dict[str, Any]:
    median = statistics.median(times)
    costs = floor(steps, ceilings)
    return {
        "s_per_call": median,
        "s_per_image": median / batch,
        "times_s": times,
        **costs,
        "floor_fraction": costs["floor_s_per_call"] / median,
    }


def weight_bytes(dtype: str) -> int:
    """Bytes per weight streamed by jaxar's sampler at ``--dtype`` (its ``precision``)."""
    return 2 if dtype == "bfloat16" else 4


# ----------------------------------------------------------------------------- GPT


def gpt_case(args, batch: int, ceilings, src, torch_dev) -> dict[str, Any]:
    cfg, params, count = sample_gpt.build(args.gpt_preset)
    tokens, rows = cfg.block_size, (2 * batch if args.cfg_scale != 1.0 else batch)
    kernel = params["output"]["kernel"]
    params["output"]["kernel"] = cfg.init_std * jax.random.normal(jax.random.key(1), kernel.shape)
    extra, param_bytes = {"precision": args.dtype}, weight_bytes(args.dtype)
    sampler = make_sampler(
        cfg, cfg_scale=args.cfg_scale, top_k=args.top_k, top_p=args.top_p,
        temperature=args.temperature, num_tokens=tokens, **extra,
    )  # fmt: skip
    labels, rng = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes, jax.random.key(0)
    start = time.perf_counter()
    compiled = sampler.jitted.lower(params, labels, rng).compile()
    cost = sample_gpt.step_costs(at_precision(cfg, args.dtype), rows, tokens, count, param_bytes)
    jaxar = {
        "params": count, "dtype": args.dtype, **extra, "compile_s": time.perf_counter() - start,
        "run": lambda: jax.block_until_ready(compiled(params, labels, rng)),
        "steps": [(cost["bytes_per_step"], cost["flops_per_step"])] * tokens,
    }  # fmt: skip
    original = {"skipped": src[1].get("skipped") or torch_dev[1]}
    if src[0] and torch_dev[0]:
        original = llamagen_side(args, cfg, batch, count, src[0], torch_dev[0])
    head = {"case": "gpt", "preset": args.gpt_preset, "batch": batch, "tokens": tokens}
    return compare(head, batch, ceilings, args.repeats, jaxar, original)


def llamagen_side(args, cfg, batch: int, count: int, src: str, device: str) -> dict[str, Any]:
    """LlamaGen's ``generate()`` on its ``Transformer`` built with jaxar's ``cfg`` shapes
    (eval mode, random weights, fp32)."""
    import torch

    gpt, generate = import_from(
        src, ["autoregressive.models.gpt", "autoregressive.models.generate"]
    )
    if cfg.ffn_dim is not None:
        raise ValueError("LlamaGen has no explicit ffn_dim")
    model_args = gpt.ModelArgs(
        dim=cfg.dim, n_layer=cfg.num_layers, n_head=cfg.num_heads, n_kv_head=cfg.num_kv_heads,
        multiple_of=cfg.multiple_of, ffn_dim_multiplier=cfg.ffn_dim_multiplier,
        rope_base=cfg.rope_base, norm_eps=cfg.norm_eps, initializer_range=cfg.init_std,
        num_classes=cfg.num_classes, class_dropout_prob=cfg.class_dropout_prob,
        vocab_size=cfg.vocab_size, cls_token_num=cfg.cls_token_num, block_size=cfg.block_size,
    )  # fmt: skip
    torch.manual_seed(0)
    model = gpt.Transformer(model_args)
    torch.nn.init.normal_(model.output.weight, std=cfg.init_std)
    model = model.to(device).eval()
    cond = torch.arange(batch, device=device) % cfg.num_classes

    def run():
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # its sdp_kernel context manager
            generate.generate(
                model, cond, cfg.block_size, cfg_scale=args.cfg_scale, cfg_interval=-1,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                sample_logits=True,
            )  # fmt: skip
        torch_sync(device)

    rows = 2 * batch if args.cfg_scale != 1.0 else batch
    fp32 = dataclasses.replace(cfg, dtype="float32")
    cost = sample_gpt.step_costs(fp32, rows, cfg.block_size, count)
    return {
        "params": sum(p.numel() for p in model.parameters()), "device": device, "run": run,
        "steps": [(cost["bytes_per_step"], cost["flops_per_step"])] * cfg.block_size,
    }  # fmt: skip


# ----------------------------------------------------------------------------- VAR


def var_case(args, batch: int, ceilings, src, torch_dev) -> dict[str, Any]:
    cfg, quantizer, params = sample_var.build(args.var_preset)
    count = sum(x.size for x in jax.tree.leaves(params["var"]))
    top_k, rows = min(900, cfg.vocab_size), 2 * batch
    # the scale-wise maker has no precision option: do what the family-level sampler does
    cfg = at_precision(cfg, args.dtype)
    params = {**params, "var": cast_params(params["var"], args.dtype)}
    extra, param_bytes = {"precision": args.dtype}, weight_bytes(args.dtype)
    sampler = make_scalewise_sampler(
        cfg, quantizer, cfg_scale=1.0 + args.var_cfg, top_k=top_k, top_p=0.96
    )  # linear CFG ramp (jaxar's default for VAR, as the original); no pixel decoder
    labels, rng = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes, jax.random.key(0)
    start = time.perf_counter()
    compiled = sampler.jitted.lower(params, labels, rng).compile()
    jaxar = {
        "params": count, "dtype": args.dtype, **extra, "compile_s": time.perf_counter() - start,
        "run": lambda: jax.block_until_ready(compiled(params, labels, rng)),
        "steps": sample_var.scale_costs(cfg, rows, count, param_bytes),
    }  # fmt: skip
    original = {"skipped": src[1].get("skipped") or torch_dev[1]}
    if src[0] and torch_dev[0]:
        original = var_side(args, cfg, batch, count, top_k, src[0], torch_dev[0])
    head = {
        "case": "var", "preset": args.var_preset, "batch": batch, "scales": cfg.num_scales,
        "tokens": cfg.seq_len, "var_cfg": args.var_cfg, "jaxar_cfg_scale": 1.0 + args.var_cfg,
        "top_k": top_k, "top_p": 0.96, "pixel_decode": "excluded (original: fhat_to_img no-op)",
    }  # fmt: skip
    return compare(head, batch, ceilings, args.repeats, jaxar, original)


def var_side(args, cfg, batch, count, top_k, src: str, device: str) -> dict[str, Any]:
    """``VAR.autoregressive_infer_cfg`` of VAR's own ``VAR`` / ``VQVAE`` built as its
    ``build_vae_var`` does (not called: it patches torch's ``reset_parameters`` globally),
    with ``fhat_to_img`` replaced by a no-op so that the pixel decode is not timed."""
    import torch

    (models,) = import_from(src, ["models"], stubs=huggingface_hub_stub())
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # VAR prints its configuration
        vae = models.VQVAE(
            vocab_size=cfg.vocab_size, z_channels=cfg.code_dim, ch=32 if args.tiny else 160,
            test_mode=True, share_quant_resi=4, v_patch_nums=cfg.patch_nums,
        )  # fmt: skip
        var = models.VAR(
            vae_local=vae, num_classes=cfg.num_classes, depth=cfg.depth,
            embed_dim=cfg.embed_dim, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=cfg.drop_path,
            norm_eps=cfg.norm_eps, shared_aln=cfg.shared_aln, cond_drop_rate=0.1,
            attn_l2_norm=cfg.attn_l2_norm, patch_nums=cfg.patch_nums,
        )  # fmt: skip
        var.init_weights(
            init_adaln=cfg.init_adaln, init_adaln_gamma=cfg.init_adaln_gamma,
            init_head=cfg.init_head, init_std=cfg.init_std,
        )  # fmt: skip
    vae.fhat_to_img = lambda f_hat: f_hat  # no pixel decode (instance attribute)
    vae, var = vae.to(device).eval(), var.to(device).eval()
    var.rng = torch.Generator(device=device)  # VAR makes it on cuda whenever cuda exists
    labels = torch.arange(batch, device=device) % cfg.num_classes

    def run():
        with torch.inference_mode():
            var.autoregressive_infer_cfg(
                B=batch, label_B=labels, g_seed=0, cfg=args.var_cfg, top_k=top_k, top_p=0.96,
                more_smooth=False,
            )  # fmt: skip
        torch_sync(device)

    fp32 = dataclasses.replace(cfg, dtype="float32")
    return {
        "params": sum(p.numel() for p in var.parameters()), "device": device, "run": run,
        "steps": sample_var.scale_costs(fp32, 2 * batch, count),
    }  # fmt: skip


# ----------------------------------------------------------------------------- main


def compare(head, batch, ceilings, repeats, jaxar, original) -> dict[str, Any]:
    """Times the sides (original first in each round) and summarizes them under ``head``."""
    pairs = (("original", original), ("jaxar", jaxar))
    sides = {name: side.pop("run") for name, side in pairs if "run" in side}
    times = interleaved(sides, repeats)
    out = dict(head)
    for name, side in pairs:
        if name in times:
            side.update(summary(times[name], batch, side.pop("steps"), ceilings))
        out[name] = side
    if "s_per_image" in original:
        out["ratio_original_over_jaxar"] = original["s_per_image"] / jaxar["s_per_image"]
    return out


def machine_ceilings(args) -> dict[str, Any]:
    if args.device:
        return {
            "source": "nominal (--peak-tflops, --hbm-gbps)",
            "flops_per_s": args.peak_tflops * 1e12,
            "bytes_per_s": args.hbm_gbps * 1e9,
        }
    measured = {**matmul_ceiling(), **memory_bandwidth(), **read_bandwidth()}
    return {
        "source": "measured (bench/common.py)",
        "flops_per_s": measured["matmul_flops_per_s"],
        "bytes_per_s": max(
            measured["bandwidth_bytes_per_s"], measured["read_bandwidth_bytes_per_s"]
        ),
        **measured,
    }


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    load = os.getloadavg()  # other processes on the CPUs distort CPU timings
    torch_dev = torch_device(args)
    jax_device = jax.devices()[0] if args.device else jax.devices("cpu")[0]
    cases = ("gpt", "var") if args.case == "all" else (args.case,)
    sources = {"gpt": locate("llamagen"), "var": locate("var")}
    with jax.default_device(jax_device):
        ceilings = machine_ceilings(args)
        results = [
            (gpt_case if case == "gpt" else var_case)(args, b, ceilings, sources[case], torch_dev)
            for case in cases
            for b in args.batch
        ]
    record = {
        "bench": "compare_originals",
        "mode": "device" if args.device else "cpu",
        "sources": {"llamagen": sources["gpt"][1], "var": sources["var"][1]},
        "settings": {
            "repeats": args.repeats,
            "gpt_cfg_scale": args.cfg_scale,
            "gpt_top_k": args.top_k,
            "gpt_top_p": args.top_p,
            "temperature": args.temperature,
            "var_cfg": args.var_cfg,
            "jaxar_dtype": args.dtype,
            "original_dtype": "float32",
        },  # fmt: skip
        "ceilings": ceilings,
        "results": results,
        "torch": torch_info(torch_dev[0]),
        "loadavg_before_after": [load, os.getloadavg()],
        "jax_device": str(jax_device),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print_json(record)
    return record


if __name__ == "__main__":
    main()
