"""Choosing how far to prune: the LFA-guided threshold search (and FLOPs / params targets).

The candidate prunes are the global |γ| ranking of the compiler (Algorithm 2 at single-channel
resolution): prune the k least important candidate channels, k = 0 … N.  For each probe the
:class:`MaskPlanner` computes the masks ``graphprune.compile`` would really apply — pins,
structural and residual coupling, ``min_channels``, ``exclude`` — by re-running the mask pass on
one trace, and estimates the parameters and FLOPs those masks leave.  The probe's LFA⁺ is
measured on the zero-masked model, which the slim model equals exactly (the invariant), so no
probe compiles anything.

``search`` bisects k for the largest prune whose LFA⁺ ≤ target: one probe at k = 1 (if even
that loses too much, it says so), one at k = N, then ⌈log₂ N⌉ bisection steps at most.  Probes
whose applied masks equal an earlier probe's reuse its measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import fold as bias_folding
from .attention import (LFA, LFA_CRITERIA, AttentionReader, CalibrationSet, FeatureAttention,
                        feature_attention, lfa)
from .context import CompileConfig, as_names, ranked_names
from .costs import LayerCost, estimate, layer_costs
from .errors import GraphpruneError, GraphpruneWarning
from .masks import global_order, masks_from_ranking, producer_sizes, zero_mask
from .pipeline import compile as gp_compile
from .pipeline import compile_folded, prepare_analysis
from .planning import MaskPlan, plan_masks
from .specs import LEAF_USAGE
from .stats import count_flops, count_params


@dataclass
class Plan:
    """One candidate prune: what compile would apply, and what it would leave."""

    count: int                               # candidate channels asked to go
    threshold: float                         # δ: the |γ| just above the last pruned channel
    requested: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]             # as compile applies them
    pinned: dict[str, str]                   # where they differ from the request, and why
    params: int                              # estimated parameters after pruning
    flops: int                               # estimated FLOPs after pruning

    @property
    def channels_kept(self) -> int:
        return int(sum(m.sum() for m in self.masks.values()))

    def key(self) -> bytes:
        return b"".join(np.packbits(m).tobytes() for m in self.masks.values())


class MaskPlanner:
    """Traces and analyses the model once; then plans any number of prunes cheaply."""

    def __init__(self, model: nn.Module, example_inputs: Any, *, residual: str = "reconstruct",
                 min_channels: int = 1, round_to: Any = 1, exclude: Iterable[str] = (),
                 leaves: Iterable[str] = ()):
        self.config = CompileConfig(residual=residual, min_channels=min_channels,
                                    round_to=round_to,
                                    exclude=as_names(exclude), leaves=as_names(leaves), verify=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GraphpruneWarning)
            self.gm, self.ctx = prepare_analysis(model, example_inputs, self.config)
        self.inputs, work = self.ctx.example_inputs, self.ctx.model
        self.sizes = producer_sizes(work)
        self.last: MaskPlan | None = None
        # the sealed blocks inside kept-whole modules (graphprune.inner), each planned and
        # costed by a planner of its own, as compile compiles each on its own
        self.blocks = {name: (block, MaskPlanner(work.get_submodule(name), (block.example,),
                                                 residual=residual, min_channels=min_channels,
                                                 round_to=round_to))
                       for name, block in self.ctx.inner.items()}
        self.inner_saved = (0, 0)             # params, FLOPs the blocks' last plans remove
        # the layers the global ranking orders (a BatchNorm model's BatchNorms; every producer
        # of a model without BatchNorm), by their importance
        self.gammas = {n: self.ctx.statistics[n].gamma for n in ranked_names(self.ctx.statistics)}
        if not self.gammas:
            raise GraphpruneError("the model has no prunable layer: nothing to prune",
                                  hint="graphprune prunes the output channels of BatchNorm, "
                                       "GroupNorm, LayerNorm, convolution and linear layers")
        self.params_before = count_params(work)
        self.flops_before = count_flops(work, self.inputs)
        self._layer_costs()
        self.candidates = {n: c.copy() for n, c in self._plan({}).candidates.items()}
        self.ranked, self.names = global_order(self.gammas, self.candidates)

    @property
    def size(self) -> int:
        """N: the candidate channels (prunable, not pinned, not excluded)."""
        return len(self.ranked)

    # -- masks -------------------------------------------------------------------------------
    def _plan(self, masks: dict[str, np.ndarray]) -> MaskPlan:
        """The masks compile would apply for the keep-masks ``masks`` (layers not named keep
        every channel); the analysis is left holding them, for the estimate."""
        config = dataclasses.replace(self.config, masks=masks)
        self.last = plan_masks(self.ctx.analysis, self.ctx.statistics, self.ctx.groups, config,
                               sizes=self.sizes,
                               unprunable={**self.ctx.layer_notes, **self.ctx.unprunable})
        saved_params = saved_flops = 0
        for name, (block, sub) in self.blocks.items():
            inside = {n: self.last.masks[block.full(n)] for n in block.producers
                      if block.full(n) in self.last.masks}
            if all(m.all() for m in inside.values()):
                continue
            found = sub._plan(inside)          # what the block's own compile will apply
            for n in inside:
                self.last.masks[block.full(n)] = found.masks[n]
                if n in found.pinned:
                    self.last.pinned[block.full(n)] = f"{found.pinned[n]} (inside {name!r})"
            params, flops = sub._estimate()
            saved_params += sub.params_before - params
            saved_flops += sub.flops_before - flops
        self.inner_saved = (saved_params, saved_flops)
        return self.last

    def _masks(self, count: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        plan = self._plan(masks_from_ranking(self.gammas, self.candidates, count) if count
                          else {})
        # the ranked layers, and any other the planning pruned (none: an unranked layer is
        # asked to keep everything, and masks only grow); a layer left out keeps every channel
        return tuple({n: m.copy() for n, m in masks.items() if n in self.gammas or not m.all()}
                     for masks in (plan.requested, plan.masks))

    def pinned(self) -> dict[str, str]:
        return dict(self.last.pinned) if self.last is not None else {}

    def threshold(self, count: int) -> float:
        """δ of a prune of ``count`` channels: |γ| of the first channel kept (∞ for all)."""
        if count >= self.size:
            return math.inf
        layer, channel = self.ranked[count]
        return float(self.gammas[self.names[layer]][channel])

    def plan(self, count: int) -> Plan:
        count = int(min(max(count, 0), self.size))
        requested, masks = self._masks(count)
        params, flops = self._estimate()
        return Plan(count, self.threshold(count), requested, masks, self.pinned(), params,
                    flops)

    def cost(self, requested: dict[str, np.ndarray]) -> tuple[int, int]:
        """(params, FLOPs) left by the keep-masks ``requested`` (layers not named keep every
        channel), as compile would apply them."""
        self._plan({n: np.asarray(m, dtype=bool) for n, m in requested.items()
                    if n in self.gammas})
        return self._estimate()

    # -- cost estimate -----------------------------------------------------------------------
    def _layer_costs(self) -> None:
        """Per Conv/Linear/BatchNorm node of the trace, its full parameter and FLOP count; what
        the estimate scales.  Everything else (kept-whole modules, attention) stays fixed."""
        A = self.ctx.analysis
        self.layers = layer_costs(A, self.gammas)
        # the Conv/Linear layers inside kept-whole modules lose the pruned input columns too
        inner = []
        for node in A.nodes:
            usage = node.meta.get(LEAF_USAGE)
            if usage is None or A.call_count(node) != 1:
                continue
            leaf = A.module_of(node)
            # a layer inside a sealed block is costed by the block's planner, with its input
            # whole: its input columns are not credited here (an estimate that errs on the
            # side of more FLOPs left)
            sealed = [b.path for b, _ in self.blocks.values() if b.leaf == node.target]
            for source, names in usage.consumers.items():
                if usage.others.get(source):
                    continue
                for name in names:
                    if any(name == p or name.startswith(p + ".") for p in sealed):
                        continue
                    inner.append((node, source, leaf.get_submodule(name)))
        outputs = {}
        hooks = [m.register_forward_hook(
            lambda mod, _i, out: outputs.__setitem__(id(mod), out.numel()))
            for _, _, m in inner]
        try:
            with torch.no_grad():
                self.ctx.model(*self.inputs)
        finally:
            for h in hooks:
                h.remove()
        for node, source, m in inner:
            if id(m) not in outputs:
                continue
            weight = m.weight.numel()
            flops = 2 * outputs[id(m)] * (weight // m.weight.shape[0])
            self.layers.append(LayerCost("inner", source, m, weight, 0, flops))
        self.fixed_params = self.params_before - sum(c.params + c.bias for c in self.layers)
        self.fixed_flops = self.flops_before - sum(c.flops for c in self.layers)

    def _estimate(self) -> tuple[int, int]:
        A = self.ctx.analysis
        A.compute_lives()
        params, flops = estimate(A, self.last.masks, self.layers)
        return (self.fixed_params + params - self.inner_saved[0],
                self.fixed_flops + flops - self.inner_saved[1])


def _small_inputs(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Bias folding finds its constants with circular padding, where they do not depend on the
    image size: a 64-px copy of an image input is enough, and much faster."""
    device = next((p.device for p in model.parameters()), None)
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) and device is not None else t
                   for t in inputs)
    x = inputs[0] if len(inputs) == 1 else None
    if not (isinstance(x, torch.Tensor) and x.ndim == 4 and x.shape[-1] > 64 and
            x.shape[-2] > 64):
        return inputs
    small = (torch.rand(1, x.shape[1], 64, 64, dtype=x.dtype,
                        generator=torch.Generator().manual_seed(0)).to(x.device),)
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(*small)
            model.train(was)
    except Exception:                    # a model tied to its input size: fold at full size
        return inputs
    return small


