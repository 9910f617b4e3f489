"""``graphprune.compile``: trace, analyse, mask, reconstruct, slim and verify a model.

The passes live in ``graphprune.passes`` (one a file, pipeline order); this module validates the
request, runs them on a private copy of the model and packages the result.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from . import passes as gp_passes
from .context import (ATOL, RESIDUAL_MODES, RTOL, CompileConfig, CompileContext, as_names,
                      ranked_names)
from .errors import GraphpruneError, GraphpruneWarning, MaskError, first_line
from .export import export_onnx, export_pt2, save_checkpoint
from .fold import border_deviation, fold_pruned_bias, gamma_zeroed
from .planning import structural_pins
from .residuals import residual_sets
from .stats import ModelStats, count_flops, count_params
from .tracing import as_inputs, trace, working_copy
from .widths import is_width_table


def validate_request(config: CompileConfig) -> None:
    """Refuse a request ``compile`` cannot carry out (the one place the options are checked;
    the CLI calls it before loading the model)."""
    chosen = [k for k in ("masks", "threshold", "prune_ratio") if getattr(config, k) is not None]
    if len(chosen) > 1:
        raise MaskError(f"give one of masks, threshold and prune_ratio, not {' and '.join(chosen)}")
    r = config.prune_ratio
    if r is not None and not (isinstance(r, (int, float)) and math.isfinite(r) and 0 <= r < 1):
        raise MaskError(f"prune_ratio must be in [0, 1), got {r!r}",
                        hint="0.5 prunes half of the ranked channels")
    t = config.threshold
    if t is not None and not (isinstance(t, (int, float)) and math.isfinite(t) and t >= 0):
        raise MaskError(f"threshold must be a finite number >= 0, got {t!r}",
                        hint="ranked channels whose importance (a BatchNorm's |γ|) is "
                             "below the threshold are pruned")
    if config.residual not in RESIDUAL_MODES:
        raise MaskError(f"residual must be one of {', '.join(RESIDUAL_MODES)}, "
                        f"got {config.residual!r}")
    if not isinstance(config.min_channels, int) or config.min_channels < 1:
        raise MaskError(f"min_channels must be an integer >= 1, got {config.min_channels!r}")
    if not is_width_table(config.round_to) and (
            not isinstance(config.round_to, int) or isinstance(config.round_to, bool)
            or config.round_to < 1):
        raise MaskError(f"round_to must be an integer >= 1 or a graphprune.WidthTable, got "
                        f"{config.round_to!r}", hint="8 keeps a multiple of 8 channels per layer; "
                        "WidthTable() rounds each layer to a width measured fast")
    if config.masks is not None and not isinstance(config.masks, Mapping):
        raise MaskError(f"masks must be a mapping of layer name to keep mask, got "
                        f"{type(config.masks).__name__}")
    for option in ("exclude", "leaves"):
        names = getattr(config, option)
        if not all(isinstance(n, str) for n in names):
            raise MaskError(f"{option} must be a list of module names or patterns, got "
                            f"{names!r}"[:200], hint=f"e.g. {option}=['model.24']")


def refuse_non_finite(model: nn.Module) -> None:
    """NaN or Inf in a weight or buffer (a diverged training, a corrupt file) is the input's
    fault, not a compiler bug: say so before any work."""
    for kind, items in (("parameter", model.named_parameters()),
                        ("buffer", model.named_buffers())):
        for name, tensor in items:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise GraphpruneError(f"the model's {kind} {name!r} holds {bad} NaN/Inf "
                                      f"value(s) of {tensor.numel()}",
                                      hint="the weights are corrupt or the training diverged; "
                                           "compile an earlier checkpoint")


def check_example(model: nn.Module, inputs: tuple[Any, ...], subject: str = "the model",
                  hint: str = "give example inputs of the shape, dtype and device the model "
                              "takes") -> None:
    """The example inputs are finite and the model runs on them (on a throw-away copy, so
    neither the caller's model nor the one traced sees the call): a shape, dtype or device the
    model cannot take is the input's fault, said so before any work, and not later reported as a
    compiler bug. ``subject`` names the model in the message, ``hint`` says how to fix it."""
    tensors = [t for t in tree_flatten(inputs)[0] if isinstance(t, torch.Tensor)]
    for k, tensor in enumerate(tensors):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise GraphpruneError(f"example input {k} holds NaN/Inf values",
                                  hint="give finite example inputs, e.g. torch.rand(1, 3, 640, 640)")
    probe = working_copy(model, inputs)
    try:
        with torch.no_grad():
            probe(*inputs)
    except (RuntimeError, ValueError, TypeError, IndexError, AssertionError) as exc:
        first = first_line(exc) or type(exc).__name__
        shapes = ", ".join("x".join(map(str, t.shape)) + f" {str(t.dtype).removeprefix('torch.')}"
                           for t in tensors)
        raise GraphpruneError(f"{subject} cannot run on the example inputs ({shapes}): {first}",
                              hint=hint) from None
    finally:
        del probe


def check_leaves(model: nn.Module, leaves: Iterable[str]) -> None:
    """Every requested leaf names a submodule of ``model``."""
    names = {name for name, _ in model.named_modules() if name}
    for leaf in leaves:
        if leaf not in names:
            close = sorted(names, key=len)[:3]
            raise MaskError(f"leaf {leaf!r} is not a submodule of the model",
                            hint=f"give a module name such as {', '.join(close)}" if close
                            else "this model has no submodules")


# the passes that find facts without choosing masks
ANALYSIS_PASSES = (gp_passes.propagate_shapes, gp_passes.collect_statistics)


def run_passes(gm: torch.fx.GraphModule, ctx: CompileContext,
               passes: Sequence[Callable] | None = None) -> torch.fx.GraphModule:
    """Run the compiler passes in order.  (torch.fx's ``PassManager`` would re-wrap our
    errors in a bare ``Exception``; these passes run once each, so a loop suffices.)"""
    for fn in (passes if passes is not None else gp_passes.PIPELINE):
        gm = fn(gm, ctx).graph_module
    return gm


@dataclass
class CompileResult:
    """What ``graphprune.compile`` returns."""

    module: torch.fx.GraphModule
    masks: dict[str, torch.Tensor]            # as applied, True = keep
    requested: dict[str, torch.Tensor]
    pinned: dict[str, str]
    stats: ModelStats
    example_inputs: tuple[Any, ...]
    recipe: dict[str, Any]
    leaves: dict[str, str] = field(default_factory=dict)
    unprunable: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    max_error: float | None = None
    emit_stats: dict[str, int] = field(default_factory=dict)
    residual_choice: dict[str, dict] = field(default_factory=dict)   # residual="auto": per set
    layers: list[dict[str, Any]] = field(default_factory=list)
    fold: dict[str, Any] | None = None        # bias folding: folds and deviation from γ-zeroed

    def save(self, path: str | Path) -> Path:
        """Write a graphprune checkpoint: weights + JSON recipe, no pickled code."""
        return save_checkpoint(self.module, self.recipe, path)

    def export_onnx(self, path: str | Path, **kwargs) -> Path:
        return export_onnx(self.module, self.example_inputs, path, **kwargs)

    def export_pt2(self, path: str | Path) -> Path:
        return export_pt2(self.module, self.example_inputs, path)

    def summary(self) -> dict[str, Any]:
        """Plain data describing the compile (what ``report.json`` holds)."""
        return {
            "stats": self.stats.as_dict(),
            "max_error": self.max_error,
            "pinned": dict(self.pinned),
            "leaves": dict(self.leaves),
            "unprunable": dict(self.unprunable),
            "warnings": list(self.warnings),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "residual": dict(self.emit_stats),
            "residual_choice": dict(self.residual_choice),
            "layers": self.layers,
            "fold_pruned_bias": self.fold,
        }


def reported_layers(ctx: CompileContext) -> set[str]:
    """The layers a compile's result lists masks for: every layer a threshold or ratio ranks
    (``ranked_names``), and any other the request named or the compile pruned.  The other
    producers of a BatchNorm model (its plain convolutions) keep every channel unless asked,
    and are left out, as a mask that names no layer keeps it whole."""
    named = set(ctx.config.masks or ())
    return set(ranked_names(ctx.statistics)) | named | \
        {n for n, m in ctx.masks.items() if not m.all()}


def _recipe(model: nn.Module, config: CompileConfig, inputs: tuple[Any, ...],
            masks: dict[str, np.ndarray]) -> dict[str, Any]:
    built = getattr(model, "graphprune_config", None)
    parent = getattr(model, "graphprune_recipe", None)     # compiling a compiled model again
    return {
        "parent": parent if isinstance(parent, dict) else None,
        "builder": built.get("builder") if isinstance(built, dict) else None,
        "kwargs": dict(built.get("kwargs", {})) if isinstance(built, dict) else {},
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "residual": config.residual,
        "leaves": list(config.leaves),
        "inputs": [{"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
                   for x in inputs if isinstance(x, torch.Tensor)],
        "masks": {n: "".join("1" if k else "0" for k in m) for n, m in masks.items()},
    }


def prepare(model: nn.Module, example_inputs: Any, config: CompileConfig):
    """Check the model (finite weights, leaves it has), then trace a private eval-mode copy of
    it: (traced, a fresh CompileContext).  The one entry of compile, analyze and the search's
    planner."""
    if not isinstance(model, nn.Module):
        raise GraphpruneError(f"the model must be a torch.nn.Module, got {type(model).__name__}",
                              hint="pass the module itself (gp.load(path) reads a checkpoint)")
    refuse_non_finite(model)
    check_leaves(model, config.leaves)
    inputs = as_inputs(example_inputs)
    check_example(model, inputs)
    work = working_copy(model, inputs)
    traced = trace(work, config.leaves)
    ctx = CompileContext(work, inputs, config,
                         leaves={**{name: "requested" for name in config.leaves},
                                 **traced.leaves}, analyze_fn=analyze, compile_fn=compile)
    return traced, ctx


def prepare_analysis(model: nn.Module, example_inputs: Any, config: CompileConfig):
    """``prepare``, then the passes that analyse without choosing masks (shapes, statistics, the
    channel analysis, dependency groups): (traced GraphModule, its CompileContext).  What
    ``analyze`` and ``search.MaskPlanner`` start from."""
    traced, ctx = prepare(model, example_inputs, config)
    gm = run_passes(traced.graph_module, ctx, ANALYSIS_PASSES)
    return gm, ctx


def compile(model: nn.Module, example_inputs: Any, *, masks: Mapping[str, Any] | None = None,
            threshold: float | None = None, prune_ratio: float | None = None,
            residual: str = "reconstruct", min_channels: int = 1, round_to: Any = 1,
            exclude: Iterable[str] = (), leaves: Iterable[str] = (), verify: bool = True,
            atol: float = ATOL, rtol: float = RTOL, dependency_groups: bool = True,
            fold_pruned_bias: bool = False) -> CompileResult:
    """Compile ``model`` into a physically slimmer ``nn.Module``.

    Exactly one of ``masks`` ({layer name: keep mask}, any channel producer: BatchNorm,
    GroupNorm, channel LayerNorm, a convolution or linear layer with no norm after it; layers
    not named keep everything), ``threshold`` (global δ: ranked channels with importance < δ go)
    and ``prune_ratio`` (share of the ranked channels to prune) chooses the channels; none of
    them compiles without pruning.  The ranking orders a BatchNorm model's BatchNorms by |γ|, and
    every producer of a model without BatchNorm by its layer-relative magnitude
    (``context.ranked_names``, ``passes.collect_statistics``).
    ``residual="reconstruct"`` lets the branches of residual adds keep different channels
    (L1RR); ``"couple"`` forces the conventional shared mask (one OR-ed mask for every
    BatchNorm feeding a residual group); ``"auto"`` reconstructs each residual group only where
    the FLOPs it saves outweigh the extra nodes the rebuilt adds take (``graphprune.costs``; the
    numbers per group are in ``result.residual_choice``).  ``dependency_groups=False`` skips
    torch-pruning's structural ties when the masks are known to be final (a checkpoint being
    rebuilt).  ``round_to``: keep a multiple of this many channels per layer (the extra ones by
    |γ|; kernels often run faster on aligned widths; coupling may still add more), or a
    ``graphprune.WidthTable``: each convolution rounded to a width measured fast on a runtime
    (``graphprune.widths``).
    ``exclude``: name patterns of BatchNorms (or module prefixes) to leave whole.  ``leaves``:
    submodules to keep whole in the trace (untraceable ones are found automatically).  The
    caller's model is not modified.

    ``fold_pruned_bias=True`` (beyond the paper) keeps the constant act(β) a pruned channel
    still emits by folding it into downstream biases (``graphprune.fold``): the slim model then
    equals the *γ-zeroed* model except at the padded borders of convolutions; ``result.fold``
    reports the folds and that deviation.
    """
    if fold_pruned_bias:
        return _compile_folded(model, example_inputs, masks=masks, threshold=threshold,
                               prune_ratio=prune_ratio, residual=residual,
                               min_channels=min_channels, round_to=round_to,
                               exclude=exclude, leaves=leaves,
                               verify=verify, atol=atol, rtol=rtol,
                               dependency_groups=dependency_groups)
    config = CompileConfig(masks=masks, threshold=threshold, prune_ratio=prune_ratio,
                           residual=residual, min_channels=min_channels, round_to=round_to,
                           exclude=as_names(exclude), leaves=as_names(leaves), verify=verify,
                           atol=atol, rtol=rtol, dependency_groups=dependency_groups)
    validate_request(config)
    traced, ctx = prepare(model, example_inputs, config)
    work, inputs = ctx.model, ctx.example_inputs
    for name, why in traced.leaves.items():
        ctx.warnings.append(f"{name!r} cannot be traced ({why}); kept whole, its inner "
                            "convolutions still lose pruned input columns")
    slim = run_passes(traced.graph_module, ctx)
    for message in ctx.warnings:
        warnings.warn(message, GraphpruneWarning, stacklevel=2)

    ranked = ranked_names(ctx.statistics)
    with ctx.timed("count_flops"):
        stats = ModelStats(
            params_before=count_params(work), params_after=count_params(slim),
            flops_before=count_flops(work, inputs), flops_after=count_flops(slim, inputs),
            channels_before=sum(len(ctx.statistics[n].gamma) for n in ranked),
            channels_after=sum(int(ctx.masks[n].sum()) for n in ranked))
    shown = reported_layers(ctx)
    layers = [{"name": n, "kind": s.kind, "channels": len(s.gamma),
               "kept": int(ctx.masks[n].sum()), "requested": int(ctx.requested[n].sum()),
               "near_zero": s.near_zero, "pinned": ctx.pinned.get(n)}
              for n, s in ctx.statistics.items() if n in shown]
    slim.graphprune_recipe = _recipe(model, config, inputs,
                                     {n: m for n, m in ctx.masks.items() if n in shown})
    return CompileResult(
        module=slim,
        masks={n: torch.as_tensor(m) for n, m in ctx.masks.items() if n in shown},
        requested={n: torch.as_tensor(m) for n, m in ctx.requested.items() if n in shown},
        pinned=dict(ctx.pinned), stats=stats, example_inputs=inputs,
        recipe=slim.graphprune_recipe, leaves=dict(ctx.leaves),
        unprunable=dict(ctx.unprunable), warnings=list(ctx.warnings),
        timings=dict(ctx.timings), max_error=ctx.max_error, emit_stats=dict(ctx.emit_stats),
        residual_choice=dict(ctx.residual_choice),
        layers=layers)


def _compile_folded(model: nn.Module, example_inputs: Any, **options) -> CompileResult:
    """Find the applied masks, fold the pruned channels' constants, compile the folded model."""
    inputs = as_inputs(example_inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphpruneWarning)
        first = compile(model, inputs, **{**options, "verify": False})
    applied = {n: m.numpy() for n, m in first.masks.items()}
    keep = {k: v for k, v in options.items() if k not in ("masks", "threshold", "prune_ratio")}
    result = compile_folded(model, inputs, applied, **keep)
    result.requested, result.pinned, result.layers = first.requested, first.pinned, first.layers
    return result


