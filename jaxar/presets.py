"""Named config presets: the one lookup every model family and tokenizer uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_preset(presets: Mapping[str, T], name: str, what: str, **overrides: Any) -> T:
    """``presets[name]`` with fields replaced by ``overrides``.

    ValueError naming ``what`` and the known presets for an unknown name, and naming the
    config class for an unknown field (``dataclasses.replace`` would give a bare TypeError)."""
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; known: {sorted(presets)}")
    base = presets[name]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(base)}
    if unknown:
        raise ValueError(f"unknown {type(base).__name__} fields {sorted(unknown)}")
    return dataclasses.replace(base, **overrides)
