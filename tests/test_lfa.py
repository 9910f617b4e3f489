"""Feature attention (Eq. 1), the LFA (Eq. 2) and the threshold search.

Eq. 1–2 and M are pinned on hand-made maps and boxes; the bisection is compared with a
brute-force scan of every prune on a small model whose LFA⁺ grows with the prune."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.attention import AttentionReader, CalibrationSet, confidence_map, target_mask
from graphprune.errors import GraphpruneError
from graphprune.search import MaskPlanner, Searcher, search


def sig(x):
    return 1 / (1 + math.exp(-x))


# -- M --------------------------------------------------------------------------------------
def test_mask_marks_cells_whose_centre_is_inside_a_box():
    # 32 × 32 image, 4 × 4 grid: stride 8, cell centres at 4, 12, 20, 28
    m = target_mask(np.array([[6, 10, 22, 30]]), (4, 4), (32, 32))
    expected = np.zeros((4, 4), dtype=bool)
    expected[1:4, 1:3] = True          # rows: centres 12, 20, 28 in [10, 30]; cols 12, 20
    assert np.array_equal(m.numpy(), expected)


def test_a_box_smaller_than_the_stride_still_marks_the_cell_holding_its_centre():
    # a 2-px box between cell centres (x 9..11, y 1..3): no centre inside, so only the
    # cell holding the box centre (10, 2) -> row 0, column 1
    m = target_mask(np.array([[9, 1, 11, 3]]), (4, 4), (32, 32))
    assert m.sum() == 1 and m[0, 1]
    # a box at the far corner stays on the grid
    m = target_mask(np.array([[31, 31, 32, 32]]), (4, 4), (32, 32))
    assert m.sum() == 1 and m[3, 3]
    assert target_mask(np.zeros((0, 4)), (4, 4), (32, 32)).sum() == 0


# -- F and Eq. 1 -----------------------------------------------------------------------------
class FixedHead(nn.Module):
    """Returns YOLOv5-style (pred, [raw maps]) whose logits are the module's parameters."""

    def __init__(self, maps):
        super().__init__()
        self.maps = nn.ParameterList(nn.Parameter(m) for m in maps)
        self.nc, self.na, self.no = maps[0].shape[-1] - 5, maps[0].shape[1], maps[0].shape[-1]

    def forward(self, x):
        return torch.zeros(1), [m.expand(len(x), *m.shape[1:]) for m in self.maps]


def test_confidence_is_objectness_times_best_class_summed_over_anchors():
    raw = torch.zeros(1, 2, 1, 1, 7)             # 2 anchors, 2 classes
    raw[0, 0, 0, 0, 4], raw[0, 0, 0, 0, 5:] = 1.0, torch.tensor([-1.0, 2.0])
    raw[0, 1, 0, 0, 4], raw[0, 1, 0, 0, 5:] = -2.0, torch.tensor([0.5, 0.0])
    raw[..., :4] = 3.0                           # box channels do not count
    want = sig(1) * sig(2) + sig(-2) * sig(0.5)
    assert confidence_map(raw).item() == pytest.approx(want, rel=1e-6)
    # the same map in the [B, na*no, H, W] layout, read with the head's na / no
    flat = raw.permute(0, 1, 4, 2, 3).reshape(1, 14, 1, 1)
    head = type("H", (), {"na": 2, "no": 7, "nc": 2})()
    assert confidence_map(flat, head).item() == pytest.approx(want, rel=1e-6)


def test_feature_attention_is_the_mean_over_images_of_f_inside_the_boxes():
    torch.manual_seed(0)
    level0, level1 = torch.randn(1, 1, 4, 4, 6), torch.randn(1, 1, 2, 2, 6)
    model = FixedHead([level0, level1])
    boxes = [np.array([[0, 0, 8, 8]]), np.zeros((0, 4)), np.array([[17, 17, 18, 18]])]
    calib = CalibrationSet.from_images(torch.zeros(3, 3, 16, 16), boxes, batch_size=2)
    fa = gp.feature_attention(model, calib)
    f0, f1 = confidence_map(level0)[0], confidence_map(level1)[0]
    # level 0 (stride 4): image 0 covers cells (0..1, 0..1) (centres 2, 6); image 2's tiny box
    # at (17.5, 17.5) lies outside the 16-px image and is clipped to the last cell
    want0 = (f0[:2, :2].sum() + 0 + f0[3, 3]) / 3
    # level 1 (stride 8): centre 4 inside [0, 8] -> cell (0, 0); image 2 -> cell (1, 1)
    want1 = (f1[0, 0] + 0 + f1[1, 1]) / 3
    assert fa.images == 3
    assert fa.levels == pytest.approx([want0.item(), want1.item()], rel=1e-6)