# -- the search ------------------------------------------------------------------------------
@dataclass
class Probe:
    count: int
    threshold: float
    prune_ratio: float                       # share of the prunable channels removed
    params: int
    flops: int
    lfa_plus: float | None
    lfa_signed: float | None
    per_level: list[float | None] | None
    reused: bool = False
    lfa_two_sided: float | None = None
    lfa_cut: float | None = None             # what the search compared: LFA⁺ or LFA±

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count,
                "threshold": None if math.isinf(self.threshold) else self.threshold,
                "prune_ratio": self.prune_ratio, "params": self.params, "flops": self.flops,
                "lfa_plus": self.lfa_plus, "lfa_signed": self.lfa_signed,
                "lfa_two_sided": self.lfa_two_sided, "lfa_cut": self.lfa_cut,
                "lfa_per_level": self.per_level, "reused": self.reused}


@dataclass
class SearchResult:
    goal: str                                # "lfa", "flops" or "params"
    target: float
    plan: Plan
    probes: list[Probe]
    evaluations: int                         # LFA measurements made (the sparse FA excluded)
    fa_sparse: FeatureAttention | None
    lfa: LFA | None
    channels_total: int                      # channels of the ranked layers
    candidates: int                          # N
    feasible: bool = True
    notes: list[str] = field(default_factory=list)


