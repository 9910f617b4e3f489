"""NMS and detection metrics, each checked against an independent slow reference in this file.

NMS: a pure-Python textbook greedy loop (float32 numpy arithmetic, the same IEEE operations as
torch) on inputs built from small dyadic numbers, so scores tie often and the tie-breaking rule
(higher score first, then anchor order, then class order) is exercised.  Metrics: a pure-numpy
COCO-style AP (per image and class greedy matching by score at IoU ≥ t, 101-point interpolated
precision envelope) and a brute-force F1 sweep for precision/recall, on a fixed random set with
jittered boxes, duplicates, false positives, missed objects, an image without ground truth and a
class that is predicted but never annotated; plus hand-made cases with exact answers.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from graphprune.detect.metrics import MetricAccumulator, evaluate
from graphprune.detect.nms import box_iou, non_max_suppression, xywh2xyxy

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RECALL_POINTS = np.linspace(0.0, 1.0, 101)          # COCO's 101 recall thresholds
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)         # COCO's 0.50:0.05:0.95


# == NMS ======================================================================================
def reference_nms(pred: np.ndarray, conf_thres: float, iou_thres: float, max_det: int,
                  multi_label: bool) -> np.ndarray:
    """Textbook class-aware greedy NMS for one image ``[N, 5 + nc]`` (float32 throughout)."""
    cands = []
    for anchor, row in enumerate(pred):
        x, y, w, h = row[:4]
        box = [x - w / 2, y - h / 2, x + w / 2, y + h / 2]
        scores = row[5:] * row[4]
        labels = range(len(scores)) if multi_label else [int(np.argmax(scores))]
        cands += [(scores[c], anchor, c, box) for c in labels if scores[c] > conf_thres]
    remaining = sorted(cands, key=lambda c: (-c[0], c[1], c[2]))
    kept = []
    while remaining and len(kept) < max_det:
        best = remaining.pop(0)
        kept.append([*best[3], best[0], best[2]])
        remaining = [c for c in remaining
                     if c[2] != best[2] or pair_iou(best[3], c[3]) <= np.float32(iou_thres)]
    return np.array(kept, dtype=np.float32).reshape(-1, 6)


def pair_iou(a, b):
    """IoU of two corner boxes, 0 for an empty union (works in the inputs' precision)."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def dyadic_predictions(seed: int, batch: int, anchors: int, nc: int,
                       objects: int = 12) -> np.ndarray:
    """Head outputs crowding around a few objects (anchors jittered by up to ±8 px in centre and
    size, so NMS has plenty to suppress) whose arithmetic is exact in float32: geometry in
    multiples of 1/4, probabilities in multiples of 1/16, hence frequent exact score ties."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, 4 * 600, (batch, objects, 2))
    size = rng.integers(4 * 20, 4 * 100, (batch, objects, 2))
    pick = rng.integers(0, objects, (batch, anchors, 1))
    xy = np.take_along_axis(centre, pick, 1) + rng.integers(-32, 33, (batch, anchors, 2))
    wh = np.take_along_axis(size, pick, 1) + rng.integers(-32, 33, (batch, anchors, 2))
    probs = rng.integers(0, 17, (batch, anchors, 1 + nc)) / 16
    return np.concatenate((xy / 4, wh / 4, probs), -1).astype(np.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("iou_thres,max_det", [(0.6, 300), (0.45, 15)])
def test_nms_matches_textbook_greedy(device, multi_label, iou_thres, max_det):
    pred = dyadic_predictions(seed=1, batch=3, anchors=150, nc=3)
    out = non_max_suppression(torch.from_numpy(pred).to(device), conf_thres=0.2,
                              iou_thres=iou_thres, max_det=max_det, multi_label=multi_label)
    assert len(out) == len(pred)
    for image, det in zip(pred, out):
        expected = reference_nms(image, 0.2, iou_thres, max_det, multi_label)
        assert 10 <= len(expected) <= min(max_det, len(image) // 2)    # NMS did suppress
        assert det.device.type == device and det.dtype == torch.float32
        np.testing.assert_array_equal(det.cpu().numpy(), expected)


def test_nms_suppresses_within_class_only():
    box = [50.0, 50.0, 20.0, 20.0]
    pred = torch.tensor([[box + [0.9, 1.0, 0.0], box + [0.8, 0.0, 1.0],
                          box + [0.7, 1.0, 0.0]]])
    det = non_max_suppression(pred, iou_thres=0.5)[0]
    assert det[:, 5].tolist() == [0.0, 1.0]
    assert torch.allclose(det[:, 4], torch.tensor([0.9, 0.8]))


def test_nms_drops_only_iou_above_threshold():
    # a 10x10 box inside a 10x20 box sharing its top-left corner: IoU exactly 1/2, kept at 0.5
    pred = torch.tensor([[[5.0, 5.0, 10.0, 10.0, 0.9, 1.0],
                          [5.0, 10.0, 10.0, 20.0, 0.8, 1.0]]])
    assert len(non_max_suppression(pred, iou_thres=0.5)[0]) == 2
    assert non_max_suppression(pred, iou_thres=0.4999)[0][:, 4].tolist() == [pytest.approx(0.9)]


def test_nms_half_precision_input_runs_in_float32():
    # two 400x400 boxes with IoU 1/3: in fp16 their areas (160,000) would overflow to inf
    pred = torch.tensor([[[300.0, 300.0, 400.0, 400.0, 0.9, 1.0],
                          [500.0, 300.0, 400.0, 400.0, 0.8, 1.0]]])
    det = non_max_suppression(pred.half())[0]
    assert det.dtype == torch.float32
    assert det[:, :4].tolist() == [[100, 100, 500, 500], [300, 100, 700, 500]]


def test_nms_max_det_keeps_best_in_order():
    n = 40
    xy = torch.stack((torch.arange(n) * 30.0 + 10, torch.full((n,), 10.0)), 1)   # disjoint
    obj = torch.rand(n, generator=torch.Generator().manual_seed(0))
    pred = torch.cat((xy, torch.full((n, 2), 10.0), obj[:, None], torch.ones(n, 1)), 1)[None]
    det = non_max_suppression(pred, max_det=7)[0]
    assert torch.equal(det[:, 4], obj.sort(descending=True).values[:7])
    assert len(non_max_suppression(pred, max_nms=5)[0]) == 5
    assert len(non_max_suppression(pred)[0]) == n


def test_nms_score_is_objectness_times_class_probability():
    pred = torch.tensor([[[20.0, 30.0, 8.0, 4.0, 0.5, 0.25, 0.75]]])
    det = non_max_suppression(pred)[0]
    assert det.tolist() == [[16.0, 28.0, 24.0, 32.0, 0.375, 1.0]]
    multi = non_max_suppression(pred, multi_label=True)[0]
    assert multi[:, 4:].tolist() == [[0.375, 1.0], [0.125, 0.0]]
    assert non_max_suppression(pred, multi_label=True, conf_thres=0.2)[0][:, 5].tolist() == [1.0]
    assert non_max_suppression(pred, classes=[0], multi_label=True)[0][:, 5].tolist() == [0.0]


def test_nms_conf_threshold_is_strict():
    pred = torch.tensor([[[10.0, 10.0, 4.0, 4.0, 0.5, 0.5],
                          [40.0, 10.0, 4.0, 4.0, 0.5, 0.75]]])
    assert non_max_suppression(pred, conf_thres=0.25)[0][:, 4].tolist() == [0.375]
    assert len(non_max_suppression(pred, conf_thres=0.375)[0]) == 0


@pytest.mark.parametrize("device", DEVICES)
def test_nms_empty_inputs(device):
    for pred in (torch.zeros(2, 0, 8), torch.zeros(2, 5, 8)):   # no anchors / all scores 0
        out = non_max_suppression(pred.to(device))
        assert len(out) == 2
        assert all(o.shape == (0, 6) and o.device.type == device for o in out)
    assert non_max_suppression(torch.zeros(0, 10, 8)) == []


def test_box_iou_and_xywh2xyxy():
    assert xywh2xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0]])).tolist() == [[8.0, 17.0, 12.0, 23.0]]
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    expected = torch.tensor([[1 / 3, 1.0, 0.0], [0.0, 0.0, 0.0]])   # zero-area box: IoU 0
    assert torch.allclose(box_iou(a, b), expected)
    assert box_iou(a, torch.zeros(0, 4)).shape == (2, 0)


# == metrics: an independent reference =========================================================
def match_image(dets: np.ndarray, gts: np.ndarray, thr: float) -> list[tuple[float, bool]]:
    """(score, true positive) per detection of one image and class: best score first, each
    takes the unmatched ground truth box of highest IoU if that IoU ≥ thr."""
    taken = np.zeros(len(gts), dtype=bool)
    out = []
    for d in dets[np.argsort(-dets[:, 4], kind="stable")]:
        ious = np.array([pair_iou(d[:4], g) for g in gts]) if len(gts) else np.zeros(0)
        ious[taken] = -1.0
        j = int(np.argmax(ious)) if len(ious) else -1
        hit = j >= 0 and ious[j] >= thr
        if hit:
            taken[j] = True
        out.append((float(d[4]), hit))
    return out


def reference_matches(preds, targets, cls: int, thr: float):
    """Scores and TP flags of class ``cls`` over all images, and its ground-truth count."""
    records, n_gt = [], 0
    for p, t in zip(preds, targets):
        gts = t[t[:, 0] == cls, 1:]
        n_gt += len(gts)
        records += match_image(p[p[:, 5] == cls], gts, thr)
    scores = np.array([r[0] for r in records])
    tp = np.array([r[1] for r in records], dtype=bool)
    return scores, tp, n_gt


def reference_ap(preds, targets, cls: int, thr: float) -> float:
    """COCO 101-point AP: mean over recall points r of the best precision at recall ≥ r."""
    scores, tp, n_gt = reference_matches(preds, targets, cls, thr)
    if n_gt == 0:
        return float("nan")
    tp = tp[np.argsort(-scores, kind="stable")]
    hits = np.cumsum(tp)
    precision, recall = hits / np.arange(1, len(tp) + 1), hits / n_gt
    return float(np.mean([precision[recall >= r].max(initial=0.0) for r in RECALL_POINTS]))


def reference_pr(preds, targets, nc: int):
    """Brute force: per-class (P, R) at the highest score threshold maximising mean F1."""
    classes, matches = [], []
    for k in range(nc):
        scores, tp, n_gt = reference_matches(preds, targets, k, 0.5)
        if n_gt:
            classes.append(k)
            matches.append((scores, tp, n_gt))
    best = (-1.0, None)
    for thr in sorted({s for m in matches for s in m[0]}, reverse=True):
        pr = []
        for scores, tp, n_gt in matches:
            kept = scores >= thr
            p = tp[kept].sum() / kept.sum() if kept.any() else 0.0
            pr.append((p, tp[kept].sum() / n_gt))
        f1 = np.mean([2 * p * r / (p + r) if p + r else 0.0 for p, r in pr])
        if f1 > best[0]:
            best = (f1, pr)
    return classes, best[1]


def random_dataset(seed: int = 0, images: int = 14, nc: int = 4):
    """Ground truth in classes 0..nc-2 (class nc-1 is only ever predicted) and detections with
    jitter from slight to heavy, wrong classes, duplicates, misses and stray boxes.  Image 0 has
    no ground truth; image 1 gets no detections."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(images):
        n = 0 if i == 0 else int(rng.integers(1, 9))
        xy = rng.uniform(0, 500, (n, 2))
        boxes = np.concatenate((xy, xy + rng.uniform(10, 120, (n, 2))), 1)
        targets.append(np.concatenate((rng.integers(0, nc - 1, (n, 1)), boxes), 1))
        dets = []
        for cls, box in zip(targets[-1][:, 0], boxes):
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):           # miss / hit / duplicate
                size = np.tile(box[2:] - box[:2], 2)
                noisy = box + rng.normal(0, rng.choice([0.02, 0.06, 0.15]), 4) * size
                label = cls if rng.random() < 0.85 else rng.integers(0, nc)
                dets.append([*noisy, rng.random(), label])
        for _ in range(int(rng.integers(0, 4))):                      # stray boxes
            xy = rng.uniform(0, 500, 2)
            dets.append([*xy, *(xy + rng.uniform(10, 120, 2)), rng.random(), rng.integers(0, nc)])
        preds.append(np.array(dets if i != 1 else [], dtype=np.float64).reshape(-1, 6))
    return preds, targets