def test_lfa_signed_plus_and_skipped_levels():
    loss = gp.lfa([0.9, 1.2, 0.0, 0.5], [1.0, 1.0, 0.0, 1.0])
    assert loss.per_level[2] is None
    assert [loss.per_level[i] for i in (0, 1, 3)] == pytest.approx([0.1, -0.2, 0.5])
    assert loss.skipped == [2]
    assert loss.signed == pytest.approx((0.1 - 0.2 + 0.5) / 3)
    assert loss.plus == pytest.approx((0.1 + 0.0 + 0.5) / 3)   # a gain cannot hide a loss
    with pytest.raises(GraphpruneError, match="no feature attention"):
        gp.lfa([1.0], [0.0])
    with pytest.raises(GraphpruneError, match="levels"):
        gp.lfa([1.0, 1.0], [1.0])


def test_features_mode_reads_the_head_inputs_summed_over_channels():
    model = gp.models.yolov5n(num_classes=2).eval()
    x = torch.rand(2, 3, 64, 64)
    captured = []
    h = model.model[-1].register_forward_pre_hook(lambda m, a: captured.append(list(a[0])))
    maps = AttentionReader("features")(model, x)
    h.remove()
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8), (2, 4, 4), (2, 2, 2)]
    assert torch.allclose(maps[1], captured[0][1].sum(1))


