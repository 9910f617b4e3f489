"""What the sparsity regulariser costs per training step, on yolov5s.

Times full training steps (forward, YOLOv5 loss, backward, SGD step) with and without the
regulariser's ``apply`` (L1RR after its first update, so every term is live), interleaved, and
``apply`` alone; prints the overhead as a share of the step.

    python -m benchmarks.sparsity_overhead [--imgsz 320] [--batch 8] [--steps 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from graphprune.detect.loss import YOLOv5Loss
from graphprune.detect.train import parameter_groups
from graphprune.models import build
from graphprune.sparsity import SparsityRegularizer

from benchmarks.common import stamp

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolov5s")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="yolov5n, 128 px, 5 steps")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.imgsz, args.steps = "yolov5n", 128, 5
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(args.model, num_classes=10).to(device).train()
    loss_fn = YOLOv5Loss(model, imgsz=args.imgsz)
    opt = torch.optim.SGD(parameter_groups(model, 5e-4), lr=1e-4, momentum=0.9)
    reg = SparsityRegularizer(model, torch.zeros(1, 3, args.imgsz, args.imgsz, device=device),
                              phase_epochs=1)
    reg.set_epoch(1)                                    # α and λ computed: every term is live
    x = torch.rand(args.batch, 3, args.imgsz, args.imgsz, device=device)
    targets = torch.tensor([[i, i % 10, 0.5, 0.5, 0.2, 0.3] for i in range(args.batch)],
                           device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(regularise: bool) -> float:
        sync()
        start = time.perf_counter()
        loss, _ = loss_fn(model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if regularise:
            reg.apply()
        opt.step()
        sync()
        return time.perf_counter() - start

    def apply_only() -> float:
        sync()
        start = time.perf_counter()
        reg.apply()
        sync()
        return time.perf_counter() - start

    step(False), step(True)                                   # warm-up
    plain, with_reg, alone = [], [], []
    for _ in range(args.steps):
        plain.append(step(False))
        with_reg.append(step(True))
        alone.append(apply_only())
    p, r, a = (statistics.median(v) for v in (plain, with_reg, alone))
    table = Table(title=f"sparsity regulariser cost, {args.model} batch {args.batch} at "
                        f"{args.imgsz}² on {device} ({len(reg.names)} BatchNorms)")
    for col in ("step without", "step with", "apply() alone", "apply / step"):
        table.add_column(col, justify="right")
    table.add_row(f"{p * 1e3:.1f} ms", f"{r * 1e3:.1f} ms", f"{a * 1e3:.3f} ms", f"{a / p:.2%}")
    Console().print(table)
    if not args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "sparsity_overhead.json").write_text(json.dumps({
            "model": args.model, "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps,
            "device": str(device), **stamp(), "step_ms": p * 1e3,
            "step_with_regulariser_ms": r * 1e3, "apply_ms": a * 1e3,
            "apply_share_of_step": a / p}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