NAMES = ["plane", "ship", "tank", "bridge"]


@pytest.fixture(scope="module")
def random_case():
    preds, targets = random_dataset()
    return preds, targets, evaluate(preds, targets, NAMES)


def test_ap_matches_reference_per_class(random_case):
    preds, targets, metrics = random_case
    for k, row in enumerate(metrics.per_class[:3]):
        ap50 = reference_ap(preds, targets, k, 0.5)
        ap = np.mean([reference_ap(preds, targets, k, t) for t in IOU_THRESHOLDS])
        assert 0.05 < ap < ap50 < 0.99                       # a case that discriminates
        assert row["map50"] == pytest.approx(ap50, abs=1e-9)
        assert row["map"] == pytest.approx(ap, abs=1e-9)
    assert metrics.map50 == pytest.approx(np.mean([r["map50"] for r in metrics.per_class[:3]]))


def test_ap_matches_faster_coco_eval(random_case):
    """A second standard evaluator, an independent C++ implementation of COCO AP."""
    import faster_coco_eval as faster                      # a dev dependency
    preds, targets, metrics = random_case
    images = [{"id": i + 1, "width": 640, "height": 640} for i in range(len(targets))]
    anns, dets = [], []
    for i, (t, p) in enumerate(zip(targets, preds)):
        for cls, x1, y1, x2, y2 in t:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0})
        for x1, y1, x2, y2, score, cls in p:
            dets.append({"image_id": i + 1, "category_id": int(cls) + 1, "score": score,
                         "bbox": [x1, y1, x2 - x1, y2 - y1]})
    gt = faster.COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
    gt.createIndex()
    ev = faster.COCOeval_faster(gt, gt.loadRes(dets), iouType="bbox",
                                print_function=lambda *a: None)
    ev.params.maxDets = [1, 10, 300]
    ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]          # [iou, recall, class]
    for k, row in enumerate(metrics.per_class[:3]):
        p = precision[:, :, k]
        assert row["map50"] == pytest.approx(p[0][p[0] > -1].mean(), abs=1e-3)
        assert row["map"] == pytest.approx(np.mean([q[q > -1].mean() for q in p]), abs=1e-3)


