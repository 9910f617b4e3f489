"""Validation with the YOLOv5 protocol the L1RR paper used: conf 0.001, NMS IoU 0.6, at most
300 detections an image, mAP from pycocotools with maxDets raised to 300.

Boxes are compared in the letterboxed input's pixel coordinates: letterboxing scales an image
uniformly and pads it, which leaves every IoU — and so every match and AP — unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from ..data.labels import targets_per_image
from ..models.yolov5 import Detect
from .metrics import DetectionMetrics, MetricAccumulator
from .nms import non_max_suppression
from graphprune.errors import GraphpruneError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise GraphpruneError(f"{name!r} is not a device", hint="use auto, cpu, cuda or "
                                                                "cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise GraphpruneError(f"device {name!r} is not supported", hint="use auto, cpu, cuda "
                                                                        "or cuda:N")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GraphpruneError(f"device {name!r} was asked for but MPS is not available",
                              hint="use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and torch.cuda.is_available() and \
            device.index >= torch.cuda.device_count():
        raise GraphpruneError(f"device {name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)",
                              hint="use cuda:0 or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GraphpruneError(f"device {name!r} was asked for but CUDA is not available",
                              hint="use --device cpu (or auto)")
    return device


def check_classes(model: nn.Module, names: Sequence[str], source: str,
                  evaluate: bool = True) -> None:
    """The model's YOLOv5 head predicts as many classes as the dataset names.  With
    ``evaluate`` (graphprune's evaluator reads that head) a model without one is refused too;
    without it a model of another family passes unchecked."""
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    if not heads:
        if evaluate:
            raise GraphpruneError(f"{source} has no YOLOv5 Detect head, which graphprune's "
                                  f"evaluator reads", hint="evaluate the built-in YOLOv5 family "
                                                           "and its compiled forms")
        return
    if heads[-1].nc != len(names):
        raise GraphpruneError(f"{source} predicts {heads[-1].nc} classes, the dataset names "
                              f"{len(names)}", hint="use the data.yaml the model was trained "
                                                    "on, or train it on this one")


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` images as the float ``[0, 1]`` tensor the models take."""
    return images.to(device, non_blocking=True).float() / 255.0


@torch.no_grad()
def validate(model: nn.Module, loader, names: Sequence[str], device: torch.device, *,
             conf: float = 0.001, iou: float = 0.6, max_det: int = 300,
             on_batch: Callable[[int], Any] | None = None) -> DetectionMetrics:
    """mAP and friends of ``model`` on ``loader`` (batches from ``graphprune.data``)."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(list(names))
    try:
        for k, (images, labels, _paths, _meta) in enumerate(loader):
            x = to_input(images, device)
            pred = model(x)[0]
            detections = non_max_suppression(pred, conf_thres=conf, iou_thres=iou,
                                              max_det=max_det)
            acc.add([d.cpu().numpy() for d in detections],
                    targets_per_image(labels, len(images), x.shape[2:]))
            if on_batch is not None:
                on_batch(k)
    finally:
        model.train(was_training)
    return acc.compute()


__all__ = ["resolve_device", "to_input", "validate"]
