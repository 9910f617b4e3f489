"""Bias folding vs plain zero-masking on a sparse-trained model: LFA and mAP.

Both searches run at the same LFA⁺ target on the same calibration images; each emitted model is
validated without fine-tuning.  A third row re-uses the zero-masking search's masks with folding,
to show the effect of folding alone at an identical prune.

    python -m benchmarks.fold                               # the demo's sparse model (make demo)
    python -m benchmarks.fold --weights W.pt --data D.yaml --imgsz 640
"""

from __future__ import annotations

import argparse
import sys
import warnings
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import graphprune as gp
from graphprune import data as gpdata
from graphprune.detect.val import resolve_device
from graphprune.workflow import evaluate_map

from benchmarks.common import machine, stamp, write_results

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("runs/demo/sparse/last.pt"))
    parser.add_argument("--data", type=Path, default=Path("runs/demo/data/data.yaml"))
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--lfa-target", type=float, default=0.01)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    for path, how in ((args.weights, "make demo (or pass --weights)"),
                      (args.data, "make demo (or pass --data)")):
        if not path.exists():
            sys.exit(f"fold.py: {path} does not exist: run {how}")
    device = resolve_device(args.device)
    data = gpdata.load_data_config(args.data)
    calib = gp.CalibrationSet.from_dataset(
        gpdata.DetectionDataset(data.val, data.names, args.imgsz), args.calib_images)
    model = gp.load(args.weights).eval()
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    sparse_map = evaluate_map(model, data, args.imgsz, device).map50
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        plain = gp.prune_to_target(model, x, calib, lfa_target=args.lfa_target)
        folded = gp.prune_to_target(model, x, calib, lfa_target=args.lfa_target,
                                    fold_pruned_bias=True)
        same = gp.compile(model, x, masks=plain.compiled.masks, fold_pruned_bias=True)
    same_lfa = gp.lfa(gp.feature_attention(same.module, calib), plain.search.fa_sparse)
    for name, compiled, loss in (("zero-mask, its own search", plain.compiled, plain.lfa_slim),
                                 ("folded, its own search", folded.compiled, folded.lfa_slim),
                                 ("folded, zero-mask's masks", same, same_lfa)):
        s = compiled.stats
        dev = (compiled.fold or {}).get("deviation_from_gamma_zeroed", {})
        rows.append({"variant": name, "channels_pruned": s.channels_pruned,
                     "params_pruned": 1 - s.params_ratio, "flops_pruned": 1 - s.flops_ratio,
                     "lfa_plus": loss.plus, "lfa_signed": loss.signed,
                     "map50": evaluate_map(compiled.module, data, args.imgsz, device).map50,
                     "border_max": dev.get("max"), "interior_max": dev.get("interior_max")})
    table = Table(title=f"Bias folding on {args.weights} @ {args.imgsz}, LFA⁺ <= "
                        f"{args.lfa_target}; sparse model mAP50 {sparse_map:.3f} "
                        f"({machine()}, {date.today()})")
    for col in ("variant", "channels pruned", "params pruned", "FLOPs pruned", "LFA⁺",
                "signed LFA", "mAP50", "vs γ-zeroed: max / interior"):
        table.add_column(col, justify="right")
    for r in rows:
        dev = "–" if r["border_max"] is None else \
            f"{r['border_max']:.2g} / {r['interior_max']:.2g}"
        table.add_row(r["variant"], f"{r['channels_pruned']:.1%}", f"{r['params_pruned']:.1%}",
                      f"{r['flops_pruned']:.1%}", f"{r['lfa_plus']:.2%}",
                      f"{r['lfa_signed']:+.2%}", f"{r['map50']:.3f}", dev)
    Console().print(table)
    if not args.no_write:
        write_results(args.results, "fold", {
            "weights": str(args.weights), "imgsz": args.imgsz, "lfa_target": args.lfa_target,
            "sparse_map50": sparse_map, **stamp(), "rows": rows},
            [table], 150)
    return 0


if __name__ == "__main__":
    sys.exit(main())
