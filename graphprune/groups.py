"""Dependency groups from torch-pruning, split into structural and residual coupling.

torch-pruning's ``DependencyGraph`` knows which layers' channels are tied together: a depthwise
convolution ties its input and output channels, flatten -> Linear ties a channel to a block of
columns, a residual add ties the channels of its two operands, and so on.  graphprune keeps the
structural ties (the layers must keep the same channels) and drops the ties that come only from
elementwise residual adds, which the residual reconstruction handles (paper §3.2).  The residual
ties are described by ``graphprune inspect``; the coupling ``residual="couple"`` applies is
taken from the channel analysis instead (``residuals.residual_sets``), which
also follows shortcuts through chunk pieces (C2f) where torch-pruning's graph has no edge.

We build one graph of torch-pruning's nodes (networkx) with an edge per dependency; the
BatchNorms that stay connected once the add nodes are removed are structurally coupled, those
connected only through adds are coupled by residuals alone.
"""

from __future__ import annotations

import copy
import signal
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .masks import BATCHNORMS, CONVS, features

LAYERS = CONVS + (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
# Building torch-pruning's graph is one forward and backward pass on a small input; past this,
# give up loudly (the channel analysis alone still compiles correctly).
DEFAULT_TIME_LIMIT_S = 60.0


@dataclass
class CouplingSet:
    """BatchNorm channels tied together: members with equal root index keep or go together."""

    kind: str                                                   # "structural" | "residual"
    members: list[tuple[str, np.ndarray, np.ndarray]]           # (name, channel, root index)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(name for name, _, _ in self.members))


@dataclass
class GroupInfo:
    """One torch-pruning group, described for people (``graphprune inspect``)."""

    root: str
    layers: list[str]
    batchnorms: list[str]
    residual_adds: int


@dataclass
class DependencyGroups:
    groups: list[GroupInfo] = field(default_factory=list)
    structural: list[CouplingSet] = field(default_factory=list)
    residual: list[CouplingSet] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


class TimeLimit(BaseException):
    """Raised by ``deadline``; not an Exception, so that a library's own ``except Exception``
    (torch-pruning has several) cannot swallow it."""


@contextmanager
def deadline(seconds: float):
    """Raise TimeLimit in the block after ``seconds`` (on the main thread of a system with
    SIGALRM; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0 or \
            not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise TimeLimit(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def small_inputs(model: nn.Module, example_inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Batch 1 and, for images, 64x64: the coupling does not depend on the spatial size.

    Falls back to the given inputs when the model does not run on the smaller ones."""
    small = []
    for x in example_inputs:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and min(x.shape[2:]) > 64 and \
                all(s % 32 == 0 for s in x.shape[2:]):
            x = x[:1, :, :64, :64]
        elif isinstance(x, torch.Tensor) and x.dim() >= 1:
            x = x[:1]
        small.append(x)
    small = tuple(small)
    try:
        with torch.no_grad():
            model(*small)
    except Exception:
        return example_inputs
    return small


def _separators() -> tuple:
    """torch-pruning node types that never tie two producers' channels one to one: routing
    (concat/split/slice/unbind: offsets only) and reshapes (whose consumers the channel
    analysis keeps whole anyway).  Ties are only counted across other ops."""
    return tuple(getattr(tp.ops.OPTYPE, name) for name in
                 ("CONCAT", "SPLIT", "SLICE", "UNBIND", "RESHAPE", "EXPAND", "OUTPUT")
                 if hasattr(tp.ops.OPTYPE, name))


def _is_add(tp_node) -> bool:
    grad_fn = getattr(tp_node, "grad_fn", None)
    name = grad_fn.name() if grad_fn is not None and hasattr(grad_fn, "name") else ""
    return name.startswith("AddBackward")


def build_groups(model: nn.Module, example_inputs: tuple[Any, ...],
                 ignore: Iterable[nn.Module] = (),
                 time_limit: float = DEFAULT_TIME_LIMIT_S) -> DependencyGroups:
    """Build torch-pruning's dependency graph of ``model`` and split it into groups.

    The groups are the connected components of torch-pruning's dependencies, taken in linear
    time with networkx (its own per-layer group search, ``get_all_groups``, can take minutes on
    graphs full of slices).  Channels map one to one along the counted dependencies, so the
    BatchNorms of a component are tied channel by channel.  ``ignore``: modules torch-pruning
    should not look into (graphprune's leaves, whose input channels the compiler handles
    itself).  Never raises: a failure is reported in ``.error``.  torch-pruning runs the model
    with gradients on, so it runs on a copy: modules that cache tensors during a forward (timm's
    attention biases) would otherwise keep a graph that no later copy of the model survives.
    """
    given = {m: n for n, m in model.named_modules()}
    ignored_names = {given[m] for m in ignore if m in given}
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    ignore = [m for m, n in names.items() if n in ignored_names]
    separators = _separators()
    start = time.perf_counter()
    result = DependencyGroups()
    try:
        # torch-pruning's own warnings (e.g. its shape inference giving up on long slice
        # chains) concern its index mapping, which graphprune does not use.
        with deadline(time_limit), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs = small_inputs(model, example_inputs)
            dg = tp.DependencyGraph().build_dependency(
                model, inputs if len(inputs) != 1 else inputs[0], verbose=False,
                ignored_layers=list(ignore))
    except TimeLimit:
        result.error = f"torch-pruning's dependency graph took longer than {time_limit:.0f} s"
        return result
    except Exception as exc:  # torch-pruning does not understand every model
        result.error = f"torch-pruning failed: {type(exc).__name__}: {str(exc)[:200]}"
        return result
    finally:
        result.seconds = time.perf_counter() - start

    def port(tp_node, fn):
        """A layer's input and output channels are separate vertices, unless the layer ties
        them (torch-pruning then adds an in -> out dependency, as for depthwise convs)."""
        if isinstance(tp_node.module, LAYERS):
            return (tp_node, "out" if dg.is_out_channel_pruning_fn(fn) else "in")
        return (tp_node, "")

    graph = nx.Graph()
    for tp_node in dg.module2node.values():
        graph.add_node((tp_node, "out" if isinstance(tp_node.module, LAYERS) else ""))
        for dep in tp_node.dependencies:
            graph.add_edge(port(dep.source, dep.trigger), port(dep.target, dep.handler))
    graph.remove_nodes_from([v for v in list(graph.nodes) if v[0].type in separators])
    adds = [v for v in graph.nodes if _is_add(v[0])]

    position = {n: i for i, n in enumerate(names.values())}

    def batchnorms_of(component) -> list[str]:
        found = [names.get(v[0].module) for v in component
                 if isinstance(v[0].module, BATCHNORMS)]
        return sorted((n for n in found if n is not None), key=position.get)

    def coupling_set(kind: str, bn_names: list[str]) -> CouplingSet | None:
        modules = {n: model.get_submodule(n) for n in bn_names}
        sizes = {features(m) for m in modules.values()}
        if len(bn_names) < 2 or len(sizes) != 1:
            return None
        idx = np.arange(sizes.pop())
        return CouplingSet(kind, [(n, idx, idx) for n in bn_names])

    for component in nx.connected_components(graph):
        bn_names = batchnorms_of(component)
        layers = sorted({names[v[0].module] for v in component
                         if isinstance(v[0].module, nn.Module) and v[0].module in names})
        if len(bn_names) >= 2:
            n_adds = sum(1 for v in component if _is_add(v[0]))
            result.groups.append(GroupInfo(bn_names[0], layers, bn_names, n_adds))
        cs = coupling_set("residual", bn_names)
        if cs is not None:
            result.residual.append(cs)
    graph.remove_nodes_from(adds)
    for component in nx.connected_components(graph):
        cs = coupling_set("structural", batchnorms_of(component))
        if cs is not None:
            result.structural.append(cs)
    result.groups.sort(key=lambda g: position.get(g.root, 0))
    return result


def apply_coupling(masks: dict[str, np.ndarray], sets: Iterable[CouplingSet],
                   fixed: Iterable[str] = ()) -> dict[str, str]:
    """Grow ``masks`` in place so that coupled channels keep or go together (logical OR).

    A member not in ``masks`` (not prunable) or named in ``fixed`` counts as keeping all of its
    channels.  Returns {BatchNorm name: reason} for every mask that grew."""
    fixed = set(fixed)
    grown: dict[str, str] = {}
    for cs in sets:
        size = 1 + max(int(r.max()) for _, _, r in cs.members if len(r))
        keep = np.zeros(size, dtype=bool)
        for name, local, root in cs.members:
            if name not in masks or name in fixed:
                keep[root] = True
            else:
                keep[root] |= masks[name][local]
        for name, local, root in cs.members:
            if name not in masks or name in fixed:
                continue
            want = keep[root]
            have = masks[name][local]
            if (want & ~have).any():
                masks[name][local] = have | want
                others = [n for n in cs.names if n != name]
                what = "structurally coupled" if cs.kind == "structural" else \
                    "coupled through residual adds"
                grown[name] = f"{what} with {', '.join(others[:3])}" + \
                    (f" and {len(others) - 3} more" if len(others) > 3 else "")
    return grown


__all__ = ["CouplingSet", "DependencyGroups", "GroupInfo", "TimeLimit", "apply_coupling",
           "build_groups", "deadline", "small_inputs"]