# -- the search ------------------------------------------------------------------------------
class TwoLevel(nn.Module):
    """Two detection levels whose features are ReLU outputs: zeroing a channel can only lower
    FA, so LFA⁺ grows with the prune and a brute-force scan has one answer."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_a, self.act_a = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), \
            nn.ReLU()
        self.conv_b, self.bn_b, self.act_b = nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), \
            nn.ReLU()
        self.head_a, self.head_b = nn.Conv2d(16, 6, 1), nn.Conv2d(16, 6, 1)

    def forward(self, x):
        return self.head_a(self.act_a(self.bn_a(self.conv_a(x)))), \
            self.head_b(self.act_b(self.bn_b(self.conv_b(x))))


def _two_level(seed=0):
    torch.manual_seed(seed)
    model = TwoLevel().eval()
    g = torch.Generator().manual_seed(seed)
    for bn in (model.bn_a, model.bn_b):
        bn.weight.data = torch.rand(16, generator=g) * 2 + 0.01
        bn.bias.data = torch.rand(16, generator=g) * 0.5
        bn.running_var.data = torch.rand(16, generator=g) + 0.5
    boxes = [np.array([[2, 2, 10, 12], [14, 3, 15, 4]]), np.array([[0, 0, 16, 16]]),
             np.array([[5, 6, 9, 9]]), np.zeros((0, 4))]
    calib = CalibrationSet.from_images(torch.rand(4, 3, 16, 16, generator=g), boxes, 2)
    return model, calib


@pytest.mark.parametrize("target", [0.02, 0.1, 0.4])
def test_search_finds_what_a_brute_force_scan_finds(target):
    model, calib = _two_level()
    example = torch.rand(1, 3, 16, 16)
    reader = AttentionReader("features", ["act_a", "act_b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner = MaskPlanner(model, example)
        searcher = Searcher(model, planner, calib, reader)
        found = search(searcher, lfa_target=target)
        scan = Searcher(model, planner, calib, reader)
        curve = [scan.measure(k).lfa_plus for k in range(1, planner.size + 1)]
    assert planner.size == 32
    assert all(b >= a - 1e-12 for a, b in zip(curve, curve[1:])), "the fixture must be monotone"
    brute = max(k for k, v in zip(range(1, 33), curve) if v <= target)
    assert found.plan.count == brute
    assert 0 < brute < 32                       # the target splits the range
    assert found.evaluations <= math.ceil(math.log2(planner.size)) + 2
    assert found.lfa.plus == pytest.approx(curve[brute - 1])


def test_prune_to_target_compiles_the_searched_masks_and_remeasures_them():
    model, calib = _two_level()
    example = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp.prune_to_target(model, example, calib, lfa_target=0.1, mode="features",
                                    layers=["act_a", "act_b"])
    plan = result.search.plan
    for name, mask in plan.masks.items():
        assert np.array_equal(result.compiled.masks[name].numpy(), mask)
    # the estimate of the probe is what the compiler produced, and the slim model's LFA is
    # the probe's (the invariant)
    assert (plan.params, plan.flops) == (result.compiled.stats.params_after,
                                         result.compiled.stats.flops_after)
    assert result.lfa_slim.plus == pytest.approx(result.search.lfa.plus, abs=1e-5)
    assert result.lfa_slim.plus <= 0.1
    assert result.compiled.module.bn_a.num_features + \
        result.compiled.module.bn_b.num_features == 32 - plan.count


def test_an_unreachable_target_is_said_plainly():
    model, calib = _two_level()
    with warnings.catch_warnings(), pytest.raises(GraphpruneError, match="even the smallest"):
        warnings.simplefilter("ignore")
        gp.prune_to_target(model, torch.rand(1, 3, 16, 16), calib, lfa_target=1e-9,
                           mode="features", layers=["act_a", "act_b"])


def test_planner_masks_and_costs_match_compile_on_yolov5n():
    model = gp.models.yolov5n(num_classes=3)
    gp.models.randomize_batchnorm(model, 0)
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner = MaskPlanner(model, x, min_channels=2, exclude=["model.0."])
        for count in (planner.size // 3, planner.size - 5):
            plan = planner.plan(count)
            r = gp.compile(model, x, masks={n: torch.as_tensor(m)
                                            for n, m in plan.requested.items()},
                           min_channels=2, exclude=["model.0."])
            for name, mask in plan.masks.items():
                assert np.array_equal(r.masks[name].numpy(), mask), name
            assert (plan.params, plan.flops) == (r.stats.params_after, r.stats.flops_after)
    assert planner.plan(0).params == r.stats.params_before
    assert "model.0.bn" not in {n for n, c in planner.candidates.items() if c.any()}


def test_flops_target_is_the_smallest_prune_that_reaches_it():
    model, calib = _two_level(1)
    example = torch.rand(1, 3, 16, 16)
    reader = AttentionReader("features", ["act_a", "act_b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner = MaskPlanner(model, example)
        found = search(Searcher(model, planner, calib, reader), flops_target=0.4)
    removed = 1 - found.plan.flops / planner.flops_before
    before = 1 - planner.plan(found.plan.count - 1).flops / planner.flops_before
    assert removed >= 0.4 > before
    assert found.lfa is not None and found.evaluations == 1


def test_two_sided_criterion_counts_gains_of_attention_as_changes():
    """LFA⁺ ignores a level whose attention grew; LFA± counts |1 − FA_p/FA_s| on every level,
    and a search with criterion "two-sided" compares that with the target."""
    from graphprune.attention import lfa as lfa_of

    loss = lfa_of([1.1, 0.98, 1.0], [1.0, 1.0, 1.0])
    assert loss.plus == pytest.approx(0.02 / 3)
    assert loss.two_sided == pytest.approx(0.12 / 3)
    assert loss.value("plus") == loss.plus and loss.value("two-sided") == loss.two_sided
    with pytest.raises(gp.GraphpruneError, match="criterion"):
        loss.value("both")


def test_a_two_sided_search_stops_where_attention_grows():
    """Head maps with negative weights on ReLU features and a large bias: removing a channel
    raises F, so LFA⁺ stays 0 and the LFA⁺ search prunes every candidate; LFA± sees the change
    and stops within the target."""
    model, calib = _two_level()
    with torch.no_grad():
        for head in (model.head_a, model.head_b):
            head.weight.copy_(-0.1 * head.weight.abs())
            head.bias.fill_(1.0)
    example = torch.rand(1, 3, 16, 16)
    reader = AttentionReader("features", ["head_a", "head_b"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        planner = MaskPlanner(model, example)
        plus = search(Searcher(model, planner, calib, reader), lfa_target=0.005)
        two = search(Searcher(model, planner, calib, reader, criterion="two-sided"),
                     lfa_target=0.005)
    assert plus.plan.count == planner.size and plus.lfa.plus == 0.0 and plus.lfa.signed < -0.005
    assert 0 < two.plan.count < planner.size
    assert two.lfa.two_sided <= 0.005 and all(p.lfa_cut == p.lfa_two_sided for p in two.probes)