class Searcher:
    """Measures probes: plans masks, zero-masks the model, reads LFA; caches what repeats."""

    def __init__(self, model: nn.Module, planner: MaskPlanner, calibration: CalibrationSet,
                 reader: AttentionReader | None = None, device: torch.device | None = None,
                 on_probe: Callable[[Probe], Any] | None = None, fold: bool = False,
                 keep_maps: int = 0, criterion: str = "plus"):
        self.model, self.planner, self.calibration = model, planner, calibration
        if criterion not in LFA_CRITERIA:
            raise GraphpruneError(f"the LFA criterion must be one of {', '.join(LFA_CRITERIA)}, "
                                  f"got {criterion!r}")
        self.criterion = criterion
        self.fold = fold
        self.fold_inputs = _small_inputs(model, planner.inputs) if fold else None
        self.reader = reader or AttentionReader()
        self.device = device
        self.on_probe = on_probe
        self.channels_total = sum(len(g) for g in planner.gammas.values())
        self.fa_sparse = None
        if calibration is not None:          # None: FLOPs/params goals without data, no LFA
            self.fa_sparse = feature_attention(model, calibration, reader=self.reader,
                                               device=device, keep_maps=keep_maps)
            lfa(self.fa_sparse, self.fa_sparse)      # fails early if FA = 0 on every level
        self.probes: list[Probe] = []
        self.evaluations = 0
        self._measured: dict[bytes, LFA] = {}
        self._plans: dict[int, Plan] = {}

    def plan(self, count: int) -> Plan:
        if count not in self._plans:
            self._plans[count] = self.planner.plan(count)
        return self._plans[count]

    def measure(self, count: int, with_lfa: bool = True) -> Probe:
        plan = self.plan(count)
        key = plan.key()
        reused = key in self._measured
        loss = self._measured.get(key)
        if loss is None and with_lfa and self.calibration is not None:
            pruned = self.pruned_model(plan)
            loss = lfa(feature_attention(pruned, self.calibration, reader=self.reader,
                                         device=self.device), self.fa_sparse)
            self._measured[key] = loss
            self.evaluations += 1
        probe = Probe(plan.count, plan.threshold,
                      1 - plan.channels_kept / max(self.channels_total, 1),
                      plan.params, plan.flops,
                      loss.plus if loss else None, loss.signed if loss else None,
                      loss.per_level if loss else None, reused and loss is not None,
                      loss.two_sided if loss else None,
                      loss.value(self.criterion) if loss else None)
        self.probes.append(probe)
        if self.on_probe is not None:
            self.on_probe(probe)
        return probe

    def pruned_model(self, plan: Plan) -> nn.Module:
        """What the compiled model will equal: zero-masked, or folded (``fold``)."""
        if self.fold:
            return bias_folding.fold_pruned_bias(self.model, plan.masks, self.fold_inputs)[0]
        with torch.no_grad():
            return zero_mask(self.model, {n: torch.as_tensor(m) for n, m in plan.masks.items()})

    def lfa_of(self, count: int) -> LFA | None:
        return self._measured.get(self.plan(count).key())


