"""Building the slim graph: channel selection, slimmed layer copies, residual pieces.

The ``Emitter`` writes a new ``torch.fx.Graph`` while the rules in ``graphprune.channels`` walk the
traced graph.  Each original node's slim value lives in ``Emitter.env``; its channel *order* (the
original channel indices it physically holds, in physical order; ``None`` for the untouched
original layout) lives in the analysis.  Selections never insert zeros: they are a contiguous
``narrow`` slice or one ``index_select`` gather, as measured cheaper (:func:`selection_plan`).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn

# Above this many contiguous runs, one index_select gather replaces a concatenation of slices.
# benchmarks/residual_ops.py on these 2 cores: one run is a plain slice (a view in eager torch),
# but from two runs on, slices + cat cost 1.2-1.5x one gather in onnxruntime and eager alike.
MAX_SLICE_RUNS = 1

# Name prefix of the channel-index constants the slim graph holds (integer buffers).
INDEX_PREFIX = "_graphprune_index"


def runs(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Split positions into maximal ascending contiguous runs: [(start, length), ...]."""
    out: list[tuple[int, int]] = []
    for p in positions:
        p = int(p)
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def selection_plan(positions: Sequence[int], size: int) -> tuple[str, Any]:
    """How to take ``positions`` (in that order) from a tensor with ``size`` channels.

    Returns ("all", None), ("slices", [(start, length), ...]) or ("gather", positions).
    """
    positions = [int(p) for p in positions]
    if positions == list(range(size)):
        return "all", None
    pieces = runs(positions)
    if len(pieces) <= MAX_SLICE_RUNS:
        return "slices", pieces
    return "gather", positions


class Emitter:
    """Writes the slim graph and collects the modules and constants it refers to."""

    def __init__(self, source: torch.fx.GraphModule):
        self.source = source
        self.graph = torch.fx.Graph()
        self.env: dict[torch.fx.Node, Any] = {}
        self.attrs: dict[str, Any] = {}
        self._n_index = 0
        # channel indices live on the device of the weights they select for
        self.device = next(source.parameters(), torch.empty(0)).device
        self.stats = {"slices": 0, "gathers": 0, "residual_pieces": 0}

    # -- structure ---------------------------------------------------------------------------
    def add_module(self, name: str, module: nn.Module) -> None:
        self.attrs[name] = module

    def value(self, arg: Any) -> Any:
        """Map an argument structure of original nodes to slim values."""
        return torch.fx.node.map_aggregate(
            arg, lambda a: self.env[a] if isinstance(a, torch.fx.Node) else a)

    def copy_node(self, node: torch.fx.Node, args=None, kwargs=None) -> torch.fx.Node:
        args = self.value(node.args) if args is None else args
        kwargs = self.value(node.kwargs) if kwargs is None else kwargs
        return self.graph.create_node(node.op, node.target, args, kwargs, name=node.name)

    def call(self, target, *args, **kwargs) -> torch.fx.Node:
        return self.graph.call_function(target, tuple(args), kwargs)

    def constant_index(self, positions: Sequence[int]) -> torch.fx.Node:
        name = f"{INDEX_PREFIX}_{self._n_index}"
        self._n_index += 1
        self.attrs[name] = torch.tensor([int(p) for p in positions], dtype=torch.long,
                                        device=self.device)
        return self.graph.get_attr(name)

    # -- channel selection -------------------------------------------------------------------
    def narrow(self, x: torch.fx.Node, start: int, length: int) -> torch.fx.Node:
        self.stats["slices"] += 1
        return self.call(torch.narrow, x, 1, int(start), int(length))

    def take(self, x: torch.fx.Node, positions: Sequence[int], size: int) -> torch.fx.Node:
        """``x[:, positions]`` along the channel dimension, without materialising zeros."""
        kind, plan = selection_plan(positions, size)
        if kind == "all":
            return x
        if kind == "slices":
            parts = [self.narrow(x, s, n) for s, n in plan]
            return parts[0] if len(parts) == 1 else self.call(torch.cat, parts, 1)
        self.stats["gathers"] += 1
        return self.call(torch.index_select, x, 1, self.constant_index(plan))

    def reorder(self, x: torch.fx.Node, have: np.ndarray | None, want: np.ndarray | None,
                size: int) -> torch.fx.Node:
        """Re-express a value holding channels ``have`` as one holding ``want`` (a subset)."""
        have_list = list(range(size)) if have is None else [int(c) for c in have]
        want_list = list(range(size)) if want is None else [int(c) for c in want]
        if have_list == want_list:
            return x
        where = {c: i for i, c in enumerate(have_list)}
        missing = [c for c in want_list if c not in where]
        if missing:
            raise AssertionError(f"channels {missing[:8]} are not present in the value")
        return self.take(x, [where[c] for c in want_list], len(have_list))