def test_precision_recall_match_reference(random_case):
    preds, targets, metrics = random_case
    classes, pr = reference_pr(preds, targets, len(NAMES))
    assert classes == [0, 1, 2]
    for k, (p, r) in zip(classes, pr):
        assert metrics.per_class[k]["precision"] == pytest.approx(p, abs=1e-12)
        assert metrics.per_class[k]["recall"] == pytest.approx(r, abs=1e-12)
    assert metrics.precision == pytest.approx(np.mean([p for p, _ in pr]), abs=1e-12)
    assert metrics.recall == pytest.approx(np.mean([r for _, r in pr]), abs=1e-12)
    assert 0 < metrics.precision < 1 and 0 < metrics.recall < 1


def test_class_without_ground_truth_is_reported_not_averaged(random_case):
    preds, targets, metrics = random_case
    absent = metrics.per_class[3]
    assert absent["name"] == "bridge" and absent["instances"] == 0 and absent["images"] == 0
    assert all(np.isnan(absent[k]) for k in ("precision", "recall", "map50", "map"))
    assert any(np.any(p[:, 5] == 3) for p in preds)          # it was predicted
    counts = [sum(int(np.sum(t[:, 0] == k)) for t in targets) for k in range(3)]
    assert [r["instances"] for r in metrics.per_class[:3]] == counts
    assert metrics.instances == sum(counts) and metrics.images == len(targets)


