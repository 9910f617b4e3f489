"""Training the built-in YOLOv5 models: SGD with warm-up, a decaying learning rate, EMA,
validation every epoch and checkpoints that resume exactly.

The recipe follows YOLOv5's defaults (lr0 0.01, momentum 0.937, Nesterov, weight decay 5e-4 on
convolution weights only, 3 warm-up epochs, linear decay to lr0 × lrf, gradients accumulated to
a nominal batch of 64, EMA of the weights with decay 0.9999·(1 − e^(−updates/2000))).  CPU is
the default device; CUDA is used when present (with mixed precision).

Checkpoints are graphprune checkpoints (``graphprune.load`` reads them, ``graphprune compile``
prunes them) with a ``train`` entry holding what resuming needs: the raw weights, optimizer
and scaler state, EMA updates, epoch and configuration — tensors and plain data only, so they
load with ``torch.load(weights_only=True)``.  Everything random is seeded from the run's seed
(model init) and from (seed, epoch) (data order and augmentation), so a resumed run reaches the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .anchors import fit_anchors
from .loss import LossGains, YOLOv5Loss, find_detect
from .val import resolve_device, to_input, validate
from graphprune import data as gpdata
from graphprune.argtypes import (IMAGE_SIDE, IMAGE_STRIDE, MAX_WORKERS, TRAINING_FACTOR,
                                 refuse_oversized)
from graphprune.checkpoint import build_structure, load, read_checkpoint
from graphprune.data.augment import DEFAULT_HYP
from graphprune.errors import CheckpointError, GraphpruneError
from graphprune.export import FORMAT, VERSION, atomic_path
from graphprune.models import DETECTORS, build
from graphprune.models.yolov5 import DEFAULT_ANCHORS
from graphprune.sparsity import SparsityRegularizer

MAX_GRAD_NORM = 10.0      # YOLOv5's clipping of the task gradient

# the lowest value of each numeric TrainConfig field that TrainConfig.check allows
CONFIG_MINIMA = {"imgsz": 32, "epochs": 1, "batch": 1, "workers": 0, "seed": 0, "lr0": 0,
                 "lrf": 0, "momentum": 0, "weight_decay": 0, "warmup_epochs": 0,
                 "warmup_momentum": 0, "warmup_bias_lr": 0, "nominal_batch": 1, "box": 0,
                 "obj": 0, "cls": 0, "val_every": 1, "save_period": 0, "theta": 0,
                 "phase_epochs": 1, "max_phases": 1}


@dataclass
class TrainConfig:
    data: str
    model: str = "yolov5s"
    model_kwargs: dict[str, Any] = field(default_factory=dict)   # e.g. width_multiple
    weights: str | None = None          # start from a graphprune checkpoint instead
    imgsz: int = 640
    epochs: int = 100
    batch: int = 16
    workers: int | None = None         # None: default_workers()
    device: str = "auto"
    seed: int = 0
    out: str = "runs/train"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    warmup_epochs: float = 3.0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    nominal_batch: int = 64
    cos_lr: bool = False
    ema: bool = True
    anchors: str = "auto"               # auto: fit when the defaults recall < 98 %; fit; keep
    mosaic: bool = False
    hyp: dict[str, float] = field(default_factory=dict)   # augmentation: overrides DEFAULT_HYP
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    val_every: int = 1
    save_period: int = 0                # also keep epoch<N>.pt every N epochs (0: last/best only)
    cache: bool = False
    sparsity: str | None = None         # l1rr | dsm | ns: sparse training of BatchNorm γ
    theta: float = 1e-3
    phase_epochs: int = 40
    max_phases: int = 10
    sparsity_options: dict[str, float] = field(default_factory=dict)   # eps, near_zero, a, t, ...

    def augmentation(self) -> dict[str, float]:
        """The augmentation settings: DEFAULT_HYP with ``hyp`` over it, each a gain, a fraction
        or a probability in [0, 1] (scale below 1: its factor is 1 ± scale)."""
        unknown = set(self.hyp) - set(DEFAULT_HYP)
        if unknown:
            raise GraphpruneError(f"unknown augmentation setting(s) {', '.join(sorted(unknown))}",
                                  hint=f"known: {', '.join(DEFAULT_HYP)}")
        for key, value in self.hyp.items():
            top_ok = value < 1 if key == "scale" else value <= 1
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and math.isfinite(value) and value >= 0 and top_ok):
                raise GraphpruneError(f"augmentation setting {key} = {str(value)[:40]} is not in "
                                      f"[0, 1{')' if key == 'scale' else ']'}",
                                      hint=f"the default is {DEFAULT_HYP[key]}")
        return {**DEFAULT_HYP, **self.hyp}

    def check(self, where: str = "the training settings") -> "TrainConfig":
        """Refuse a field of the wrong type or out of range (a tampered or hand-written
        configuration), naming it; returns self."""
        def bad(name: str, why: str) -> GraphpruneError:
            return GraphpruneError(f"{where}: {name} = {str(getattr(self, name))[:60]} {why}",
                                   hint="fix the value (or start a new run)")
        for f in fields(self):
            value = getattr(self, f.name)
            kind, optional = _field_kind(TRAIN_CONFIG_HINTS[f.name])
            if value is None and optional:
                continue
            if kind is str and isinstance(value, os.PathLike):
                value = os.fspath(value)
                setattr(self, f.name, value)
            if kind is int and (not isinstance(value, numbers.Integral) or
                                isinstance(value, bool)):
                raise bad(f.name, "is not a whole number")
            if kind is float and (not isinstance(value, numbers.Real) or
                                  isinstance(value, bool) or not math.isfinite(value)):
                raise bad(f.name, "is not a finite number")
            if kind is bool and not isinstance(value, bool):
                raise bad(f.name, "is not true or false")
            if kind is str and not isinstance(value, str):
                raise bad(f.name, "is not a string")
            if kind is dict and not isinstance(value, dict):
                raise bad(f.name, "is not a mapping")
            low = CONFIG_MINIMA.get(f.name)
            if low is not None and value < low:
                raise bad(f.name, f"is below {low}")
        if self.imgsz % IMAGE_STRIDE or self.imgsz > IMAGE_SIDE[1]:
            raise bad("imgsz", f"is not a multiple of {IMAGE_STRIDE} up to {IMAGE_SIDE[1]}")
        if self.workers is not None and self.workers > MAX_WORKERS:
            raise bad("workers", f"is above {MAX_WORKERS}")
        if self.weights is None and self.model not in DETECTORS:
            raise bad("model", f"is not one of {', '.join(DETECTORS)}")
        self.augmentation()
        refuse_oversized((self.batch, 3, self.imgsz, self.imgsz), TRAINING_FACTOR,
                         f"{where}: a training batch", "lower batch or imgsz")
        return self

    @classmethod
    def from_json(cls, text: str, where: str = "the saved training settings") -> "TrainConfig":
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise CheckpointError(f"{where} are not valid JSON ({type(exc).__name__})",
                                  hint="start a new run") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{where} are not a JSON object", hint="start a new run")
        known = {f.name for f in fields(cls)}
        try:
            config = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CheckpointError(f"{where} lack a field ({exc})", hint="start a new run") \
                from None
        return config.check(where)


TRAIN_CONFIG_HINTS = typing.get_type_hints(TrainConfig)


def _field_kind(hint: Any) -> tuple[type, bool]:
    """(the plain type, whether None is allowed) of a field annotation such as
    ``int | None`` or ``dict[str, float]``."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    return typing.get_origin(hint) or hint, optional


