"""Detection metrics: COCO AP through pycocotools, YOLOv5-style precision and recall.

Every pruning claim is judged by mAP, so AP comes from the standard evaluator rather than a
re-implementation: ground truth and detections become in-memory ``COCO`` objects and
``COCOeval`` (``iouType="bbox"``) runs with area range "all" only and ``maxDets = [1, 10, 300]``
(the YOLOv5 val protocol keeps up to 300 detections per image and NWPU VHR-10 images hold up to
67 objects, so COCO's default 100 would truncate).  AP is COCO's 101-point interpolated AP at
IoU 0.5 (mAP50) and averaged over IoU 0.50:0.05:0.95 (mAP50-95), per class and as the mean over
the classes present in the ground truth.

Precision and recall are reported as YOLOv5's val does: per class at IoU 0.5, at the single
confidence threshold that maximises the F1 score averaged over the classes.  They reuse COCOeval's
own matching (``evalImgs``: ``dtMatches``, ``dtScores``, ``gtIgnore``), so P, R and AP describe
the same true/false positives.  The threshold is swept over every detection score exactly
instead of YOLOv5's 1000-point interpolated grid.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rich.table import Table

MAX_DETS = [1, 10, 300]          # COCOeval maxDets; the last one (300) is the one reported
_IOU50 = 0                       # index of IoU 0.5 in COCOeval's iouThrs (0.50:0.05:0.95)
_ALL_AREAS = [[0.0, 1e10]]       # COCO's "all" area range, the only one evaluated

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class DetectionMetrics:
    """Overall and per-class detection metrics for one evaluation.

    ``precision``/``recall`` are means over the classes present in the ground truth at the
    confidence ``conf`` that maximises mean F1 (IoU 0.5); ``map50``/``map`` are mean COCO AP at
    IoU 0.5 and 0.5:0.95 over the same classes (0 when no class has ground truth).  Classes
    without ground truth stay in ``per_class`` with ``instances`` 0 and NaN metrics.
    """

    precision: float
    recall: float
    map50: float
    map: float
    per_class: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    instances: int = 0
    conf: float = math.nan

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values (NaN becomes ``None``)."""
        overall = {k: _finite_or_none(getattr(self, k))
                   for k in ("precision", "recall", "map50", "map", "conf")}
        per_class = [{k: _finite_or_none(v) for k, v in row.items()} for row in self.per_class]
        return {**overall, "images": self.images, "instances": self.instances,
                "per_class": per_class}

    def table(self) -> Table:
        """A rich table in the YOLOv5 val layout, the "all" row first."""
        table = Table("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
        rows = [{"name": "all", "images": self.images, "instances": self.instances,
                 "precision": self.precision, "recall": self.recall, "map50": self.map50,
                 "map": self.map}, *self.per_class]
        for row in rows:
            table.add_row(row["name"], str(row["images"]), str(row["instances"]),
                          *(_fmt(row[k]) for k in ("precision", "recall", "map50", "map")))
        return table


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _as_array(x: ArrayLike | Sequence, width: int) -> np.ndarray:
    """``[k, width]`` float64 array from a tensor, array or (possibly empty) sequence."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1, width)


def _per_image_arrays(predictions: Sequence[ArrayLike], targets: Sequence[ArrayLike]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Host float64 arrays: ``[k, 6]`` detections and ``[n, 5]`` targets, one pair per image."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction entries for {len(targets)} images")
    return [_as_array(p, 6) for p in predictions], [_as_array(t, 5) for t in targets]


def _class_ids(cls: np.ndarray, nc: int, what: str) -> np.ndarray:
    ids = cls.astype(np.int64)
    bad = (ids != cls) | (ids < 0) | (ids >= nc)
    if np.any(bad):
        raise ValueError(f"{what} class ids must be integers in [0, {nc}), got {cls[bad]}")
    return ids


def _annotation(ann_id: int, image_id: int, cls: int, xyxy: np.ndarray) -> dict[str, Any]:
    """A COCO annotation: ``bbox`` is (x, y, w, h); ids start at 1 (COCOeval reads 0 as
    "unmatched")."""
    w, h = float(xyxy[2] - xyxy[0]), float(xyxy[3] - xyxy[1])
    return {"id": ann_id, "image_id": image_id, "category_id": cls, "iscrowd": 0,
            "bbox": [float(xyxy[0]), float(xyxy[1]), w, h], "area": w * h}


def _coco(num_images: int, nc: int, annotations: list[dict[str, Any]]) -> COCO:
    """An in-memory COCO dataset (no file), built without pycocotools' progress prints."""
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(num_images)],
                    "categories": [{"id": c} for c in range(nc)], "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _ground_truth(targets: list[np.ndarray], nc: int) -> COCO:
    anns = []
    for image_id, t in enumerate(targets):
        for cls, box in zip(_class_ids(t[:, 0], nc, "target"), t[:, 1:5]):
            anns.append(_annotation(len(anns) + 1, image_id, int(cls), box))
    return _coco(len(targets), nc, anns)


def _detections(predictions: list[np.ndarray], nc: int) -> COCO:
    anns = []
    for image_id, p in enumerate(predictions):
        for cls, box, score in zip(_class_ids(p[:, 5], nc, "prediction"), p[:, :4], p[:, 4]):
            anns.append({**_annotation(len(anns) + 1, image_id, int(cls), box),
                         "score": float(score)})
    return _coco(len(predictions), nc, anns)


def _run_cocoeval(gt: COCO, dt: COCO) -> COCOeval:
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.maxDets = list(MAX_DETS)
    ev.params.areaRng, ev.params.areaRngLbl = _ALL_AREAS, ["all"]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev


