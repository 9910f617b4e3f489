"""How many more parameters the residual reconstruction *can* prune than coupling, per model.

Reconstruction only gains where the branches of a residual add keep different channels: a
producer then emits just its own channels instead of the union.  The gain is largest when every
other layer stays whole (the producers' inputs are wide) and the members' masks disagree.  This
script measures that headroom: only the BatchNorms that feed residual adds are masked, each
member keeping a share ``q`` of its residual channels, either drawn independently ("random") or
as disjoint blocks ("disjoint", the most the branches can disagree); every other BatchNorm keeps
all.  The same masks compile with ``residual="reconstruct"`` and ``"couple"`` (couple keeps the
union of the members); the table gives parameters pruned by each and the difference.

Real sparse training prunes the producers' inputs too and draws correlated masks, so a trained
model lands below these figures (benchmarks/nwpu.py --protocol measures it).  ``--weights CKPT
--threshold δ`` shows where a trained model stands: its own masks at δ (|γ| ≥ δ kept) on every
layer and on the residual members only, and per residual group how many channels each member
keeps, their union and their intersection (the channels couple must keep and the ones both
branches share).

    python -m benchmarks.residual_headroom [--quick] [--models yolov5n,yolov5s] [--imgsz 320]
    python -m benchmarks.residual_headroom --weights runs/x/last.pt --threshold 0.01 --tag _x
"""

from __future__ import annotations

import argparse
import platform
import sys
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune.models import build

from benchmarks.common import compare_residual_modes, stamp, write_results

HERE = Path(__file__).resolve().parent

SHARES = (0.25, 1 / 3, 0.5)


def residual_masks(model, example, share: float, disjoint: bool, seed: int = 0) -> dict:
    """Keep masks for the BatchNorms of the model's residual groups (graphprune's own channel
    analysis): each member keeps ``share`` of its residual channels; all else stays whole."""
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        report = gp.analyze(model, example)
    widths = {n: m.num_features for n, m in model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d)}
    masks: dict[str, np.ndarray] = {}
    for group in report.residual:
        members = [(n, c, r) for n, c, r in group.members if n in widths]
        roots = int(max(r.max() for _, _, r in members)) + 1
        order, take = rng.permutation(roots), max(1, round(share * roots))
        for i, (name, channel, root) in enumerate(members):
            kept_roots = (np.roll(order, -i * (roots // len(members)))[:take] if disjoint
                          else rng.permutation(roots)[:take])
            mask = masks.setdefault(name, np.ones(widths[name], dtype=bool))
            mask[channel] = np.isin(root, kept_roots)
    return masks


def headroom(model, example, share: float, disjoint: bool) -> dict:
    masks = residual_masks(model, example, share, disjoint)
    row = {"share": share, "masks": "disjoint" if disjoint else "random",
           "batchnorms_masked": len(masks), **compare_residual_modes(model, example, masks=masks)}
    row["difference"] = row["reconstruct_params_pruned"] - row["couple_params_pruned"]
    return row


def trained_view(model, example, delta: float) -> dict:
    """A trained model's masks at δ: reconstruct vs couple with them on every layer and on the
    residual members only, and each residual group's kept channels per member, union and
    intersection (in the group's channels)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        report = gp.analyze(model, example)
    full = {n: m.weight.detach().abs().cpu().numpy() >= delta for n, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d)}
    groups, members_only = [], {}
    for k, group in enumerate(report.residual):
        members = [(n, c, r) for n, c, r in group.members if n in full]
        kept = [set(r[full[n][c]].tolist()) for n, c, r in members]
        for n, _c, _r in members:
            members_only[n] = full[n]
        roots = int(max(r.max() for _, _, r in members)) + 1
        groups.append({"group": k, "channels": roots, "members": [n for n, _, _ in members],
                       "kept": [len(x) for x in kept], "union": len(set().union(*kept)),
                       "intersection": len(set.intersection(*kept)) if kept else 0})
    out = {"threshold": delta, "groups": groups}
    for key, masks in (("all_layers", full), ("residual_members_only", members_only)):
        row = compare_residual_modes(model, example, masks=masks)
        row["difference"] = row["reconstruct_params_pruned"] - row["couple_params_pruned"]
        out[key] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov5n,yolov5s,yolov5m")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--quick", action="store_true", help="yolov5n at 128 px only")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a trained graphprune checkpoint: its own masks at --threshold")
    parser.add_argument("--threshold", type=float, default=0.01)
    parser.add_argument("--tag", default="", help="suffix of the results' file names")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.imgsz = "yolov5n", 128
    if args.weights is not None:
        return trained(args)
    table = Table(title=f"Residual-reconstruction headroom: only residual members masked, "
                        f"{args.imgsz} px ({platform.machine()}, {date.today()})")
    for col in ("model", "kept per member", "masks", "params pruned: reconstruct / couple",
                "difference", "FLOPs pruned: reconstruct / couple"):
        table.add_column(col, justify="right")
    rows = []
    example = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    for name in args.models.split(","):
        model = build(name, num_classes=10).eval()
        for share in SHARES:
            for disjoint in (False, True):
                row = {"model": name, **headroom(model, example, share, disjoint)}
                rows.append(row)
                table.add_row(name, f"{share:.0%}", row["masks"],
                              f"{row['reconstruct_params_pruned']:.1%} / "
                              f"{row['couple_params_pruned']:.1%}",
                              f"{100 * row['difference']:+.1f} points",
                              f"{row['reconstruct_flops_pruned']:.1%} / "
                              f"{row['couple_flops_pruned']:.1%}")
    Console().print(table)
    if not args.quick:
        write_results(args.results, "residual_headroom", {
            "imgsz": args.imgsz, **stamp(), "rows": rows}, [table], 130)
    return 0


def trained(args) -> int:
    model = gp.load(args.weights).eval()
    example = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    view = trained_view(model, example, args.threshold)
    table = Table(title=f"{args.weights} at δ = {args.threshold:g}, {args.imgsz} px: residual "
                        f"groups ({platform.machine()}, {date.today()})")
    for col in ("group", "channels", "kept per member", "union (couple keeps)",
                "intersection (shared)"):
        table.add_column(col, justify="right")
    for g in view["groups"]:
        table.add_row(str(g["group"]), str(g["channels"]), " / ".join(map(str, g["kept"])),
                      str(g["union"]), str(g["intersection"]))
    summary = Table(title="params pruned: reconstruct / couple")
    for col in ("masks", "reconstruct / couple", "difference"):
        summary.add_column(col, justify="right")
    for key in ("all_layers", "residual_members_only"):
        row = view[key]
        summary.add_row(key.replace("_", " "), f"{row['reconstruct_params_pruned']:.1%} / "
                        f"{row['couple_params_pruned']:.1%}",
                        f"{100 * row['difference']:+.1f} points")
    console = Console()
    console.print(table)
    console.print(summary)
    if not args.quick:
        write_results(args.results, f"residual_headroom{args.tag}", {
            "weights": str(args.weights), "imgsz": args.imgsz,
            **stamp(), **view},
            [table, summary], 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
