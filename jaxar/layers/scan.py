"""Scanned transformer stacks and rematerialisation (``scan_layers``, ``remat_policy``).

With ``scan_layers`` a stack of ``L`` identical blocks is one ``nn.scan`` over a single
compiled block: its params get a leading axis of size ``L`` (logical axis ``"layers"``) and
live under the stack's name (``layers/attention/...`` instead of ``layers_0/attention/...``).
``stack_layer_params`` / ``unstack_layer_params`` convert between the two layouts (converters
build the per-layer layout and stack it when the target config scans).

A block is stackable when it derives from ``StackableBlock``: ``layer_step`` is the positional
form of its call that ``nn.scan`` and ``nn.remat`` lift. Keyword arguments of the stack call
are split into arrays (``shared``, broadcast to every layer) and Python scalars (``static``:
``train``, ``kv_len``; hashable, static under remat and scan).

``remat_policy``: ``"none"``; ``"full"`` (save nothing, recompute the block in the backward
pass); ``"dots"`` (save matmul outputs); ``"dots_no_batch"`` (save matmuls without batch
dimensions). Remat changes memory and speed, never values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxar.task import STACK_NAMES

LAYERS_AXIS = "layers"  # the logical axis of a scanned stack's leading param dimension

REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_stack_options(owner: str, scan_layers: Any, remat_policy: Any) -> None:
    """ValueError unless ``scan_layers`` is a bool and ``remat_policy`` a known policy."""
    if not isinstance(scan_layers, (bool, np.bool_)):
        raise ValueError(f"{owner}.scan_layers must be True or False, got {scan_layers!r}")
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"{owner}.remat_policy must be one of {sorted(REMAT_POLICIES)}, got {remat_policy!r}"
        )


class StackableBlock(nn.Module):
    """Base of blocks that ``block_stack`` may scan or remat. Subclasses implement
    ``__call__(x, *, cache=None, drop_path_rate=None, **kwargs) -> (y, cache)``."""

    def layer_step(
        self,
        x: jax.Array,
        cache: Any,
        drop_path_rate: jax.Array | None,
        shared: dict[str, Any],
        static: tuple[tuple[str, Any], ...],
    ) -> tuple[jax.Array, Any]:
        """Positional call (carry ``x``, per-layer ``cache`` and ``drop_path_rate``, shared
        array arguments, static scalar arguments) -> (y, new cache)."""
        return self(x, cache=cache, drop_path_rate=drop_path_rate, **shared, **dict(static))


def split_static(kwargs: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """Keyword arguments -> (arrays and pytrees, sorted hashable Python scalars)."""
    scalar = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)
    static = tuple(sorted((k, v) for k, v in kwargs.items() if isinstance(v, scalar)))
    shared = {k: v for k, v in kwargs.items() if not isinstance(v, scalar)}
    return shared, static


@functools.cache
def remat_block(block_cls: type, policy: str, scan: bool = False) -> type:
    """``block_cls`` with ``layer_step`` rematerialised under ``policy`` (``"none"``: the class
    itself). The static arguments (``static``, argument 5 counting ``self``) stay static."""
    if policy == "none":
        return block_cls
    return nn.remat(
        block_cls,
        policy=REMAT_POLICIES[policy],
        prevent_cse=not scan,  # inside a scan CSE cannot merge the recomputation away
        static_argnums=(5,),
        methods=["layer_step"],
    )


@functools.cache
def scanned_block(block_cls: type, num_layers: int, policy: str) -> type:
    """``block_cls`` (rematerialised under ``policy``) with ``layer_step`` scanned over
    ``num_layers`` layers: params stacked on axis 0 (logical axis ``"layers"``), dropout and
    init rngs split per layer, per-layer cache and drop-path rate scanned, the rest broadcast."""
    return nn.scan(
        remat_block(block_cls, policy, scan=True),
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, 0, nn.broadcast, nn.broadcast),
        out_axes=0,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: LAYERS_AXIS},
        methods=["layer_step"],
    )


class ScannedBlocks(nn.Module):
    """``num_layers`` blocks ``block_cls(**block_kwargs)`` as one scanned block whose params
    sit directly under this module's name with a leading ``[num_layers]`` axis. Drop path
    rises linearly from 0 to ``drop_path`` over the layers, as in ``block_stack``.

    Call: ``(x [B, T, D], cache=None | stacked cache, **kwargs) -> (y, new stacked cache)``;
    the stacked cache is ``{"k", "v": [L, B, S, Hkv, Dh], "index": int32 [L]}``.
    """

    block_cls: type
    num_layers: int
    drop_path: float = 0.0
    remat_policy: str = "none"
    block_kwargs: tuple[tuple[str, Any], ...] = ()

    def setup(self):
        cls = scanned_block(self.block_cls, self.num_layers, self.remat_policy)
        self.block = cls(drop_path_rate=self.drop_path, **dict(self.block_kwargs))
        nn.share_scope(self, self.block)

    def __call__(self, x: jax.Array, cache: Any = None, **kwargs: Any) -> tuple[jax.Array, Any]:
        shared, static = split_static(kwargs)
        rates = None
        if kwargs.get("train") and self.drop_path > 0.0:
            rates = jnp.linspace(0.0, self.drop_path, self.num_layers, dtype=jnp.float32)
        return self.block.layer_step(x, cache, rates, shared, static)


def _stack_leaves(*leaves: Any) -> Any:
    if isinstance(leaves[0], nn.Partitioned):
        value = _stack_leaves(*(leaf.value for leaf in leaves))
        names = (LAYERS_AXIS, *leaves[0].names)
        return leaves[0].replace(value=value, names=names)
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def stack_layer_params(
    params: dict, prefix: str, num_layers: int, stacked_name: str | None = None
) -> dict:
    """Per-layer params ``{prefix}_0 .. {prefix}_{L-1}`` -> one subtree ``stacked_name``
    (default ``prefix``) whose leaves have a leading ``[L]`` axis (the scanned layout).
    numpy stays numpy; ``nn.Partitioned`` boxes get the ``"layers"`` axis name first."""
    names = [f"{prefix}_{i}" for i in range(num_layers)]
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"cannot stack {prefix}: missing {missing[:3]} of {num_layers} layers")
    out = {k: v for k, v in params.items() if k not in names}
    layers = [params[n] for n in names]
    out[stacked_name or prefix] = jax.tree.map(_stack_leaves, *layers, is_leaf=_is_box)
    return out


def unstack_layer_params(
    params: dict, prefix: str, num_layers: int, stacked_name: str | None = None
) -> dict:
    """Inverse of ``stack_layer_params``: subtree ``stacked_name`` (default ``prefix``) with
    leading ``[L]`` leaves -> ``{prefix}_0 .. {prefix}_{L-1}``."""
    name = stacked_name or prefix
    if name not in params:
        raise ValueError(f"cannot unstack {name}: not in params {sorted(params)[:8]}")
    out = {k: v for k, v in params.items() if k != name}

    def layer(i):
        def take(leaf):
            if _is_box(leaf):
                return leaf.replace(value=leaf.value[i], names=tuple(leaf.names[1:]))
            if leaf.shape[0] != num_layers:
                raise ValueError(f"{name}: leaf of shape {leaf.shape} is not stacked {num_layers}")
            return leaf[i]

        return jax.tree.map(take, params[name], is_leaf=_is_box)

    for i in range(num_layers):
        out[f"{prefix}_{i}"] = layer(i)
    return out


def match_layer_layout(params: dict, scan: bool) -> dict:
    """Top-level params of either layout in the layout ``scan`` asks for: per-layer subtrees
    ``{name}_0 ..`` of the ``STACK_NAMES`` are stacked, or stacked ``{name}`` subtrees
    unstacked. Lets checkpoints written before a preset's default layout changed load."""
    out = dict(params)
    for name in STACK_NAMES:
        count = 0
        while f"{name}_{count}" in out:
            count += 1
        if scan and count:
            out = stack_layer_params(out, name, count)
        elif not scan and isinstance(out.get(name), Mapping):
            leaf = jax.tree.leaves(out[name], is_leaf=_is_box)[0]
            num = (leaf.value if _is_box(leaf) else leaf).shape[0]
            out = unstack_layer_params(out, name, num)
    return out
