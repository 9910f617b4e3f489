"""``graphprune compile MODEL --data D.yaml --lfa-target 0.01``: search, compile, evaluate,
report — the command-line flow around :func:`graphprune.search.prune_to_target`."""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from . import data as gpdata
from .artifacts import new_report, write_artifacts
from .attention import CalibrationSet, is_oriented_head
from .detect.train import TrainConfig, default_workers, train
from .detect.val import check_classes, resolve_device, validate
from .errors import GraphpruneError
from .export import refuse_existing_output
from .integrations.ultralytics import finetune, is_detection_model, save_ultralytics_checkpoint
from .latency import check_runtime, prune_to_latency
from .report import plot_attention, plot_latency, plot_search
from .search import prune_to_target
from .widths import rounding_name
from .stats import count_flops, count_params


def calibration_set(data, imgsz: int, count: int, rotated: bool = False):
    """The calibration images of ``data`` (a DataConfig): its val split, else its train split;
    ``rotated`` draws M from rotated rectangles (an oriented-box detector's)."""
    images = data.val or data.train
    if not images:
        raise GraphpruneError("the dataset has neither val nor train images for calibration",
                              hint="add a 'val' entry to data.yaml")
    dataset = gpdata.DetectionDataset(images, data.names, imgsz, augment=False,
                                      kpt_shape=data.kpt_shape)
    return CalibrationSet.from_dataset(dataset, count, rotated=rotated), dataset


