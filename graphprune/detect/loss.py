"""The YOLOv5 training loss: anchor matching, CIoU box loss, BCE objectness and class losses.

Targets arrive as one tensor ``[M, 6]`` = (image index in the batch, class, cx, cy, w, h), box
coordinates normalised to the network input.  For every detection level each target is matched
to the anchors whose shape is within a factor ``anchor_t`` of its own (both ways, width and
height), and assigned to the grid cell holding its centre plus the two neighbouring cells its
centre is closest to — so every target trains up to three cells per anchor.  Predicted boxes
decode as in the Detect head (``xy = 2σ − 0.5`` around the cell, ``wh = (2σ)² · anchor``); the
box loss is 1 − CIoU, the objectness target of a matched cell is its CIoU (clamped at 0), and
classes use per-class BCE.  Level objectness losses are weighted 4.0 / 1.0 / 0.4 (small to
large objects), and the gains scale with the number of levels, classes and image size as the
YOLOv5 recipe does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from graphprune.models.yolov5 import Detect


@dataclass
class LossGains:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5
    anchor_t: float = 4.0        # a target matches an anchor within this ratio, both ways


def find_detect(model: nn.Module) -> Detect:
    """The model's Detect head (also inside a slim GraphModule, where it is kept whole)."""
    heads = [m for m in model.modules() if isinstance(m, Detect)]
    if not heads:
        raise ValueError("the model has no YOLOv5 Detect head")
    return heads[-1]


def bbox_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two ``[n, 4]`` xywh (centre) box sets.

    CIoU = IoU − ρ²/c² − αv: ρ the centre distance, c the diagonal of the enclosing box,
    v = 4/π² (atan(w_b/h_b) − atan(w_a/h_a))² the aspect-ratio mismatch, α = v / (1 − IoU + v).
    """
    ax1, ay1 = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2
    ax2, ay2 = a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    bx1, by1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2
    bx2, by2 = b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(0) * \
        (torch.min(ay2, by2) - torch.max(ay1, by1)).clamp(0)
    wa, ha, wb, hb = a[:, 2], a[:, 3] + eps, b[:, 2], b[:, 3] + eps
    union = wa * ha + wb * hb - inter + eps
    iou = inter / union
    cw = torch.max(ax2, bx2) - torch.min(ax1, bx1)
    ch = torch.max(ay2, by2) - torch.min(ay1, by1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = (a[:, 0] - b[:, 0]) ** 2 + (a[:, 1] - b[:, 1]) ** 2
    v = (4 / math.pi ** 2) * (torch.atan(wb / hb) - torch.atan(wa / ha)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


# The centre cell, then its left, upper, right and lower neighbours (in grid units × 0.5).
_NEIGHBOURS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


class YOLOv5Loss:
    """Callable ``(maps, targets) -> (total loss × batch size, [box, obj, cls] detached)``."""

    def __init__(self, model: nn.Module, gains: LossGains | None = None, imgsz: int = 640):
        head = find_detect(model)
        self.head = head
        self.nl, self.na, self.nc = head.nl, head.na, head.nc
        g = gains or LossGains()
        # YOLOv5 recipe: gains tuned for 3 levels, 80 classes and 640 px, rescaled here
        self.box_gain = g.box * 3 / self.nl
        self.cls_gain = g.cls * self.nc / 80 * 3 / self.nl
        self.obj_gain = g.obj * (imgsz / 640) ** 2 * 3 / self.nl
        self.anchor_t = g.anchor_t
        self.balance = [4.0, 1.0, 0.4] if self.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02][:self.nl]
        self.bce = nn.BCEWithLogitsLoss()

    def match(self, maps: Sequence[torch.Tensor], targets: torch.Tensor):
        """Per level: (image, anchor, row, col) indices, box targets relative to the cell,
        the matched anchors and classes."""
        device = targets.device
        out = []
        neighbours = _NEIGHBOURS.to(device) * 0.5
        for i, pred in enumerate(maps):
            ny, nx = pred.shape[2:4]
            anchors = self.head.anchors[i].to(device)                 # [na, 2] in grid units
            scale = torch.tensor([nx, ny, nx, ny], device=device, dtype=targets.dtype)
            boxes = targets[:, 2:6] * scale                            # [M, 4] grid units
            if len(targets):
                ratio = boxes[None, :, 2:4] / anchors[:, None]         # [na, M, 2]
                fits = torch.max(ratio, 1 / ratio).max(2).values < self.anchor_t
                a_idx, t_idx = fits.nonzero(as_tuple=True)
            else:
                a_idx = t_idx = torch.zeros(0, dtype=torch.long, device=device)
            xy = boxes[t_idx, :2]
            inv = torch.tensor([nx, ny], device=device, dtype=xy.dtype) - xy
            # also the two neighbouring cells whose border the centre is within half a cell of
            near_low = (xy % 1 < 0.5) & (xy > 1)
            near_high = (inv % 1 < 0.5) & (inv > 1)
            use = torch.stack([torch.ones_like(near_low[:, 0]), near_low[:, 0], near_low[:, 1],
                               near_high[:, 0], near_high[:, 1]])              # [5, K]
            k5 = use.nonzero(as_tuple=True)
            sel_t, sel_a = t_idx[k5[1]], a_idx[k5[1]]
            cell_xy = boxes[sel_t, :2] - neighbours[k5[0]]
            cell = cell_xy.long()
            gi = cell[:, 0].clamp(0, nx - 1)
            gj = cell[:, 1].clamp(0, ny - 1)
            tbox = torch.cat([boxes[sel_t, :2] - torch.stack([gi, gj], 1), boxes[sel_t, 2:4]], 1)
            image = targets[sel_t, 0].long()
            out.append((image, sel_a, gj, gi, tbox, anchors[sel_a], targets[sel_t, 1].long()))
        return out

    def __call__(self, maps: Sequence[torch.Tensor], targets: torch.Tensor):
        device = maps[0].device
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for i, (pred, (b, a, gj, gi, tbox, anchor, tcls)) in enumerate(
                zip(maps, self.match(maps, targets))):
            tobj = torch.zeros(pred.shape[:4], dtype=pred.dtype, device=device)
            if len(b):
                p = pred[b, a, gj, gi]                                   # [K, 5 + nc]
                pxy = p[:, :2].sigmoid() * 2 - 0.5
                pwh = (p[:, 2:4].sigmoid() * 2) ** 2 * anchor
                ciou = bbox_ciou(torch.cat([pxy, pwh], 1), tbox)
                box_loss = box_loss + (1.0 - ciou).mean()
                tobj[b, a, gj, gi] = ciou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:
                    t = torch.zeros_like(p[:, 5:])
                    t[torch.arange(len(tcls), device=device), tcls] = 1.0
                    cls_loss = cls_loss + self.bce(p[:, 5:], t)
            obj_loss = obj_loss + self.bce(pred[..., 4], tobj) * self.balance[i]
        box_loss = box_loss * self.box_gain
        obj_loss = obj_loss * self.obj_gain
        cls_loss = cls_loss * self.cls_gain
        batch = maps[0].shape[0]
        total = (box_loss + obj_loss + cls_loss) * batch
        return total, torch.stack([box_loss, obj_loss, cls_loss]).detach()


__all__ = ["LossGains", "YOLOv5Loss", "bbox_ciou", "find_detect"]
