"""Sparse-training ablation, the analogue of the L1RR paper's Table 5: plain training, network
slimming (NS), DSM alone and DSM + SASM (L1RR), at the same θ and epochs — and the scale-aware
modes (si, hoyer, polar, progressive) beside them.

One baseline is trained from scratch; each sparsity mode then trains from it for the same
epochs; every model is compiled at LFA⁺ <= 1 % (the LFA-guided search) and validated before
and after pruning, with no fine-tuning.  The "none" row compiles the baseline itself.  A mode
may carry its own settings, ``MODE:KEY=VALUE:...`` (θ, phase_epochs, max_phases, or the
regulariser's options such as target), e.g. ``si:theta=0.05`` or
``progressive:max_phases=9:target=0.75``.

    python -m benchmarks.ablation                       # synthetic set, yolov5n @ 256, CPU budget
    python -m benchmarks.ablation --modes none,ns,l1rr,si,si:theta=0.05,hoyer,polar:theta=0.005,\
        progressive:max_phases=9:target=0.75
    python -m benchmarks.ablation --data datasets/nwpu/data.yaml --imgsz 320 --epochs 60
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

import graphprune as gp
from graphprune import data as gpdata
# the recipe benchmarks/synthetic.py measured to learn fastest on 2 CPU cores
from graphprune.demo import DEMO_RECIPE as RECIPE
from graphprune.detect.train import TrainConfig, train
from graphprune.detect.val import resolve_device, validate
from graphprune.sparsity import prunable_batchnorms

from benchmarks.common import (compare_residual_modes, logged_minutes, machine, ort_latency, stamp,
                               write_results)

HERE = Path(__file__).resolve().parent

# every mode on one budget: the paper's Table 5 rows (none, NS, DSM, L1RR), the scale-aware
# penalties, and progressive at the demo's setting with both importance rankings
DEFAULT_MODES = ("none,ns,dsm,l1rr,si,si:theta=0.05,hoyer,polar:theta=0.005,"
                 "progressive:max_phases=9:target=0.75,"
                 "progressive:max_phases=9:target=0.75:importance=gamma")


def evaluate(model, data, imgsz, device):
    loader = gpdata.make_loader(gpdata.DetectionDataset(data.val, data.names, imgsz), 16,
                                shuffle=False, workers=0, epoch_seed=0)
    return validate(model.to(device), loader, data.names, device)


def near_zero_share(model) -> float:
    """The share of all BatchNorm |γ| below 0.01."""
    gammas = np.concatenate([m.weight.detach().abs().cpu().numpy() for m in model.modules()
                             if isinstance(m, torch.nn.BatchNorm2d)])
    return float((gammas < 0.01).mean())


def prune_and_measure(weights: Path, data, imgsz: int, lfa_target: float, calib, device,
                      latency_rounds: int = 30, criterion: str = "plus"):
    """Compile a trained model at LFA⁺ (or LFA±, ``criterion``) <= target, with bias folding
    and with plain
    zero-masking; mAP of the sparse and of each pruned model, onnxruntime CPU latency of the
    sparse and of the folded pruned model."""
    model = gp.load(weights).eval()
    example = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    before = evaluate(model, data, imgsz, device)
    row = {"rho": near_zero_share(model), "map50_sparse": before.map50,
           "map_sparse": before.map}
    for key, fold in (("folded", True), ("zero_mask", False)):
        found, why = lfa_search(model, example, calib, lfa_target, device, fold, criterion)
        if found is None:
            row[key] = {"threshold": None, "channels_pruned": 0.0, "params_pruned": 0.0,
                        "flops_pruned": 0.0, "params_after": None,
                        "lfa_plus": float("nan"), "lfa_signed": float("nan"),
                        "evaluations": None, "map50_pruned": before.map50,
                        "map_pruned": before.map, "note": why}
            continue
        after = evaluate(found.compiled.module, data, imgsz, device)
        if fold:
            pruned_module = found.compiled.module
        s = found.compiled.stats
        delta = found.search.plan.threshold
        row[key] = {"threshold": None if delta == float("inf") else delta,
                    "channels_pruned": s.channels_pruned, "params_pruned": 1 - s.params_ratio,
                    "flops_pruned": 1 - s.flops_ratio, "params_after": s.params_after,
                    "lfa_plus": found.lfa_slim.plus, "lfa_signed": found.lfa_slim.signed,
                    "lfa_two_sided": found.lfa_slim.two_sided,
                    "evaluations": found.search.evaluations, "map50_pruned": after.map50,
                    "map_pruned": after.map}
    # onnxruntime CPU latency at batch 1, the sparse model and the folded pruned one interleaved
    if row["folded"]["threshold"] is not None:
        row["latency_ms"] = ort_latency({"unpruned": model, "pruned": pruned_module}, example,
                                        latency_rounds, os.cpu_count())
    # the paper's residual-reconstruction claim at the threshold the search chose, and at the
    # thresholds below which 30/50/70 % of the prunable layers' |γ| lie (each row: one global
    # δ for both modes)
    delta = row["folded"]["threshold"]
    if delta is not None:
        row["residual_at_threshold"] = residual_pair(model, example, delta)
    modules = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        names = prunable_batchnorms(model, example)
    prunable = np.sort(np.concatenate([modules[n].weight.detach().abs().cpu().numpy()
                                       for n in names]))
    row["residual_sweep"] = [
        {"gamma_share_below": q, **residual_pair(model, example, share_threshold(prunable, q))}
        for q in (0.3, 0.5, 0.7)]
    return row


def share_threshold(gammas: np.ndarray, share: float) -> float:
    """The global δ that prunes (|γ| < δ) at least ``share`` of the sorted |γ| ``gammas``: just
    above the k-th smallest, so that its ties go too (a progressive model holds many exact
    zeros, which a δ equal to them would keep)."""
    k = max(int(share * len(gammas)), 1)
    return float(np.nextafter(gammas[k - 1], np.inf))


def trajectory(run: Path, every: int, imgsz: int, lfa_target: float, calib,
               device, criterion: str = "plus") -> list[dict]:
    """Along a sparse run: for every checkpoint ``epoch<N>.pt`` it kept with N a multiple of
    ``every`` (``--save-period``), the share of |γ| below 0.01, the threshold the LFA search
    chooses, what it prunes, and reconstruct vs couple at that threshold."""
    numbered = {p: p.stem[len("epoch"):] for p in run.glob("epoch*.pt")}
    points = sorted((int(n), p) for p, n in numbered.items()
                    if n.isdigit() and int(n) % every == 0)
    example = torch.rand(1, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(0))
    rows = []
    for epoch, path in track(points, description=f"{run.name}: checkpoints"):
        model = gp.load(path).eval()
        row = {"epoch": epoch, "rho": near_zero_share(model), "threshold": None,
               "pruned": False}
        found, why = lfa_search(model, example, calib, lfa_target, device, True, criterion)
        if found is None:
            rows.append({**row, "note": why})
            continue
        delta = found.search.plan.threshold
        everything = math.isinf(delta)              # every prunable channel goes
        if everything:                              # a finite δ above every |γ|
            delta = np.nextafter(max(float(m.weight.detach().abs().max()) for m in
                                     model.modules() if isinstance(m, torch.nn.BatchNorm2d)),
                                 np.inf)
        s = found.compiled.stats
        row.update(residual_pair(model, example, delta),
                   threshold=None if everything else delta, pruned=True,
                   params_pruned=1 - s.params_ratio, flops_pruned=1 - s.flops_ratio,
                   lfa_plus=found.lfa_slim.plus)
        rows.append(row)
    return rows


def share(value) -> str:
    """A percentage, or a dash where nothing was pruned (no LFA was measured)."""
    return "–" if value is None or value != value else f"{value:.2%}"


def latency_cell(row: dict) -> str:
    """'sparse → pruned' onnxruntime milliseconds, or '–' when nothing was pruned."""
    ms = row.get("latency_ms")
    return "–" if ms is None else f"{ms['unpruned']:.1f} → {ms['pruned']:.1f}"


def residual_pair(model, example, delta: float) -> dict:
    """Params and FLOPs pruned by reconstruct and by couple at one global threshold δ."""
    return {"threshold": delta, **compare_residual_modes(model, example, threshold=delta)}


def lfa_search(model, example, calib, lfa_target: float, device, fold: bool,
               criterion: str = "plus"):
    """The LFA-guided search's result and None, or None and why not: even the smallest prune
    costs more LFA than the target."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        try:
            return gp.prune_to_target(model, example, calib, lfa_target=lfa_target,
                                      fold_pruned_bias=fold, device=device,
                                      lfa_criterion=criterion), None
        except gp.GraphpruneError as error:
            return None, str(error)


