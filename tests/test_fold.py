"""Bias folding: the slim model keeps the constants of pruned channels.

Reference: the γ-zeroed model (pruned γ = 0, β kept).  Exact where no padded convolution sees
the constant; elsewhere only the padded borders deviate, and that deviation is reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._pytree import tree_flatten

import graphprune as gp
from graphprune.export import onnx_parity
from graphprune.fold import _restore, _set_padding, border_deviation, fold_pruned_bias, \
    gamma_zeroed
from graphprune.models import randomize_batchnorm, yolov5n

from conftest import assert_close, random_masks


class PointwiseNet(nn.Module):
    """Only 1×1 convolutions, a residual add, a concat and a max-pool: folding is exact."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 1, 1)
        self.head = nn.Conv2d(8, 4, 1)
        self.act = nn.SiLU()

    def forward(self, x):
        a = self.act(self.b1(self.c1(x)))
        b = a + self.act(self.b2(self.c2(a)))                  # residual add
        c = self.act(self.b3(self.c3(torch.cat([b, self.pool(a)], 1))))
        return self.head(c)


def _randomised(model, seed=0):
    randomize_batchnorm(model, seed)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):        # large β: the constants matter
            m.bias.data = torch.randn(m.num_features, generator=g)
    return model.eval()


def test_pointwise_network_folds_exactly_everywhere():
    model = _randomised(PointwiseNet())
    masks = random_masks(model, 0.5, seed=1, names={"b1", "b2", "b3"})
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp.compile(model, x, masks=masks, fold_pruned_bias=True)
    ref = gamma_zeroed(model, masks)
    with torch.no_grad():
        want, got = ref(x), result.module(x)
        plain = gp.zero_mask(model, masks)(x)
    assert_close(got, want)
    assert not torch.allclose(plain, want, atol=1e-3)        # zero-masking alone would not be
    assert result.fold["unfoldable"] == {}
    assert "c2" in result.fold["folded"] and "head" in result.fold["folded"]
    assert result.fold["deviation_from_gamma_zeroed"]["max"] <= 1e-4


def test_yolov5_folds_with_only_border_deviation_and_stays_verified(tmp_path):
    model = _randomised(yolov5n(num_classes=3))
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = gp.compile(model, x, prune_ratio=0.5)
        result = gp.compile(model, x, prune_ratio=0.5, fold_pruned_bias=True)
    masks = {n: m.numpy() for n, m in result.masks.items()}
    assert all(np.array_equal(masks[n], plain.masks[n].numpy()) for n in masks)
    assert result.stats.params_after == plain.stats.params_after
    assert result.fold["unfoldable"] == {} and len(result.fold["folded"]) > 50
    ref = gamma_zeroed(model, masks)
    folded, _ = fold_pruned_bias(model, masks, x)
    xx = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        # with circular padding the constants reach every cell: exact everywhere
        saved = {**_set_padding(folded, "circular"), **_set_padding(ref, "circular")}
        assert_close(folded(xx), ref(xx), atol=1e-3, rtol=1e-4)
        _restore(saved)
        # with zero padding only the borders deviate, far less than zero-masking does
        folded_dev = border_deviation(result.module(xx), ref(xx))
        zero_dev = border_deviation(gp.zero_mask(model, masks)(xx), ref(xx))
        out = result.module(xx)
    maps = [t for t in tree_flatten(out)[0] if t.ndim == 5]
    assert folded_dev["interior_max"] < 1e-4 < zero_dev["interior_max"]
    assert folded_dev["max"] < zero_dev["max"] / 10
    # the emitted model is an ordinary slim model: verified, exported, run in onnxruntime
    assert result.max_error <= 1e-4 and maps
    result.export_onnx(tmp_path / "slim.onnx")
    x2 = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = tree_flatten(result.module(x2))[0]
    assert onnx_parity(tmp_path / "slim.onnx", (x2,), expected) is None


class OffsetThroughActivation(nn.Module):
    """A pruned channel's constant joins a varying signal before an activation: not foldable."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.b1(self.c1(x)) + self.b2(self.c2(x))))


def test_a_constant_through_a_nonlinearity_is_reported_not_folded():
    model = _randomised(OffsetThroughActivation(), 2)
    with torch.no_grad():
        model.b1.bias[1] = 0.5               # the pruned channel's constant
        model.b2.weight.fill_(1.0)           # a signal around 0 beside it: relu cuts it
        model.b2.bias.zero_()
    masks = {"b1": np.array([1, 0, 1, 1], bool)}
    folded, report = fold_pruned_bias(model, masks, torch.randn(1, 3, 8, 8))
    assert "out" in report.unfoldable and "non-linearity" in report.unfoldable["out"]
    assert report.folded == []


@pytest.mark.parametrize("mode", ["features", "confidence"])
def test_lfa_search_with_folding_measures_what_it_emits(mode):
    from graphprune.attention import CalibrationSet

    model = _randomised(yolov5n(num_classes=3), 3)
    g = torch.Generator().manual_seed(0)
    calib = CalibrationSet.from_images(torch.rand(4, 3, 64, 64, generator=g),
                                       [np.array([[8, 8, 40, 30]])] * 4, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = gp.prune_to_target(model, torch.rand(1, 3, 64, 64), calib, lfa_target=0.2,
                                   mode=mode, fold_pruned_bias=True)
    assert found.compiled.fold is not None
    assert found.lfa_slim.plus == pytest.approx(found.search.lfa.plus, abs=1e-4)
    assert found.lfa_slim.plus <= 0.2
