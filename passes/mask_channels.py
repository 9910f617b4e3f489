"""Pass 3 — mask channels: from the request to the masks the compiler really applies.

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
   together — and so do residual-coupled ones when ``residual="couple"``; every requirement of
   the channel analysis is met (``ChannelAnalysis.solve``).

``ctx.requested`` holds the request, ``ctx.masks`` the applied masks and ``ctx.pinned`` the
reason for every layer where they differ.
"""

from __future__ import annotations

import numpy as np
import torch.fx
from torch.fx.passes.infra.pass_base import PassResult

from graphprune import channels as ch
from graphprune.context import CompileContext
from graphprune.errors import MaskError
from graphprune.groups import apply_coupling
from graphprune.masks import (as_mask, batchnorms, count_below, enforce_min_channels,
                              masks_from_ranking, matches, round_up_channels,
                              unknown_layer_error)


def structural_pins(analysis) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Channels of each prunable BatchNorm that stay whatever the masks ask, and why."""
    saved = analysis.masks
    analysis.masks = {n: np.zeros_like(m) for n, m in saved.items()}
    try:
        analysis.solve(structural_only=True)
        pins = analysis.masks
        reasons = {n: whys[0] for n, whys in analysis.reasons.items()}
    finally:
        analysis.masks = saved
        analysis.reasons = {}
    return pins, reasons


def _request(ctx: CompileContext, candidates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{BatchNorm: keep mask} as asked: every prunable layer, plus any other the user named."""
    cfg = ctx.config
    gammas = {n: s.gamma for n, s in ctx.statistics.items()}
    if cfg.masks is not None:
        sizes = {n: m.num_features for n, m in batchnorms(ctx.model).items()}
        request = {n: np.ones(len(g), dtype=bool) for n, g in gammas.items()}
        for name, value in cfg.masks.items():
            if name not in sizes:
                raise unknown_layer_error(name, list(gammas) or list(sizes))
            request[name] = as_mask(value, name, sizes[name])
        return request
    if cfg.threshold is not None:
        return masks_from_ranking(gammas, candidates,
                                  count_below(gammas, candidates, cfg.threshold))
    if cfg.prune_ratio is not None:
        total = int(sum(c.sum() for c in candidates.values()))
        return masks_from_ranking(gammas, candidates, int(round(cfg.prune_ratio * total)))
    return {n: np.ones(len(g), dtype=bool) for n, g in gammas.items()}


def mask_channels(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    with ctx.timed("mask_channels"):
        A = ctx.analysis
        cfg = ctx.config
        names = list(A.masks)
        pins, _ = structural_pins(A)
        excluded = {n for n in names if matches(n, cfg.exclude)}
        candidates = {n: np.zeros(len(pins[n]), dtype=bool) if n in excluded else ~pins[n]
                      for n in names}
        ctx.candidates = candidates
        ctx.requested = _request(ctx, candidates)

        applied = {n: ctx.requested[n].copy() for n in names}
        reasons: dict[str, str] = {}
        for n in excluded:
            if not applied[n].all():
                applied[n][:] = True
                reasons[n] = "excluded by the user"
        gammas = {n: s.gamma for n, s in ctx.statistics.items()}
        for n, why in enforce_min_channels(applied, gammas, cfg.min_channels).items():
            reasons.setdefault(n, why)

        coupling = ctx.groups.coupling(cfg.residual) if ctx.groups is not None else []
        if cfg.residual == "couple" and ctx.groups is not None and ctx.groups.error:
            raise MaskError(f"residual='couple' needs torch-pruning's dependency groups, which "
                            f"are unavailable: {ctx.groups.error}",
                            hint="use residual='reconstruct'")
        fixed = set(ctx.unprunable) | excluded
        A.masks = applied
        A.reasons = {}
        while True:    # rounding, coupling and requirements, until none changes anything
            rounded = round_up_channels(applied, gammas, cfg.round_to)
            for n, why in rounded.items():
                reasons.setdefault(n, why)
            for n, why in apply_coupling(applied, coupling, fixed).items():
                reasons.setdefault(n, why)
            rounds = A.solve()
            for n, whys in A.reasons.items():
                reasons.setdefault(n, whys[0])
            A.reasons = {}
            if rounds == 1 and not rounded:
                break

        unknown = [n for n in A.nodes if A.rules[n].name == "unknown"
                   and any(isinstance(a, torch.fx.Node) and ch.is_tensor(a)
                           for a in ch.flat_tensor_args(n))]
        if unknown:
            shown = ", ".join(ch.describe(n, A.module_of(n)) for n in unknown[:8])
            more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
            ctx.warnings.append(f"{len(unknown)} op(s) without a channel rule keep every channel "
                                f"flowing into them (pinned): {shown}{more}")
        ctx.masks = dict(applied)
        # BatchNorms the user named but the compiler cannot prune stay whole, and say so.
        for n, request in ctx.requested.items():
            if n not in applied:
                ctx.masks[n] = np.ones(len(request), dtype=bool)
                reasons[n] = f"not prunable: {ctx.unprunable.get(n, 'unknown layer')}"
        ctx.pinned = {n: reasons.get(n, "kept by the channel analysis")
                      for n, request in ctx.requested.items()
                      if not np.array_equal(ctx.masks[n], request)}
    return PassResult(gm, False)


__all__ = ["mask_channels", "structural_pins"]
