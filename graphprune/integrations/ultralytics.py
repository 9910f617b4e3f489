"""Sparse training inside the ultralytics trainer, with graphprune's regulariser.

    from ultralytics import YOLO
    from graphprune.integrations.ultralytics import add_sparsity

    model = YOLO("yolov8n.yaml")
    add_sparsity(model, mode="l1rr", theta=1e-3, phase_epochs=40)
    model.train(data="data.yaml", epochs=300, imgsz=640)

The ultralytics trainer has no callback between unscaling the gradients and the optimizer
step, so ``add_sparsity`` wraps the trainer's ``optimizer_step`` once training starts: the
sparsity term is added to the still-scaled gradients, multiplied by the AMP scale, which is the
same as adding it after unscaling.  ultralytics already keeps BatchNorm weights out of weight
decay.  The regulariser's state is saved beside the weights (``weights/sparsity.pt``, tensors
and plain data only) and restored when ultralytics resumes; each epoch appends to
``sparsity.jsonl`` and redraws the plots in the run directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import GraphpruneError, GraphpruneWarning
from ..sparsity import SparsityRegularizer, prunable_batchnorms

STATE_FILE = "sparsity.pt"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _layers(model: nn.Module, imgsz: int, device) -> list[str] | None:
    """The BatchNorms the compiler can prune, or None (every BatchNorm) when the model cannot
    be analysed here."""
    try:
        return prunable_batchnorms(model, torch.zeros(1, 3, imgsz, imgsz, device=device))
    except GraphpruneError as exc:
        warnings.warn(f"sparsity: could not analyse the model ({exc}); every affine BatchNorm "
                      "is regularised", GraphpruneWarning, stacklevel=2)
        return None


class SparsityCallbacks:
    """The ultralytics callbacks (``on_train_start``, ``on_train_epoch_start``,
    ``on_train_epoch_end``, ``on_model_save``) driving one ``SparsityRegularizer``."""

    def __init__(self, **options: Any):
        self.options = options
        self.regularizer: SparsityRegularizer | None = None

    def on_train_start(self, trainer) -> None:
        model = _unwrap(trainer.model)
        layers = _layers(model, int(trainer.args.imgsz), next(model.parameters()).device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GraphpruneWarning)
            self.regularizer = SparsityRegularizer(model, layers=layers, **self.options) \
                if layers is not None else SparsityRegularizer(model, **self.options)
        state = Path(trainer.wdir) / STATE_FILE
        if getattr(trainer.args, "resume", False) and state.exists():
            self.regularizer.load_state_dict(torch.load(state, map_location="cpu",
                                                        weights_only=True))
        step = trainer.optimizer_step

        def optimizer_step() -> None:
            scaler = getattr(trainer, "scaler", None)
            scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
            self.regularizer.apply(scale=scale)
            step()

        trainer.optimizer_step = optimizer_step

    def on_train_epoch_start(self, trainer) -> None:
        self.regularizer.set_epoch(int(trainer.epoch))

    def on_train_epoch_end(self, trainer) -> None:
        self.regularizer.on_epoch_end(_RunDir(trainer.save_dir), None)

    def on_model_save(self, trainer) -> None:
        from ..export import atomic_path
        with atomic_path(Path(trainer.wdir) / STATE_FILE) as tmp:
            torch.save(self.regularizer.state_dict(), tmp)

    def items(self) -> list[tuple[str, Callable]]:
        return [(name, getattr(self, name)) for name in
                ("on_train_start", "on_train_epoch_start", "on_train_epoch_end",
                 "on_model_save")]


class _RunDir:
    """What ``SparsityRegularizer.on_epoch_end`` needs of a trainer: where to write."""

    def __init__(self, out):
        self.out = out


def add_sparsity(model, **options: Any) -> SparsityCallbacks:
    """Register sparse training on an ultralytics ``YOLO`` model (or anything with
    ``add_callback``); ``options`` go to :class:`~graphprune.sparsity.SparsityRegularizer`
    (mode, theta, phase_epochs, phase_steps, max_phases, a, eps, near_zero, ...)."""
    callbacks = SparsityCallbacks(**options)
    for event, fn in callbacks.items():
        model.add_callback(event, fn)
    return callbacks


__all__ = ["STATE_FILE", "SparsityCallbacks", "add_sparsity"]
