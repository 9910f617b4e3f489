"""Pass 3 — mask channels: from the request to the masks the compiler really applies.

The decisions (structural pins, the request, safety rails, coupling) are
``graphprune.planning.plan_masks``; this pass hands it the analysis and records the plan:
``ctx.requested`` holds the request, ``ctx.masks`` the applied masks and ``ctx.pinned`` the reason
for every layer where they differ.  A mask naming a producer inside a sealed block of a module kept
whole (``graphprune.inner``) is handed to the analysis, per block: the block's own compile, when
the leaf is emitted, applies it (``slim_layers`` records what it applied).
"""

from __future__ import annotations

import torch.fx
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.context import CompileContext
from graphprune.masks import producer_sizes
from graphprune.planning import plan_masks


def inner_options(ctx: CompileContext) -> dict:
    """The compile options a sealed block's own compile inherits."""
    c = ctx.config
    return dict(residual=c.residual, min_channels=c.min_channels, round_to=c.round_to,
                verify=c.verify, atol=c.atol, rtol=c.rtol,
                dependency_groups=c.dependency_groups)


def mask_channels(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("mask_channels"):
        plan = plan_masks(ctx.analysis, ctx.statistics, ctx.groups, ctx.config,
                          sizes=producer_sizes(ctx.model),
                          unprunable={**ctx.layer_notes, **ctx.unprunable})
        ctx.candidates, ctx.requested, ctx.masks = plan.candidates, plan.requested, plan.masks
        ctx.pinned, ctx.residual_choice = plan.pinned, plan.residual_choice
        ctx.warnings.extend(plan.warnings)
        for block in ctx.inner.values():        # what plan_masks left for each block
            asked = {inner: ctx.masks[block.full(inner)] for inner in block.producers
                     if block.full(inner) in ctx.masks}
            if any(not m.all() for m in asked.values()):
                ctx.analysis.inner[block.name] = (block, asked)
        ctx.analysis.inner_options = inner_options(ctx)
        ctx.analysis.inner_compile = ctx.compile_fn
    return PassResult(gm, False)


__all__ = ["mask_channels"]
