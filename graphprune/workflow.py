"""``graphprune compile MODEL --data D.yaml --lfa-target 0.01``: search, compile, evaluate,
report — the command-line flow around :func:`graphprune.search.prune_to_target`."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import data as gpdata
from .attention import CalibrationSet
from .checkpoint import load
from .detect.train import TrainConfig, default_workers, train
from .detect.val import resolve_device, validate
from .errors import GraphpruneError
from .export import atomic_directory
from .integrations.ultralytics import save_ultralytics_checkpoint
from .report import markdown, plot_attention, plot_search
from .search import prune_to_target
from .stats import count_flops, count_params


def calibration_set(data, imgsz: int, count: int):
    images = data.val or data.train
    if not images:
        raise GraphpruneError("the dataset has neither val nor train images for calibration",
                              hint="add a 'val' entry to data.yaml")
    dataset = gpdata.DetectionDataset(images, data.names, imgsz, augment=False)
    return CalibrationSet.from_dataset(dataset, count), dataset


def evaluate_map(model: torch.nn.Module, data, imgsz: int, device: torch.device,
                 batch: int = 16, console: Console | None = None, label: str = "") -> Any:
    dataset = gpdata.DetectionDataset(data.val, data.names, imgsz, augment=False)
    loader = gpdata.make_loader(dataset, batch, shuffle=False, workers=default_workers(),
                                epoch_seed=0)
    with _progress(console) as progress:
        task = progress.add_task(f"mAP {label}".strip(), total=len(loader))
        return validate(model.to(device), loader, data.names, device,
                        on_batch=lambda _k: progress.advance(task))


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}"
                    "/{task.total}"), TimeElapsedColumn(), console=console or Console(stderr=True),
                    transient=True)


def target_compile(model: torch.nn.Module, example: torch.Tensor, *, data_yaml: str | None,
                   out: Path, overwrite: bool = False, lfa_target: float | None = None,
                   flops_target: float | None = None, params_target: float | None = None,
                   calib_images: int = 64, lfa_mode: str = "confidence",
                   lfa_layers: list[str] | None = None, lfa_criterion: str = "plus",
                   evaluate: bool = False,
                   finetune_epochs: int = 0, device: str = "auto", residual: str = "reconstruct",
                   min_channels: int = 1, round_to: int = 1, exclude: tuple[str, ...] = (),
                   leaves: tuple[str, ...] = (), onnx: bool = True, pt2: bool = True,
                   heatmaps: int = 4, model_name: str = "model",
                   fold_pruned_bias: bool = False, ultralytics_checkpoint: Path | None = None,
                   baseline: torch.nn.Module | None = None, baseline_name: str | None = None,
                   finetune_recipe: dict[str, Any] | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    """Search → compile → (evaluate, fine-tune) → write ``out`` (and, for an ultralytics
    model, ``ultralytics_checkpoint``).  Returns report.json's data.

    ``baseline``: the unpruned model the sparse one was trained from; with ``evaluate`` its mAP
    heads the report's accuracy table, so the drop is measured from it, not from the sparse
    model.  ``finetune_recipe``: TrainConfig settings for the fine-tune (e.g. the recipe the
    model was trained with)."""
    console = console or Console(stderr=True)
    start = time.perf_counter()
    if out.exists() and not overwrite:
        raise GraphpruneError(f"output directory {str(out)!r} already exists",
                              hint="choose another --out or pass --overwrite")
    imgsz = int(example.shape[-1])
    if example.ndim != 4 or example.shape[-2] != imgsz:
        raise GraphpruneError(f"target-guided compiles need a square image input, got "
                              f"{tuple(example.shape)}", hint="pass --imgsz S")
    dev = resolve_device(device)
    data = gpdata.load_data_config(data_yaml) if data_yaml else None
    if data is None and (lfa_target is not None or evaluate or finetune_epochs):
        raise GraphpruneError("--lfa-target, --eval and --finetune-epochs need --data",
                              hint="pass the dataset's data.yaml (its val images calibrate "
                                   "the search)")
    if baseline is not None and not evaluate:
        raise GraphpruneError("a baseline is only used to compare mAP", hint="add --eval")
    if evaluate and data is not None and not data.val:
        raise GraphpruneError(f"{data_yaml} has no val images to evaluate on",
                              hint="add a 'val' entry to data.yaml, or drop --eval")
    calibration = None                 # FLOPs/params goals without data: no LFA measured
    if data is not None:
        with console.status("reading calibration images"):
            calibration, _ = calibration_set(data, imgsz, calib_images)

    model = model.to(dev).eval()
    with _progress(console) as progress:
        task = progress.add_task("searching the prune (LFA probes)", total=None)

        def on_probe(p):
            loss = "–" if p.lfa_cut is None else f"{100 * p.lfa_cut:.2f} %"
            progress.update(task, advance=1, description=f"searching: {p.prune_ratio:.1%} "
                                                         f"pruned, {name} {loss}")

        name = "LFA⁺" if lfa_criterion == "plus" else "LFA±"

        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            result = prune_to_target(
                model, example, calibration, lfa_target=lfa_target,
                flops_target=flops_target, params_target=params_target, mode=lfa_mode,
                layers=lfa_layers, residual=residual, min_channels=min_channels,
                round_to=round_to,
                exclude=exclude, leaves=leaves, device=dev, on_probe=on_probe,
                keep_maps=heatmaps if data is not None else 0,
                fold_pruned_bias=fold_pruned_bias, lfa_criterion=lfa_criterion)
    compiled, found = result.compiled, result.search
    s = compiled.stats
    with_lfa = data is not None
    report: dict[str, Any] = {
        "model": model_name, "data": data_yaml, "imgsz": imgsz,
        "goal": found.goal, "lfa_target": lfa_target, "flops_target": flops_target,
        "params_target": params_target, "lfa_mode": lfa_mode, "lfa_layers": lfa_layers,
        "params_before": s.params_before, "params_after": s.params_after,
        "flops_before": s.flops_before, "flops_after": s.flops_after,
        "threshold": None if np.isinf(found.plan.threshold) else found.plan.threshold,
        "prune_ratio": s.channels_pruned,
        "lfa_criterion": lfa_criterion,
        "lfa": result.lfa_slim.value(lfa_criterion) if with_lfa else None,
        "lfa_plus": result.lfa_slim.plus if with_lfa else None,
        "lfa_two_sided": result.lfa_slim.two_sided if with_lfa else None,
        "lfa_signed": result.lfa_slim.signed if with_lfa else None,
        "lfa_per_level": result.lfa_slim.per_level if with_lfa else None,
        "lfa_levels_skipped": result.lfa_slim.skipped if with_lfa else None,
        "lfa_probe": found.lfa.value(lfa_criterion) if (with_lfa and found.lfa) else None,
        "fa_sparse": found.fa_sparse.levels if with_lfa else None,
        "fa_pruned": result.fa_slim.levels if with_lfa else None,
        "probes": [p.as_dict() for p in found.probes],
        "evaluations": found.evaluations, "candidates": found.candidates,
        "calibration_images": len(calibration) if with_lfa else 0,
        "feasible": found.feasible, "notes": list(found.notes),
        "max_error": compiled.max_error, "pinned": dict(compiled.pinned),
        "warnings": list(compiled.warnings), "device": str(dev),
        "fold_pruned_bias": compiled.fold,
    }
    report["compile"] = compiled.summary()

    maps = None
    if evaluate and baseline is not None:
        baseline = baseline.to(dev).eval()
        base = evaluate_map(baseline, data, imgsz, dev, console=console, label="baseline")
        report.update(baseline_model=baseline_name, baseline_map50=base.map50,
                      baseline_map=base.map, baseline_params=count_params(baseline),
                      baseline_flops=count_flops(baseline, (example.to(dev),)))
    if evaluate:
        before = evaluate_map(model, data, imgsz, dev, console=console, label="sparse model")
        after = evaluate_map(compiled.module, data, imgsz, dev, console=console,
                             label="slim model")
        report.update(map50_before=before.map50, map50_after=after.map50,
                      map_before=before.map, map_after=after.map)
        maps = {"map50_before": before.map50, "map50_after": after.map50}

    written: list[str] = []
    with atomic_directory(out, overwrite=overwrite) as tmp:
        if finetune_epochs:
            report.update(_finetune(compiled, data_yaml, imgsz, finetune_epochs, device, tmp,
                                    console, finetune_recipe))
            written += ["finetune/"]
        with console.status("writing the graphprune checkpoint, slim.pt2 and slim.onnx"):
            compiled.module.cpu()
            compiled.save(tmp / "slim.graphprune.pt")
            written.append("slim.graphprune.pt")
            if pt2:
                compiled.export_pt2(tmp / "slim.pt2")
                written.append("slim.pt2")
            if onnx:
                compiled.export_onnx(tmp / "slim.onnx")
                written.append("slim.onnx")
        if ultralytics_checkpoint is not None:
            with console.status("writing the ultralytics checkpoint"):
                save_ultralytics_checkpoint(compiled, model, ultralytics_checkpoint,
                                            extra={"model": model_name, "data": data_yaml,
                                                   "lfa": report["lfa"],
                                                   "lfa_target": lfa_target})
            report["ultralytics_checkpoint"] = str(ultralytics_checkpoint)
        plots = []
        if with_lfa:
            chosen = {"prune_ratio": s.channels_pruned, "lfa_plus": report["lfa_plus"],
                      "lfa_cut": report["lfa"]}
            plot_search(tmp / "lfa_vs_prune.png", report["probes"], chosen, lfa_target,
                        found.goal, maps)
            plots.append("lfa_vs_prune.png")
            if heatmaps and result.fa_slim.maps:
                k = len(result.fa_slim.maps)
                images = [calibration.image(i) for i in range(k)]
                boxes = [calibration.boxes_of(i) for i in range(k)]
                plot_attention(tmp / "attention.png", images, boxes,
                               found.fa_sparse.maps[:k], result.fa_slim.maps[:k])
                plots.append("attention.png")
        written += plots + ["report.json", "report.md"]
        report["artifacts"] = written
        report["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (tmp / "report.md").write_text(markdown(report, plots))
    return report


# the fine-tune's defaults: a tenth of YOLOv5's lr0, no warm-up (the weights are trained)
FINETUNE_DEFAULTS = dict(lr0=0.002, warmup_epochs=0)


def _finetune(compiled, data_yaml: str, imgsz: int, epochs: int, device: str, out: Path,
              console: Console, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune the slim model: ``recipe`` (TrainConfig settings) over FINETUNE_DEFAULTS."""
    settings = {**FINETUNE_DEFAULTS, **(recipe or {})}
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "slim.graphprune.pt"
        compiled.save(start)
        trainer = train(TrainConfig(data=data_yaml, weights=str(start), imgsz=imgsz,
                                    epochs=epochs, device=device, out=str(out / "finetune"),
                                    val_every=epochs, **settings), console=console)
    final = trainer.history[-1].get("metrics") or {}
    return {"finetune_epochs": epochs, "finetune_recipe": settings,
            "map50_finetuned": final.get("map50"), "map_finetuned": final.get("map")}