def compile_folded(model: nn.Module, example_inputs: Any, applied: Mapping[str, Any], *,
                   fold_inputs: Any = None, **options) -> CompileResult:
    """Compile ``model`` with exactly the keep masks ``applied``, the constants of the channels
    they remove folded into their consumers first (``graphprune.fold``, on ``fold_inputs``,
    by default the example inputs); ``result.fold`` records the folds.  The one place the
    folded compile happens, for ``compile(..., fold_pruned_bias=True)`` and for the
    target-guided search."""
    inputs = as_inputs(example_inputs)
    masks = {n: np.asarray(m, dtype=bool) for n, m in applied.items()}
    folded, report = fold_pruned_bias(model, masks, inputs if fold_inputs is None
                                      else as_inputs(fold_inputs))
    result = compile(folded, inputs, masks=masks, **options)
    attach_fold(result, model, masks, report)
    return result


def attach_fold(result: CompileResult, model: nn.Module, applied: Mapping[str, Any],
                report) -> None:
    """Record bias folding on ``result``: the folds, and how far the slim model is from the
    γ-zeroed reference on the example inputs (only at padded borders, where folding is exact)."""
    inputs = result.example_inputs
    with torch.no_grad():
        deviation = border_deviation(result.module(*inputs),
                                     gamma_zeroed(model, applied).eval()(*inputs))
    result.fold = {**report.as_dict(), "deviation_from_gamma_zeroed": deviation}


