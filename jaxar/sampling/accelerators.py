"""Training-free accelerators as options of the one sampler interface (``jaxar.sampling.base``).

``get_accelerator(name, family)`` names the accelerator and checks that it applies to the
family; ``Accelerator.build(model_cfg, codebook, options, settings)`` gives the traceable body
``run(params, labels, rng, *extra) -> (codes [B, N], forward_passes [B])`` and its ``extra``
arrays. Every accelerator here drafts and verifies tokens of a raster-order GPT through its KV
cache, so all of them apply to the ``gpt`` family only:

* ``sjd``: speculative Jacobi decoding (``window``); exact in distribution, and greedy SJD
  equals the plain greedy sampler.
* ``lantern``: SJD with LANTERN's relaxed acceptance over codebook neighbours (``k``,
  ``delta``, ``window``).
* ``gsd``: grouped speculative decoding (``rank_radius``, ``prob_gap``, ``window``; with
  ``distance_quantile`` q the groups also need squared codebook distance <= the q-quantile).
* ``zipar``: ZipAR's parallel row decoding (``window``: rows start once ``window`` codes of
  the row above are drafted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    families: tuple[str, ...]
    fields: tuple[str, ...]  # the accelerator's own settings
    needs_codebook: bool
    # (model cfg, codebook [V, D] | None, GPT sampling kwargs, own settings) -> wrapped sampler
    make: Callable[..., Any]

    def build(self, model_cfg: Any, codebook: Any, options: dict[str, Any], settings: dict):
        """-> (run(params, labels, rng, *extra) -> (codes, passes), extra arrays, the host
        check of the labels). ``options`` are GPT sampling settings (validated by the make)."""
        unknown = sorted(set(settings) - set(self.fields))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for accelerator {self.name!r}; "
                f"its settings: {list(self.fields)}"
            )
        wrapped = self.make(model_cfg, codebook, options, dict(settings))
        return wrapped.run, wrapped.extra, wrapped.check


def _sjd(cfg, codebook, options, settings):
    from jaxar.sampling.speculative import make_sjd_sampler

    del codebook
    return make_sjd_sampler(cfg, **settings, **options)


def _lantern(cfg, codebook, options, settings):
    from jaxar.sampling.lantern import make_lantern_sampler

    return make_lantern_sampler(cfg, codebook, **settings, **options)


def _gsd(cfg, codebook, options, settings):
    from jaxar.sampling.gsd import make_gsd_sampler, sq_distance_quantile

    quantile = settings.pop("distance_quantile", None)
    if quantile is None:
        return make_gsd_sampler(cfg, None, **settings, **options)
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"distance_quantile must be in (0, 1], got {quantile!r}")
    threshold = sq_distance_quantile(codebook, quantile)
    return make_gsd_sampler(cfg, codebook, max_sq_distance=threshold, **settings, **options)


def _zipar(cfg, codebook, options, settings):
    from jaxar.sampling.zipar import make_zipar_sampler

    del codebook
    return make_zipar_sampler(cfg, **settings, **options)


ACCELERATORS: dict[str, Accelerator] = {
    "sjd": Accelerator("sjd", ("gpt",), ("window",), False, _sjd),
    "lantern": Accelerator("lantern", ("gpt",), ("k", "delta", "window"), True, _lantern),
    "gsd": Accelerator(
        "gsd", ("gpt",), ("rank_radius", "prob_gap", "distance_quantile", "window"), True, _gsd
    ),
    "zipar": Accelerator("zipar", ("gpt",), ("window",), False, _zipar),
}


def get_accelerator(name: str, family: str) -> Accelerator:
    """The accelerator ``name``; ValueError if unknown or if it does not apply to ``family``."""
    if name not in ACCELERATORS:
        raise ValueError(f"unknown accelerator {name!r}; known: {sorted(ACCELERATORS)}")
    accel = ACCELERATORS[name]
    if family not in accel.families:
        supported = {a.name: list(a.families) for a in ACCELERATORS.values()}
        raise ValueError(
            f"accelerator {name!r} does not support the {family!r} family: it applies to "
            f"{list(accel.families)} (raster-order next-token decoding with a KV cache); "
            f"accelerators and their families: {supported}"
        )
    return accel


__all__ = ["ACCELERATORS", "Accelerator", "get_accelerator"]
