"""Pass 3 — mask channels: from the request to the masks the compiler really applies.

The decisions (structural pins, the request, safety rails, coupling) are
``graphprune.planning.plan_masks``; this pass hands it the analysis and records the plan:
``ctx.requested`` holds the request, ``ctx.masks`` the applied masks and ``ctx.pinned`` the reason
for every layer where they differ.
"""

from __future__ import annotations

import torch.fx
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.context import CompileContext
from graphprune.masks import producer_sizes
from graphprune.planning import plan_masks


def mask_channels(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("mask_channels"):
        plan = plan_masks(ctx.analysis, ctx.statistics, ctx.groups, ctx.config,
                          sizes=producer_sizes(ctx.model),
                          unprunable={**ctx.layer_notes, **ctx.unprunable})
        ctx.candidates, ctx.requested, ctx.masks = plan.candidates, plan.requested, plan.masks
        ctx.pinned, ctx.residual_choice = plan.pinned, plan.residual_choice
        ctx.warnings.extend(plan.warnings)
    return PassResult(gm, False)


__all__ = ["mask_channels"]
