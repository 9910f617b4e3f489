"""Mask planning: from the request to the masks the compiler really applies (run by the
``mask_channels`` pass, and by ``graphprune.search.MaskPlanner`` for every candidate prune).

1. Structural pins: channels no mask may remove, whatever is asked — those reaching the model's
   outputs (the detection head's output layers), those an op the compiler does not understand
   consumes, those a kept-whole module uses other than through its own convolutions.  Found by
   solving the channel requirements with every mask empty.
2. The request: explicit masks; a global threshold δ on |γ| (Algorithm 2: channels with
   |γ| < δ go); or a global prune ratio, the same ranking cut at a count.  The ranking is |γ|,
   then layer order, then channel index, over the candidate channels (not pinned, not
   excluded), so ties (an untrained model has every γ = 1) are broken deterministically.
3. Safety rails and coupling, repeated until nothing changes: ``exclude``d layers keep all;
   ``min_channels`` per layer; ``round_to`` (kept counts rounded up to a multiple, the extra
   channels taken by |γ|); structurally coupled channels (torch-pruning) keep or go
   together — and so do the channels tied by residual adds (``residual_sets``: every
   BatchNorm feeding a residual group, through chunk pieces too) when ``residual="couple"``,
   or in the groups ``residual="auto"`` finds not worth reconstructing (``choose_coupling``);
   every requirement of the channel analysis is met (``ChannelAnalysis.solve``).

``plan_masks`` returns the request, the applied masks and the reason for every layer where they
differ (``MaskPlan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch.fx

from . import costs, specs
from .analysis import PRODUCER_RULES, ChannelAnalysis
from .context import CompileConfig, LayerStatistics, ranked_names
from .groups import CouplingSet, apply_coupling
from .masks import (as_mask, count_below, enforce_min_channels, masks_from_ranking, matches,
                    round_up_channels, unknown_layer_error)
from .residuals import plan_orders, residual_sets
from .tracing import flat_tensor_args
from .widths import is_width_table, rounding_name


# why a convolution or linear layer a mask names is not pruned by that mask
NOT_A_PRODUCER = ("a convolution or linear layer takes a mask of its own only when it is called "
                  "once on one tensor, with groups=1 (a linear layer on [N, C]), and its output "
                  "does not go straight into a BatchNorm or GroupNorm (then mask that norm layer)")


@dataclass
class MaskPlan:
    """What ``plan_masks`` decides: every map is keyed by producer name."""

    candidates: dict[str, np.ndarray]        # channels a ranking may remove (not pinned/excluded)
    requested: dict[str, np.ndarray]         # keep masks as asked
    masks: dict[str, np.ndarray]             # keep masks as applied
    pinned: dict[str, str]                   # where they differ from the request, and why
    residual_choice: dict[str, dict] = field(default_factory=dict)   # residual="auto": per set
    warnings: list[str] = field(default_factory=list)


def structural_pins(analysis: ChannelAnalysis) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Channels of each prunable layer that stay whatever the masks ask, and why."""
    found = analysis.solve_for({n: np.zeros_like(m) for n, m in analysis.masks.items()},
                               structural_only=True)
    return found.masks, {n: whys[0] for n, whys in found.reasons.items()}


