"""Prune to a measured speed: ``graphprune compile ... --latency-target R`` and
:func:`prune_to_latency`.

FLOPs and parameters are proxies; a user deploys on one runtime and wants a speed.  The search
walks the same global importance order as ``--lfa-target`` (:class:`~graphprune.search.
MaskPlanner`: the k least important prunable channels removed), but each probe is compiled —
and so verified, slim == zero-masked — exported to ONNX and timed on the chosen runtime
against the unpruned model, the two interleaved in one run (a shuffled order each round) so
that machine noise hits both alike.  A bisection over k finds the fewest channels removed
whose latency is at most ``(1 − R)`` × the baseline's — the median over the rounds of the
probe's time over the baseline's in the same round — to within ``resolution`` of the
candidates (one bisection step).  The chosen model is then timed again with more rounds
(``final_rounds``); where noise fooled the short probes and the re-measurement misses the goal,
the part above it is searched again with ``final_rounds`` a probe, and then, if need be, one
resolution step at a time until the re-measurement holds.  With an LFA target as well, only prunes within the
LFA bound are searched (the LFA search runs first): the result is the smallest prune within
the bound that reaches the speed, or — when none does — the largest within the bound, said so.

Runtimes are onnxruntime's execution providers: ``ort-cpu`` (default), ``ort-cuda``,
``tensorrt`` and ``openvino`` where that provider is installed; a missing one is refused in one
line that says how to install it.  Tests drive the search with a fake timer (any object with
``prepare`` / ``measure`` / ``drop``); no test asserts a time.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .attention import AttentionReader, CalibrationSet, feature_attention, lfa
from .errors import GraphpruneError
from .pipeline import compile as gp_compile
from .search import MaskPlanner, SearchResult, Searcher, TargetResult, search
from .timing import RUNTIMES, OrtTimer, Timer, check_runtime

# re-measurements one resolution step further up, at most, after a search that noise fooled
MAX_STEPS_UP = 5


@dataclass
class LatencyProbe:
    """One timed prune: ``count`` channels removed, its latency and the baseline's (median ms
    of the same interleaved rounds), and ``ratio``, the median over the rounds of its time
    over the baseline's in that round (paired, so that a slow stretch of the machine that hits
    both cancels)."""

    count: int
    prune_ratio: float
    flops: int
    params: int
    baseline_ms: float
    ms: float
    rounds: int
    ratio: float
    final: bool = False                  # a re-measurement of the chosen prune

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "prune_ratio": self.prune_ratio, "flops": self.flops,
                "params": self.params, "baseline_ms": self.baseline_ms, "ms": self.ms,
                "latency_ratio": self.ratio, "rounds": self.rounds, "final": self.final}


@dataclass
class LatencyResult(TargetResult):
    """What :func:`prune_to_latency` returns: :class:`~graphprune.search.TargetResult` (its
    ``search`` has goal ``"latency"``) and the timings."""

    latency_target: float = 0.0
    runtime: str = "ort-cpu"
    probes: list[LatencyProbe] = field(default_factory=list)
    chosen: LatencyProbe | None = None
    lfa_bound: int | None = None          # the largest prune within the LFA target, if any

    def latency_dict(self) -> dict[str, Any]:
        c = self.chosen
        return {"latency_target": self.latency_target, "runtime": self.runtime,
                "baseline_ms": c.baseline_ms, "latency_ms": c.ms,
                "latency_ratio": c.ratio, "speedup": 1 / c.ratio,
                "latency_rounds": c.rounds, "lfa_bound_count": self.lfa_bound,
                "latency_probes": [p.as_dict() for p in self.probes]}


def prune_to_latency(model: nn.Module, example_inputs: Any, latency_target: float, *,
                     calibration: CalibrationSet | None = None,
                     lfa_target: float | None = None, timer: Timer | None = None,
                     runtime: str = "ort-cpu", threads: int = 2, batch: int = 1,
                     rounds: int = 10, final_rounds: int = 20, resolution: float = 0.01,
                     mode: str = "confidence", layers: Sequence[str] | None = None,
                     residual: str = "reconstruct", min_channels: int = 1, round_to: Any = 1,
                     exclude: Iterable[str] = (), leaves: Iterable[str] = (),
                     device: torch.device | str | None = None,
                     on_probe: Callable[[LatencyProbe], Any] | None = None,
                     lfa_criterion: str = "plus") -> LatencyResult:
    """The fewest channels removed (in the global importance order) whose measured latency is
    at most ``(1 − latency_target)`` × the unpruned model's; see the module's docstring.
    ``timer`` defaults to an :class:`OrtTimer` on ``runtime`` with ``threads`` and ``batch``."""
    if not 0 < latency_target < 1:
        raise GraphpruneError(f"the latency target must be in (0, 1), got {latency_target}",
                              hint="0.5 asks for half the baseline's latency (twice as fast)")
    if rounds < 1 or final_rounds < 1:
        raise GraphpruneError("the latency rounds must be at least 1")
    if not 0 < resolution <= 0.5:
        raise GraphpruneError(f"the resolution must be in (0, 0.5], got {resolution}")
    if lfa_target is not None and calibration is None:
        raise GraphpruneError("an LFA bound needs calibration images with boxes",
                              hint="pass --data D.yaml")
    example = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    own_timer = timer is None
    timer = timer or OrtTimer(runtime, threads=threads, batch=batch)
    try:
        return _search(model, example, latency_target, calibration, lfa_target, timer,
                       runtime, rounds, final_rounds, resolution, mode, layers,
                       dict(residual=residual, min_channels=min_channels, round_to=round_to,
                            exclude=tuple(exclude), leaves=tuple(leaves)),
                       device, on_probe, lfa_criterion)
    finally:
        if own_timer:
            timer.close()


def _search(model, example, latency_target, calibration, lfa_target, timer, runtime, rounds,
            final_rounds, resolution, mode, layers, options, device, on_probe, lfa_criterion
            ) -> LatencyResult:
    reader = AttentionReader(mode, layers)
    planner = MaskPlanner(model, example, **options)
    n = planner.size
    if n == 0:
        raise GraphpruneError("every prunable channel is pinned or excluded: nothing to search",
                              hint="see `graphprune inspect MODEL` for the pins")
    searcher = Searcher(model, planner, calibration, reader, device, criterion=lfa_criterion)
    notes: list[str] = []
    upper, bound = n, None
    if lfa_target is not None:
        bounded = search(searcher, lfa_target=lfa_target)
        if not bounded.feasible:
            raise GraphpruneError(bounded.notes[0], hint="raise --lfa-target")
        upper = bound = bounded.plan.count
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    cpu_model = model if on_cpu else copy.deepcopy(model).cpu()
    example_cpu = tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in example)
    timer.prepare("baseline", cpu_model, example_cpu)
    goal = 1 - latency_target
    compiled: dict[int, Any] = {}
    probes: list[LatencyProbe] = []

    def timed(count: int, k_rounds: int, final: bool = False) -> LatencyProbe:
        if count not in compiled:
            plan = searcher.plan(count)
            # only the latest compiles are kept (a search of a large model makes many)
            for old in list(compiled)[:-2]:
                del compiled[old]
            compiled[count] = gp_compile(
                cpu_model, example_cpu,
                masks={k: torch.as_tensor(m) for k, m in plan.requested.items()}, **options)
        name = f"prune-{count}"
        timer.prepare(name, compiled[count].module, example_cpu)
        samples = timer.measure(["baseline", name], k_rounds)
        timer.drop(name)
        plan = searcher.plan(count)
        base, mine = samples["baseline"], samples[name]
        probe = LatencyProbe(count, 1 - plan.channels_kept / max(searcher.channels_total, 1),
                             plan.flops, plan.params, statistics.median(base),
                             statistics.median(mine), k_rounds,
                             statistics.median(m / b for m, b in zip(mine, base)), final)
        probes.append(probe)
        if on_probe is not None:
            on_probe(probe)
        return probe

    step = max(1, int(round(resolution * n)))
    feasible = True
    top = timed(upper, rounds)
    if top.ratio > goal:
        feasible, chosen = False, upper
        within = " within the LFA bound" if bound is not None else ""
        final = timed(chosen, final_rounds, final=True)
        feasible = final.ratio <= goal
        if not feasible:
            notes.append(f"the largest prune{within} ({top.prune_ratio:.1%} of the prunable "
                         f"channels) runs at {final.ratio:.2f} × the baseline's latency, short "
                         f"of {goal:.2f} ×")
    else:
        def bisect(lo: int, hi: int, k_rounds: int) -> int:
            """lo: slower than the goal (0 = unpruned), hi: fast enough."""
            while hi - lo > step:
                mid = (lo + hi) // 2
                if timed(mid, k_rounds).ratio <= goal:
                    hi = mid
                else:
                    lo = mid
            return hi

        chosen = bisect(0, upper, rounds)
        final = timed(chosen, final_rounds, final=True)
        if final.ratio > goal and chosen < upper:
            # noise fooled the short probes: search again above, every probe with the
            # re-measurement's rounds
            notes.append(f"re-measured with {final_rounds} rounds, {chosen} channels ran at "
                         f"{final.ratio:.3f} × > {goal:.3f} ×: searched again above them with "
                         f"{final_rounds} rounds a probe")
            chosen = bisect(chosen, upper, final_rounds)
            final = timed(chosen, final_rounds, final=True)
        for _ in range(MAX_STEPS_UP):
            if final.ratio <= goal or chosen >= upper:
                break
            notes.append(f"re-measured, {chosen} channels ran at {final.ratio:.3f} × > "
                         f"{goal:.3f} ×: one step more")
            chosen = min(upper, chosen + step)
            final = timed(chosen, final_rounds, final=True)
        if final.ratio > goal:
            feasible = False
            notes.append(f"re-measured, {chosen} channels run at {final.ratio:.3f} × the "
                         f"baseline's latency, short of {goal:.3f} ×")
    plan = searcher.plan(chosen)
    result = compiled[chosen]
    for name, mask in plan.masks.items():
        if not np.array_equal(result.masks[name].numpy(), mask):
            raise GraphpruneError(f"internal error: the searched masks of {name!r} differ from "
                                  "the compiled ones", hint="please report this model")
    loss = searcher.lfa_of(chosen) if calibration is not None else None
    # the search's probes are the LFA bound's; the timed ones are LatencyResult.probes
    found = SearchResult("latency", latency_target, plan, list(searcher.probes),
                         searcher.evaluations, searcher.fa_sparse, loss,
                         searcher.channels_total, n, feasible, notes)
    fa_slim = lfa_slim = None
    if calibration is not None:
        slim = result.module if device is None else result.module.to(device)
        fa_slim = feature_attention(slim, calibration, reader=reader, device=device)
        lfa_slim = lfa(fa_slim, searcher.fa_sparse)
        if lfa_target is not None and lfa_slim.value(lfa_criterion) > lfa_target:
            # LFA need not grow with the prune: below the bound's count it may still exceed
            found.feasible = False
            found.notes.append(f"the chosen prune's LFA ({lfa_slim.value(lfa_criterion):.4f}) "
                               f"exceeds the target {lfa_target} although it removes fewer "
                               "channels than the bound")
    return LatencyResult(result, found, fa_slim, lfa_slim, latency_target=latency_target,
                         runtime=getattr(timer, "runtime", runtime), probes=probes,
                         chosen=final, lfa_bound=bound)


__all__ = ["LatencyProbe", "LatencyResult", "OrtTimer", "RUNTIMES", "Timer", "check_runtime",
           "prune_to_latency"]