def evaluate_map(model: torch.nn.Module, data, imgsz: int, device: torch.device,
                 batch: int = 16, console: Console | None = None, label: str = "") -> Any:
    dataset = gpdata.DetectionDataset(data.val, data.names, imgsz, augment=False,
                                      kpt_shape=data.kpt_shape)
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
                   latency_target: float | None = None, runtime: str = "ort-cpu",
                   latency_threads: int = 2, latency_batch: int = 1, latency_rounds: int = 10,
                   calib_images: int = 64, lfa_mode: str = "confidence",
                   lfa_layers: list[str] | None = None, lfa_criterion: str = "plus",
                   evaluate: bool = False,
                   finetune_epochs: int = 0, device: str = "auto", residual: str = "reconstruct",
                   min_channels: int = 1, round_to: Any = 1, exclude: tuple[str, ...] = (),
                   leaves: tuple[str, ...] = (), onnx: bool = True, pt2: bool = True,
                   heatmaps: int = 4, model_name: str = "model",
                   fold_pruned_bias: bool = False, ultralytics_checkpoint: Path | None = None,
                   baseline: torch.nn.Module | None = None, baseline_name: str | None = None,
                   finetune_recipe: dict[str, Any] | None = None,
                   inputs: Iterable[str | Path] = (),
                   console: Console | None = None) -> dict[str, Any]:
    """Search → compile → (evaluate, fine-tune) → write ``out`` (and, for an ultralytics
    model, ``ultralytics_checkpoint``).  Returns report.json's data.

    ``baseline``: the unpruned model the sparse one was trained from; with ``evaluate`` its mAP
    heads the report's accuracy table, so the drop is measured from it, not from the sparse
    model.  ``finetune_recipe``: TrainConfig settings for the fine-tune (e.g. the recipe the
    model was trained with); ``inputs``: the files the compile reads, which ``out`` may not
    overlap.  ``latency_target``: prune to a measured speed on ``runtime``
    (:func:`graphprune.latency.prune_to_latency`), within ``lfa_target`` when that is given
    too."""
    console = console or Console(stderr=True)
    start = time.perf_counter()
    refuse_existing_output(out, overwrite, inputs=inputs)
    imgsz = int(example.shape[-1])
    if example.ndim != 4 or example.shape[-2] != imgsz:
        raise GraphpruneError(f"target-guided compiles need a square image input, got "
                              f"{tuple(example.shape)}", hint="pass --imgsz S")
    dev = resolve_device(device)
    data = gpdata.load_data_config(data_yaml) if data_yaml else None
    if latency_target is not None:
        check_runtime(runtime)          # refused before any work when it is not installed
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
    ultralytics = is_detection_model(model)     # fine-tuned by ultralytics' own trainer
    if data is not None:
        check_classes(model, data.names, model_name,
                      evaluate=evaluate or (bool(finetune_epochs) and not ultralytics))
        head_nc = getattr(model.model[-1], "nc", None) if ultralytics else None
        if finetune_epochs and head_nc is not None and head_nc != len(data.names):
            raise GraphpruneError(f"{model_name} detects {head_nc} classes, {data_yaml} names "
                                  f"{len(data.names)}", hint="fine-tune on the data the model "
                                                            "was trained for")
        with console.status("reading calibration images"):
            calibration, _ = calibration_set(data, imgsz, calib_images,
                                             rotated=is_oriented_head(model))

    model = model.to(dev).eval()
    with _progress(console) as progress:
        task = progress.add_task("searching the prune (LFA probes)", total=None)

        def on_probe(p):
            loss = "–" if p.lfa_cut is None else f"{100 * p.lfa_cut:.2f} %"
            progress.update(task, advance=1, description=f"searching: {p.prune_ratio:.1%} "
                                                         f"pruned, {name} {loss}")

        name = "LFA⁺" if lfa_criterion == "plus" else "LFA±"

        def on_timed(p):
            progress.update(task, advance=1, description=f"timing: {p.prune_ratio:.1%} pruned, "
                                                         f"{p.ratio:.3f} × the latency")

        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            if latency_target is not None:
                if fold_pruned_bias:
                    raise GraphpruneError("--latency-target does not fold pruned biases yet",
                                          hint="drop --fold-pruned-bias")
                result = prune_to_latency(
                    model, example, latency_target, calibration=calibration,
                    lfa_target=lfa_target, runtime=runtime, threads=latency_threads,
                    batch=latency_batch, rounds=latency_rounds,
                    final_rounds=max(20, 2 * latency_rounds), mode=lfa_mode,
                    layers=lfa_layers, residual=residual, min_channels=min_channels,
                    round_to=round_to, exclude=exclude, leaves=leaves, device=dev,
                    on_probe=on_timed, lfa_criterion=lfa_criterion)
            else:
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
    request = {"lfa_target": lfa_target, "flops_target": flops_target,
               "params_target": params_target, "latency_target": latency_target,
               "runtime": runtime if latency_target is not None else None,
               "latency_threads": latency_threads, "latency_batch": latency_batch,
               "latency_rounds": latency_rounds, "lfa_mode": lfa_mode, "lfa_layers": lfa_layers,
               "lfa_criterion": lfa_criterion, "calib_images": calib_images,
               "calib_boxes": "rotated" if calibration is not None and
                              calibration.rotated is not None else "axis-aligned",
               "residual": residual, "min_channels": min_channels,
               "round_to": rounding_name(round_to),
               "exclude": list(exclude), "leaves": list(leaves),
               "fold_pruned_bias": fold_pruned_bias, "evaluate": evaluate,
               "finetune_epochs": finetune_epochs}
    report = new_report(compiled, model=model_name, example=example, request=request,
                        goal=found.goal, device=str(dev), data=data_yaml)
    report.update(
        lfa_target=lfa_target, flops_target=flops_target, params_target=params_target,
        lfa_mode=lfa_mode, lfa_layers=lfa_layers, lfa_criterion=lfa_criterion,
        threshold=None if np.isinf(found.plan.threshold) else found.plan.threshold,
        probes=[p.as_dict() for p in found.probes], evaluations=found.evaluations,
        candidates=found.candidates, calibration_images=len(calibration) if with_lfa else 0,
        feasible=found.feasible, notes=list(found.notes))
    if latency_target is not None:
        report.update(result.latency_dict())
    if with_lfa:
        report.update(
            lfa=result.lfa_slim.value(lfa_criterion), lfa_plus=result.lfa_slim.plus,
            lfa_two_sided=result.lfa_slim.two_sided, lfa_signed=result.lfa_slim.signed,
            lfa_per_level=result.lfa_slim.per_level, lfa_levels_skipped=result.lfa_slim.skipped,
            lfa_probe=found.lfa.value(lfa_criterion) if found.lfa else None,
            fa_sparse=found.fa_sparse.levels, fa_pruned=result.fa_slim.levels)

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

    def extra(tmp: Path) -> list[str]:
        """The fine-tune run and the plots, inside the directory being written."""
        written = []
        if finetune_epochs and ultralytics:
            report.update(_finetune_ultralytics(compiled, model, data_yaml, imgsz,
                                                finetune_epochs, dev, tmp))
            written.append("finetune/")
        elif finetune_epochs:
            report.update(_finetune(compiled, data_yaml, imgsz, finetune_epochs, device, tmp,
                                    console, finetune_recipe))
            written.append("finetune/")
        if latency_target is not None:
            plot_latency(tmp / "latency_vs_prune.png", report["latency_probes"],
                         latency_target, report["runtime"])
            written.append("latency_vs_prune.png")
        if with_lfa and result.fa_slim is not None:
            chosen = {"prune_ratio": s.channels_pruned, "lfa_plus": report["lfa_plus"],
                      "lfa_cut": report["lfa"]}
            plot_search(tmp / "lfa_vs_prune.png", report["probes"], chosen, lfa_target,
                        found.goal, maps)
            written.append("lfa_vs_prune.png")
            if heatmaps and result.fa_slim.maps:
                k = len(result.fa_slim.maps)
                images = [calibration.image(i) for i in range(k)]
                boxes = [calibration.boxes_of(i) for i in range(k)]
                plot_attention(tmp / "attention.png", images, boxes,
                               found.fa_sparse.maps[:k], result.fa_slim.maps[:k])
                written.append("attention.png")
        return written

    return write_artifacts(compiled, out, report, overwrite=overwrite, inputs=inputs,
                           pt2=pt2, onnx=onnx,
                           ultralytics_checkpoint=ultralytics_checkpoint, source_model=model,
                           ultralytics_extra={"model": model_name, "data": data_yaml,
                                              "lfa": report["lfa"], "lfa_target": lfa_target},
                           extra=extra, started=start, console=console)


