"""Pruning inside modules the trace keeps whole: their sealed blocks, each compiled on its own.

A module the trace keeps whole (a *leaf*: ultralytics' Detect head, which rebuilds its anchors
behind a shape check, or any block named in ``leaves=``) is one opaque call in the graph, so its
own hidden channels were never pruned — only the input columns of its first layers shrink.  Yet
most such modules are a traceable body around a few untraceable lines: Detect's box and class
branches (``cv2[i]``, ``cv3[i]``: convolution, convolution, output convolution) are plain
``Sequential`` blocks, and only the decoding after them cannot be traced.

A *sealed block* of a leaf is a submodule that the leaf calls exactly once, on one tensor,
returning one tensor (seen on the example inputs, with forward hooks), and that holds a layer
with prunable channels.  Its outputs leave it whole (the compile of a model never prunes the
model's outputs), so pruning its hidden channels changes nothing outside it: it is compiled on its
own — with the masks the request names inside it, by the same passes and the same check — and the
slim block replaces it in the leaf's copy.  The whole model's check (slim == zero-masked) then
covers every block too.  Blocks are chosen top down: the first submodule on each path that
qualifies; one that does not is searched below.

The producers inside the blocks join the model's own: a threshold, a ratio, the LFA search and
sparse training rank and regularise them with the rest (``masks={"model.22.cv2.0.0.bn": keep}``
names one directly).  A module kept whole on request (``leaves=``) stays whole inside.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .errors import GraphpruneError, GraphpruneWarning
from .masks import CONVS


@dataclass
class InnerCall:
    """One call of a submodule inside a leaf, seen while the leaf ran on the example inputs."""
    example: torch.Tensor | None          # its one tensor argument (None: other arguments)
    tensor_out: bool                       # whether it returned one tensor


@dataclass
class InnerBlock:
    """A sealed block of a leaf, and the producers inside it a mask may name."""
    leaf: str                              # the leaf's name in the model
    path: str                              # the block's path inside the leaf
    example: torch.Tensor                  # its input, as the leaf gave it
    producers: dict[str, int] = field(default_factory=dict)   # name inside the block -> channels
    kinds: dict[str, str] = field(default_factory=dict)       # name inside the block -> kind
    importance: dict[str, np.ndarray] = field(default_factory=dict)
    near_zero: dict[str, int] = field(default_factory=dict)
    pinned: dict[str, int] = field(default_factory=dict)      # channels no mask may remove

    @property
    def name(self) -> str:
        """The block's name in the model."""
        return f"{self.leaf}.{self.path}"

    def full(self, inner: str) -> str:
        return f"{self.name}.{inner}"


class CallRecorder:
    """Forward hooks on every submodule of ``module`` recording its calls (``InnerCall``)."""

    def __init__(self, module: nn.Module):
        self.calls: dict[str, list[InnerCall]] = {}
        self._handles = [m.register_forward_hook(self._hook(name))
                         for name, m in module.named_modules() if name]

    def _hook(self, name: str):
        # no torch call here: the leaf runs under a recorder that counts every use of its
        # inputs, so the argument is only referenced now and copied in close()
        def note(_module, args, output):
            single = len(args) == 1 and isinstance(args[0], torch.Tensor)
            self.calls.setdefault(name, []).append(
                InnerCall(args[0] if single else None, isinstance(output, torch.Tensor)))
        return note

    def reset(self) -> None:
        self.calls = {}

    def close(self) -> None:
        """Remove the hooks and keep a private copy of the argument of each submodule called
        once (the only ones a block's example can come from); drop the others."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        with torch.no_grad():
            for seen in self.calls.values():
                for call in seen:
                    call.example = call.example.detach().clone() \
                        if call.example is not None and len(seen) == 1 else None


def candidate_blocks(module: nn.Module, calls: dict[str, list[InnerCall]]
                     ) -> list[tuple[str, torch.Tensor]]:
    """(path, example input) of the first submodule on each path below ``module`` that was
    called exactly once, on one tensor, returning one tensor, and holds a convolution or linear
    layer."""
    found: list[tuple[str, torch.Tensor]] = []

    def visit(prefix: str, parent: nn.Module) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            seen = calls.get(path, [])
            if len(seen) == 1 and seen[0].example is not None and seen[0].tensor_out and \
                    any(isinstance(m, CONVS + (nn.Linear,)) for m in child.modules()):
                found.append((path, seen[0].example))
            else:
                visit(path + ".", child)

    visit("", module)
    return found


def analyse_block(leaf: str, path: str, block: nn.Module, example: torch.Tensor,
                  analyze: Callable) -> InnerBlock | None:
    """The block with the producers a mask may prune inside it (``analyze``: graphprune's own
    analysis, ``pipeline.analyze``, of the block as a model), or None when it cannot be
    analysed or has none."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GraphpruneWarning)
            report = analyze(block, (example,))
    except (GraphpruneError, RuntimeError, TypeError, ValueError):
        return None
    found = InnerBlock(leaf, path, example)
    for name, st in report.statistics.items():
        if report.pinned_channels.get(name, 0) < st.channels:
            found.producers[name] = st.channels
            found.kinds[name] = st.kind
            found.importance[name] = st.gamma
            found.near_zero[name] = st.near_zero
            found.pinned[name] = report.pinned_channels.get(name, 0)
    return found if found.producers else None


def find_blocks(leaf: str, module: nn.Module, calls: dict[str, list[InnerCall]],
                analyze: Callable) -> list[InnerBlock]:
    """The sealed blocks of leaf ``leaf`` (``module``) that hold prunable producers
    (``analyze``: ``pipeline.analyze``, handed down by the pipeline that runs the passes)."""
    blocks = []
    for path, example in candidate_blocks(module, calls):
        block = analyse_block(leaf, path, module.get_submodule(path), example, analyze)
        if block is not None:
            blocks.append(block)
    return blocks


def compile_block(module: nn.Module, block: InnerBlock, masks: dict[str, np.ndarray],
                  compile_fn: Callable, options: dict[str, Any]):
    """Compile ``block`` of ``module`` (a private copy of its leaf) with ``masks`` (names
    inside the block; ``compile_fn``: ``pipeline.compile``, handed down by the pipeline) and
    put the slim block in its place; returns the CompileResult."""
    target = module.get_submodule(block.path)
    result = compile_fn(copy.deepcopy(target).eval(), (block.example,),
                        masks={n: torch.as_tensor(m) for n, m in masks.items()}, **options)
    parent, _, name = block.path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, result.module)
    return result


__all__ = ["CallRecorder", "InnerBlock", "InnerCall", "analyse_block", "candidate_blocks",
           "compile_block", "find_blocks"]
