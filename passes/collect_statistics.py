"""Pass 2 — collect statistics: which layers are prunable, their importance, the dependency
groups.

* Every norm layer the graph calls is classified: prunable or not, with the reason.  Prunable
  are affine BatchNorms called once on one tensor (rule ``batchnorm``), affine GroupNorms (rule
  ``groupnorm``, whole groups) and LayerNorms over the channel dimension (rule ``layernorm``:
  ``nn.LayerNorm`` on ``[N, C]``, or a subclass whose own forward normalises dim 1 of its
  input, such as timm's LayerNorm2d — probed once on a throw-away copy).
* Convolutions (``groups=1``) and linear layers whose output does not go straight into a
  prunable BatchNorm or GroupNorm are producers too: a mask may name them (rule ``conv``).
* So is a batch norm written as a function call (``F.batch_norm`` / ``torch.batch_norm``) on
  a module's own weight, bias and running statistics: a BatchNorm named by its weight tensor
  (``channels.functional_batchnorm``).
* Per prunable layer, the importance of each channel and the count below ``NEAR_ZERO`` (paper
  §3.1.2 counts the near-zero γ per layer to measure how sparse it has become).  A BatchNorm's
  importance is |γ|.  For the other producers — whose scale is not comparable across layers — it
  is the layer-relative magnitude: |γ| of a GroupNorm or LayerNorm, the L2 norm of a
  convolution's or linear layer's output filter (its weights and bias), each divided by the mean
  over the layer's channels, so a layer's average channel scores 1.
* The sealed blocks of each module kept whole because it cannot be traced (``graphprune.inner``:
  a submodule it calls once on one tensor, returning one tensor), with the producers inside
  them: they are ranked with the graph's own (their statistics come from the block's own
  analysis), and a mask on one is realised by compiling its block on its own.
* torch-pruning's dependency groups, split into structural and residual coupling
  (``graphprune.groups``), built on a small input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.infra.pass_base import PassResult

from graphprune.analysis import ChannelAnalysis
from graphprune.channels import functional_batchnorm, get_attribute
from graphprune.context import CompileContext, LayerStatistics
from graphprune.groups import DependencyGroups, build_groups
from graphprune.inner import find_blocks
from graphprune.masks import (BATCHNORMS, CONVS, GROUPNORMS, LAYERNORMS, NORMS, features,
                              fused_batchnorm_problem, is_affine, kind_of, layernorm_problem,
                              tensor_norms)
from graphprune.specs import INNER_CALLS, is_tensor, spec_of

# |γ| below this counts as "near zero" (paper §3.1.2 uses 0.01).
NEAR_ZERO = 0.01


def _unprunable_reason(gm: torch.fx.GraphModule, name: str, module: nn.Module,
                       calls: list[torch.fx.Node], leaves: dict[str, str]) -> str:
    if not is_affine(module):
        return "has no affine γ/β to prune"
    if not calls:
        owner = next((leaf for leaf in leaves if name.startswith(leaf + ".")), None)
        if owner:
            return f"inside {owner!r}, which is kept whole"
        if isinstance(module, CONVS + (nn.Linear,)) and \
                not type(module).forward.__module__.startswith("torch."):
            return (f"its own forward ({type(module).__name__}) was traced through as function "
                    "calls, so the graph holds no call of it as a layer")
        return "not called by the model"
    if len(calls) > 1:
        return f"called {len(calls)} times (shared weights)"
    if isinstance(module, CONVS) and module.groups != 1:
        return f"a grouped convolution (groups={module.groups}): its rows are pruned only " \
               "through the layers around it"
    if isinstance(module, nn.Linear):
        return "a linear layer whose input is not [N, C] (its features are not dim 1)"
    return "called in a way the compiler does not slim (several or non-tensor inputs)"


def _layer_notes(gm: torch.fx.GraphModule, modules: dict[str, nn.Module],
                 calls: dict[str, list[torch.fx.Node]], feeds: dict[str, str],
                 prunable: dict[str, torch.fx.Node], leaves: dict[str, str]) -> dict[str, str]:
    """Why each convolution, linear layer and functional batch norm weight that is not a
    prunable producer is not one (what a mask naming it is answered with)."""
    notes = {}
    for name, module in modules.items():
        if name in prunable or not isinstance(module, CONVS + (nn.Linear,)):
            continue
        notes[name] = (f"its output goes straight into {feeds[name]!r}, which takes the mask "
                       "(mask that norm layer)") if name in feeds else \
            _unprunable_reason(gm, name, module, calls.get(name, []), leaves)
    for name in tensor_norms(gm):
        if name not in prunable:
            notes[name] = ("no batch norm call of the graph uses it as its weight alone (one "
                           "call, its bias the tensor named as its pair, both read from the "
                           "model)")
    return notes


def importance(module: nn.Module) -> np.ndarray:
    """The importance of each output channel (see the module docstring)."""
    if isinstance(module, BATCHNORMS):
        return module.weight.detach().abs().float().cpu().numpy()
    weight = module.weight.detach().float()
    if isinstance(module, GROUPNORMS + LAYERNORMS):
        raw = weight.abs()
    else:
        rows = weight.reshape(weight.shape[0], -1)
        if module.bias is not None:
            rows = torch.cat([rows, module.bias.detach().float()[:, None]], 1)
        raw = rows.norm(dim=1)
    raw = raw.cpu().numpy()
    mean = float(raw.mean()) if raw.size else 0.0
    return raw / mean if mean > 0 else np.ones_like(raw)


def _single_tensor_call(calls: list[torch.fx.Node]) -> torch.fx.Node | None:
    if len(calls) == 1 and len(calls[0].args) == 1 and is_tensor(calls[0].args[0]):
        return calls[0]
    return None


def _norm_problem(module: nn.Module, call: torch.fx.Node | None) -> str | None:
    """Why a norm layer called as ``call`` cannot take a mask (beyond the generic reasons), or
    None: a BatchNorm or GroupNorm subclass whose own forward does not zero a zeroed channel, a
    LayerNorm that does not normalise the channel dimension of its input."""
    if call is None:
        return None
    shape = spec_of(call.args[0]).shape
    if isinstance(module, BATCHNORMS + GROUPNORMS):
        return fused_batchnorm_problem(module, shape)
    if isinstance(module, LAYERNORMS):
        return layernorm_problem(module, shape)
    return None


def collect_statistics(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("collect_statistics"):
        modules = dict(gm.named_modules())
        norm_names = [n for n, m in modules.items() if isinstance(m, NORMS)]
        layer_names = [n for n, m in modules.items() if isinstance(m, CONVS + (nn.Linear,))]
        calls: dict[str, list[torch.fx.Node]] = {n: [] for n in norm_names + layer_names}
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in calls:
                calls[node.target].append(node)
        # a norm layer with its own forward is probed once on its input's shape
        problems = {n: _norm_problem(modules[n], _single_tensor_call(calls[n]))
                    for n in norm_names if is_affine(modules[n])}
        candidates = {n: np.ones(features(modules[n]), dtype=bool) for n in norm_names
                      if is_affine(modules[n]) and not problems.get(n)}
        # a batch norm written as a function call on a module's tensors, named by its weight
        functional = {}
        for node in gm.graph.nodes:
            bound = functional_batchnorm(node)
            if bound is not None:
                weight = get_attribute(gm, bound["weight"].target)
                functional[bound["weight"].target] = weight
                candidates[bound["weight"].target] = np.ones(len(weight), dtype=bool)

        def norm_after(user: torch.fx.Node) -> str | None:
            if user.op == "call_module":
                return user.target if user.target in candidates and \
                    isinstance(modules[user.target], BATCHNORMS + GROUPNORMS) else None
            bound = functional_batchnorm(user)
            return bound["weight"].target if bound is not None else None

        # a convolution straight into a BatchNorm or GroupNorm is pruned by that norm's mask
        feeds: dict[str, str] = {}
        for name in layer_names:
            users = list(calls[name][0].users) if len(calls[name]) == 1 else []
            norm = norm_after(users[0]) if len(users) == 1 else None
            if norm is None:
                candidates[name] = np.ones(features(modules[name]), dtype=bool)
            else:
                feeds[name] = norm
        analysis = ChannelAnalysis(gm, candidates)
        prunable = analysis.mask_nodes()         # graph order
        analysis.masks = {n: candidates[n] for n in prunable}
        ctx.analysis = analysis
        for name in norm_names:
            if name not in prunable:
                ctx.unprunable[name] = problems.get(name) or _unprunable_reason(
                    gm, name, modules[name], calls[name], ctx.leaves)
        # (the model's own modules: the traced graph holds no module it traced through)
        ctx.layer_notes = _layer_notes(gm, dict(ctx.model.named_modules()), calls, feeds,
                                       prunable, ctx.leaves)
        # the sealed blocks of the modules kept whole because they cannot be traced (a module
        # kept whole on request stays whole inside), and the producers inside them
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in ctx.leaves and \
                    node.target not in ctx.config.leaves and node.meta.get(INNER_CALLS) and \
                    ctx.analyze_fn is not None:
                for block in find_blocks(node.target, gm.get_submodule(node.target),
                                         node.meta[INNER_CALLS], ctx.analyze_fn):
                    ctx.inner[block.name] = block
                    for inner in block.producers:
                        ctx.unprunable.pop(block.full(inner), None)
                        ctx.layer_notes.pop(block.full(inner), None)
                        ctx.statistics[block.full(inner)] = LayerStatistics(
                            block.full(inner), block.importance[inner], block.near_zero[inner],
                            block.kinds[inner])
        for name in prunable:
            if name in functional:
                score = functional[name].detach().abs().float().cpu().numpy()
                kind = "batchnorm"
            else:
                score, kind = importance(modules[name]), kind_of(modules[name])
            ctx.statistics[name] = LayerStatistics(name, score, int((score < NEAR_ZERO).sum()),
                                                   kind)

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
