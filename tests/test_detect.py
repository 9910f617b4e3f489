"""The YOLOv5 loss, anchor fitting and the learning-rate schedule."""

from __future__ import annotations

import math

import numpy as np
import torch

from graphprune.detect.anchors import best_possible_recall, fit_anchors, kmeans_anchors
from graphprune.detect.loss import YOLOv5Loss, bbox_ciou
from graphprune.detect.train import TrainConfig, lr_factor, parameter_groups
from graphprune.models import yolov5n
from graphprune.models.yolov5 import DEFAULT_ANCHORS


def test_ciou_is_one_for_identical_boxes_and_penalises_distance_and_shape():
    a = torch.tensor([[10.0, 10.0, 4.0, 4.0]])
    assert torch.allclose(bbox_ciou(a, a), torch.ones(1), atol=1e-6)
    far = torch.tensor([[30.0, 10.0, 4.0, 4.0]])
    # disjoint: IoU 0, centre distance 20 over an enclosing diagonal of sqrt(24² + 4²)
    assert torch.allclose(bbox_ciou(a, far), torch.tensor([-400 / (24 ** 2 + 4 ** 2)]),
                          atol=1e-5)
    tall = torch.tensor([[10.0, 10.0, 2.0, 8.0]])
    iou = (2 * 4) / (16 + 16 - 2 * 4)            # overlap 2x4 of a 4x4 and a 2x8 box
    v = 4 / math.pi ** 2 * (math.atan(2 / 8) - math.atan(1.0)) ** 2
    alpha = v / (v - iou + 1)
    rho2_over_c2 = 0.0                # same centre
    assert math.isclose(float(bbox_ciou(a, tall)), iou - rho2_over_c2 - alpha * v, rel_tol=1e-5)


def test_each_target_trains_its_cell_and_two_neighbours():
    model = yolov5n(num_classes=3).train()
    loss = YOLOv5Loss(model, imgsz=64)
    maps = model(torch.zeros(1, 3, 64, 64))
    # one box in image 0, class 2, centred at (0.30, 0.60), 12x12 px on a 64 px input
    target = torch.tensor([[0, 2, 0.30, 0.60, 12 / 64, 12 / 64]])
    matches = loss.match(maps, target)
    image, anchor, gj, gi, tbox, _, cls = matches[0]        # stride 8: an 8x8 grid
    # centre (2.4, 4.8) in grid units: cell (2, 4); x is near the left edge (0.4 < 0.5), y near
    # the lower edge (0.8 > 0.5), so the cells to the left (1, 4) and below (2, 5) train too
    cells = {(int(x), int(y)) for x, y in zip(gi, gj)}
    assert cells == {(2, 4), (1, 4), (2, 5)}
    assert set(cls.tolist()) == {2} and set(image.tolist()) == {0}
    anchors = model.model[-1].anchors[0]
    ratio = torch.tensor([1.5, 1.5]) / anchors
    fits = (torch.max(ratio, 1 / ratio).max(1).values < 4).nonzero().flatten().tolist()
    assert sorted(set(anchor.tolist())) == fits
    assert torch.all((tbox[:, :2] > -0.5) & (tbox[:, :2] < 1.5))


def test_the_loss_falls_when_fitting_one_batch():
    torch.manual_seed(0)
    model = yolov5n(num_classes=2).train()
    loss_fn = YOLOv5Loss(model, imgsz=64)
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.2], [1, 1, 0.25, 0.7, 0.2, 0.25]])
    opt = torch.optim.SGD(parameter_groups(model, 5e-4), lr=0.01, momentum=0.9)
    first = None
    for _ in range(60):
        loss, parts = loss_fn(model(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
        assert torch.all(parts >= 0)
    assert float(loss.detach()) < 0.5 * first


def test_no_targets_still_trains_objectness_down():
    model = yolov5n(num_classes=2).train()
    loss_fn = YOLOv5Loss(model, imgsz=64)
    loss, parts = loss_fn(model(torch.rand(2, 3, 64, 64)), torch.zeros(0, 6))
    assert parts[0] == 0 and parts[2] == 0 and parts[1] > 0 and loss.requires_grad


def test_kmeans_recovers_clustered_box_sizes():
    rng = np.random.default_rng(0)
    centres = np.array([[8, 8], [16, 40], [60, 20]], dtype=float)
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (200, 2))) for c in centres])
    found = kmeans_anchors(wh, 3, seed=0)
    assert np.allclose(found, centres[np.argsort(centres.prod(1))], rtol=0.05)


def test_anchor_fit_raises_recall_for_unusual_targets():
    rng = np.random.default_rng(1)
    # long thin targets (bridges, ships) far from the COCO anchors' shapes
    wh = np.stack([rng.uniform(60, 200, 500), rng.uniform(3, 6, 500)], 1)
    fit = fit_anchors(wh, DEFAULT_ANCHORS, seed=0)
    assert fit.bpr_before < 0.5 and fit.bpr_after > 0.98
    anchors = np.array(fit.anchors).reshape(-1, 2)
    assert math.isclose(best_possible_recall(wh, anchors), fit.bpr_after)
    assert np.all(np.diff(anchors.prod(1)) >= 0)          # small to large, level by level


def test_lr_schedule_ends_at_lrf():
    cfg = TrainConfig(data="x", epochs=10, lrf=0.1)
    assert lr_factor(cfg, 0) == 1.0 and math.isclose(lr_factor(cfg, 10), 0.1)
    cfg.cos_lr = True
    assert math.isclose(lr_factor(cfg, 5), 0.55) and math.isclose(lr_factor(cfg, 10), 0.1)


def test_weight_decay_applies_to_conv_weights_only():
    model = yolov5n(num_classes=2)
    groups = parameter_groups(model, 5e-4)
    decayed = {id(p) for p in groups[1]["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (name.endswith("conv.weight") or
                                      (name.startswith("model.24.m") and name.endswith("weight")))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
