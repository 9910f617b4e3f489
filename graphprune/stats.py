"""Parameters and FLOPs, counted the same way for a model and its slim version.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the example inputs: it counts
convolutions, matrix products and attention as 2 × multiply-accumulates and ignores elementwise
ops (BatchNorm, activations, adds), so GFLOPs here = 2 × GMACs of the layers that dominate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_flops(model: nn.Module, example_inputs: tuple[Any, ...]) -> int:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class ModelStats:
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    channels_before: int          # channels of the ranked layers (context.ranked_names)
    channels_after: int

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / max(self.flops_before, 1)

    @property
    def channels_pruned(self) -> float:
        if not self.channels_before:         # nothing prunable: nothing pruned
            return 0.0
        return 1.0 - self.channels_after / self.channels_before

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(params_ratio=self.params_ratio, flops_ratio=self.flops_ratio,
                 channels_pruned=self.channels_pruned)
        return d


__all__ = ["ModelStats", "count_flops", "count_params"]
