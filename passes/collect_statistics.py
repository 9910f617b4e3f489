"""Pass 2 — collect statistics: which BatchNorms are prunable, their γ, the dependency groups.

* Every BatchNorm the graph calls is classified: prunable (its rule is ``batchnorm``: an affine
  BatchNorm called once on one tensor) or not, with the reason.
* For each prunable BatchNorm: |γ| per channel and the count of |γ| < ``NEAR_ZERO`` (paper
  §3.1.2 counts these per layer to measure how sparse it has become).
* torch-pruning's dependency groups, split into structural and residual coupling
  (``graphprune.groups``), built on a small input.
"""

from __future__ import annotations

import numpy as np
import torch.fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.analysis import ChannelAnalysis
from graphprune.context import CompileContext, LayerStatistics
from graphprune.groups import DependencyGroups, build_groups
from graphprune.masks import BATCHNORMS, features, fused_batchnorm_problem, is_affine
from graphprune.specs import is_tensor, spec_of

# |γ| below this counts as "near zero" (paper §3.1.2 uses 0.01).
NEAR_ZERO = 0.01


def _unprunable_reason(gm: torch.fx.GraphModule, name: str, module: nn.Module,
                       calls: list[torch.fx.Node], leaves: dict[str, str]) -> str:
    if not is_affine(module):
        return "has no affine γ/β to prune"
    if not calls:
        owner = next((leaf for leaf in leaves if name.startswith(leaf + ".")), None)
        return f"inside {owner!r}, which is kept whole" if owner else "not called by the model"
    if len(calls) > 1:
        return f"called {len(calls)} times (shared weights)"
    return "called in a way the compiler does not slim (several or non-tensor inputs)"


def collect_statistics(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("collect_statistics"):
        modules = dict(gm.named_modules())
        bn_names = [n for n, m in modules.items() if isinstance(m, BATCHNORMS)]
        calls: dict[str, list[torch.fx.Node]] = {n: [] for n in bn_names}
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in calls:
                calls[node.target].append(node)
        # a BatchNorm subclass with its own forward is probed once on its input's shape
        fused = {n: fused_batchnorm_problem(modules[n], spec_of(calls[n][0].args[0]).shape)
                 for n in bn_names if len(calls[n]) == 1 and calls[n][0].args and
                 is_tensor(calls[n][0].args[0])}
        candidates = {n: np.ones(features(modules[n]), dtype=bool) for n in bn_names
                      if is_affine(modules[n]) and not fused.get(n)}
        analysis = ChannelAnalysis(gm, candidates)
        prunable = analysis.bn_nodes()           # graph order
        analysis.masks = {n: candidates[n] for n in prunable}
        ctx.analysis = analysis
        for name in bn_names:
            if name not in prunable:
                ctx.unprunable[name] = fused.get(name) or _unprunable_reason(
                    gm, name, modules[name], calls[name], ctx.leaves)
        for name in prunable:
            gamma = modules[name].weight.detach().abs().float().cpu().numpy()
            ctx.statistics[name] = LayerStatistics(name, gamma, int((gamma < NEAR_ZERO).sum()))

    if not ctx.config.dependency_groups:
        ctx.groups = DependencyGroups(error="not built (dependency_groups=False)")
        return PassResult(gm, False)
    with ctx.timed("dependency_groups"):
        leaf_modules = [m for leaf in ctx.leaves for m in ctx.model.get_submodule(leaf).modules()]
        ctx.groups = build_groups(ctx.model, ctx.example_inputs, ignore=leaf_modules)
        if ctx.groups.error:
            ctx.warnings.append(f"dependency groups unavailable ({ctx.groups.error}); "
                                "structural coupling is left to the channel analysis")
    return PassResult(gm, False)


__all__ = ["NEAR_ZERO", "collect_statistics"]
