"""Gaussian diffusion for per-token sampling (MAR's diffusion loss, Li et al. 2024).

MAR draws each continuous token with a small denoiser conditioned on the transformer output
``z``; the process is DiT's ``GaussianDiffusion`` (itself from improved-diffusion): epsilon
prediction, learned-range variance, a cosine schedule of 1000 training steps, sampling over a
respaced subset (e.g. 100 steps). This module is a pure-JAX, jit-friendly port of the pieces
MAR uses:

- ``make_diffusion``: the float64 numpy schedule tables (``GaussianDiffusion``), with DiT's
  ``space_timesteps`` respacing ("" / "100" / "25,25" / "ddim50").
- ``q_sample`` and ``diffusion_loss``: DiT's ``training_losses`` with the MSE loss type:
  ``mean((eps - eps_pred)**2) + vb``, where ``vb`` is the variational-bound term in bits, with
  the predicted mean frozen (only the variance output learns from it): the KL from the true
  posterior for ``t > 0`` and the discretized-Gaussian decoder NLL at ``t == 0``.
- ``sample_loop``: ancestral DDPM sampling (MAR's ``p_sample_loop``, ``clip_denoised=False``,
  with MAR's temperature) or DDIM, as one ``jax.lax.scan`` over the respaced steps.
- ``guided_model_fn``: MAR's classifier-free guidance (``SimpleMLPAdaLN.forward_with_cfg``)
  expressed on the kept rows only.

Timesteps: ``t`` arguments index the (possibly respaced) process, ``0 .. num_timesteps - 1``;
``model_fn`` always receives the ORIGINAL timestep ``timestep_map[t]`` (DiT's ``_WrappedModel``),
so a denoiser trained on the 1000-step process can be sampled with any respacing.

All table look-ups gather float64 tables cast to float32 (as DiT's ``_extract_into_tensor``);
the arithmetic is float32 whatever the model's compute dtype.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

SCHEDULES = ("cosine", "linear")
METHODS = ("ddpm", "ddim")


# ---------------------------------------------------------------------------------------------
# Schedules and respacing
# ---------------------------------------------------------------------------------------------


def beta_schedule(schedule: str, num_steps: int) -> np.ndarray:
    """float64 betas [num_steps] of a named schedule (improved-diffusion / DiT).

    - ``"linear"``: Ho et al.'s linspace(1e-4, 0.02) scaled by ``1000 / num_steps``.
    - ``"cosine"``: Nichol & Dhariwal's ``alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)**2``
      discretised as ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999)``.
    """
    if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if schedule == "linear":
        scale = 1000.0 / num_steps
        return np.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=np.float64)
    if schedule == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        steps = range(num_steps)
        return np.array(
            [
                min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                for i in steps
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown noise schedule {schedule!r}; expected one of {SCHEDULES}")


def space_timesteps(num_steps: int, respacing: str | int) -> list[int]:
    """The sorted original timesteps kept by a DiT ``space_timesteps`` respacing string.

    - ``""``: every step.
    - ``"100"`` or ``"10,15,20"``: the process is cut into equal sections (the first
      ``num_steps % k`` one step longer) and each section is strided (fractional stride,
      rounded) to the given count, always including the section's first and last step.
    - ``"ddimN"``: the DDIM paper's exact integer stride ``range(0, num_steps, s)`` with
      exactly ``N`` steps (an error if no integer stride gives ``N``).
    """
    if isinstance(respacing, (int, np.integer)) and not isinstance(respacing, bool):
        respacing = str(int(respacing))
    if not isinstance(respacing, str):
        raise TypeError(f"respacing must be a str (e.g. '100', 'ddim50'), got {respacing!r}")
    spec = respacing.strip()
    if spec == "":
        return list(range(num_steps))
    if spec.startswith("ddim"):
        count_str = spec[len("ddim") :]
        if not count_str.isdigit():
            raise ValueError(f"bad respacing {respacing!r}: 'ddimN' needs an integer N")
        desired = int(count_str)
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == desired:
                return list(range(0, num_steps, stride))
        raise ValueError(
            f"bad respacing {respacing!r}: no integer stride gives exactly {desired} of "
            f"{num_steps} steps"
        )
    parts = [p.strip() for p in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(
            f"bad respacing {respacing!r}: expected '', 'ddimN' or comma-separated positive "
            "integers such as '100' or '10,15,20'"
        )
    counts = [int(p) for p in parts]
    if any(c < 1 for c in counts):
        raise ValueError(f"bad respacing {respacing!r}: section counts must be >= 1")
    size_per, extra = divmod(num_steps, len(counts))
    if size_per == 0:
        raise ValueError(
            f"bad respacing {respacing!r}: {len(counts)} sections for only {num_steps} steps"
        )
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(
                f"bad respacing {respacing!r}: cannot take {count} steps from a section of "
                f"{size} steps"
            )
        stride = 1.0 if count == 1 else (size - 1) / (count - 1)
        kept += [start + round(j * stride) for j in range(count)]
        start += size
    return sorted(set(kept))


def _frozen(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
    """Schedule tables of a (possibly respaced) Gaussian diffusion; float64 numpy, read-only.

    Every per-step table has length ``num_timesteps`` (the respaced count) and is indexed by
    the respaced step ``t``; ``timestep_map[t]`` is the original timestep the model sees.
    Build with ``make_diffusion``. Hashable (by its schedule), so it can be a static jit arg.
    """

    schedule: str
    original_num_steps: int
    respacing: str
    learn_sigma: bool
    timestep_map: np.ndarray  # int32 [T]
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def _key(self) -> tuple:
        digest = hashlib.sha1(self.betas.tobytes() + self.timestep_map.tobytes()).hexdigest()
        return (self.schedule, self.original_num_steps, self.respacing, self.learn_sigma, digest)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GaussianDiffusion) and self._key() == other._key()


def _tables_from_betas(betas: np.ndarray) -> dict[str, np.ndarray]:
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 2:
        raise ValueError(f"betas must be 1-D with at least 2 steps, got shape {betas.shape}")
    if not ((betas > 0).all() and (betas <= 1).all()):
        raise ValueError("betas must lie in (0, 1]")
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    abar_next = np.append(abar[1:], 0.0)
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "alphas_cumprod_next": abar_next,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": post_var,
        # the posterior variance is 0 at t == 0: its log is clipped to the t == 1 value
        "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }


def make_diffusion(
    num_steps: int = 1000,
    schedule: str = "cosine",
    respacing: str | int = "",
    learn_sigma: bool = True,
) -> GaussianDiffusion:
    """DiT's ``create_diffusion(respacing, noise_schedule=schedule, learn_sigma=...)``.

    MAR trains with ``make_diffusion()`` and samples with ``make_diffusion(respacing="100")``.
    A respaced process keeps the original ``alphas_cumprod`` at the kept steps and recomputes
    its betas as ``1 - abar[t_k] / abar[t_{k-1}]`` (DiT's ``SpacedDiffusion``).
    ``learn_sigma``: the model outputs ``[eps, v]`` (2C values, learned-range variance) rather
    than ``eps`` alone (then DDPM uses DiT's fixed-large variance and the loss is the MSE).
    """
    base = _tables_from_betas(beta_schedule(schedule, num_steps))
    kept = space_timesteps(num_steps, respacing)
    if len(kept) < 2:
        raise ValueError(f"respacing {respacing!r} keeps {len(kept)} step(s); at least 2 needed")
    abar = base["alphas_cumprod"]
    last, new_betas = 1.0, []
    for i in kept:
        new_betas.append(1.0 - abar[i] / last)
        last = abar[i]
    tables = _tables_from_betas(np.array(new_betas, dtype=np.float64))
    return GaussianDiffusion(
        schedule=schedule,
        original_num_steps=int(num_steps),
        respacing=str(respacing).strip(),
        learn_sigma=bool(learn_sigma),
        timestep_map=_frozen(kept, np.int32),
        **{k: _frozen(v) for k, v in tables.items()},
    )


# ---------------------------------------------------------------------------------------------
# Gaussian helpers
# ---------------------------------------------------------------------------------------------


def _gather(table: np.ndarray, t: jax.Array) -> jax.Array:
    """table[t] as float32 [N, 1] (broadcasts over the channel axis)."""
    return jnp.asarray(table, jnp.float32)[t][:, None]


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * jnp.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) in nats of a Gaussian discretised to 256 bins over [-1, 1] (bin width 2/255),
    with open-ended edge bins below -0.999 and above 0.999 (improved-diffusion's decoder)."""
    centered = x - means
    inv_std = jnp.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(
        x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta)
    )


def _check_xt(name: str, x: jax.Array, t: jax.Array | None = None) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {x.shape}")
    if t is not None:
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be [N] = [{x.shape[0]}], got shape {t.shape}")
        if not jnp.issubdtype(t.dtype, jnp.integer):
            raise TypeError(f"t must hold integer timesteps, got dtype {t.dtype}")


def q_sample(diffusion: GaussianDiffusion, x0: jax.Array, t: jax.Array, noise: jax.Array):
    """x_t ~ q(x_t | x_0): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (float32 [N, C])."""
    x0, t, noise = jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)
    _check_xt("x0", x0, t)
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {noise.shape} != x0 shape {x0.shape}")
    x0, noise = x0.astype(jnp.float32), noise.astype(jnp.float32)
    return (
        _gather(diffusion.sqrt_alphas_cumprod, t) * x0
        + _gather(diffusion.sqrt_one_minus_alphas_cumprod, t) * noise
    )


