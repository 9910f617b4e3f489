"""What the compiler passes share: the request, the traced graph and each pass's findings.

Passes are plain functions ``(GraphModule, CompileContext) -> PassResult``; they read what earlier
passes left here and on the nodes (``node.meta["graphprune.*"]``) and add their own findings.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn

RESIDUAL_MODES = ("reconstruct", "couple", "auto")

# The invariant's tolerance (DESIGN.md): |slim - ref| <= ATOL + RTOL * |ref|, float32.
ATOL = 1e-4
RTOL = 1e-4


def as_names(value: Iterable[str] | str) -> tuple:
    """``exclude``/``leaves`` as a tuple; one string is one name (not its letters)."""
    return (value,) if isinstance(value, str) else tuple(value)


@dataclass
class CompileConfig:
    """The user's request, validated by ``graphprune.compile``."""

    masks: dict[str, Any] | None = None
    threshold: float | None = None
    prune_ratio: float | None = None
    residual: str = "reconstruct"
    min_channels: int = 1
    round_to: Any = 1                     # kept channels per layer: a multiple of this, or a
                                          # graphprune.widths.WidthTable (measured widths)
    exclude: Sequence[str] = ()
    leaves: Sequence[str] = ()
    verify: bool = True
    dependency_groups: bool = True        # build torch-pruning's groups (structural coupling)
    atol: float = ATOL
    rtol: float = RTOL


@dataclass
class LayerStatistics:
    """The importance of each channel of one prunable producer (paper §3.1.2: the per-layer
    count of near-zero γ).  For a BatchNorm ``gamma`` is |γ|; for the other producers it is
    the layer-relative importance of ``graphprune.passes.collect_statistics`` (|γ| of a
    GroupNorm or LayerNorm, the L2 norm of a convolution's or linear layer's output filter,
    each divided by the mean over the layer's channels)."""

    name: str
    gamma: np.ndarray           # importance per channel (|γ| for a BatchNorm)
    near_zero: int              # channels with importance < NEAR_ZERO
    kind: str = "batchnorm"     # batchnorm | groupnorm | layernorm | conv | linear

    @property
    def channels(self) -> int:
        return len(self.gamma)


def ranked_names(statistics: dict[str, LayerStatistics]) -> list[str]:
    """The layers a threshold or prune ratio ranks: the prunable BatchNorms when the model has
    any (by |γ|, the paper's Algorithm 2, whose scale BatchNorm fixes across layers), otherwise
    every prunable producer (by its layer-relative importance).  The other producers of a
    BatchNorm model are pruned only by explicit masks."""
    bns = [n for n, s in statistics.items() if s.kind == "batchnorm"]
    return bns if bns else list(statistics)


@dataclass
class CompileContext:
    model: nn.Module                      # the compiler's private copy, in eval mode
    example_inputs: tuple[Any, ...]
    config: CompileConfig
    leaves: dict[str, str] = field(default_factory=dict)          # auto leaf -> why
    statistics: dict[str, LayerStatistics] = field(default_factory=dict)
    unprunable: dict[str, str] = field(default_factory=dict)      # norm layer -> why not prunable
    # convolution, linear layer or functional batch norm weight -> why a mask naming it is not
    # applied (not listed among the unprunable norms: most such convolutions feed a norm)
    layer_notes: dict[str, str] = field(default_factory=dict)
    groups: Any = None                                             # groups.DependencyGroups
    candidates: dict[str, np.ndarray] = field(default_factory=dict)  # rankable channels
    requested: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)    # as applied
    pinned: dict[str, str] = field(default_factory=dict)
    analysis: Any = None                                           # analysis.ChannelAnalysis
    slim: torch.fx.GraphModule | None = None
    slim_env: dict[torch.fx.Node, Any] = field(default_factory=dict)
    emit_stats: dict[str, int] = field(default_factory=dict)
    residual_choice: dict[str, dict] = field(default_factory=dict)   # residual="auto": per set
    max_error: float | None = None                                # verify: worst |slim - ref|
    # sealed blocks inside modules kept whole (graphprune.inner): block name -> InnerBlock
    inner: dict[str, Any] = field(default_factory=dict)
    # the pipeline's own analyze and compile, for the sealed blocks (the passes cannot import
    # the pipeline that runs them)
    analyze_fn: Any = None
    compile_fn: Any = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
