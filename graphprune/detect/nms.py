"""Box utilities and class-aware greedy non-maximum suppression in plain torch.

``non_max_suppression`` turns the decoded evaluation output of the built-in YOLOv5 head
(``[B, N, 5 + nc]``: centre ``xywh`` in pixels, objectness, class probabilities, sigmoid already
applied) into per-image detections ``(x1, y1, x2, y2, conf, cls)``, following the YOLOv5 val
protocol the L1RR paper reports with: score = objectness × class probability, candidates above
``conf_thres`` (0.001), the ``max_nms`` best by score, greedy NMS at IoU ``iou_thres`` (0.6),
at most ``max_det`` (300) detections per image.  torchvision is not a dependency, so the greedy
loop is written here; it is exact (the textbook algorithm) and stops as soon as ``max_det`` boxes
are kept, which bounds its iterations rather than the candidate count.
"""

from __future__ import annotations

import torch


def xywh2xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """Centre/size boxes ``[..., 4]`` to corner boxes ``(x1, y1, x2, y2)`` (a new tensor)."""
    half = boxes[..., 2:4] / 2
    return torch.cat((boxes[..., 0:2] - half, boxes[..., 0:2] + half), -1)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2:] - boxes[..., :2]).clamp_min(0).prod(-1)


def _iou(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor,
         area_b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes broadcast against each other, given their areas.

    Degenerate pairs (zero union) get IoU 0 instead of NaN, so a zero-area box never suppresses
    anything and every comparison with the threshold is well defined.
    """
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2]))
    inter = wh.clamp_min(0).prod(-1)
    union = area_a + area_b - inter
    return inter / union.clamp_min(torch.finfo(union.dtype).tiny)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``[N, M]`` of corner boxes ``a [N, 4]`` and ``b [M, 4]``."""
    return _iou(a[:, None], _area(a)[:, None], b[None], _area(b)[None])


def _candidates(x: torch.Tensor, conf_thres: float, multi_label: bool,
                classes: list[int] | None) -> torch.Tensor:
    """One image's candidates ``[k, 6]`` (x1, y1, x2, y2, score, cls) with score > conf_thres.

    Rows come in anchor order (then class order for ``multi_label``), so a stable sort by score
    afterwards breaks ties deterministically by that order.
    """
    x = x[x[:, 4] > conf_thres]          # score ≤ objectness: a cheap exact prefilter
    boxes = xywh2xyxy(x[:, :4])
    scores = x[:, 5:] * x[:, 4:5]        # YOLOv5 val: confidence = obj × cls probability
    if multi_label:
        i, j = (scores > conf_thres).nonzero(as_tuple=True)
        conf = scores[i, j]
    else:
        conf, j = scores.max(1)
        i = (conf > conf_thres).nonzero(as_tuple=True)[0]
        conf, j = conf[i], j[i]
    out = torch.cat((boxes[i], conf[:, None], j[:, None].to(x.dtype)), 1)
    if classes is not None:
        out = out[torch.isin(j, torch.as_tensor(classes, device=x.device))]
    return out


def _greedy_nms(det: torch.Tensor, iou_thres: float, max_det: int) -> torch.Tensor:
    """Indices kept by class-aware greedy NMS over ``det`` sorted by descending score.

    Each step keeps the best box still alive and kills the later boxes of its class whose IoU
    with it exceeds ``iou_thres``; it stops after ``max_det`` keeps.  Only the tail after the
    kept box is touched (contiguous slices, no gathers), and areas are computed once.  The class
    test is a mask rather than the usual per-class coordinate offset, so IoUs are computed on the
    original coordinates and the result equals the textbook algorithm exactly (large offsets
    would round float32 coordinates).
    """
    boxes, cls = det[:, :4], det[:, 5]
    area = _area(boxes)
    alive = torch.ones(det.shape[0], dtype=torch.bool, device=det.device)
    keep: list[int] = []
    start = 0
    while len(keep) < max_det:
        ahead = alive[start:].nonzero()
        if not ahead.numel():
            break
        i = start + int(ahead[0])
        keep.append(i)
        start = i + 1
        iou = _iou(boxes[i], area[i], boxes[start:], area[start:])
        alive[start:] &= (iou <= iou_thres) | (cls[start:] != cls[i])
    return torch.tensor(keep, dtype=torch.long, device=det.device)


def non_max_suppression(prediction: torch.Tensor, conf_thres: float = 0.001,
                        iou_thres: float = 0.6, max_det: int = 300, max_nms: int = 30000,
                        multi_label: bool = False,
                        classes: list[int] | None = None) -> list[torch.Tensor]:
    """Per-image detections ``[k, 6]`` = (x1, y1, x2, y2, conf, cls), best first.

    ``prediction`` is ``[B, N, 5 + nc]`` as the YOLOv5 ``Detect`` head decodes it in eval mode.
    ``multi_label`` lets one anchor yield a candidate per class above ``conf_thres`` (otherwise
    only its best class); ``classes`` keeps only those class indices.  Boxes of different classes
    never suppress each other.  Runs on the device of ``prediction``; half-precision input is
    processed and returned in float32, as fp16 box areas overflow beyond 256 × 256 px.
    """
    prediction = prediction.to(torch.promote_types(prediction.dtype, torch.float32))
    out = []
    for x in prediction:
        det = _candidates(x, conf_thres, multi_label, classes)
        order = torch.sort(det[:, 4], descending=True, stable=True).indices[:max_nms]
        det = det[order]
        out.append(det[_greedy_nms(det, iou_thres, max_det)])
    return out


__all__ = ["box_iou", "non_max_suppression", "xywh2xyxy"]