# -- slimmed copies of layers -----------------------------------------------------------------
def _index(order: np.ndarray | None, size: int) -> torch.Tensor:
    return torch.arange(size) if order is None else torch.as_tensor(np.asarray(order),
                                                                     dtype=torch.long)


def slim_conv(conv: nn.Module, in_order: np.ndarray | None, out_order: np.ndarray | None,
              depthwise: bool = False) -> nn.Module:
    """A copy of a Conv1d/2d/3d (groups 1, or depthwise) keeping the given channels, in order."""
    new = copy.deepcopy(conv)
    w = conv.weight.detach()
    if depthwise:
        idx = _index(out_order, conv.out_channels)
        weight = w.index_select(0, idx)
        new.in_channels = new.out_channels = new.groups = len(idx)
    else:
        rows = _index(out_order, conv.out_channels)
        cols = _index(in_order, conv.in_channels)
        weight = w.index_select(0, rows).index_select(1, cols)
        new.out_channels, new.in_channels = len(rows), len(cols)
        idx = rows
    new.weight = nn.Parameter(weight.clone(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias = nn.Parameter(conv.bias.detach().index_select(0, idx).clone(),
                                requires_grad=conv.bias.requires_grad)
    return new


def slim_linear(linear: nn.Linear, in_order: np.ndarray | None,
                out_order: np.ndarray | None) -> nn.Linear:
    new = copy.deepcopy(linear)
    rows = _index(out_order, linear.out_features)
    cols = _index(in_order, linear.in_features)
    new.weight = nn.Parameter(linear.weight.detach().index_select(0, rows)
                              .index_select(1, cols).clone(),
                              requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        new.bias = nn.Parameter(linear.bias.detach().index_select(0, rows).clone(),
                                requires_grad=linear.bias.requires_grad)
    new.in_features, new.out_features = len(cols), len(rows)
    return new


def slice_tensor(value: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The entries ``index`` picks along dim 0 of a per-channel tensor, copied: a parameter
    stays a parameter (with its requires_grad), anything else is a plain tensor."""
    sliced = value.detach().index_select(0, index.to(value.device)).clone()
    if isinstance(value, nn.Parameter):
        return nn.Parameter(sliced, requires_grad=value.requires_grad)
    return sliced


def slim_batchnorm(bn: nn.Module, order: np.ndarray | None) -> nn.Module:
    """A copy of a BatchNorm (of its own type: a subclass, a frozen one) keeping the channels
    ``order`` lists: each of γ, β and the running statistics sliced, a parameter staying a
    parameter and a buffer a buffer."""
    new = copy.deepcopy(bn)
    count = getattr(bn, "num_features", None)      # a frozen BatchNorm has none
    idx = _index(order, int(count) if count is not None else int(bn.weight.shape[0]))
    if hasattr(new, "num_features"):
        new.num_features = len(idx)
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(bn, name, None)
        if not isinstance(value, torch.Tensor):
            continue
        sliced = slice_tensor(value, idx)
        if isinstance(sliced, nn.Parameter):
            setattr(new, name, sliced)
        else:
            new._buffers[name] = sliced
    return new


def slim_groupnorm(gn: nn.GroupNorm, order: np.ndarray) -> nn.GroupNorm:
    """A copy of a GroupNorm (of its own type) keeping the whole groups whose channels ``order``
    lists, in ascending order: γ and β sliced, ``num_groups`` and ``num_channels`` counted
    anew."""
    new = copy.deepcopy(gn)
    size = gn.num_channels // gn.num_groups
    idx = _index(order, gn.num_channels)
    new.num_channels, new.num_groups = len(idx), len(idx) // size
    for name in ("weight", "bias"):
        value = getattr(gn, name, None)
        if isinstance(value, nn.Parameter):
            setattr(new, name, slice_tensor(value, idx))
    return new
