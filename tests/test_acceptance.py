"""The core compiler's acceptance: random masks on the reference models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.masks import batchnorms
from graphprune.models import randomize_batchnorm, tiny_resnet, yolov5n, yolov5s
from conftest import check_compile, random_masks

CASES = {
    "yolov5n": (lambda: yolov5n(num_classes=10), (2, 3, 96, 96)),
    "yolov5s": (lambda: yolov5s(num_classes=10), (1, 3, 128, 128)),
    "tiny_resnet": (lambda: tiny_resnet(num_classes=10), (2, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_random_masks_compile_verify_and_beat_coupling(name, tmp_path):
    build, shape = CASES[name]
    model = randomize_batchnorm(build(), seed=42)
    masks = random_masks(model, p=0.5, seed=42)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    result = check_compile(model, x, tmp_path, masks=masks)          # slim == ref, ORT parity
    # the applied masks are the requested ones, except for the layers listed as pinned
    assert set(result.masks) == set(masks)
    for layer, requested in masks.items():
        same = np.array_equal(result.masks[layer].numpy(), requested)
        assert same != (layer in result.pinned), layer
        assert result.masks[layer].numpy()[requested].all()          # masks only grow
    total = sum(m.num_features for m in batchnorms(model).values())
    kept = sum(int(m.sum()) for m in result.masks.values())
    assert 1 - kept / total >= 0.30
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        coupled = gp.compile(model, x, masks=masks, residual="couple")
    assert result.stats.params_after < coupled.stats.params_after
    assert result.stats.params_after == sum(p.numel() for p in result.module.parameters())


def test_yolov5s_reference_size():
    model = yolov5s(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 7_046_599
    from graphprune.stats import count_flops
    gflops = count_flops(model, (torch.zeros(1, 3, 640, 640),)) / 1e9
    assert 15.8 <= gflops <= 16.1


@pytest.mark.parametrize("scale,params", [("n", 1_872_157), ("s", 7_235_389),
                                          ("m", 21_190_557), ("l", 46_563_709),
                                          ("x", 86_749_405)])
def test_yolov5_family_matches_the_published_v61_sizes(scale, params):
    # parameter counts the YOLOv5 v6.1 release reports for its COCO (80-class) models
    from graphprune.models import yolov5
    assert sum(p.numel() for p in yolov5(scale, num_classes=80).parameters()) == params