def request(config: CompileConfig, gammas: dict[str, np.ndarray],
            candidates: dict[str, np.ndarray], sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """{producer: keep mask} as asked: every prunable layer, plus any other the user named
    (``sizes``: channels of every producer of the model, prunable or not).  A threshold or
    ratio ranks the ``candidates`` channels by ``gammas``."""
    if config.masks is not None:
        asked = {n: np.ones(len(g), dtype=bool) for n, g in gammas.items()}
        for name, value in config.masks.items():
            if name not in sizes:
                raise unknown_layer_error(name, list(gammas) or list(sizes))
            asked[name] = as_mask(value, name, sizes[name])
        return asked
    if config.threshold is not None:
        return masks_from_ranking(gammas, candidates,
                                  count_below(gammas, candidates, config.threshold))
    if config.prune_ratio is not None:
        total = int(sum(c.sum() for c in candidates.values()))
        return masks_from_ranking(gammas, candidates, int(round(config.prune_ratio * total)))
    return {n: np.ones(len(g), dtype=bool) for n, g in gammas.items()}


def settle(A: ChannelAnalysis, applied: dict[str, np.ndarray], coupling: list[CouplingSet],
           fixed: set[str], gammas: dict[str, np.ndarray], round_to: Any,
           reasons: dict[str, str]) -> None:
    """Rounding, coupling and the channel requirements, until none changes anything; grows
    ``applied`` in place (the analysis adopts it) and records why in ``reasons``.
    ``round_to``: a multiple, or a ``graphprune.widths.WidthTable`` (runtime-aware widths)."""
    A.adopt(applied)
    if is_width_table(round_to):
        rounding, label = round_to.rounder(A), f"round_to={rounding_name(round_to)}"
    else:
        rounding, label = round_to, None
    while True:
        rounded = round_up_channels(applied, gammas, rounding, label)
        coupled = apply_coupling(applied, coupling, fixed)
        for n, why in (*rounded.items(), *coupled.items()):
            reasons.setdefault(n, why)
        rounds = A.solve()
        for n, whys in A.reasons.items():
            reasons.setdefault(n, whys[0])
        A.reasons = {}
        # coupling can leave a rounded width unrounded or a requirement unmet: stop only once a
        # whole round has changed nothing
        if rounds == 1 and not rounded and not coupled:
            break


def choose_coupling(A: ChannelAnalysis, residual: list[CouplingSet], settled: dict[str, np.ndarray],
                    fixed: set[str]) -> tuple[list[CouplingSet], dict[str, dict]]:
    """``residual="auto"``: the residual sets worth coupling, given the reconstructed masks.

    For each set of BatchNorms tied by residual adds, reconstructing it saves the FLOPs its
    coupled masks would add (``graphprune.costs``) and costs the extra nodes the rebuilt adds
    take (``AddPlan.nodes`` minus one plain add each), priced at ``costs.NODE_FLOPS``.  A set is
    coupled when the nodes cost more than the FLOPs saved.  Returns the sets to couple and, per
    set (keyed by its first BatchNorm), the numbers the choice was made on."""
    layers = costs.layer_costs(A, settled)
    groups = plan_orders(A)
    _, base_flops = costs.estimate(A, settled, layers)
    extra: dict[str, int] = {}             # BatchNorm -> extra nodes of its residual group
    for adds, sources in groups:
        nodes = 0
        for add in adds:
            plan = A.plans.get(add)
            if plan is not None:
                nodes += plan.nodes(A.physical(add.args[0]), A.physical(add.args[1])) - 1
        for src in sources:
            if A.rules[src].name in PRODUCER_RULES and A.is_prunable_node(src):
                extra[A.name_of(src)] = max(extra.get(A.name_of(src), 0), nodes)
    chosen, report = [], {}
    for cs in residual:
        nodes = max((extra.get(n, 0) for n in cs.names), default=0)
        trial = {n: m.copy() for n, m in settled.items()}
        apply_coupling(trial, [cs], fixed)
        found = A.solve_for(trial)
        saved = costs.estimate(A, found.masks, layers, found.lives)[1] - base_flops
        couple = nodes > 0 and saved < nodes * costs.NODE_FLOPS
        layers_of = [n for n in cs.names if n in settled]
        report[(layers_of or cs.names)[0]] = {"layers": layers_of, "extra_nodes": nodes,
                                              "flops_saved": saved, "coupled": couple}
        if couple:
            chosen.append(cs)
    return chosen, report


def plan_masks(analysis: ChannelAnalysis, statistics: dict[str, LayerStatistics], groups,
               config: CompileConfig, *, sizes: dict[str, int],
               unprunable: dict[str, str]) -> MaskPlan:
    """The masks the compiler applies for ``config``'s request (see the module docstring).

    ``analysis``: the ``ChannelAnalysis`` of the traced model, left holding the applied masks
    (the passes after this one read them); ``statistics``: the importance of each prunable
    layer's channels; ``groups``: torch-pruning's ``DependencyGroups`` (or None); ``sizes``:
    channels of every producer of the model; ``unprunable``: the layers that cannot be pruned,
    and why."""
    A = analysis
    names = list(A.masks)
    pins, _ = structural_pins(A)
    # producers inside the sealed blocks of kept-whole modules (graphprune.inner): ranked
    # with the rest; their own compile applies their masks (here: as asked, min_channels kept)
    inner = [n for n in statistics if n not in A.masks]
    excluded = {n for n in names + inner if matches(n, config.exclude)}
    ranked = set(ranked_names(statistics))
    candidates = {n: np.zeros(len(pins[n]), dtype=bool) if n in excluded or n not in ranked
                  else ~pins[n] for n in names}
    candidates.update({n: np.full(statistics[n].channels, n in ranked and n not in excluded)
                       for n in inner})
    gammas = {n: s.gamma for n, s in statistics.items()}
    requested = request(config, gammas, candidates, sizes)

    applied = {n: requested[n].copy() for n in names}
    inside = {n: requested[n].copy() for n in inner if n in requested}
    reasons: dict[str, str] = {}
    both = {**applied, **inside}            # the same arrays: the rails apply to both alike
    for n in excluded:
        if n in both and not both[n].all():
            both[n][:] = True
            reasons[n] = "excluded by the user"
    for n, why in enforce_min_channels(both, gammas, config.min_channels).items():
        reasons.setdefault(n, why)

    coupling = list(groups.structural) if groups is not None else []
    residual = residual_sets(A) if config.residual != "reconstruct" else []
    fixed = set(unprunable) | excluded
    residual_choice: dict[str, dict] = {}
    if config.residual == "couple":
        coupling += residual
    elif config.residual == "auto" and residual:
        asked = {n: m.copy() for n, m in applied.items()}
        settle(A, applied, coupling, fixed, gammas, config.round_to, {})
        chosen, residual_choice = choose_coupling(A, residual, applied, fixed)
        applied = asked
        coupling += chosen
    settle(A, applied, coupling, fixed, gammas, config.round_to, reasons)

    warnings: list[str] = []
    unknown = [n for n in A.nodes if A.rules[n].name == "unknown"
               and any(isinstance(a, torch.fx.Node) and specs.is_tensor(a)
                       for a in flat_tensor_args(n))]
    if unknown:
        shown = ", ".join(specs.describe(n, A.module_of(n)) for n in unknown[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        warnings.append(f"{len(unknown)} op(s) without a channel rule keep every channel "
                        f"flowing into them (pinned): {shown}{more}")
    masks = {**applied, **inside}
    # Layers the user named but the compiler cannot prune stay whole, and say so.
    for n, asked in requested.items():
        if n not in masks:
            masks[n] = np.ones(len(asked), dtype=bool)
            reasons[n] = f"not prunable: {unprunable.get(n, NOT_A_PRODUCER)}"
    pinned = {n: reasons.get(n, "kept by the channel analysis")
              for n, asked in requested.items() if not np.array_equal(masks[n], asked)}
    return MaskPlan(candidates, requested, masks, pinned, residual_choice, warnings)


__all__ = ["MaskPlan", "choose_coupling", "plan_masks", "request", "settle", "structural_pins"]
