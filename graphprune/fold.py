"""Bias folding (beyond the paper): keep the constant a pruned channel still emits.

A channel pruned after sparse training has γ ≈ 0 but usually β ≠ 0, so it still outputs the
constant act(β).  Zero-masking (the compiler's reference) throws that constant away, which shifts
every layer downstream.  Folding moves it into the layers that consume it instead: a consumer
convolution whose input channel c is the constant δ_c adds Σ_c δ_c · Σ_k W[o, c, k] to output o
— into its bias, or, for a convolution followed by a BatchNorm, into that BatchNorm's running
mean.  Constants travel through activations (of a constant), adds, concatenations, splits,
pooling and upsampling before they reach a convolution.

The reference is the *γ-zeroed* model: the original with γ of the pruned channels set to 0 and
β kept.  Folding is exact for 1×1 and unpadded consumers; a padded convolution sees zeros, not
the constant, in its border, so there the folded model deviates; the deviation is measured, not
hidden.  The folds are found numerically, in execution order: both models run with every
convolution's padding switched to circular (which keeps a constant map constant everywhere), the
first convolution whose inputs differ gets the per-channel constant difference folded in, and the
models run again, until no convolution's input differs.  A difference that is not constant over
the map (a constant offset that went through a non-linearity together with a varying signal)
cannot be folded; that convolution is reported, and left as it is.

The folded model is an ordinary model in which the pruned channels have γ = β = 0, so the
compiler's invariant (slim == zero-masked) holds for it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

from .masks import CONVS, features, masked_copy, zero_mask
from .tracing import as_inputs


@dataclass
class FoldReport:
    folded: list[str] = field(default_factory=list)          # convs that absorbed a constant
    unfoldable: dict[str, str] = field(default_factory=dict)  # conv -> why not
    passes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"folded": list(self.folded), "unfoldable": dict(self.unfoldable),
                "passes": self.passes}


def gamma_zeroed(model: nn.Module, masks: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` in which pruned channels have γ = 0 and keep β (the reference of
    bias folding).  The caller's model is not modified."""
    return masked_copy(model, masks, zero_bias=False)


class _Inputs:
    """Records, for one forward, the input of every convolution (in call order) and which
    BatchNorm consumes each convolution's output directly."""

    def __init__(self, model: nn.Module):
        self.convs = {m: n for n, m in model.named_modules() if isinstance(m, CONVS)}
        self.bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.inputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self.next_bn: dict[str, nn.Module] = {}
        self._outputs: dict[int, str] = {}

    def run(self, model: nn.Module, inputs: tuple[Any, ...]) -> None:
        self.inputs, self.order, self._outputs = {}, [], {}
        hooks = []
        for m, name in self.convs.items():
            hooks.append(m.register_forward_pre_hook(self._pre(name)))
            hooks.append(m.register_forward_hook(self._post(name)))
        for bn in self.bns:
            hooks.append(bn.register_forward_pre_hook(self._bn(bn)))
        try:
            with torch.no_grad():
                model(*inputs)
        finally:
            for h in hooks:
                h.remove()

    def _pre(self, name):
        def hook(_m, args):
            if name not in self.inputs:           # a shared convolution: its first call
                self.inputs[name] = args[0].detach().clone()
                self.order.append(name)
        return hook

    def _post(self, name):
        def hook(_m, _args, out):
            self._outputs[id(out)] = name
        return hook

    def _bn(self, bn):
        def hook(_m, args):
            name = self._outputs.get(id(args[0]))
            if name is not None:
                self.next_bn.setdefault(name, bn)
        return hook


def _set_padding(model: nn.Module, mode: str | None) -> dict[nn.Module, str]:
    saved = {}
    for m in model.modules():
        if isinstance(m, CONVS) and not isinstance(m.padding, str) and \
                any(p > 0 for p in np.atleast_1d(m.padding)):
            saved[m] = m.padding_mode
            m.padding_mode = mode
    return saved


def _restore(saved: dict[nn.Module, str]) -> None:
    for m, mode in saved.items():
        m.padding_mode = mode