def default_workers() -> int:
    """Loader processes: none on machines with two cores or fewer, where decoding in the
    training process measured faster (yolov5n, 256 px, batch 8 on 2 cores: 7.5 s an epoch with
    0 workers, 8.3 s with 1 or 2); otherwise half the cores, at most 8."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


class ModelEMA:
    """Exponential moving average of the weights; BatchNorm buffers are averaged too."""

    def __init__(self, model: nn.Module, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.updates = updates

    def decay(self) -> float:
        return 0.9999 * (1 - math.exp(-self.updates / 2000))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        state = model.state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(state[name].detach(), alpha=1 - d)
            else:
                value.copy_(state[name])


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Convolution/linear weights decay; BatchNorm weights and all biases do not."""
    decay, no_decay, biases = [], [], []
    for module in model.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            biases.append(bias)
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            (no_decay if isinstance(module, nn.modules.batchnorm._BatchNorm) else decay) \
                .append(weight)
    return [{"params": no_decay, "weight_decay": 0.0},
            {"params": decay, "weight_decay": weight_decay},
            {"params": biases, "weight_decay": 0.0}]


def lr_factor(config: TrainConfig, epoch: float) -> float:
    """Learning-rate multiplier at (fractional) ``epoch``: linear or cosine from 1 to lrf."""
    x = min(max(epoch / max(config.epochs, 1), 0.0), 1.0)
    if config.cos_lr:
        return ((1 - math.cos(x * math.pi)) / 2) * (config.lrf - 1) + 1
    return (1 - x) * (1.0 - config.lrf) + config.lrf


