"""Choosing channels: thresholds, ratios, ties, validation, safety rails."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.context import ranked_names
from graphprune.masks import batchnorms, global_order, masks_from_ranking
from graphprune.models import randomize_batchnorm, tiny_resnet, yolov5n
from conftest import check_compile


def prunable_channels(result):
    return sum(len(m) for m in result.masks.values())


def test_prune_ratio_on_an_untrained_model_prunes_exactly_the_requested_count():
    model = tiny_resnet()                      # every γ = 1: only the tie-break decides
    x = torch.randn(1, 3, 16, 16)
    result = check_compile(model, x, prune_ratio=0.25, min_channels=1)
    requested = {n: m.numpy() for n, m in result.requested.items()}
    pruned = sum(int((~m).sum()) for m in requested.values())
    report = gp.analyze(model, x)
    candidates = sum(len(m) - report.pinned_channels[n] for n, m in requested.items())
    assert pruned == round(0.25 * candidates)
    # ties go by layer order, then channel index: the earliest layers lose their first channels
    names = list(requested)
    first_pruned = next(n for n in names if not requested[n].all())
    assert not requested[first_pruned][0]


def test_tie_break_is_gamma_then_layer_then_channel():
    gammas = {"a": np.array([0.5, 0.1, 0.1]), "b": np.array([0.1, 0.5])}
    candidates = {n: np.ones(len(g), dtype=bool) for n, g in gammas.items()}
    ranked, names = global_order(gammas, candidates)
    assert [(names[i], c) for i, c in ranked] == [("a", 1), ("a", 2), ("b", 0), ("a", 0),
                                                   ("b", 1)]
    masks = masks_from_ranking(gammas, candidates, 3)
    assert masks["a"].tolist() == [True, False, False] and masks["b"].tolist() == [False, True]


def test_threshold_prunes_channels_below_delta():
    model = randomize_batchnorm(yolov5n(num_classes=2), seed=3)
    x = torch.rand(1, 3, 64, 64)
    delta = 0.05
    result = check_compile(model, x, threshold=delta)
    bns = batchnorms(model)
    for name, requested in result.requested.items():
        gamma = bns[name].weight.detach().abs().numpy()
        assert np.array_equal(requested.numpy(), gamma >= delta), name
    # and the applied masks only ever add channels to the request
    for name, applied in result.masks.items():
        assert applied.numpy()[result.requested[name].numpy()].all()


def test_min_channels_keeps_the_largest_gammas():
    model = randomize_batchnorm(tiny_resnet(), seed=4)
    result = check_compile(model, torch.rand(1, 3, 16, 16), threshold=10.0, min_channels=4)
    bns = batchnorms(model)
    for name, m in result.masks.items():
        m = m.numpy()
        assert m.sum() >= 4
        if "min_channels" in result.pinned.get(name, ""):
            g = bns[name].weight.detach().abs().numpy()
            assert m[np.argsort(-g)[:4]].all()      # the four largest |γ| are among the kept


@pytest.mark.parametrize("kwargs,match", [
    ({"prune_ratio": 1.0}, "prune_ratio must be in"),
    ({"prune_ratio": -0.1}, "prune_ratio must be in"),
    ({"threshold": -1.0}, "threshold must be"),
    ({"threshold": 0.1, "prune_ratio": 0.1}, "give one of"),
    ({"residual": "or"}, "residual must be one of"),
    ({"min_channels": 0}, "min_channels"),
    ({"masks": {"layer1.0.conv1.1x": [1] * 16}}, "did you mean 'layer1.0.conv1.1'"),
    ({"masks": {"stem.1": [1] * 15}}, "has 15 entries but the layer has 16"),
    ({"masks": {"stem.1": [2] * 16}}, "values other than 0/1"),
])
def test_bad_requests_raise_clear_errors(kwargs, match):
    with pytest.raises(gp.MaskError, match=match):
        gp.compile(tiny_resnet(), torch.zeros(1, 3, 16, 16), **kwargs)


def test_compile_without_a_request_prunes_nothing_and_matches_the_model():
    model = randomize_batchnorm(tiny_resnet(), seed=5)
    x = torch.rand(2, 3, 16, 16)
    result = check_compile(model, x)
    assert result.stats.params_after == result.stats.params_before
    with torch.no_grad():
        torch.testing.assert_close(result.module(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_zero_mask_zeroes_exactly_the_pruned_channels():
    model = randomize_batchnorm(tiny_resnet(), seed=6).eval()
    mask = np.ones(16, dtype=bool)
    mask[[1, 5]] = False
    ref = gp.zero_mask(model, {"stem.1": mask})
    out = {}
    ref.stem[1].register_forward_hook(lambda m, i, o: out.setdefault("bn", o))
    with torch.no_grad():
        ref(torch.rand(2, 3, 16, 16))
    assert torch.all(out["bn"][:, [1, 5]] == 0)
    assert torch.all(out["bn"][:, mask].abs().sum((0, 2, 3)) > 0)
    assert model.stem[1].weight[1] != 0            # the original is untouched


def test_round_to_keeps_multiples_and_stays_exact():
    model = yolov5n(num_classes=3)
    randomize_batchnorm(model, 4)
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = gp.compile(model, x, prune_ratio=0.6)
        rounded = check_compile(model, x, prune_ratio=0.6, round_to=8)
    kept = {n: int(m.sum()) for n, m in rounded.masks.items()}
    total = {n: len(m) for n, m in rounded.masks.items()}
    assert all(k % 8 == 0 or k == total[n] for n, k in kept.items())
    # rounding only adds channels, the highest |γ| first, and says so
    for n, m in rounded.masks.items():
        assert bool((m | plain.masks[n]).eq(m).all())
    assert any("round_to=8" in why for why in rounded.pinned.values())
    assert rounded.stats.params_after > plain.stats.params_after
    with pytest.raises(gp.MaskError, match="round_to"):
        gp.compile(model, x, prune_ratio=0.5, round_to=0)


def test_analyze_and_compile_agree_on_a_requested_leaf():
    """BatchNorms inside a submodule kept whole on request are not prunable, in ``inspect``'s
    analysis as in compile."""
    model = tiny_resnet()
    x = torch.randn(1, 3, 16, 16)
    report = gp.analyze(model, x, leaves=["layer1"])
    result = gp.compile(model, x, prune_ratio=0.3, leaves=["layer1"])
    inside = [n for n in batchnorms(model) if n.startswith("layer1.")]
    assert inside and report.leaves["layer1"] == "requested"
    for name in inside:
        assert name not in report.statistics and name in report.unprunable
        assert name not in result.masks or bool(result.masks[name].all())
    assert set(ranked_names(report.statistics)) == {n for n in result.masks if n not in inside}
    assert set(result.masks) - set(inside) <= set(report.statistics)


class _SettledAnalysis:
    """The part of a ChannelAnalysis that ``planning.settle`` uses: every requirement is met."""

    def __init__(self):
        self.reasons = {}

    def adopt(self, masks):
        self.masks = masks

    def solve(self):
        return 1


def _coupled(*names):
    from graphprune.groups import CouplingSet
    return CouplingSet("residual", [(n, np.arange(16), np.arange(16)) for n in names])


def test_settle_rounds_again_after_coupling_grows_an_already_rounded_width():
    from graphprune.planning import settle
    # both keep 8 of 16 (a multiple of 8), but different channels: coupling keeps 12
    applied = {"a": np.arange(16) < 8, "b": (np.arange(16) >= 4) & (np.arange(16) < 12)}
    gammas = {"a": np.linspace(1, 0.1, 16), "b": np.linspace(0.1, 1, 16)}
    reasons = {}
    settle(_SettledAnalysis(), applied, [_coupled("a", "b")], set(), gammas, 8, reasons)
    assert {n: int(m.sum()) for n, m in applied.items()} == {"a": 16, "b": 16}
    assert np.array_equal(applied["a"], applied["b"])
    assert reasons["a"].startswith("coupled through residual adds with b")


class _TwoStepTable:
    """A width table stand-in: its rounding grows ``first`` by 4 channels on the first call, and
    ``late`` by 4 only on its second call, after coupling has named its own reasons."""

    def __init__(self, first, late):
        self.first, self.late, self.calls = first, late, {}

    def describe(self):
        return "runtime(test)"

    def rounder(self, analysis):
        def width(name, kept, total):
            self.calls[name] = self.calls.get(name, 0) + 1
            grow = (name == self.first and self.calls[name] == 1) or \
                (name == self.late and self.calls[name] == 2)
            return kept + 4 if grow else kept
        return width


def test_settle_labels_a_later_rounding_with_the_table_not_with_a_coupling_reason():
    from graphprune.planning import settle
    applied = {n: np.arange(16) < k for n, k in (("a", 4), ("b", 2), ("c", 4), ("d", 4))}
    gammas = {n: np.linspace(1, 0.1, 16) for n in applied}
    reasons = {}
    table = _TwoStepTable("d", "c")
    settle(_SettledAnalysis(), applied, [_coupled("a", "b")], set(), gammas, table, reasons)
    assert {n: int(m.sum()) for n, m in applied.items()} == {"a": 4, "b": 4, "c": 8, "d": 8}
    assert reasons["b"].startswith("coupled through residual adds")
    assert reasons["c"] == reasons["d"] == "round_to=runtime(test)"
