"""Training and evaluating the built-in YOLOv5 detectors.

    from graphprune.detect import TrainConfig, train, validate
    trainer = train(TrainConfig(data="data.yaml", model="yolov5n", imgsz=320, epochs=30))
"""

from .anchors import AnchorFit, best_possible_recall, fit_anchors
from .loss import LossGains, YOLOv5Loss, bbox_ciou, find_detect
from .metrics import DetectionMetrics, MetricAccumulator, evaluate
from .nms import box_iou, non_max_suppression, xywh2xyxy
from .train import ModelEMA, TrainConfig, Trainer, resume, train
from .val import resolve_device, validate

__all__ = ["AnchorFit", "DetectionMetrics", "LossGains", "MetricAccumulator", "ModelEMA",
           "TrainConfig", "Trainer", "YOLOv5Loss", "bbox_ciou", "best_possible_recall",
           "box_iou", "evaluate", "find_detect", "fit_anchors", "non_max_suppression",
           "resolve_device", "resume", "train", "validate", "xywh2xyxy"]
