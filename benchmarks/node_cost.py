"""What one extra small node costs in onnxruntime, in convolution FLOPs.

The residual reconstruction removes FLOPs from the producers of a residual add but emits extra
nodes (slices, partial adds, a concatenation) to rebuild the add.  ORT's per-kernel profile of
yolov5s with random γ showed the same total kernel time with and without them, yet a slower
run: the cost is per node (dispatch on the thread pool, allocation), not per byte.  This script
measures that cost and converts it to FLOPs of convolution at the same thread count, the unit
``residual="auto"`` weighs it in (``graphprune.costs.NODE_FLOPS``).

A stack of 3×3 convolutions (C→C at S×S, batch 1) is timed plain and with ``k`` identity
round trips inserted after every convolution: ``cat(x[:, :h], x[:, h:])`` (two slices and a
concatenation: three nodes, the shape of the pieces the reconstruction emits).  Both run
interleaved, many times; per-node seconds = (t_with − t_plain) / extra nodes; FLOP rate =
FLOPs of the plain stack / t_plain; node cost in FLOPs = their product.

    python -m benchmarks.node_cost [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn
from rich.console import Console
from rich.table import Table

from graphprune.costs import NODE_FLOPS
from graphprune.stats import count_flops

from benchmarks.common import machine, ort_latency, write_results

HERE = Path(__file__).resolve().parent


class ConvStack(nn.Module):
    """``depth`` 3×3 convolutions + SiLU, each followed by ``trips`` slice/cat round trips."""

    def __init__(self, channels: int, depth: int, trips: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1)
                                   for _ in range(depth))
        self.trips, self.half = trips, channels // 2

    def forward(self, x):
        for conv in self.convs:
            x = torch.nn.functional.silu(conv(x))
            for _ in range(self.trips):
                x = torch.cat([x[:, :self.half], x[:, self.half:]], 1)
        return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape, fewer rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="onnxruntime intra-op threads (default: every core, as latency.py)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the tables go (default benchmarks/results; with --quick, "
                             "only when given)")
    args = parser.parse_args(argv)
    shapes = [(64, 40)] if args.quick else [(32, 80), (64, 40), (128, 20), (256, 20)]
    depth, trips, rounds = 8, 4, (20 if args.quick else 200)
    console, rows = Console(), []
    for channels, size in shapes:
        x = torch.randn(1, channels, size, size)
        plain, tripped = ConvStack(channels, depth, 0).eval(), ConvStack(channels, depth, trips)
        tripped.load_state_dict(plain.state_dict())
        ms = ort_latency({"plain": plain, "tripped": tripped}, x, rounds, args.threads)
        nodes = 3 * trips * depth
        flops = count_flops(plain, (x,))
        node_s = max(ms["tripped"] - ms["plain"], 0.0) / 1e3 / nodes
        rate = flops / (ms["plain"] / 1e3)
        rows.append({"channels": channels, "size": size, "plain_ms": ms["plain"],
                     "tripped_ms": ms["tripped"], "extra_nodes": nodes,
                     "node_us": node_s * 1e6, "gflops_per_s": rate / 1e9,
                     "node_mflops": node_s * rate / 1e6})
    table = Table(title=f"One extra small node in onnxruntime ({args.threads} threads, batch 1, "
                        f"median of {rounds} interleaved rounds; {platform.machine()}, "
                        f"{os.cpu_count()} cores, {date.today()}); graphprune.costs.NODE_FLOPS "
                        f"= {NODE_FLOPS / 1e6:.1f} MFLOPs")
    for col in ("C×S×S", "plain ms", f"+{3 * trips * depth} nodes ms", "µs / node",
                "conv GFLOP/s", "node = MFLOPs"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['channels']}×{r['size']}×{r['size']}", f"{r['plain_ms']:.2f}",
                      f"{r['tripped_ms']:.2f}", f"{r['node_us']:.1f}",
                      f"{r['gflops_per_s']:.0f}", f"{r['node_mflops']:.2f}")
    console.print(table)
    if args.results is not None or not args.quick:
        write_results(args.results or HERE / "results", "node_cost", {
            "machine": machine(), "threads": args.threads,
            "torch": torch.__version__, "date": str(date.today()), "rows": rows}, [table], 120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