def search(searcher: Searcher, *, lfa_target: float | None = None,
           flops_target: float | None = None, params_target: float | None = None
           ) -> SearchResult:
    """The largest prune with LFA⁺ (or LFA±, the searcher's criterion) ≤ ``lfa_target``; or the
    smallest that removes at least
    ``flops_target`` (``params_target``) of the FLOPs (parameters)."""
    goals = [(k, v) for k, v in (("lfa", lfa_target), ("flops", flops_target),
                                 ("params", params_target)) if v is not None]
    if len(goals) != 1:
        raise GraphpruneError("give exactly one of lfa_target, flops_target and params_target")
    goal, target = goals[0]
    planner, n = searcher.planner, searcher.planner.size
    notes: list[str] = []
    if n == 0:
        raise GraphpruneError("every prunable channel is pinned or excluded: nothing to search",
                              hint="see `graphprune inspect MODEL` for the pins")
    if goal == "lfa":
        if searcher.calibration is None:
            raise GraphpruneError("an LFA target needs calibration images with boxes",
                                  hint="pass --data D.yaml")
        if not target > 0:
            raise GraphpruneError(f"the LFA target must be > 0, got {target}",
                                  hint="0.01 allows a 1 % loss of target feature attention")
        feasible = True
        first = searcher.measure(1)
        name = "LFA⁺" if searcher.criterion == "plus" else "LFA±"
        if first.lfa_cut > target:
            feasible, best = False, 0
            notes.append(f"even the smallest prune (1 channel, δ = {first.threshold:.4g}) "
                         f"loses {name} = {first.lfa_cut:.4f} > target {target}")
        elif searcher.measure(n).lfa_cut <= target:
            best = n
        else:
            lo, hi = 1, n                # LFA(lo) ≤ target < LFA(hi)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if searcher.measure(mid).lfa_cut <= target:
                    lo = mid
                else:
                    hi = mid
            best = lo
        plan = searcher.plan(best)
        if best:
            loss = searcher.lfa_of(best)
        else:
            loss = lfa(searcher.fa_sparse, searcher.fa_sparse)
        return SearchResult(goal, target, plan, list(searcher.probes), searcher.evaluations,
                            searcher.fa_sparse, loss, searcher.channels_total, n, feasible,
                            notes)

    if not 0 < target < 1:
        raise GraphpruneError(f"the {goal} target must be in (0, 1), got {target}",
                              hint=f"0.5 removes at least half of the {goal}")
    before = planner.flops_before if goal == "flops" else planner.params_before

    def removed(count: int) -> float:
        p = searcher.plan(count)
        return 1 - (p.flops if goal == "flops" else p.params) / max(before, 1)

    feasible = True
    if removed(n) < target:
        feasible, best = False, n
        notes.append(f"pruning every candidate channel removes only {removed(n):.1%} of the "
                     f"{goal}, short of {target:.1%}")
    else:
        lo, hi = 0, n                    # removed(lo) < target ≤ removed(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if removed(mid) >= target:
                hi = mid
            else:
                lo = mid
        best = hi
    searcher.measure(best)
    return SearchResult(goal, target, searcher.plan(best), list(searcher.probes),
                        searcher.evaluations, searcher.fa_sparse, searcher.lfa_of(best),
                        searcher.channels_total, n, feasible, notes)