def _split_output(diffusion: GaussianDiffusion, out: jax.Array, x: jax.Array):
    """Model output -> (eps [N, C], var_values [N, C] | None), both float32."""
    n, c = x.shape
    want = (n, 2 * c) if diffusion.learn_sigma else (n, c)
    if out.shape != want:
        what = "[eps, var] (learn_sigma=True)" if diffusion.learn_sigma else "eps"
        raise ValueError(f"model_fn must return {what} of shape {want}, got {out.shape}")
    out = out.astype(jnp.float32)
    if diffusion.learn_sigma:
        return out[:, :c], out[:, c:]
    return out, None


def _model_log_variance(diffusion: GaussianDiffusion, var_values, t: jax.Array) -> jax.Array:
    """Learned range: ``v in [-1, 1]`` interpolates (v + 1) / 2 of the way from the clipped
    posterior log-variance to log beta; without learn_sigma DiT's fixed-large variance
    (beta_t, with the posterior variance of step 1 at step 0)."""
    if var_values is None:
        fixed = np.append(diffusion.posterior_variance[1], diffusion.betas[1:])
        return _gather(np.log(fixed), t)
    min_log = _gather(diffusion.posterior_log_variance_clipped, t)
    max_log = _gather(np.log(diffusion.betas), t)
    frac = (var_values + 1.0) / 2.0
    return frac * max_log + (1.0 - frac) * min_log


