"""Train and validate a YOLOv5 on NWPU VHR-10 (the 454 shared training images, split here).

The same script runs a small CPU budget and a full GPU protocol unchanged; only the knobs
differ.  The L1RR paper trains yolov5s at 640 px for 300 epochs on a GPU; on 2 CPU cores one
yolov5n@320 epoch takes about 20 s (DESIGN.md), so a CPU run uses tens of epochs and gives
comparable *relative* results.

    python -m benchmarks.nwpu --model yolov5s --imgsz 640 --epochs 300 --device cuda  # paper
    python -m benchmarks.nwpu --model yolov5n --imgsz 320 --epochs 30 \
        --batch 8 --nominal-batch 8 --lr0 0.02 --warmup-epochs 1 --cls-gain 2.0      # CPU budget

The pruning protocol (``--protocol``) as run for benchmarks/results/nwpu_protocol_*:

    python -m benchmarks.nwpu --protocol --out runs/nwpu320 --model yolov5s --imgsz 320 \
        --epochs 60 --sparse-epochs 40 --modes none,ns,l1rr --theta 0.005 --phase-epochs 4 \
        --max-phases 9 --save-period 2                                   # 75 min on 2 cores
    python -m benchmarks.nwpu --protocol --out runs/nwpu160 --model yolov5s --imgsz 160 \
        --epochs 100 --sparse-epochs 200 --modes none,l1rr --theta 0.001 --phase-epochs 20 \
        --max-phases 10                                                  # 38 min on 2 cores

The defaults are YOLOv5's recipe; on a CPU budget of tens of epochs it leaves too few
optimizer steps (gradients accumulated to 64 images), so the budget run steps every batch of 8
with a higher learning rate, the recipe benchmarks/synthetic.py measured fastest.

Writes ``OUT/dataset`` (the YOLO-format split), ``OUT/train`` (checkpoints, results.jsonl) and a
results table ``benchmarks/results/nwpu_<model>_<imgsz>px_<epochs>ep.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from graphprune import data as gpdata
from graphprune.checkpoint import load
from graphprune.detect.train import TrainConfig, train
from graphprune.detect.val import resolve_device, validate

from benchmarks import ablation
from benchmarks.common import stamp

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data" / "nwpu_vhr10"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=SHARED, help="NWPU VHR-10 folder")
    parser.add_argument("--model", default="yolov5n")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--nominal-batch", type=int, default=64)
    parser.add_argument("--lr0", type=float, default=0.01)
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--cls-gain", type=float, default=0.5)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mosaic", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("runs/nwpu"))
    parser.add_argument("--quick", action="store_true", help="2 epochs: checks the pipeline")
    parser.add_argument("--protocol", action="store_true",
                        help="the pruning protocol: baseline, then NS and L1RR sparse training "
                             "from it, each compiled at LFA⁺ <= 1 %% (benchmarks/ablation.py "
                             "on NWPU), with reconstruct vs couple at the chosen threshold")
    parser.add_argument("--sparse-epochs", type=int, default=None,
                        help="--protocol: epochs of sparse training (default: --epochs)")
    parser.add_argument("--modes", default="none,ns,l1rr", help="--protocol: sparsity modes")
    parser.add_argument("--theta", type=float, default=1e-2,
                        help="--protocol: sparsity strength θ of the sparse runs")
    parser.add_argument("--phase-epochs", type=int, default=3,
                        help="--protocol: epochs between α/λ updates")
    parser.add_argument("--max-phases", type=int, default=3,
                        help="--protocol: at most this many α/λ updates")
    parser.add_argument("--save-period", type=int, default=0, metavar="N",
                        help="--protocol: sparse runs keep a checkpoint every N epochs, each "
                             "compiled at the LFA target too (reconstruct vs couple along the "
                             "run)")
    parser.add_argument("--lfa-criterion", choices=("plus", "two-sided"), default="plus",
                        help="--protocol: what the LFA target bounds (LFA⁺ or LFA±)")
    parser.add_argument("--tag", default="",
                        help="--protocol: suffix of the results' file names (e.g. _progressive)")
    parser.add_argument("--reuse", action="store_true",
                        help="--protocol: reuse finished runs found in --out")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 2
    console = Console()
    dataset = args.out / "dataset"
    if not (dataset / "data.yaml").exists():
        gpdata.convert_nwpu(args.src, dataset, val_fraction=args.val_fraction, seed=args.seed)
    if args.protocol:
        return protocol(args, dataset / "data.yaml")
    run = args.out / f"{args.model}_{args.imgsz}px_{args.epochs}ep"
    config = TrainConfig(data=str(dataset / "data.yaml"), model=args.model, imgsz=args.imgsz,
                         epochs=args.epochs, batch=args.batch, workers=args.workers,
                         device=args.device, seed=args.seed, out=str(run), mosaic=args.mosaic,
                         cache=True, nominal_batch=args.nominal_batch, lr0=args.lr0,
                         warmup_epochs=args.warmup_epochs, cls=args.cls_gain)
    if run.exists():
        shutil.rmtree(run)
    start = time.perf_counter()
    trainer = train(config, console=Console(stderr=True))
    seconds = time.perf_counter() - start
    device = resolve_device(args.device)
    best = load(run / "best.pt").to(device)
    data = gpdata.load_data_config(config.data)
    loader = gpdata.make_loader(gpdata.DetectionDataset(data.val, data.names, args.imgsz),
                                args.batch, shuffle=False, workers=trainer.workers, epoch_seed=0)
    metrics = validate(best, loader, data.names, device)
    console.print(metrics.table())
    row = {"model": args.model, "imgsz": args.imgsz, "epochs": args.epochs,
           "recipe": {k: getattr(args, k) for k in ("batch", "nominal_batch", "lr0",
                                                     "warmup_epochs", "cls_gain", "mosaic")},
           "train_images": len(trainer.train_set), "val_images": len(trainer.val_set),
           "device": str(device), **stamp(),
           "train_minutes": round(seconds / 60, 1), **metrics.as_dict()}
    if not args.quick:
        args.results.mkdir(parents=True, exist_ok=True)
        stem = args.results / f"nwpu_{args.model}_{args.imgsz}px_{args.epochs}ep"
        stem.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
        lines = [f"# NWPU VHR-10, {args.model} @ {args.imgsz} px, {args.epochs} epochs",
                 "",
                 f"{row['train_images']} training / {row['val_images']} validation images "
                 f"(seed {args.seed}); recipe {row['recipe']}; {row['device']} on "
                 f"{row['machine']}, torch "
                 f"{row['torch']}, {row['date']}; training took {row['train_minutes']} min.",
                 "", "| class | images | instances | P | R | mAP50 | mAP50-95 |",
                 "|---|---|---|---|---|---|---|"]
        overall = {"name": "all", "images": metrics.images, "instances": metrics.instances,
                   "precision": metrics.precision, "recall": metrics.recall,
                   "map50": metrics.map50, "map": metrics.map}
        for c in [overall, *metrics.per_class]:
            lines.append(f"| {c['name']} | {c['images']} | {c['instances']} | "
                         f"{c['precision']:.3f} | {c['recall']:.3f} | {c['map50']:.3f} | "
                         f"{c['map']:.3f} |")
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


def protocol(args, data_yaml: Path) -> int:
    """Baseline → sparse training per mode → LFA-guided compile → a Table 4/6-shaped summary."""

    sparse_epochs = args.sparse_epochs or args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["--data", str(data_yaml), "--model", args.model, "--imgsz", str(args.imgsz),
                "--base-epochs", str(args.epochs), "--epochs", str(sparse_epochs),
                "--modes", args.modes, "--out", str(args.out / "protocol"),
                "--theta", str(args.theta), "--phase-epochs", str(args.phase_epochs),
                "--max-phases", str(args.max_phases), "--device", args.device,
                "--save-period", str(args.save_period), "--results", tmp,
                "--lfa-criterion", args.lfa_criterion]
        if args.reuse:
            argv.append("--reuse")
        if args.quick:
            argv.append("--quick")
        ablation.main(argv)
        if args.quick:
            return 0
        result = json.loads((Path(tmp) / "ablation.json").read_text())
    result.update(benchmark="nwpu --protocol", src=str(args.src))
    lines = [f"# NWPU VHR-10 pruning protocol: {args.model} @ {args.imgsz} px", "",
             f"Baseline {result['base_epochs']} epochs from scratch, then {result['epochs']} "
             f"epochs of sparse training from it at θ = {result['theta']} (α/λ every "
             f"{result['phase_epochs']} epochs, at most {result['max_phases']} updates, unless "
             f"the row sets its own; lr0 {result['sparse_lr0']}); each model compiled at "
             f"{'LFA±' if result.get('lfa_criterion') == 'two-sided' else 'LFA⁺'} <= "
             f"{result['lfa_target']} "
             f"with bias folding on {result['calib_images']} validation images, no fine-tuning; "
             f"latency: onnxruntime on the CPU, batch 1, {args.imgsz} px, median of 30 "
             f"interleaved runs; {result['machine']}, torch {result['torch']}, "
             f"{result['date']}.", "",
             "| method | mAP50 sparse | mAP50 pruned | params pruned | FLOPs pruned | LFA⁺ | δ "
             "| params pruned at δ: reconstruct / couple | ORT CPU ms, sparse → pruned "
             "| train min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        f, rc = r["folded"], r.get("residual_at_threshold")
        pair = "–" if rc is None else (f"{rc['reconstruct_params_pruned']:.1%} / "
                                       f"{rc['couple_params_pruned']:.1%}")
        delta = "–" if f["threshold"] is None else f"{f['threshold']:.3g}"
        minutes = "–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}"
        lines.append(f"| {r['mode']} | {r['map50_sparse']:.3f} | {f['map50_pruned']:.3f} | "
                     f"{f['params_pruned']:.1%} | {f['flops_pruned']:.1%} | "
                     f"{f['lfa_plus']:.2%} | {delta} | {pair} | {ablation.latency_cell(r)} "
                     f"| {minutes} |")
    lines += ["", "Reconstruct vs couple at other global thresholds δ (the share of the prunable "
              "layers' |γ| below δ; params pruned):", "",
              "| method | " + " | ".join(f"{q:.0%} of |γ| below δ" for q in (0.3, 0.5, 0.7))
              + " |", "|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"δ = {p['threshold']:.3g}: {p['reconstruct_params_pruned']:.1%} / "
                 f"{p['couple_params_pruned']:.1%}" for p in r.get("residual_sweep", [])]
        if cells:
            lines.append(f"| {r['mode']} | " + " | ".join(cells) + " |")
    for r in result["rows"]:
        if r.get("trajectory"):
            lines += ["", f"Along the {r['mode']} run (checkpoints every {args.save_period} "
                      "epochs, each compiled at the same LFA⁺ target; reconstruct vs couple at "
                      "the threshold chosen for it):", "",
                      "| epoch | |γ| < 0.01 | δ | params pruned | FLOPs pruned | LFA⁺ "
                      "| params pruned: reconstruct / couple | difference |",
                      "|---|---|---|---|---|---|---|---|"]
            for p in r["trajectory"]:
                if not p["pruned"]:             # even one channel costs too much LFA
                    lines.append(f"| {p['epoch']} | {p['rho']:.1%} | – | 0.0% | 0.0% | – | – "
                                 "| – |")
                    continue
                gap = p["reconstruct_params_pruned"] - p["couple_params_pruned"]
                delta = "all" if p["threshold"] is None else f"{p['threshold']:.3g}"
                lines.append(f"| {p['epoch']} | {p['rho']:.1%} | {delta} | "
                             f"{p['params_pruned']:.1%} | {p['flops_pruned']:.1%} | "
                             f"{p['lfa_plus']:.2%} | {p['reconstruct_params_pruned']:.1%} / "
                             f"{p['couple_params_pruned']:.1%} | {100 * gap:+.1f} points |")
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"nwpu_protocol_{args.model}_{args.imgsz}px{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    Console().print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