__all__ = ["evaluate_map", "target_compile"]


# -- the embedded demo ------------------------------------------------------------------------
DEMO_SETTINGS = {
    # the full demo: about 9 minutes on 2 CPU cores
    "full": dict(n_train=400, n_val=100, imgsz=256, model="yolov5n", base_epochs=30,
                 sparse_epochs=30, finetune_epochs=5, sparse_lr0=0.01, finetune_lr0=0.002,
                 calib_images=64),
    # the version the tests run: every step, tiny sizes
    "quick": dict(n_train=16, n_val=8, imgsz=64, model="yolov5n", base_epochs=1,
                  sparse_epochs=2, finetune_epochs=1, sparse_lr0=0.01, finetune_lr0=0.002,
                  calib_images=8),
}
# Sparse-training settings per mode for the demo's budget (30 epochs after the baseline; the
# quick demo's 2 epochs use phases of one epoch).  progressive: a tenth of the run per phase,
# nine updates, channels removing 75 % of the FLOPs faded out by the end; l1rr/dsm/ns: θ = 0.01 and
# α/λ updated every 3 epochs at most 3 times (the settings benchmarks/ablation.py measured
# before the collapse, see the README).
DEMO_SPARSITY: dict[str, dict[str, Any]] = {
    "progressive": dict(phase_epochs=3, max_phases=9, sparsity_options=dict(target=0.75)),
    "l1rr": dict(theta=0.01, phase_epochs=3, max_phases=3),
    "dsm": dict(theta=0.01, phase_epochs=3, max_phases=3),
    "ns": dict(theta=0.01),
}
DEMO_MODE = "progressive"
# the recipe benchmarks/synthetic.py found to learn fastest from scratch on 2 CPU cores
DEMO_RECIPE = dict(batch=8, nominal_batch=8, lr0=0.02, warmup_epochs=1, cls=2.0)


