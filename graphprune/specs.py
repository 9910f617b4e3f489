"""What the compiler records about each node of the traced graph: the ``node.meta`` keys, the
example value's ``TensorSpec`` (shape and dtype; channels are dim 1) and, for a module kept
whole, how it used its inputs (``LeafUsage``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

SPEC = "graphprune.spec"          # TensorSpec (or a tuple of them) of the node's example value
LEAF_USAGE = "graphprune.leaf"    # LeafUsage of a call_module node kept whole
INNER_CALLS = "graphprune.inner"  # {submodule path: [inner.InnerCall]} of a node kept whole
RULE = "graphprune.rule"          # name of the rule the node dispatched to
LIVE = "graphprune.live"
ORDER = "graphprune.order"


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def channels(self) -> int | None:
        return self.shape[1] if len(self.shape) >= 2 else None


def spec_of(node: Any) -> Any:
    return node.meta.get(SPEC) if isinstance(node, torch.fx.Node) else None


def is_tensor(node: Any) -> bool:
    return isinstance(spec_of(node), TensorSpec)


def channels(node: Any) -> int | None:
    s = spec_of(node)
    return s.channels if isinstance(s, TensorSpec) else None


def full_like_spec(s: Any) -> Any:
    """All-live structure matching a spec: arrays for tensors with channels, else None."""
    if isinstance(s, TensorSpec):
        return None if s.channels is None else np.ones(s.channels, dtype=bool)
    if isinstance(s, (tuple, list)):
        return tuple(full_like_spec(x) for x in s)
    return None


def describe(node: torch.fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(module).__name__ if module else 'module'})"
    if node.op == "call_method":
        return f"node {node.name!r} (method .{node.target}())"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"node {node.name!r} ({name})"
    return f"node {node.name!r} ({node.op})"


@dataclass
class LeafUsage:
    """How a module kept whole used each of its input nodes, seen on the example inputs."""

    consumers: dict[torch.fx.Node, list[str]] = field(default_factory=dict)  # -> inner layers
    others: dict[torch.fx.Node, list[str]] = field(default_factory=dict)     # -> other ops


__all__ = ["INNER_CALLS", "LEAF_USAGE", "LIVE", "ORDER", "RULE", "SPEC", "LeafUsage", "TensorSpec", "channels",
           "describe", "full_like_spec", "is_tensor", "spec_of"]