# the fine-tune's defaults: a tenth of YOLOv5's lr0, no warm-up (the weights are trained)
FINETUNE_DEFAULTS = dict(lr0=0.002, warmup_epochs=0)
# the same in ultralytics' terms (its default optimizer "auto" would choose its own lr)
ULTRALYTICS_FINETUNE = dict(optimizer="SGD", lr0=0.002, warmup_epochs=0)


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


def _finetune_ultralytics(compiled, source: torch.nn.Module, data_yaml: str, imgsz: int,
                          epochs: int, device: torch.device, out: Path) -> dict[str, Any]:
    """Fine-tune the slim model of an ultralytics ``source`` with ultralytics' own trainer
    (``integrations.ultralytics.finetune``): its run, with ``weights/best.pt`` and ``last.pt``
    holding the slim model, goes to ``out/finetune``."""
    settings = {**ULTRALYTICS_FINETUNE, "workers": default_workers()}
    with tempfile.TemporaryDirectory() as tmp:
        start = save_ultralytics_checkpoint(compiled, source, Path(tmp) / "slim.pt")
        trained = finetune(start, data=data_yaml, epochs=epochs, imgsz=imgsz,
                           device=str(device.index or 0) if device.type == "cuda" else
                           device.type, project=str(out), name="finetune", exist_ok=True,
                           plots=False, verbose=False, **settings)
    metrics = dict(getattr(trained.trainer, "metrics", None) or {})
    return {"finetune_epochs": epochs, "finetune_recipe": {"trainer": "ultralytics", **settings},
            "map50_finetuned": metrics.get("metrics/mAP50(B)"),
            "map_finetuned": metrics.get("metrics/mAP50-95(B)")}


__all__ = ["calibration_set", "evaluate_map", "target_compile"]