def _class_ap(ev: COCOeval, nc: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (AP50, AP50-95); NaN for classes without ground truth (COCOeval leaves -1).

    ``eval["precision"]`` is [IoU thr, 101 recall thr, class, area, maxDets]; COCO's AP is the
    mean of the interpolated precision over the 101 recall thresholds (and IoU thresholds).
    """
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap50, ap = np.full(nc, math.nan), np.full(nc, math.nan)
    for k in range(nc):
        if np.all(prec[:, :, k] > -1):
            ap50[k], ap[k] = prec[_IOU50, :, k].mean(), prec[:, :, k].mean()
    return ap50, ap


def _matches_at_iou50(ev: COCOeval, nc: int
                      ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per class: detection scores, their true-positive flags at IoU 0.5, and the gt count.

    Read from COCOeval's per-image records (at most ``maxDets[-1]`` detections per image and
    class), dropping the detections and ground truth COCOeval ignores.
    """
    scores, tps = [[] for _ in range(nc)], [[] for _ in range(nc)]
    n_gt = np.zeros(nc, dtype=np.int64)
    for e in ev.evalImgs:
        if e is None:
            continue
        k = e["category_id"]
        kept = ~e["dtIgnore"][_IOU50].astype(bool)
        scores[k].append(np.asarray(e["dtScores"], dtype=np.float64)[kept])
        tps[k].append(e["dtMatches"][_IOU50][kept] > 0)
        n_gt[k] += int(np.count_nonzero(e["gtIgnore"] == 0))
    return [_concat(s, np.float64) for s in scores], [_concat(t, bool) for t in tps], n_gt


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _pr_at_thresholds(scores: np.ndarray, tp: np.ndarray, n_gt: int,
                      thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of one class keeping detections with score ≥ each threshold.

    Precision is 0 where the class has no detection above the threshold (nothing credited).
    """
    order = np.argsort(-scores, kind="stable")
    kept = np.searchsorted(-scores[order], -thresholds, side="right")    # count ≥ threshold
    tp_kept = np.concatenate(([0], np.cumsum(tp[order])))[kept]
    precision = np.divide(tp_kept, kept, out=np.zeros(len(kept)), where=kept > 0)
    return precision, tp_kept / n_gt


def _best_f1_pr(scores, tps, n_gt, classes: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """YOLOv5 val's P and R: per class, at the confidence maximising F1 averaged over ``classes``.

    Returns (confidence, precision [nc], recall [nc]); entries outside ``classes`` are NaN.  The
    highest confidence wins ties; with no detections P = R = 0 and the confidence is NaN.
    """
    nc = len(n_gt)
    p_best, r_best = np.full(nc, math.nan), np.full(nc, math.nan)
    p_best[classes] = r_best[classes] = 0.0
    thresholds = np.unique(_concat([scores[k] for k in classes], np.float64))[::-1]
    if not len(thresholds):
        return math.nan, p_best, r_best
    pr = [_pr_at_thresholds(scores[k], tps[k], n_gt[k], thresholds) for k in classes]
    p, r = np.array([x[0] for x in pr]), np.array([x[1] for x in pr])
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    best = int(f1.mean(0).argmax())
    p_best[classes], r_best[classes] = p[:, best], r[:, best]
    return float(thresholds[best]), p_best, r_best


def _mean(values: np.ndarray) -> float:
    """Mean over the classes with ground truth (non-NaN); 0 when there are none."""
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else 0.0


def evaluate(predictions: Sequence[ArrayLike], targets: Sequence[ArrayLike],
             names: Sequence[str]) -> DetectionMetrics:
    """COCO AP and YOLOv5-style P/R of per-image detections against per-image ground truth.

    ``predictions[i]`` is ``[k, 6]`` (x1, y1, x2, y2, conf, cls) as ``non_max_suppression``
    returns; ``targets[i]`` is ``[n, 5]`` (cls, x1, y1, x2, y2) in the same pixel frame;
    ``names[c]`` names class ``c``.  Images may have no detections or no ground truth.
    """
    preds, gts = _per_image_arrays(predictions, targets)
    nc = len(names)
    ev = _run_cocoeval(_ground_truth(gts, nc), _detections(preds, nc))
    ap50, ap = _class_ap(ev, nc)
    scores, tps, n_gt = _matches_at_iou50(ev, nc)
    conf, precision, recall = _best_f1_pr(scores, tps, n_gt, np.flatnonzero(n_gt))
    per_class = [{"name": names[k],
                  "images": sum(bool(np.any(t[:, 0] == k)) for t in gts),
                  "instances": int(n_gt[k]), "precision": float(precision[k]),
                  "recall": float(recall[k]), "map50": float(ap50[k]), "map": float(ap[k])}
                 for k in range(nc)]
    return DetectionMetrics(precision=_mean(precision), recall=_mean(recall),
                            map50=_mean(ap50), map=_mean(ap), per_class=per_class,
                            images=len(gts), instances=int(n_gt.sum()), conf=conf)


class MetricAccumulator:
    """Collects detections and ground truth batch by batch during validation.

    ``add`` copies each image's arrays to host memory right away, so device tensors from the
    model can be released; ``compute`` evaluates everything added so far.
    """

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._predictions: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def add(self, predictions: Sequence[ArrayLike], targets: Sequence[ArrayLike]) -> None:
        """Append a batch: per-image ``[k, 6]`` detections and ``[n, 5]`` targets."""
        preds, gts = _per_image_arrays(predictions, targets)
        self._predictions += preds
        self._targets += gts

    def compute(self) -> DetectionMetrics:
        return evaluate(self._predictions, self._targets, self.names)


__all__ = ["DetectionMetrics", "MAX_DETS", "MetricAccumulator", "evaluate"]