def demo_sparsity(mode: str, quick: bool = False) -> dict[str, Any]:
    """TrainConfig settings of the demo's sparse run in ``mode``."""
    if mode not in DEMO_SPARSITY:
        raise GraphpruneError(f"the demo has no settings for sparsity mode {mode!r}",
                              hint=f"choose one of {', '.join(DEMO_SPARSITY)}")
    settings = {"sparsity": mode, **copy.deepcopy(DEMO_SPARSITY[mode])}
    if quick:
        settings.update(phase_epochs=1, max_phases=1)
    return settings


def run_demo(out: Path, quick: bool = False, overwrite: bool = False, lfa_target: float = 0.01,
             device: str = "auto", mode: str = DEMO_MODE, finetune: bool = True,
             lfa_criterion: str = "two-sided", console: Console | None = None
             ) -> dict[str, Any]:
    """Synthetic data → baseline → sparse training → ``--lfa-target`` compile (→ a short
    fine-tune) → report with baseline, sparse, pruned (and fine-tuned) mAP."""

    console = console or Console(stderr=True)
    s = DEMO_SETTINGS["quick" if quick else "full"]
    sparsity = demo_sparsity(mode, quick)
    if out.exists():
        if not overwrite:
            raise GraphpruneError(f"output directory {str(out)!r} already exists",
                                  hint="choose another --out or pass --overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    steps = 5 if finetune else 4

    @contextmanager
    def step(name: str, message: str):
        console.rule(f"[bold]{message}")
        began = time.perf_counter()
        yield
        timings[name] = time.perf_counter() - began

    with step("data", f"1/{steps} synthetic dataset: {s['n_train']} training + {s['n_val']} "
                      f"validation images of {s['imgsz']} px"):
        data_yaml = gpdata.make_synthetic_dataset(out / "data", s["n_train"], s["n_val"],
                                                  seed=0, size=max(s["imgsz"], 64))
    common = dict(data=str(data_yaml), imgsz=s["imgsz"], device=device, workers=0,
                  **DEMO_RECIPE)
    with step("baseline", f"2/{steps} baseline: {s['model']} from scratch, {s['base_epochs']} "
                          "epochs"):
        train(TrainConfig(model=s["model"], epochs=s["base_epochs"],
                          out=str(out / "baseline"), val_every=s["base_epochs"],
                          **common), console=console)
    settings = ", ".join(f"{k} = {v}" for k, v in sparsity.items() if k != "sparsity")
    with step("sparse", f"3/{steps} {mode} sparse training from the baseline: "
                        f"{s['sparse_epochs']} epochs ({settings})"):
        sparse = train(TrainConfig(weights=str(out / "baseline" / "last.pt"),
                                   epochs=s["sparse_epochs"], out=str(out / "sparse"),
                                   val_every=s["sparse_epochs"], **sparsity,
                                   **{**common, "warmup_epochs": 0, "lr0": s["sparse_lr0"]}),
                       console=console)
    name = "LFA±" if lfa_criterion == "two-sided" else "LFA⁺"
    with step("compile", f"4/{steps} compile at {name} <= {lfa_target:g} with bias folding, mAP "
                         "of the baseline, the sparse and the pruned model"
                         + (f", then a {s['finetune_epochs']}-epoch fine-tune (step 5/5)"
                            if finetune else "")):
        model = load(out / "sparse" / "last.pt")
        example = torch.rand(1, 3, s["imgsz"], s["imgsz"],
                             generator=torch.Generator().manual_seed(0))
        recipe = {**DEMO_RECIPE, "lr0": s["finetune_lr0"], "warmup_epochs": 0}
        report = target_compile(model, example, data_yaml=str(data_yaml),
                                out=out / "compile", lfa_target=lfa_target,
                                lfa_criterion=lfa_criterion,
                                calib_images=s["calib_images"], evaluate=True, device=device,
                                model_name=f"demo {mode} yolov5n", fold_pruned_bias=True,
                                baseline=load(out / "baseline" / "last.pt"),
                                baseline_name="baseline/last.pt",
                                finetune_epochs=s["finetune_epochs"] if finetune else 0,
                                finetune_recipe=recipe, console=console)
    summary = {
        "settings": s, "recipe": DEMO_RECIPE, "sparsity": sparsity, "lfa_target": lfa_target,
        "lfa_criterion": lfa_criterion, "lfa_plus": report["lfa_plus"],
        "lfa_two_sided": report["lfa_two_sided"],
        "baseline_map50": report["baseline_map50"], "baseline_map": report["baseline_map"],
        "sparse_map50": report["map50_before"], "sparse_map": report["map_before"],
        "alpha_updates": sparse.sparsity.phase if sparse.sparsity else 0,
        "sparse_rho": sparse.sparsity.summary()["rho"] if sparse.sparsity else None,
        "params_before": report["params_before"], "params_after": report["params_after"],
        "flops_before": report["flops_before"], "flops_after": report["flops_after"],
        "flops_removed": 1 - report["flops_after"] / max(report["flops_before"], 1),
        "prune_ratio": report["prune_ratio"], "lfa": report["lfa"],
        "lfa_signed": report["lfa_signed"], "evaluations": report["evaluations"],
        "candidates": report["candidates"], "map50_before": report["map50_before"],
        "map50_after": report["map50_after"], "map_after": report["map_after"],
        "verified_max_error": report["max_error"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    if report.get("map50_finetuned") is not None:
        summary.update(finetune_epochs=report["finetune_epochs"],
                       map50_finetuned=report["map50_finetuned"],
                       map_finetuned=report["map_finetuned"])
    final = summary.get("map50_finetuned", summary["map50_after"])
    summary["final_map50"] = final
    summary["final_drop_points"] = 100 * (summary["baseline_map50"] - final)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary
