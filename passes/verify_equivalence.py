"""Pass 6 — verify equivalence: the slim model computes what the zero-masked model computes.

The one invariant (DESIGN.md): on the example inputs, every output tensor of the slim model
equals the zero-masked reference elementwise, |slim − ref| ≤ atol + rtol·|ref| in float32.
A compile that fails it is refused.  The error names the first node of the graph whose slim
value differs from the reference (both graphs are replayed node by node to find it).

Some models' outputs hinge on near-ties: a detector that keeps its top-k queries (RT-DETR), a
sort or an argmax.  There float32 rounding — which differs between any two ways of computing
the same function, the slim and the zero-masked model included — decides the ties either way,
and the outputs can differ by whole boxes although both compute the same function.  When the
float32 comparison fails, both models are therefore compared once more in float64, where the
rounding is 2⁻²⁹ times smaller: if they agree there, the compile is exact and accepted, with a
warning that says so and how far the float32 outputs were apart; if they differ in float64 too,
the compile is refused as before.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx
from torch.fx.passes.infra.pass_base import PassResult
from torch.utils._pytree import tree_flatten

from graphprune.context import CompileContext
from graphprune.errors import VerificationError
from graphprune.masks import zero_mask
from graphprune.tracing import Interpreter


def compare_outputs(out: Any, ref: Any, atol: float, rtol: float) -> tuple[float, str | None]:
    """(worst |out − ref|, description of the first violation or None)."""
    flat_out, spec_out = tree_flatten(out)
    flat_ref, spec_ref = tree_flatten(ref)
    if len(flat_out) != len(flat_ref):
        return float("inf"), f"{len(flat_out)} outputs instead of {len(flat_ref)}"
    worst = 0.0
    for i, (o, r) in enumerate(zip(flat_out, flat_ref)):
        if not isinstance(r, torch.Tensor):
            if o != r:
                return float("inf"), f"output {i} is {o!r} instead of {r!r}"
            continue
        if not isinstance(o, torch.Tensor) or o.shape != r.shape:
            shape = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
            return float("inf"), f"output {i} has shape {shape} instead of {tuple(r.shape)}"
        o, r = o.detach().float(), r.detach().float()
        diff = (o - r).abs()
        if diff.numel():
            worst = max(worst, float(diff.max()))
        bad = ~(diff <= atol + rtol * r.abs())
        if bad.any():
            where = tuple(int(k) for k in bad.nonzero()[0])
            return worst, (f"output {i} differs at index {where}: {float(o[where]):.6g} vs "
                           f"{float(r[where]):.6g}")
    return worst, None


class _Recorder(Interpreter):
    def run_node(self, n):
        value = super().run_node(n)
        self.values[n] = value
        return value

    def record(self, *args) -> dict:
        self.values = {}
        with torch.no_grad():
            self.run(*args)
        return self.values


def float64_agreement(reference: torch.nn.Module, slim: torch.nn.Module, inputs: tuple,
                      atol: float, rtol: float) -> float | None:
    """The largest |slim − reference| with both models and the inputs in float64, when every
    output agrees there within the tolerance; None when they disagree or cannot run in
    float64 (the models are copied, not changed)."""
    try:
        ref64, slim64 = copy.deepcopy(reference).double(), copy.deepcopy(slim).double()
        xs = tuple(x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                   for x in inputs)
        with torch.no_grad():
            out, ref = slim64(*xs), ref64(*xs)
    except (RuntimeError, TypeError, ValueError, AttributeError, AssertionError, IndexError,
            KeyError):
        return None
    worst, problem = compare_outputs(out, ref, atol, rtol)
    return None if problem is not None else worst


def first_divergence(ctx: CompileContext, atol: float, rtol: float) -> str | None:
    """The first original node whose slim value differs from the zero-masked one."""
    A = ctx.analysis
    # the masks that remove something: a layer named but not prunable (kept whole) may be
    # absent from the traced graph's modules (a convolution traced through, as a weight)
    ref_gm = zero_mask(A.gm, {n: m for n, m in ctx.masks.items() if not m.all()}).eval()
    # both graphs are copies (zero_mask deep-copies): match nodes by name
    ref = {n.name: v for n, v in _Recorder(ref_gm).record(*ctx.example_inputs).items()}
    by_name = {n.name: v for n, v in _Recorder(ctx.slim).record(*ctx.example_inputs).items()}
    for node in A.nodes:
        r, slim_node = ref.get(node.name), ctx.slim_env.get(node)
        if not isinstance(r, torch.Tensor) or not isinstance(slim_node, torch.fx.Node):
            continue
        s = by_name.get(slim_node.name)
        if not isinstance(s, torch.Tensor):
            continue
        order = A.order(node)
        if order is not None and not isinstance(order, tuple) and r.dim() >= 2:
            r = r.index_select(1, torch.as_tensor(np.asarray(order), dtype=torch.long))
        if s.shape != r.shape:
            return f"{node.name} (shape {tuple(s.shape)} instead of {tuple(r.shape)})"
        if not torch.all((s - r).abs() <= atol + rtol * r.abs()):
            return f"{node.name} (max |diff| {float((s - r).abs().max()):.3g})"
    return None


def verify_equivalence(gm: torch.fx.GraphModule, ctx: CompileContext) -> PassResult:
    cfg = ctx.config
    if not cfg.verify:
        return PassResult(gm, False)
    with ctx.timed("verify"):
        reference = zero_mask(ctx.model, ctx.masks).eval()
        with torch.no_grad():
            ref = reference(*ctx.example_inputs)
            out = gm(*ctx.example_inputs)
        worst, problem = compare_outputs(out, ref, cfg.atol, cfg.rtol)
        ctx.max_error = worst
        exact = None if problem is None else \
            float64_agreement(reference, gm, ctx.example_inputs, cfg.atol, cfg.rtol)
        if exact is not None:
            ctx.max_error = exact
            ctx.warnings.append(f"in float32 the slim and zero-masked outputs differ ({problem}) "
                                f"but in float64 they agree (max |diff| {exact:.2g}): the "
                                "outputs hinge on near-ties (a top-k, sort or argmax), which "
                                "float32 rounding decides either way; the compile is exact")
            problem = None
        if problem is not None:
            where = first_divergence(ctx, cfg.atol, cfg.rtol)
            at = f"first diverging node: {where}" if where else \
                "no node of the traced graph diverges, so the trace itself differs from the model"
            raise VerificationError(f"the slim model does not match the zero-masked model: "
                                    f"{problem}; {at}",
                                    hint="please report this model; exclude the layers around "
                                         "that node (exclude=[...]) meanwhile")
    return PassResult(gm, False)


__all__ = ["compare_outputs", "first_divergence", "float64_agreement", "verify_equivalence"]