def model_recipe(model: nn.Module, imgsz: int) -> dict[str, Any]:
    """The graphprune recipe of a model being trained (a built-in or a loaded checkpoint)."""
    recipe = getattr(model, "graphprune_recipe", None)
    if isinstance(recipe, dict):
        return recipe
    built = getattr(model, "graphprune_config", None) or {}
    return {"parent": None, "builder": built.get("builder"), "kwargs": built.get("kwargs", {}),
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "residual": None, "leaves": [],
            "inputs": [{"shape": [1, 3, imgsz, imgsz], "dtype": "float32"}], "masks": None}


@dataclass
class EpochRecord:
    epoch: int
    box: float
    obj: float
    cls: float
    lr: float
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One training run.  ``callbacks`` may define ``on_train_start(trainer)``,
    ``on_epoch_start(trainer, epoch)``,
    ``before_optimizer_step(trainer)`` (gradients unscaled and clipped, once per optimizer
    step), ``after_optimizer_step(trainer)``,
    ``on_epoch_end(trainer, record)``, and ``state_dict()``/``load_state_dict(state)`` to be
    saved with the checkpoint."""

    def __init__(self, config: TrainConfig, callbacks: list | None = None,
                 console: Console | None = None, resume: dict[str, Any] | None = None):
        self.config = config.check()
        self.callbacks = list(callbacks or [])
        self.console = console or Console(stderr=True)
        self.device = resolve_device(config.device)
        self.workers = default_workers() if config.workers is None else config.workers
        self.out = Path(config.out)
        self.data = gpdata.load_data_config(config.data)
        self.names = list(self.data.names)
        torch.manual_seed(config.seed)
        aug = config.augmentation()
        self.train_set = gpdata.DetectionDataset(self.data.train, self.names, config.imgsz,
                                                 augment=True, hyp=aug, mosaic=config.mosaic,
                                                 cache=config.cache, seed=config.seed,
                                                 kpt_shape=self.data.kpt_shape)
        self.val_set = gpdata.DetectionDataset(self.data.val, self.names, config.imgsz,
                                               augment=False, cache=config.cache,
                                               seed=config.seed, kpt_shape=self.data.kpt_shape) \
            if self.data.val else None
        self.anchor_fit = None
        if resume is not None:
            model = build_structure(resume["recipe"], config.out, None)
        elif config.weights:
            model = load(config.weights)
        else:
            kwargs = {**config.model_kwargs, "num_classes": len(self.names)}
            anchors = self._anchors()
            if anchors is not None:
                kwargs["anchors"] = anchors
            model = build(config.model, **kwargs)
        head = find_detect(model)
        if head.nc != len(self.names):
            raise GraphpruneError(f"the model detects {head.nc} classes but {config.data} names "
                                  f"{len(self.names)}", hint="train a model built for this "
                                                             "dataset")
        self.model = model.to(self.device).train()
        self.sparsity = None
        if config.sparsity:
            example = torch.zeros(1, 3, config.imgsz, config.imgsz, device=self.device)
            self.sparsity = SparsityRegularizer(self.model, example, mode=config.sparsity,
                                                theta=config.theta,
                                                phase_epochs=config.phase_epochs,
                                                max_phases=config.max_phases,
                                                **config.sparsity_options)
            self.callbacks.insert(0, self.sparsity)
        self.recipe = model_recipe(model, config.imgsz)
        self.loss = YOLOv5Loss(self.model, LossGains(config.box, config.obj, config.cls),
                               config.imgsz)
        self.accumulate = max(round(config.nominal_batch / config.batch), 1)
        decay = config.weight_decay * config.batch * self.accumulate / config.nominal_batch
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, decay), lr=config.lr0,
                                         momentum=config.momentum, nesterov=True)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.ema = ModelEMA(self.model) if config.ema else None
        self.start_epoch, self.best_fitness, self.history = 0, -1.0, []
        if resume is not None:
            self._load_train_state(resume)

    # -- set-up ------------------------------------------------------------------------------
    def _anchors(self):
        if self.config.anchors == "keep":
            return None
        wh = self.train_set.box_sizes(self.config.imgsz)
        fit = fit_anchors(wh, DEFAULT_ANCHORS, seed=self.config.seed)
        self.anchor_fit = fit
        if self.config.anchors == "auto" and fit.bpr_before >= 0.98:
            return None
        return [list(level) for level in fit.anchors]

    def _load_train_state(self, ckpt: dict[str, Any]) -> None:
        state = ckpt["train"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.ema.load_state_dict(ckpt["state_dict"])
            self.ema.updates = int(state["ema_updates"])
        for cb, cb_state in zip(self.callbacks, state.get("callbacks", [])):
            if hasattr(cb, "load_state_dict") and cb_state is not None:
                cb.load_state_dict(cb_state)
        self.start_epoch = int(state["epoch"]) + 1
        self.best_fitness = float(state["best_fitness"])
        self.history = json.loads(state.get("history", "[]"))

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, epoch: int) -> dict[str, Any]:
        final = self.ema.ema if self.ema is not None else self.model
        return {
            "format": FORMAT, "version": VERSION, "recipe": json.dumps(self.recipe),
            "state_dict": {k: v.detach().cpu().clone() for k, v in final.state_dict().items()},
            "train": {
                "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.amp else None,
                "ema_updates": self.ema.updates if self.ema is not None else 0,
                "epoch": epoch, "best_fitness": self.best_fitness,
                "config": json.dumps(asdict(self.config)),
                "history": json.dumps(self.history),
                "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None
                              for cb in self.callbacks],
            },
        }

    def save(self, ckpt: dict[str, Any], name: str) -> Path:
        path = self.out / name
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        return path

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[EpochRecord]:
        """Train from ``start_epoch`` to ``epochs``; ``stop_after`` ends early (tests, budgets)."""
        cfg = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        for cb in self.callbacks:
            if hasattr(cb, "on_train_start"):
                cb.on_train_start(self)
        batches = math.ceil(len(self.train_set) / cfg.batch)
        warmup = max(round(cfg.warmup_epochs * batches), 1) if cfg.warmup_epochs > 0 else 0
        last = cfg.epochs if stop_after is None else min(cfg.epochs, self.start_epoch + stop_after)
        records = []
        loader = gpdata.make_loader(self.train_set, cfg.batch, shuffle=True,
                                    workers=self.workers, epoch_seed=cfg.seed)
        for epoch in range(self.start_epoch, last):
            start = time.perf_counter()
            loader.set_epoch(epoch)           # shuffle order and augmentations of this epoch
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(self, epoch)
            sums = torch.zeros(3)
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self._progress(f"epoch {epoch + 1}/{cfg.epochs}", batches) as (bar, task):
                for i, (images, labels, _paths, _meta) in enumerate(loader):
                    step = i + batches * epoch
                    self._set_lr(step, warmup, epoch + i / batches)
                    x = to_input(images, self.device)
                    with torch.autocast(self.device.type, enabled=self.amp):
                        loss, parts = self.loss(self.model(x), labels.to(self.device))
                    if not self.amp and not bool(torch.isfinite(loss)):
                        self._diverged(f"the training loss became {loss.item()} at epoch "
                                       f"{epoch + 1}, batch {i + 1}")
                    self.scaler.scale(loss).backward()
                    if (i + 1) % self.accumulate == 0 or i + 1 == batches:
                        self._optimizer_step()
                    sums += parts.float().cpu()
                    mean = sums / (i + 1)
                    bar.update(task, advance=1, description=(
                        f"epoch {epoch + 1}/{cfg.epochs}  box {mean[0]:.4f}  obj {mean[1]:.4f}"
                        f"  cls {mean[2]:.4f}"))
            mean = (sums / max(batches, 1)).tolist()
            record = EpochRecord(epoch, *mean, lr=self.optimizer.param_groups[1]["lr"],
                                 seconds=time.perf_counter() - start)
            if self.val_set is not None and ((epoch + 1) % cfg.val_every == 0 or
                                             epoch + 1 == cfg.epochs):
                record.metrics = self.evaluate().as_dict()
            records.append(record)
            self._end_epoch(epoch, record)
        return records

    @contextmanager
    def _progress(self, description: str, total: int):
        columns = (TextColumn("{task.description}"), BarColumn(),
                   TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            yield progress, progress.add_task(description, total=total)

    def _set_lr(self, step: int, warmup: int, epoch: float) -> None:
        cfg = self.config
        factor = lr_factor(cfg, epoch)
        for j, group in enumerate(self.optimizer.param_groups):
            target = cfg.lr0 * factor
            if step < warmup:       # warm-up: biases fall from warmup_bias_lr, others rise from 0
                start = cfg.warmup_bias_lr if j == 2 else 0.0
                group["lr"] = float(np.interp(step, [0, warmup], [start, target]))
                group["momentum"] = float(np.interp(step, [0, warmup],
                                                    [cfg.warmup_momentum, cfg.momentum]))
            else:
                group["lr"] = target
                group["momentum"] = cfg.momentum

    def _optimizer_step(self) -> None:
        # unscale, clip the task's gradient, then let the callbacks add their terms (a sparsity
        # term is not clipped and cannot shrink the task's gradient), step, then post-step hooks
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=MAX_GRAD_NORM)
        for cb in self.callbacks:
            if hasattr(cb, "before_optimizer_step"):
                cb.before_optimizer_step(self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for cb in self.callbacks:
            if hasattr(cb, "after_optimizer_step"):
                cb.after_optimizer_step(self)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

    def evaluate(self):
        model = self.ema.ema if self.ema is not None else self.model
        loader = gpdata.make_loader(self.val_set, self.config.batch * 2, shuffle=False,
                                    workers=self.workers, epoch_seed=0)
        return validate(model, loader, self.names, self.device)

    def _diverged(self, what: str) -> None:
        """Stop a run whose loss or weights stopped being finite; the checkpoints already
        written (each from a finite epoch) stay."""
        last = self.out / "last.pt"
        raise GraphpruneError(f"{what}; the run stopped", hint=(
            f"{last} holds the last finite epoch; " if last.exists() else "") +
            "lower --lr0 (or --theta), or check the labels")

    def _end_epoch(self, epoch: int, record: EpochRecord) -> None:
        bad = next((name for name, t in self.model.state_dict().items()
                    if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
        if bad is not None or not all(math.isfinite(v) for v in (record.box, record.obj,
                                                                  record.cls)):
            self._diverged(f"the weights ({bad}) are no longer finite after epoch {epoch + 1}"
                           if bad else f"the training loss is not finite in epoch {epoch + 1}")
        m = record.metrics
        fitness = 0.1 * m["map50"] + 0.9 * m["map"] if m else -1.0
        improved = fitness > self.best_fitness
        if improved:
            self.best_fitness = fitness
        self.history.append(asdict(record))
        for cb in self.callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(self, record)
        ckpt = self.checkpoint(epoch)
        self.save(ckpt, "last.pt")
        if improved or not m:
            self.save(ckpt, "best.pt")
        if self.config.save_period > 0 and (epoch + 1) % self.config.save_period == 0:
            self.save(ckpt, f"epoch{epoch + 1}.pt")
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(asdict(record)) + "\n")
        summary = (f"epoch {epoch + 1}/{self.config.epochs}  box {record.box:.4f}  "
                   f"obj {record.obj:.4f}  cls {record.cls:.4f}  {record.seconds:.0f} s")
        if m:
            summary += (f"  P {m['precision']:.3f}  R {m['recall']:.3f}  mAP50 {m['map50']:.3f}"
                        f"  mAP50-95 {m['map']:.3f}")
        self.console.print(summary)


def load_resume(path: str | Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration and checkpoint of an interrupted run, from its ``last.pt``."""
    recipe, _ = read_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "train" not in ckpt:
        raise CheckpointError(f"{str(path)!r} holds no training state to resume from",
                              hint="resume from the last.pt a `graphprune train` run wrote")
    ckpt["recipe"] = recipe
    config = TrainConfig.from_json(ckpt["train"]["config"])
    config.out = str(Path(path).parent)
    return config, ckpt


def train(config: TrainConfig, callbacks: list | None = None, console: Console | None = None,
          stop_after: int | None = None) -> Trainer:
    """Run a training; returns the finished ``Trainer``."""
    trainer = Trainer(config, callbacks, console)
    trainer.fit(stop_after=stop_after)
    return trainer


def resume(path: str | Path, epochs: int | None = None, callbacks: list | None = None,
           console: Console | None = None, stop_after: int | None = None) -> Trainer:
    """Continue the run whose ``last.pt`` is ``path`` (to ``epochs`` if given)."""
    config, ckpt = load_resume(path)
    if epochs is not None:
        config.epochs = epochs
    trainer = Trainer(config, callbacks, console, resume=ckpt)
    trainer.fit(stop_after=stop_after)
    return trainer


__all__ = ["ModelEMA", "TrainConfig", "Trainer", "load_resume", "lr_factor", "model_recipe",
           "parameter_groups", "resume", "train"]