def fold_pruned_bias(model: nn.Module, masks: Mapping[str, Any], example_inputs: Any, *,
                     rtol: float = 1e-4) -> tuple[nn.Module, FoldReport]:
    """The zero-masked model with the pruned channels' constants folded downstream.

    Returns (folded model, report).  ``zero_mask(folded, masks)`` is ``folded`` itself; it
    equals :func:`gamma_zeroed` ``(model, masks)`` except at the padded borders of
    convolutions (and after any convolution the report lists as unfoldable)."""
    inputs = as_inputs(example_inputs)
    ref = gamma_zeroed(model, masks).eval()
    work = zero_mask(model, masks).eval()
    work_convs = dict(work.named_modules())
    report = FoldReport()
    seen: set[str] = set()
    saved = {**_set_padding(ref, "circular"), **_set_padding(work, "circular")}
    try:
        ref_rec, work_rec = _Inputs(ref), _Inputs(work)
        ref_rec.run(ref, inputs)
        for _ in range(len(work_rec.convs) + 1):
            work_rec.run(work, inputs)
            report.passes += 1
            target = None
            for name in work_rec.order:
                if name in seen or name not in ref_rec.inputs:
                    continue
                a, b = ref_rec.inputs[name], work_rec.inputs[name]
                scale = 1.0 + float(a.abs().max())
                if a.shape == b.shape and float((a - b).abs().max()) > rtol * scale:
                    target = name
                    break
            if target is None:
                break
            seen.add(target)
            why = _fold_one(work_convs[target], work_rec.next_bn.get(target),
                            ref_rec.inputs[target] - work_rec.inputs[target], rtol)
            if why:
                report.unfoldable[target] = why
            else:
                report.folded.append(target)
    finally:
        _restore(saved)
    return work, report


@torch.no_grad()
def _fold_one(conv: nn.Module, bn: nn.Module | None, delta: torch.Tensor, rtol: float) -> str:
    """Fold the per-channel constant ``delta`` (the input the conv is missing) into ``conv``'s
    bias or its BatchNorm's running mean.  Returns why it could not, or ''."""
    dims = [d for d in range(delta.ndim) if d != 1]
    mean = delta.mean(dim=dims)
    spread = (delta - mean.view(1, -1, *([1] * (delta.ndim - 2)))).abs().amax(dim=dims)
    if bool((spread > rtol * (1.0 + mean.abs())).any()):
        return "its missing input is not constant over the map (an offset went through a " \
               "non-linearity with a varying signal)"
    w = conv.weight.detach()
    groups = conv.groups
    per_group = w.shape[1]
    summed = w.sum(dim=tuple(range(2, w.ndim)))                        # [O, C/groups]
    out_per_group = w.shape[0] // groups
    d = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for g in range(groups):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        d[rows] = summed[rows] @ mean[g * per_group:(g + 1) * per_group].to(w.dtype)
    if conv.bias is not None:
        conv.bias.add_(d)
        return ""
    if bn is not None and bn.running_mean is not None and features(bn) == len(d):
        bn.running_mean.sub_(d.to(bn.running_mean.dtype))
        return ""
    return "it has no bias and no BatchNorm right after it to absorb the constant"


def border_deviation(slim_out: Any, ref_out: Any) -> dict[str, float]:
    """Max |slim − γ-zeroed| over all outputs, and over the interior (one cell in from every
    edge) of the outputs that are spatial maps."""
    overall = interior = 0.0
    for s, r in zip(tree_flatten(slim_out)[0], tree_flatten(ref_out)[0]):
        diff = (s.float() - r.float()).abs()
        overall = max(overall, float(diff.max()) if diff.numel() else 0.0)
        if diff.ndim == 4 and min(diff.shape[2:]) > 2:           # [B, C, H, W]
            inner = diff[:, :, 1:-1, 1:-1]
        elif diff.ndim == 5 and min(diff.shape[2:4]) > 2:        # YOLO maps [B, A, H, W, O]
            inner = diff[:, :, 1:-1, 1:-1]
        else:
            continue
        interior = max(interior, float(inner.max()) if inner.numel() else 0.0)
    return {"max": overall, "interior_max": interior}


__all__ = ["FoldReport", "border_deviation", "fold_pruned_bias", "gamma_zeroed"]