TRAIN_KEYS = ("theta", "phase_epochs", "max_phases")


def parse_mode(spec: str) -> tuple[str, dict[str, float | str]]:
    """``MODE:KEY=VALUE:...`` → (mode, settings); values are numbers where they parse."""
    mode, *items = spec.split(":")
    settings: dict[str, float | str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"ablation.py: {item!r} in {spec!r} is not KEY=VALUE")
        try:
            settings[key] = int(value) if key in ("phase_epochs", "max_phases") else float(value)
        except ValueError:
            settings[key] = value
    return mode, settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data.yaml (default: the synthetic set)")
    parser.add_argument("--model", default="yolov5n")
    parser.add_argument("--imgsz", type=int, default=256)
    parser.add_argument("--base-epochs", type=int, default=30,
                        help="epochs of the shared baseline, trained from scratch")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of sparse training, from the baseline, per mode")
    parser.add_argument("--theta", type=float, default=1e-2)
    parser.add_argument("--phase-epochs", type=int, default=3)
    parser.add_argument("--max-phases", type=int, default=3)
    parser.add_argument("--sparse-lr0", type=float, default=0.01,
                        help="initial learning rate of the sparse runs (no warm-up)")
    parser.add_argument("--lfa-target", type=float, default=0.01)
    parser.add_argument("--calib-images", type=int, default=64)
    parser.add_argument("--lfa-criterion", choices=("plus", "two-sided"), default="plus",
                        help="what the LFA target bounds: LFA⁺ (the paper's losses) or LFA±")
    parser.add_argument("--modes", default=DEFAULT_MODES,
                        help="none = the baseline compiled as it is, without sparse training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs found in --out instead of training again")
    parser.add_argument("--save-period", type=int, default=0, metavar="N",
                        help="sparse runs keep a checkpoint every N epochs, and each is "
                             "compiled at the LFA target too (reconstruct vs couple along the "
                             "run)")
    parser.add_argument("--quick", action="store_true",
                        help="2 + 2 epochs, phases of 1 epoch, results not written")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="", help="suffix of the results' file names")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_epochs, args.epochs, args.phase_epochs, args.calib_images = 2, 2, 1, 16
    synthetic = args.out / "synthetic"
    if args.data:
        data_yaml = args.data
    elif args.reuse and (synthetic / "data.yaml").exists():
        data_yaml = str(synthetic / "data.yaml")
    else:
        data_yaml = str(gpdata.make_synthetic_dataset(synthetic, 400, 100, seed=args.seed,
                                                      overwrite=True))
    data = gpdata.load_data_config(data_yaml)
    calib = gp.CalibrationSet.from_dataset(
        gpdata.DetectionDataset(data.val, data.names, args.imgsz), args.calib_images)
    console, rows = Console(), []

    def run(name: str, **config) -> tuple[Path, float]:
        path = args.out / name
        if args.reuse and (path / "last.pt").exists():
            return path / "last.pt", logged_minutes(path / "results.jsonl")
        if path.exists():
            shutil.rmtree(path)
        start = time.perf_counter()
        config = {**RECIPE, "cache": True, **config}
        train(TrainConfig(data=data_yaml, imgsz=args.imgsz, device=args.device, seed=args.seed,
                          out=str(path), **config), console=Console(stderr=True))
        return path / "last.pt", (time.perf_counter() - start) / 60

    base, base_minutes = run(f"baseline_{args.base_epochs}ep", model=args.model,
                             epochs=args.base_epochs, val_every=args.base_epochs)
    device = resolve_device(args.device)
    for spec in args.modes.split(","):
        mode, settings = parse_mode(spec)
        if mode == "none":
            weights, minutes = base, base_minutes
        else:
            train_settings = {"theta": args.theta, "phase_epochs": args.phase_epochs,
                              "max_phases": args.max_phases,
                              **{k: v for k, v in settings.items() if k in TRAIN_KEYS}}
            options = {k: v for k, v in settings.items() if k not in TRAIN_KEYS}
            extra = "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}"
                            for k, v in settings.items() if k != "theta")
            weights, minutes = run(f"{mode}{extra}_{args.epochs}ep_theta"
                                   f"{train_settings['theta']:g}",
                                   weights=str(base), epochs=args.epochs,
                                   val_every=args.epochs, sparsity=mode,
                                   sparsity_options=options, **train_settings,
                                   save_period=args.save_period,
                                   **{**RECIPE, "lr0": args.sparse_lr0, "warmup_epochs": 0})
        row = prune_and_measure(weights, data, args.imgsz, args.lfa_target, calib, device,
                                latency_rounds=5 if args.quick else 30,
                                criterion=args.lfa_criterion)
        if mode != "none" and args.save_period > 0:
            row["trajectory"] = trajectory(weights.parent, args.save_period, args.imgsz,
                                           args.lfa_target, calib, device,
                                           args.lfa_criterion)
        rows.append({"mode": spec, "train_minutes": None if minutes != minutes
                     else round(minutes, 1), **row})
    table = Table(title=f"{args.model} @ {args.imgsz}: baseline {args.base_epochs} epochs, then "
                        f"{args.epochs} epochs of sparse training at θ = {args.theta} (α/λ "
                        f"updated every {args.phase_epochs} epochs, at most {args.max_phases} "
                        f"times) unless the row sets its own; compiled at "
                        f"{'LFA±' if args.lfa_criterion == 'two-sided' else 'LFA⁺'} <= "
                        f"{args.lfa_target}, folded / zero-masked "
                        f"({machine()}, {date.today()})")
    for col in ("sparsity", "|γ|<0.01", "mAP50 sparse", "channels pruned", "params pruned",
                "FLOPs pruned", "LFA⁺", "mAP50 pruned", "ORT ms", "train min"):
        table.add_column(col, justify="right")
    for r in rows:
        f, z = r["folded"], r["zero_mask"]
        table.add_row(r["mode"], f"{r['rho']:.1%}", f"{r['map50_sparse']:.3f}",
                      f"{f['channels_pruned']:.1%} / {z['channels_pruned']:.1%}",
                      f"{f['params_pruned']:.1%} / {z['params_pruned']:.1%}",
                      f"{f['flops_pruned']:.1%} / {z['flops_pruned']:.1%}",
                      f"{share(f['lfa_plus'])} / {share(z['lfa_plus'])}",
                      f"{f['map50_pruned']:.3f} / {z['map50_pruned']:.3f}",
                      latency_cell(r),
                      "–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}")
    console.print(table)
    if not args.quick:
        write_results(args.results, f"ablation{args.tag}", {
            "data": "synthetic" if args.data is None else args.data, "model": args.model,
            "imgsz": args.imgsz, "base_epochs": args.base_epochs, "epochs": args.epochs,
            "theta": args.theta, "phase_epochs": args.phase_epochs,
            "max_phases": args.max_phases, "sparse_lr0": args.sparse_lr0,
            "save_period": args.save_period, "lfa_target": args.lfa_target,
            "lfa_criterion": args.lfa_criterion,
            "calib_images": args.calib_images,
            "recipe": RECIPE, **stamp(), "rows": rows},
            [table], 160)
    return 0


if __name__ == "__main__":
    sys.exit(main())