def _predict_x0(diffusion, x_t, t, eps):
    return (
        _gather(diffusion.sqrt_recip_alphas_cumprod, t) * x_t
        - _gather(diffusion.sqrt_recipm1_alphas_cumprod, t) * eps
    )


def _posterior_mean(diffusion, x0, x_t, t):
    return (
        _gather(diffusion.posterior_mean_coef1, t) * x0
        + _gather(diffusion.posterior_mean_coef2, t) * x_t
    )


# ---------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------


def diffusion_loss(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """MAR's per-example diffusion loss (DiT ``training_losses``, loss type MSE): float32 [N].

    x0, noise: [N, C]; t: [N] int, steps of ``diffusion`` (0 .. num_timesteps - 1; values are
    not range-checked under jit). ``model_fn(x_t, timestep_map[t])`` returns ``[eps, v]``
    [N, 2C] (learn_sigma) or ``eps`` [N, C].

    ``loss = mean_C((noise - eps)**2) + vb`` where (learn_sigma only) ``vb`` is, in bits and
    averaged over C, ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for ``t > 0`` and the
    discretized-Gaussian decoder NLL ``-log p(x_0 | x_1)`` at ``t == 0``; ``p``'s mean uses
    ``stop_gradient(eps)`` so the bound trains the variance output only. MAR samples
    ``t ~ U{0, .., T-1}`` and averages the loss over the tokens of its mask.
    """
    x0, t, noise = jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise)
    x_t = q_sample(diffusion, x0, t, noise)
    x0, noise = x0.astype(jnp.float32), noise.astype(jnp.float32)
    out = model_fn(x_t, jnp.asarray(diffusion.timestep_map)[t])
    eps, var_values = _split_output(diffusion, jnp.asarray(out), x_t)
    mse = jnp.mean((noise - eps) ** 2, axis=-1)
    if var_values is None:
        return mse

    frozen_eps = jax.lax.stop_gradient(eps)
    model_mean = _posterior_mean(diffusion, _predict_x0(diffusion, x_t, t, frozen_eps), x_t, t)
    model_log_var = _model_log_variance(diffusion, var_values, t)
    true_mean = _posterior_mean(diffusion, x0, x_t, t)
    true_log_var = _gather(diffusion.posterior_log_variance_clipped, t)

    log2 = math.log(2.0)
    kl = jnp.mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var), axis=-1) / log2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
    nll = jnp.mean(nll, axis=-1) / log2
    return mse + jnp.where(t == 0, nll, kl)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def sample_loop(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    noise: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float | jax.Array = 1.0,
    method: str = "ddpm",
    eta: float | jax.Array = 0.0,
    step_noise: jax.Array | None = None,
) -> jax.Array:
    """Denoise ``noise`` [N, C] (x_T) to x_0 [N, C] over the steps of ``diffusion``.

    One ``jax.lax.scan`` from step ``T-1`` down to ``0`` (T = ``diffusion.num_timesteps``);
    ``model_fn(x_t [N, C] float32, timestep_map[i] [N] int32)`` is called once per step. The
    x_0 prediction is never clipped (MAR passes ``clip_denoised=False``).

    - ``method="ddpm"`` (MAR's ``p_sample_loop``): ``x_{t-1} = mean + sigma_t * z * temperature``
      with the learned-range (or fixed-large) variance and no noise at the last step. As in MAR,
      ``temperature`` scales only the per-step noise ``z`` (not ``x_T``, which the caller draws);
      ``temperature=0`` makes the loop a deterministic function of ``noise``.
    - ``method="ddim"``: DiT's ``ddim_sample`` (eps re-derived from the x_0 prediction,
      ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)``); eta=0
      is deterministic. ``temperature`` scales its noise too (DiT has none; 1 = DiT).

    temperature and eta may be Python numbers, traced scalars or [N] arrays (per row).
    Per-step noise ``z`` at step ``i`` is ``jax.random.normal(jax.random.fold_in(rng, i),
    (N, C))``; or pass ``step_noise`` [T, N, C] to supply it (``step_noise[k]`` is used at the
    k-th iteration, i.e. step ``T-1-k``), e.g. to reproduce a reference run exactly. ``rng``
    may be None when ``step_noise`` is given or for DDIM with ``eta=0``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {METHODS}")
    noise = jnp.asarray(noise)
    _check_xt("noise", noise)
    n, c = noise.shape
    steps = diffusion.num_timesteps
    if step_noise is not None:
        step_noise = jnp.asarray(step_noise)
        if step_noise.shape != (steps, n, c):
            raise ValueError(
                f"step_noise must be [num_timesteps, N, C] = {(steps, n, c)}, "
                f"got {step_noise.shape}"
            )
    deterministic = method == "ddim" and isinstance(eta, (int, float)) and eta == 0
    if rng is None and step_noise is None and not deterministic:
        raise ValueError("rng is required unless step_noise is given (or DDIM with eta=0)")

    def per_row(value, name):
        value = jnp.asarray(value, jnp.float32)
        if value.ndim == 0:
            return value
        if value.shape not in ((n,), (n, 1)):
            raise ValueError(f"{name} must be a scalar or [N] = [{n}], got shape {value.shape}")
        return value.reshape(n, 1)

    temperature = per_row(temperature, "temperature")
    eta = per_row(eta, "eta")
    timestep_map = jnp.asarray(diffusion.timestep_map)

    def step(x, inputs):
        i, z = inputs
        t = jnp.full((n,), i, jnp.int32)
        out = model_fn(x, jnp.full((n,), timestep_map[i], jnp.int32))
        eps, var_values = _split_output(diffusion, jnp.asarray(out), x)
        pred_x0 = _predict_x0(diffusion, x, t, eps)
        if z is None:
            z = jax.random.normal(jax.random.fold_in(rng, i), (n, c), jnp.float32)
        nonzero = (i != 0).astype(jnp.float32)
        if method == "ddpm":
            mean = _posterior_mean(diffusion, pred_x0, x, t)
            log_var = _model_log_variance(diffusion, var_values, t)
            x_new = mean + nonzero * jnp.exp(0.5 * log_var) * z.astype(jnp.float32) * temperature
        else:
            eps = (_gather(diffusion.sqrt_recip_alphas_cumprod, t) * x - pred_x0) / _gather(
                diffusion.sqrt_recipm1_alphas_cumprod, t
            )
            abar = _gather(diffusion.alphas_cumprod, t)
            abar_prev = _gather(diffusion.alphas_cumprod_prev, t)
            sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar)) * jnp.sqrt(1 - abar / abar_prev)
            mean = pred_x0 * jnp.sqrt(abar_prev) + jnp.sqrt(1 - abar_prev - sigma**2) * eps
            if deterministic:
                x_new = mean
            else:
                x_new = mean + nonzero * sigma * z.astype(jnp.float32) * temperature
        return x_new, None

    indices = jnp.arange(steps - 1, -1, -1, dtype=jnp.int32)
    if step_noise is None and deterministic:
        step_fn = lambda x, i: step(x, (i, jnp.zeros((n, c), jnp.float32)))
        x0, _ = jax.lax.scan(step_fn, noise.astype(jnp.float32), indices)
    elif step_noise is None:
        x0, _ = jax.lax.scan(lambda x, i: step(x, (i, None)), noise.astype(jnp.float32), indices)
    else:
        x0, _ = jax.lax.scan(step, noise.astype(jnp.float32), (indices, step_noise))
    return x0.astype(noise.dtype)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------


def guided_model_fn(
    apply: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    c_cond: jax.Array,
    c_uncond: jax.Array,
    cfg_scale: float | jax.Array,
) -> ModelFn:
    """MAR's classifier-free guidance as a ``model_fn`` over the N kept (conditional) rows.

    ``apply(x [2N, C], t [2N], c [2N, Z]) -> [2N, 2C]`` (or [2N, C]) is the denoiser, e.g.
    ``lambda x, t, c: head.apply(params, x, t, c)``; c_cond: [N, Z]; c_uncond: [N, Z] or [Z]
    (the null condition, broadcast); cfg_scale: scalar or [N]. The returned function runs
    ``apply`` once on the doubled batch ``[x; x]`` with conditions ``[c_cond; c_uncond]`` and
    returns ``[eps_u + s * (eps_c - eps_u), v_c]`` for the N rows (the conditional rows'
    variance output).

    Equivalence with MAR: ``DiffLoss.sample`` runs ``p_sample_loop`` on 2N rows with
    ``forward_with_cfg`` and starting noise ``[n; n]``, then ``MAR.sample_tokens`` keeps the
    first N rows. ``forward_with_cfg`` evaluates the model only on the first half of x_t
    (duplicated), gives both halves the guided eps, and keeps each half's own variance output;
    each DDPM step of a row depends only on that row's x_t, eps, variance and noise. So the
    first half's trajectory is a function of the first-half x_t, the guided eps, the
    conditional variance and the first-half noise alone, which is exactly
    ``sample_loop(diffusion, guided_model_fn(...), n, rng)``; the null rows' own (discarded)
    trajectory never feeds back. The kept samples are therefore the same given the same
    first-half noise, at half the sampler state (the model still sees 2N rows per step).
    MAR's cfg == 1.0 path (no null rows) is the ``cfg_scale=1`` case up to float rounding.
    """
    c_cond = jnp.asarray(c_cond)
    if c_cond.ndim != 2:
        raise ValueError(f"c_cond must be [N, Z], got shape {c_cond.shape}")
    c_uncond = jnp.asarray(c_uncond)
    if c_uncond.shape not in (c_cond.shape, c_cond.shape[1:], (1, c_cond.shape[1])):
        raise ValueError(
            f"c_uncond must be [N, Z] = {c_cond.shape} or [Z], got shape {c_uncond.shape}"
        )
    c_uncond = jnp.broadcast_to(c_uncond, c_cond.shape).astype(c_cond.dtype)
    n = c_cond.shape[0]
    scale = jnp.asarray(cfg_scale, jnp.float32)
    if scale.ndim != 0:
        if scale.shape not in ((n,), (n, 1)):
            raise ValueError(f"cfg_scale must be a scalar or [N] = [{n}], got {scale.shape}")
        scale = scale.reshape(n, 1)
    cond = jnp.concatenate([c_cond, c_uncond], axis=0)

    def model_fn(x: jax.Array, t: jax.Array) -> jax.Array:
        if x.shape[0] != n:
            raise ValueError(f"x has {x.shape[0]} rows but the conditions have {n}")
        ch = x.shape[-1]
        out = apply(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0), cond)
        out = jnp.asarray(out).astype(jnp.float32)
        if out.shape not in ((2 * n, ch), (2 * n, 2 * ch)):
            raise ValueError(f"apply must return [2N, C] or [2N, 2C], got {out.shape}")
        eps_c, eps_u = out[:n, :ch], out[n:, :ch]
        return jnp.concatenate([eps_u + scale * (eps_c - eps_u), out[:n, ch:]], axis=-1)

    return model_fn


__all__ = [
    "GaussianDiffusion",
    "beta_schedule",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "guided_model_fn",
    "make_diffusion",
    "normal_kl",
    "q_sample",
    "sample_loop",
    "space_timesteps",
]
