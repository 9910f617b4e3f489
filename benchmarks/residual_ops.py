"""Slices or a gather?  The cost of the channel selections the residual reconstruction emits.

When a value must be re-expressed in another channel order (an add whose operands hold their
shared channels in different places, a consumer of a split piece, ...), the slim graph can take
``k`` contiguous runs with ``narrow`` + ``cat``, or all positions at once with one
``index_select``.  A residual add whose operands share channels in the same relative order but
not contiguously can be built from ``P`` slice-adds, or gather the trunk operand first so that
three pieces suffice.  This script times both choices, interleaved, in onnxruntime and in eager
PyTorch, and prints the ratios.  The compiler's cut-overs (``emit.MAX_SLICE_RUNS`` and
``adds.PIECES_BEFORE_GATHER``) come from these tables.

    python -m benchmarks.residual_ops [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

from graphprune import adds
from graphprune.emit import runs

from benchmarks.common import ort_session, stamp


def positions_with_runs(channels: int, k: int, keep: float, seed: int) -> list[int]:
    """About ``keep`` of the channels, as exactly ``k`` ascending contiguous runs."""
    rng = np.random.default_rng(seed)
    total = max(k, int(channels * keep))
    cuts = np.sort(rng.choice(np.arange(1, total), size=k - 1, replace=False)) if k > 1 else []
    lengths = np.diff(np.concatenate([[0], cuts, [total]])).astype(int)
    gaps = rng.multinomial(channels - total - (k - 1), np.ones(k) / k) + 1
    out, at = [], 0
    for length, gap in zip(lengths, gaps):
        out.extend(range(at, at + length))
        at += length + gap
    assert len(runs(out)) == k and out[-1] < channels
    return out


class Slices(nn.Module):
    def __init__(self, positions):
        super().__init__()
        self.runs = runs(positions)

    def forward(self, x):
        parts = [torch.narrow(x, 1, s, n) for s, n in self.runs]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, 1)) * 1.0


class Gather(nn.Module):
    def __init__(self, positions):
        super().__init__()
        self.register_buffer("index", torch.tensor(positions, dtype=torch.long))

    def forward(self, x):
        return torch.index_select(x, 1, self.index) * 1.0


class PlannedAdd(nn.Module):
    """``a + b`` executed the way ``channels.Add.emit`` builds it from an ``AddPlan``."""

    def __init__(self, plan):
        super().__init__()
        self.pieces = plan.pieces
        self.register_buffer("a_take", torch.tensor(plan.a_take or [], dtype=torch.long))
        self.register_buffer("b_take", torch.tensor(plan.b_take or [], dtype=torch.long))
        self.gather_a, self.gather_b = plan.a_take is not None, plan.b_take is not None

    def forward(self, ab):
        a, b = ab[0], ab[1]
        if self.gather_a:
            a = torch.index_select(a, 1, self.a_take)
        if self.gather_b:
            b = torch.index_select(b, 1, self.b_take)
        parts = []
        for kind, i, j, n in self.pieces:
            pa = None if kind == "b" else torch.narrow(a, 1, i, n)
            pb = None if kind == "a" else torch.narrow(b, 1, j, n)
            parts.append(pa if pb is None else pb if pa is None else pa + pb)
        return torch.cat(parts, 1)


def add_plans(channels_: int, runs_in_trunk: int, seed: int):
    """A trunk whose channels shared with the branch form ``runs_in_trunk`` runs; the branch
    holds its shared channels first, in the trunk's order (as reconstruct_residuals orders
    it).  Returns the slice-add plan and the gather plan of ``trunk + branch``."""
    shared = set(positions_with_runs(channels_, runs_in_trunk, 0.5, seed))
    trunk = np.arange(channels_)
    branch_only = [channels_ + i for i in range(channels_ // 4)]     # channels only b keeps
    branch = np.array([c for c in trunk if c in shared] + branch_only)
    rank = np.arange(channels_ + len(branch_only))
    saved = adds.PIECES_BEFORE_GATHER
    try:
        adds.PIECES_BEFORE_GATHER = 10 ** 6
        slices = adds.plan_add(trunk, branch, rank)
        adds.PIECES_BEFORE_GATHER = 0
        gather = adds.plan_add(trunk, branch, rank)
    finally:
        adds.PIECES_BEFORE_GATHER = saved
    return slices, gather, len(trunk), len(branch)


def ort_runner(module, x, directory):
    """A call of ``module`` on ``x`` in onnxruntime (one thread)."""
    path = Path(directory) / f"{type(module).__name__}_{id(module)}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"])
    session = ort_session(path, 1)
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


class _Pair:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def eager(self, module):
        def call():
            with torch.no_grad():
                module((self.a, self.b))
        return call


def ort_pair(module, a, b, directory):
    """A call of the two-input ``module`` on ``(a, b)`` in onnxruntime (one thread)."""
    path = Path(directory) / f"add_{id(module)}.onnx"

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, a, b):
            return self.inner((a, b))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Two(), (a, b), str(path), dynamo=False, opset_version=17,
                          input_names=["a", "b"])
    session = ort_session(path, 1)
    feed = {"a": a.numpy(), "b": b.numpy()}
    return lambda: session.run(None, feed)


def eager(module, x):
    def call():
        with torch.no_grad():
            module(x)
    return call


def interleaved(calls, repeats):
    times = [[] for _ in calls]
    for call in calls:
        call()
    for _ in range(repeats):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="where the tables go (not with --quick)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shapes = [(128, 40)] if args.quick else [(64, 80), (128, 40), (256, 20)]
    ks = [1, 2, 3, 4, 6, 8, 12] if not args.quick else [1, 2, 4, 8]
    repeats = 30 if args.quick else 200
    console = Console(record=True, width=120)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for channels, size in shapes:
            x = torch.randn(1, channels, size, size)
            for k in ks:
                pos = positions_with_runs(channels, k, 0.6, seed=k)
                s, g = Slices(pos).eval(), Gather(pos).eval()
                ort_s, ort_g = interleaved([ort_runner(s, x, tmp), ort_runner(g, x, tmp)],
                                           repeats)
                eag_s, eag_g = interleaved([eager(s, x), eager(g, x)], repeats)
                rows.append({"channels": channels, "size": size, "runs": k,
                             "ort_slices_over_gather": ort_s / ort_g,
                             "eager_slices_over_gather": eag_s / eag_g,
                             "ort_gather_us": ort_g * 1e6, "eager_gather_us": eag_g * 1e6})
        add_rows = []
        for channels_, size in shapes:
            for k in ks:
                slices, gather, ca, cb = add_plans(channels_, k, seed=k)
                a, b = torch.randn(1, ca, size, size), torch.randn(1, cb, size, size)
                ms, mg = PlannedAdd(slices).eval(), PlannedAdd(gather).eval()
                pair = _Pair(a, b)
                ort_s, ort_g = interleaved([ort_pair(ms, a, b, tmp), ort_pair(mg, a, b, tmp)],
                                           repeats)
                eag_s, eag_g = interleaved([pair.eager(ms), pair.eager(mg)], repeats)
                add_rows.append({"channels": channels_, "size": size, "trunk_runs": k,
                                 "pieces": len(slices.pieces),
                                 "ort_slices_over_gather": ort_s / ort_g,
                                 "eager_slices_over_gather": eag_s / eag_g})
    table = Table(title="Taking k contiguous runs of channels: time(slices + cat) / "
                        "time(index_select), 1 thread, median")
    for col in ("C×H×W", "runs k", "onnxruntime", "eager torch", "gather (ORT, µs)"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['channels']}×{r['size']}×{r['size']}", str(r["runs"]),
                      f"{r['ort_slices_over_gather']:.2f}", f"{r['eager_slices_over_gather']:.2f}",
                      f"{r['ort_gather_us']:.0f}")
    console.print(table)
    table = Table(title="Residual add with shared channels in P runs of the trunk: "
                        "time(P slice-adds) / time(gather trunk + 3 pieces)")
    for col in ("C×H×W", "pieces P", "onnxruntime", "eager torch"):
        table.add_column(col, justify="right")
    for r in add_rows:
        table.add_row(f"{r['channels']}×{r['size']}×{r['size']}", str(r["pieces"]),
                      f"{r['ort_slices_over_gather']:.2f}", f"{r['eager_slices_over_gather']:.2f}")
    console.print(table)
    if not args.quick:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "residual_ops.json"), "w") as f:
            json.dump({**stamp(),
                       "selection": rows, "residual_add": add_rows}, f, indent=2)
        with open(os.path.join(args.out, "residual_ops.txt"), "w") as f:
            f.write(console.export_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