@dataclass
class TargetResult:
    """What :func:`prune_to_target` returns."""

    compiled: Any                            # graphprune.CompileResult
    search: SearchResult
    fa_slim: FeatureAttention | None         # None without calibration data
    lfa_slim: LFA | None                     # the chosen point, re-measured on the slim model


def prune_to_target(model: nn.Module, example_inputs: Any, calibration: CalibrationSet | None,
                    *,
                    lfa_target: float | None = None, flops_target: float | None = None,
                    params_target: float | None = None, mode: str = "confidence",
                    layers: Sequence[str] | None = None, residual: str = "reconstruct",
                    min_channels: int = 1, round_to: Any = 1, exclude: Iterable[str] = (),
                    leaves: Iterable[str] = (), device: torch.device | str | None = None,
                    on_probe: Callable[[Probe], Any] | None = None,
                    keep_maps: int = 0, fold_pruned_bias: bool = False,
                    lfa_criterion: str = "plus") -> TargetResult:
    """Search the prune (:func:`search`), compile it once, and re-measure its LFA on the slim
    model.  ``calibration``: images with ground-truth boxes (:class:`CalibrationSet`), or None
    for a FLOPs/params goal without LFA.  ``fold_pruned_bias``: every probe and the emitted
    model keep the pruned channels' constants (``graphprune.fold``)."""
    reader = AttentionReader(mode, layers)
    planner = MaskPlanner(model, example_inputs, residual=residual, min_channels=min_channels,
                          round_to=round_to, exclude=exclude, leaves=leaves)
    searcher = Searcher(model, planner, calibration, reader, device, on_probe,
                        fold=fold_pruned_bias, keep_maps=keep_maps, criterion=lfa_criterion)
    found = search(searcher, lfa_target=lfa_target, flops_target=flops_target,
                   params_target=params_target)
    if not found.feasible and found.goal == "lfa":
        raise GraphpruneError(found.notes[0], hint="raise --lfa-target, or sparse-train longer "
                                                   "(or with a larger θ) so that channels reach "
                                                   "|γ| ≈ 0")
    plan = found.plan
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    options = dict(residual=residual, min_channels=min_channels, round_to=round_to,
                   exclude=exclude, leaves=leaves)
    if fold_pruned_bias:        # compile the folded model, with the masks already applied
        compiled = compile_folded(
            cpu_model, example_inputs, plan.masks, **options,
            fold_inputs=tuple(t.cpu() if isinstance(t, torch.Tensor) else t
                              for t in searcher.fold_inputs))
        compiled.pinned = dict(plan.pinned)
    else:
        compiled = gp_compile(cpu_model, example_inputs,
                              masks={n: torch.as_tensor(m) for n, m in plan.requested.items()},
                              **options)
    for name, mask in plan.masks.items():
        if not np.array_equal(compiled.masks[name].numpy(), mask):
            raise GraphpruneError(f"internal error: the searched masks of {name!r} differ from "
                                  "the compiled ones", hint="please report this model")
    if calibration is None:
        return TargetResult(compiled, found, None, None)
    slim = compiled.module
    if device is not None:
        slim = slim.to(device)
    fa_slim = feature_attention(slim, calibration, reader=reader, device=device,
                                keep_maps=keep_maps)
    return TargetResult(compiled, found, fa_slim, lfa(fa_slim, found.fa_sparse))


__all__ = ["MaskPlanner", "Plan", "Probe", "SearchResult", "Searcher", "TargetResult",
           "prune_to_target", "search"]