# == metrics: hand-made cases ===================================================================
def gt(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


def det(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


TWO_OBJECTS = gt([0, 10, 10, 50, 50], [0, 100, 100, 150, 160])


def test_perfect_predictions_score_one():
    targets = [TWO_OBJECTS, gt([1, 0, 0, 30, 20])]
    preds = [np.column_stack((t[:, 1:], np.full(len(t), 0.9), t[:, 0])) for t in targets]
    m = evaluate(preds, targets, ["a", "b"])
    assert (m.precision, m.recall, m.map50, m.map) == pytest.approx((1, 1, 1, 1))
    assert m.per_class[1]["images"] == 1 and m.per_class[0]["instances"] == 2


def test_wrong_class_scores_zero():
    preds = [det([10, 10, 50, 50, 0.9, 1], [100, 100, 150, 160, 0.8, 1])]
    m = evaluate(preds, [TWO_OBJECTS], ["a", "b"])
    assert (m.precision, m.recall, m.map50, m.map) == (0, 0, 0, 0)
    assert np.isnan(m.per_class[1]["map50"])                 # predicted only: not averaged


def test_one_of_two_found():
    # recall reaches 1/2 at precision 1: recall points 0.00..0.50 (51 of 101) score 1
    m = evaluate([det([10, 10, 50, 50, 0.9, 0])], [TWO_OBJECTS], ["a"])
    assert m.map50 == pytest.approx(51 / 101, abs=1e-12)
    assert m.map == pytest.approx(51 / 101, abs=1e-12)
    assert (m.precision, m.recall, m.conf) == (1.0, 0.5, 0.9)


def test_ap_over_iou_thresholds():
    # IoU 0.72 is a hit at 0.50, 0.55, 0.60, 0.65, 0.70 and a miss at 0.75 .. 0.95
    m = evaluate([det([0, 0, 100, 72, 0.5, 0])], [gt([0, 0, 0, 100, 100])], ["a"])
    assert m.map50 == pytest.approx(1.0, abs=1e-12)
    assert m.map == pytest.approx(0.5, abs=1e-12)


def test_false_positive_first_and_f1_threshold():
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    targets = [gt(*[[0, *b] for b in boxes])]
    preds = [det([80, 0, 90, 10, 0.95, 0], [*boxes[0], 0.9, 0], [*boxes[1], 0.8, 0],
                 [*boxes[2], 0.7, 0], [100, 0, 110, 10, 0.5, 0])]
    m = evaluate(preds, targets, ["a"])
    # PR points (0, 0), (1/4, 1/2), (1/2, 2/3), (3/4, 3/4), (3/4, 3/5): the envelope is 3/4 up
    # to recall 3/4 (76 recall points) and 0 beyond
    assert m.map50 == pytest.approx(76 * 0.75 / 101, abs=1e-12)
    # F1 by threshold: 0.95 -> 0, 0.9 -> 1/3, 0.8 -> 4/7, 0.7 -> 3/4, 0.5 -> 2/3
    assert (m.precision, m.recall, m.conf) == (0.75, 0.75, 0.7)


def test_f1_ties_prefer_higher_confidence_and_unpredicted_class_has_zero_precision():
    # mean F1 is 1/2 at 0.9 (class b has nothing above it) and at 0.3 (b's only detection
    # misses): the higher threshold wins, and b, with no detection kept, gets P = 0
    targets = [gt([0, 0, 0, 10, 10], [1, 50, 50, 60, 60])]
    preds = [det([0, 0, 10, 10, 0.9, 0], [80, 80, 90, 90, 0.3, 1])]
    m = evaluate(preds, targets, ["a", "b"])
    assert m.conf == 0.9
    assert [(r["precision"], r["recall"]) for r in m.per_class] == [(1.0, 1.0), (0.0, 0.0)]
    assert (m.precision, m.recall) == (0.5, 0.5)


def test_detection_on_image_without_ground_truth_is_false_positive():
    preds = [det([0, 0, 10, 10, 0.5, 0]), det([0, 0, 10, 10, 0.9, 0])]
    m = evaluate(preds, [gt([0, 0, 0, 10, 10]), gt()], ["a"])
    assert m.map50 == pytest.approx(0.5, abs=1e-12)          # precision 1/2 at every recall
    assert (m.precision, m.recall) == (0.5, 1.0)
    assert m.images == 2 and m.per_class[0]["images"] == 1


def test_no_detections_and_empty_inputs():
    m = evaluate([det(), det()], [TWO_OBJECTS, gt()], ["a", "b"])
    assert (m.precision, m.recall, m.map50, m.map) == (0, 0, 0, 0) and np.isnan(m.conf)
    assert m.per_class[0]["map"] == 0 and np.isnan(m.per_class[1]["map"])
    m = evaluate([], [], ["a"])
    assert (m.map50, m.map, m.images, m.instances) == (0, 0, 0, 0)


def test_up_to_300_detections_per_image_count():
    # 150 objects in one image: COCO's default maxDets of 100 would cap recall at 2/3
    corners = np.stack(np.meshgrid(np.arange(15) * 20.0, np.arange(10) * 20.0), -1).reshape(-1, 2)
    boxes = np.concatenate((corners, corners + 10), 1)
    scores = np.linspace(0.9, 0.1, len(boxes))
    m = evaluate([np.column_stack((boxes, scores, np.zeros(150)))],
                 [np.column_stack((np.zeros(150), boxes))], ["a"])
    assert m.map == pytest.approx(1.0, abs=1e-12)


def test_tensors_accumulator_and_validation(random_case):
    preds, targets, metrics = random_case
    as_tensors = evaluate([torch.from_numpy(p) for p in preds], targets, NAMES)
    assert as_tensors.as_dict() == metrics.as_dict()
    acc = MetricAccumulator(NAMES)
    for start in range(0, len(preds), 4):
        acc.add([torch.from_numpy(p) for p in preds[start:start + 4]], targets[start:start + 4])
    assert acc.compute().as_dict() == metrics.as_dict()
    with pytest.raises(ValueError, match="images"):
        acc.add(preds[:2], targets[:1])
    with pytest.raises(ValueError, match="class ids"):
        evaluate([det()], [gt([4, 0, 0, 1, 1])], NAMES)


def test_report_formats_and_silence(random_case, capsys):
    preds, targets, metrics = random_case
    evaluate(preds, targets, NAMES)
    assert capsys.readouterr().out == ""                     # pycocotools' prints silenced
    d = json.loads(json.dumps(metrics.as_dict(), allow_nan=False))
    assert d["per_class"][3]["map50"] is None and d["map50"] == metrics.map50
    table = metrics.table()
    assert [c.header for c in table.columns] == ["Class", "Images", "Instances", "P", "R",
                                                 "mAP50", "mAP50-95"]
    console = Console(file=io.StringIO(), width=120)
    console.print(table)
    rows = [line.replace("│", " ").split() for line in console.file.getvalue().splitlines()]
    rows = [r for r in rows if r and r[0] in ["all", *NAMES]]
    assert [r[0] for r in rows] == ["all", *NAMES]
    assert rows[0] == ["all", str(len(targets)), str(metrics.instances),
                       f"{metrics.precision:.3f}", f"{metrics.recall:.3f}",
                       f"{metrics.map50:.3f}", f"{metrics.map:.3f}"]
    assert rows[4] == ["bridge", "0", "0", "-", "-", "-", "-"]
