"""Estimated parameters and FLOPs of a mask assignment, read off the traced graph.

Every Conv/Linear node called once has a full parameter and FLOP count (from its weight and
its traced output shape); under masks it keeps ``kept rows / rows × live input columns /
columns`` of both (grouped convolutions keep their per-group inputs).  BatchNorms keep two
numbers per kept channel.  Nothing else varies.  The estimate needs the channel analysis
solved for the masks (``ChannelAnalysis.solve`` then ``compute_lives``); it runs no forward.

``NODE_FLOPS`` prices one extra node of a slim graph in convolution FLOPs: what
``residual="auto"`` weighs against the FLOPs a residual reconstruction saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch.nn as nn

from .masks import CONVS, LAYERNORMS, features
from .specs import spec_of

if TYPE_CHECKING:     # annotations only: analysis builds on this module's layer
    from .analysis import ChannelAnalysis

# One extra slice/concatenation node in onnxruntime on the CPU costs about as much time as this
# many FLOPs of convolution.  benchmarks/node_cost.py on 2 shared x86_64 cores (2 threads), two
# runs of four tensor shapes: 2-32 µs a node (median 5 µs) at 160-300 GFLOP/s of 3x3
# convolution, so 0.4-8 MFLOPs with a median of 1.3; rounded to 1.5.
NODE_FLOPS = 1.5e6


@dataclass
class LayerCost:
    kind: str              # "conv" | "bn" | "inner" (a layer inside a kept-whole module)
    node: Any              # the traced node (for "inner": the leaf input feeding the layer)
    module: nn.Module | None   # None: a functional batch norm
    params: int            # weight parameters
    bias: int
    flops: int             # FLOPs with every channel kept (2 × MACs)


def layer_costs(A: ChannelAnalysis, prunable: Iterable[str]) -> list[LayerCost]:
    """The Conv/Linear layers called once, and the BatchNorms named in ``prunable``."""
    prunable = set(prunable)
    out = []
    for node in A.nodes:
        m = A.module_of(node)
        if m is None:          # a functional batch norm: two numbers per channel too
            name = A.name_of(node)
            if name in prunable:
                out.append(LayerCost("bn", node, None, 2 * len(A.masks[name]), 0, 0))
            continue
        if A.call_count(node) != 1:
            continue
        if isinstance(m, CONVS + (nn.Linear,)):
            spec = spec_of(node)
            shape = spec.shape if spec is not None and hasattr(spec, "shape") else None
            if shape is None:
                continue
            weight = m.weight.numel()
            bias = m.bias.numel() if m.bias is not None else 0
            flops = 2 * int(np.prod(shape)) * (weight // m.weight.shape[0])
            out.append(LayerCost("conv", node, m, weight, bias, flops))
        elif node.target in prunable and not isinstance(m, LAYERNORMS):   # a LayerNorm runs
            out.append(LayerCost("bn", node, m, 2 * features(m), 0, 0))   # whole: no saving
    return out


def estimate(A: ChannelAnalysis, masks: dict[str, np.ndarray], layers: Iterable[LayerCost],
             lives: dict[Any, Any] | None = None) -> tuple[int, int]:
    """(params, FLOPs) of ``layers`` under ``masks``, given the channels live at each node under
    them (``lives``; by default ``A.lives``, which must then be current)."""
    lives = A.lives if lives is None else lives
    producer_bn = {conv: A.name_of(bn) for conv, bn in A.producers.items()}
    params = flops = 0
    for c in layers:
        if c.kind == "bn":
            params += 2 * int(masks[A.name_of(c.node)].sum())
            continue
        m = c.module
        rows = m.weight.shape[0]
        keep_out = int(masks[producer_bn[c.node]].sum()) if c.node in producer_bn else rows
        live_in = lives.get(c.node if c.kind == "inner" else
                              (c.node.args[0] if c.node.args else None))
        in_full = m.weight.shape[1] * getattr(m, "groups", 1)
        in_frac = 1.0
        if isinstance(live_in, np.ndarray) and len(live_in) == in_full and \
                getattr(m, "groups", 1) == 1:        # grouped: per-group inputs stay, rows go
            in_frac = live_in.sum() / in_full
        scale = keep_out / rows * in_frac
        params += int(round(c.params * scale)) + (keep_out if c.bias else 0)
        flops += int(round(c.flops * scale))
    return params, flops


__all__ = ["LayerCost", "NODE_FLOPS", "estimate", "layer_costs"]