@dataclass
class ModelReport:
    """What ``graphprune inspect`` shows: the analysis before any mask is chosen."""

    params: int
    flops: int
    leaves: dict[str, str]
    statistics: dict[str, Any]               # BatchNorm -> LayerStatistics
    pinned_channels: dict[str, int]          # BatchNorm -> channels no mask may remove
    pin_reasons: dict[str, str]
    unprunable: dict[str, str]
    groups: Any                               # groups.DependencyGroups
    warnings: list[str]
    residual: list = field(default_factory=list)   # groups.CouplingSet per residual group


def analyze(model: nn.Module, example_inputs: Any, *, leaves: Iterable[str] = ()
            ) -> ModelReport:
    """Trace and analyse ``model`` without pruning it (``graphprune inspect``)."""
    _, ctx = prepare_analysis(model, example_inputs, CompileConfig(leaves=as_names(leaves)))
    work, inputs = ctx.model, ctx.example_inputs
    pins, reasons = structural_pins(ctx.analysis)
    pinned = {n: int(m.sum()) for n, m in pins.items()}
    for block in ctx.inner.values():        # producers inside the sealed blocks of leaves
        pinned.update({block.full(n): k for n, k in block.pinned.items()})
    return ModelReport(params=count_params(work), flops=count_flops(work, inputs),
                       leaves=dict(ctx.leaves), statistics=dict(ctx.statistics),
                       pinned_channels=pinned,
                       pin_reasons=reasons,
                       unprunable=dict(ctx.unprunable), groups=ctx.groups,
                       warnings=list(ctx.warnings), residual=residual_sets(ctx.analysis))


__all__ = ["ANALYSIS_PASSES", "CompileResult", "ModelReport", "analyze", "attach_fold",
           "check_example", "check_leaves", "compile", "compile_folded", "prepare", "prepare_analysis",
           "refuse_non_finite", "run_passes", "validate_request"]
