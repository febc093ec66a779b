"""One sampler interface for every generator family and accelerator.

* ``SamplingOptions``: the settings every family shares, with one meaning everywhere:
  ``cfg_scale`` (1 = no guidance; guided logits are ``uncond + cfg_scale * (cond - uncond)``),
  ``cfg_schedule`` ("constant", or "linear": 1 at the first step to ``cfg_scale`` at the last),
  ``temperature`` (0 = greedy), ``top_k`` (0 = off), ``top_p`` (1 = off) and ``precision``
  ("float32", or "bfloat16": weights, activations and KV cache in bfloat16, scores, softmax
  and sampling in float32; see ``at_precision`` / ``cast_params``). Everything else
  (MaskGIT's ``num_steps``, RandAR's ``order``, an accelerator's ``window``, ...) is the
  family's or the accelerator's own part, checked by name (``split_settings``).
* ``Sampler``: one compiled function per (model config, options), built once and reused for
  every call with the same batch size; ``traces`` counts how often it was traced.
* ``SampleOutput``: ``codes`` in the flat layout of ``jaxar.recipes.codes`` (``[B, L]``, or
  ``[B, L, D]`` for depth-stacked codes, float latents ``[B, L, C]`` for a continuous
  tokenizer), ``forward_passes`` of the generator per image ``[B]``, ``images`` (uint8
  ``[B, H, W, C]``) when a decoder is attached, the guided ``logits`` when the family was
  asked for them, and ``head_calls`` (MAR: diffusion-head calls per image).

The rng may be a key or an int seed; a seed gives the same codes on any device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.sampling.logits import check_sampling_settings

COMMON_FIELDS = ("cfg_scale", "cfg_schedule", "temperature", "top_k", "top_p", "precision")
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """The settings shared by every family (see the module docstring for their meaning)."""

    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    precision: str = "float32"

    def __post_init__(self):
        check_sampling_settings(
            self.cfg_schedule, self.temperature, self.top_k, self.top_p, self.cfg_scale
        )
        check_precision(self.precision)

    @property
    def guided(self) -> bool:
        """Whether guidance changes any logit (scale 1 is the conditional model, any schedule)."""
        return self.cfg_scale != 1.0


def split_settings(
    settings: dict[str, Any], own_fields: tuple[str, ...] | frozenset, owner: str
) -> tuple[SamplingOptions, dict[str, Any]]:
    """Splits a settings dict into the common ``SamplingOptions`` and the ``owner``'s own part.

    Raises ValueError naming any setting that is neither common nor one of ``own_fields``."""
    unknown = sorted(set(settings) - set(COMMON_FIELDS) - set(own_fields))
    if unknown:
        raise ValueError(
            f"unknown sampling setting(s) {unknown} for {owner}; common settings: "
            f"{list(COMMON_FIELDS)}, {owner}'s own: {sorted(own_fields)}"
        )
    common = SamplingOptions(**{k: v for k, v in settings.items() if k in COMMON_FIELDS})
    return common, {k: v for k, v in settings.items() if k not in COMMON_FIELDS}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def at_precision(model_cfg: Any, precision: str) -> Any:
    """The model config to sample with: ``dtype`` (the compute dtype every family's config
    has; KV caches follow it) set to ``precision``; float32 leaves the config as trained."""
    check_precision(precision)
    if precision == "float32" or model_cfg.dtype == precision:
        return model_cfg
    return dataclasses.replace(model_cfg, dtype=precision)


def cast_params(params: Any, precision: str) -> Any:
    """Floating parameters in ``precision`` (traceable). The cast is fenced by an
    optimization barrier so XLA materialises the half-size copy once per call instead of
    fusing the conversion into every decode step's matmuls (which would still stream the
    float32 weights)."""
    check_precision(precision)
    if precision == "float32":
        return params
    dtype = jnp.dtype(precision)

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.lax.optimization_barrier(jax.tree.map(cast, params))


def unscanned_for_decoding(model_cfg: Any) -> Any:
    """The config a token-by-token decoder samples with: per-layer blocks. A scanned stack
    carries its stacked KV cache as the scan's inputs and outputs, so every decode step writes
    a whole new cache (2.1x slower GPT-B decode at batch 8 on CPU); unrolled layers update
    each layer's cache in place. Training and the few-pass samplers (VAR, MaskGIT) keep the
    scan. Pair with ``with_per_layer_params``."""
    if getattr(model_cfg, "scan_layers", False):
        return dataclasses.replace(model_cfg, scan_layers=False)
    return model_cfg


def with_per_layer_params(run: Callable, model_cfg: Any) -> Callable:
    """``run(params, *args)`` fed per-layer params when ``model_cfg`` scans (the stacked
    subtrees sliced once per call, inside the jit)."""
    if not getattr(model_cfg, "scan_layers", False):
        return run
    from jaxar.layers.scan import match_layer_layout

    def run_per_layer(params, *args):  # sliced once, fenced so no step re-slices
        return run(jax.lax.optimization_barrier(match_layer_layout(params, False)), *args)

    return run_per_layer


def with_precision(run: Callable, precision: str) -> Callable:
    """``run(params, *args)`` with its params cast by ``cast_params``."""
    if precision == "float32":
        return run
    return lambda params, *args: run(cast_params(params, precision), *args)


def freeze(value: Any) -> Any:
    """A hashable form of a settings value (lists -> tuples, dicts -> sorted item tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """What every sampler returns (host numpy arrays)."""

    codes: np.ndarray  # int32 [B, L] or [B, L, D], the flat layout of jaxar.recipes.codes
    forward_passes: np.ndarray  # int32 [B]: generator forward passes per image
    images: np.ndarray | None = None  # uint8 [B, H, W, C] when a decoder is attached
    logits: np.ndarray | None = None  # float32 [B, L(, D), V] guided logits, when asked for
    head_calls: np.ndarray | None = None  # int32 [B]: diffusion-head calls per image (MAR)


def constant_passes(passes: int) -> Callable[[jax.Array], jax.Array]:
    """For samplers whose forward passes per image do not vary: labels [B] -> int32 [B]."""
    return lambda labels: jnp.full(jnp.shape(labels)[:1], passes, jnp.int32)


def jitted_sampler(run: Callable, check: Callable[[Any], None], options: Any, **attrs: Any):
    """The low-level ``sampler(params, labels, rng)`` of the ``make_*_sampler`` functions: checks
    concrete labels on the host, then calls ``jax.jit(run)``; carries ``.jitted``, ``.run``
    (the traceable body, what ``Sampler`` compiles), ``.check``, ``.options`` and ``attrs``."""
    jitted = jax.jit(run)

    def sampler(params, labels, rng):
        check(labels)
        return jitted(params, labels, rng)

    sampler.jitted, sampler.run, sampler.check, sampler.options = jitted, run, check, options
    for name, value in attrs.items():
        setattr(sampler, name, value)
    return sampler


def as_key(rng: Any) -> jax.Array:
    """A PRNG key from a key or an int seed."""
    if isinstance(rng, int | np.integer):
        return jax.random.key(int(rng))
    return rng


@dataclasses.dataclass
class CompileTimes:
    """Seconds spent tracing, lowering and compiling (``compile_timer``)."""

    seconds: float = 0.0


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_timers: list[CompileTimes] = []
_timers_lock = threading.Lock()


def _on_duration(event: str, seconds: float, **_: Any) -> None:
    if event in _COMPILE_EVENTS:
        for timer in list(_timers):
            timer.seconds += seconds


jax.monitoring.register_event_duration_secs_listener(_on_duration)


@contextlib.contextmanager
def compile_timer() -> Iterator[CompileTimes]:
    """Sums JAX's tracing, lowering and backend-compile durations inside the block.

    ``with compile_timer() as t: out = sampler(...)`` -> ``t.seconds`` of compilation; the
    rest of the block's wall time is sampling."""
    timer = CompileTimes()
    with _timers_lock:
        _timers.append(timer)
    try:
        yield timer
    finally:
        with _timers_lock:
            _timers.remove(timer)


class Sampler:
    """A sampler compiled once and reused: ``sampler(params, labels [B], rng) -> SampleOutput``.

    ``run(params, labels, rng, *extra) -> {"codes", "forward_passes"(, "logits")}`` is the
    traceable body (``extra``: arrays such as a quantizer's parameters or a neighbour table,
    passed as arguments rather than baked into the program); ``check(labels)`` validates
    concrete labels on the host; ``decode`` (optional, host-level: flat codes -> uint8 images)
    fills ``SampleOutput.images``. ``traces`` counts traces of the body: one per batch shape.
    """

    def __init__(
        self,
        run: Callable[..., dict[str, jax.Array]],
        *,
        options: SamplingOptions,
        settings: dict[str, Any],
        check: Callable[[Any], None],
        extra: tuple = (),
        decode: Callable[[np.ndarray], np.ndarray] | None = None,
        name: str = "sampler",
    ):
        self.options = options
        self.settings = dict(settings)
        self.name = name
        self.traces = 0
        self._check = check
        self._extra = tuple(extra)
        self._decode = decode

        def counted(params, labels, rng, *extra):
            self.traces += 1
            return run(params, labels, rng, *extra)

        self.jitted = jax.jit(counted)

    def codes(self, params: Any, labels: Any, rng: Any) -> dict[str, jax.Array]:
        """The device outputs of the compiled body (no host transfer, no decoding)."""
        labels = jnp.asarray(labels)
        self._check(labels)
        return self.jitted(params, labels, as_key(rng), *self._extra)

    def __call__(self, params: Any, labels: Any, rng: Any, decode: bool = True) -> SampleOutput:
        out = jax.device_get(self.codes(params, labels, rng))
        codes = np.asarray(out["codes"])
        images = self._decode(codes) if decode and self._decode is not None else None
        logits, head_calls = out.get("logits"), out.get("head_calls")
        return SampleOutput(
            codes=codes,
            forward_passes=np.asarray(out["forward_passes"]),
            images=None if images is None else np.asarray(images),
            logits=None if logits is None else np.asarray(logits),
            head_calls=None if head_calls is None else np.asarray(head_calls),
        )

    def timed(self, params: Any, labels: Any, rng: Any) -> tuple[SampleOutput, dict[str, float]]:
        """``__call__`` with its wall time split into compile and sampling seconds."""
        start = time.perf_counter()
        with compile_timer() as compiled:
            out = self(params, labels, rng)
        total = time.perf_counter() - start
        return out, {"compile_s": compiled.seconds, "sample_s": max(total - compiled.seconds, 0.0)}

    def __repr__(self) -> str:
        return f"Sampler({self.name}, {self.settings}, traces={self.traces})"


__all__ = [
    "COMMON_FIELDS",
    "SampleOutput",
    "Sampler",
    "PRECISIONS",
    "SamplingOptions",
    "as_key",
    "at_precision",
    "cast_params",
    "compile_timer",
    "constant_passes",
    "freeze",
    "jitted_sampler",
    "split_settings",
    "unscanned_for_decoding",
    "with_per_layer_params",
    "with_precision",
]
