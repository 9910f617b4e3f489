"""Masks on any channel producer: convolutions and linear layers with no norm after them,
GroupNorm (whole groups), LayerNorm over the channels (plain on [N, C], or a subclass that
normalises dim 1 of NCHW as timm's LayerNorm2d does), in models with and without BatchNorm.
Every compile is checked three ways: slim == zero-masked == onnxruntime (``check_compile``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import check_compile, outputs, slim_layer

import graphprune as gp
from graphprune.errors import MaskError
from graphprune.masks import producers, zero_mask
from graphprune.models import randomize_norms as randomize


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels of NCHW, written as timm writes it."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LastDimNorm(nn.LayerNorm):
    """A LayerNorm subclass that normalises the last dimension (the width), not the channels."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class NoNormNet(nn.Module):
    """No BatchNorm: convolutions with bias, a residual add, a GroupNorm, a linear head with a
    LayerNorm on [N, C]."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.c4 = nn.Conv2d(16, 8, 1)
        self.fc1 = nn.Linear(8, 32)
        self.ln = nn.LayerNorm(32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a)) + a
        y = torch.relu(self.gn(self.c3(b)))
        y = self.c4(y).mean((2, 3))
        return self.fc2(self.ln(F.gelu(self.fc1(y))))


class ConvNeXtBlock(nn.Module):
    """ConvNeXt's block with 1x1-convolution MLP (timm's conv_mlp=True): depthwise 7x7 with bias,
    channel LayerNorm, expand, GELU, project, layer scale, residual add."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.fc1, self.fc2 = nn.Conv2d(dim, 4 * dim, 1), nn.Conv2d(4 * dim, dim, 1)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.fc2(F.gelu(self.fc1(self.norm(self.conv_dw(x)))))
        return x + y.mul(self.gamma.reshape(1, -1, 1, 1))


class ConvNeXt(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, dim, 4, stride=4), LayerNorm2d(dim)
        self.blocks = nn.Sequential(ConvNeXtBlock(dim), ConvNeXtBlock(dim))
        self.down_norm, self.down = LayerNorm2d(dim), nn.Conv2d(dim, 2 * dim, 2, stride=2)
        self.block3 = ConvNeXtBlock(2 * dim)
        self.head_norm, self.head = nn.LayerNorm(2 * dim), nn.Linear(2 * dim, 10)

    def forward(self, x):
        x = self.blocks(self.stem_norm(self.stem(x)))
        x = self.block3(self.down(self.down_norm(x)))
        return self.head(self.head_norm(x.mean((2, 3))))


def random_producer_masks(model: nn.Module, names, p: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    layers = producers(model)
    return {n: rng.random(gp.masks.features(layers[n])) < p for n in names}


def test_a_model_without_batchnorm_prunes_by_ratio_with_the_relative_filter_norm(tmp_path):
    model = randomize(NoNormNet().eval())
    x = torch.rand(2, 3, 16, 16)
    result = check_compile(model, x, tmp_path, prune_ratio=0.5)
    # every producer is ranked; the output layer keeps everything (it reaches the output)
    assert set(result.masks) == {"c1", "c2", "gn", "c4", "fc1", "ln", "fc2"}
    assert result.masks["fc2"].all()
    # half of the candidates (the channels no mask is forced to keep) are asked to go
    report = gp.analyze(model, x)
    candidates = sum(s.channels - report.pinned_channels[n] for n, s in report.statistics.items())
    asked = sum(int((~np.asarray(m)).sum()) for m in result.requested.values())
    assert asked == round(0.5 * candidates)
    assert result.stats.params_after < 0.7 * result.stats.params_before
    assert result.stats.flops_after < 0.7 * result.stats.flops_before
    # GroupNorm: whole groups, emitted as a smaller GroupNorm; the conv before it loses rows
    keep = np.asarray(result.masks["gn"])
    assert (keep.reshape(4, 4).all(1) | ~keep.reshape(4, 4).any(1)).all()
    gn = slim_layer(result, "gn")
    assert type(gn) is nn.GroupNorm and gn.num_channels == keep.sum() == 4 * gn.num_groups < 16
    assert slim_layer(result, "c3").out_channels == keep.sum()
    # LayerNorm on [N, C]: its input whole, its pruned outputs dropped before fc2
    assert slim_layer(result, "ln").normalized_shape == (32,)
    assert slim_layer(result, "fc2").in_features == int(np.asarray(result.masks["ln"]).sum()) \
        < 32
    # the ranking is the documented one: within c1, the pruned rows have the smallest norms
    norms = torch.cat([model.c1.weight.flatten(1), model.c1.bias[:, None]], 1).norm(dim=1)
    kept, pruned = norms[result.masks["c1"]], norms[~result.masks["c1"]]
    assert pruned.numel() and kept.min() >= pruned.max()


def test_a_threshold_on_a_model_without_batchnorm_cuts_the_relative_importance():
    model = randomize(NoNormNet().eval())
    x = torch.rand(2, 3, 16, 16)
    report = gp.analyze(model, x)
    stats = report.statistics["c2"]
    assert stats.kind == "conv" and stats.gamma.mean() == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, x, threshold=0.9)
    assert np.array_equal(np.asarray(result.requested["c2"]), stats.gamma >= 0.9)


def test_explicit_masks_on_convolutions_and_linear_layers_beside_batchnorms(tmp_path):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
            self.c2 = nn.Conv2d(16, 24, 3, padding=1)          # no norm after it
            self.c3 = nn.Conv2d(24, 8, 1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(self.c2(y))
            return self.fc(self.c3(y).mean((2, 3)))

    model = randomize(Mixed().eval())
    x = torch.rand(1, 3, 16, 16)
    keep = np.arange(24) % 3 != 0
    result = check_compile(model, x, tmp_path, masks={"c2": keep, "b1": np.arange(16) < 10})
    assert np.array_equal(np.asarray(result.masks["c2"]), keep)
    assert slim_layer(result, "c2").out_channels == keep.sum()
    assert slim_layer(result, "c3").in_channels == keep.sum()
    assert slim_layer(result, "c2").in_channels == 10
    # a ratio ranks only the BatchNorms of a BatchNorm model: its plain convolutions stay whole
    # and are not listed
    ratio = check_compile(model, x, tmp_path, prune_ratio=0.5)
    assert set(ratio.masks) == {"b1"} and int(np.asarray(ratio.masks["b1"]).sum()) == 8
    assert slim_layer(ratio, "c2").out_channels == 24


def test_zero_mask_sends_a_pruned_convolution_row_to_exactly_zero():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Linear(16, 6))
    keep = np.array([1, 0, 1, 1, 0, 0, 1, 1], dtype=bool)
    ref = zero_mask(model, {"0": keep, "2": np.arange(6) < 3})
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        conv = ref[0](x)
        out = ref(x)
    assert torch.count_nonzero(conv[:, ~torch.as_tensor(keep)]) == 0
    assert torch.count_nonzero(conv[:, torch.as_tensor(keep)]) > 0
    assert torch.count_nonzero(out[..., 3:]) == 0 and torch.count_nonzero(out[..., :3]) > 0
    assert torch.count_nonzero(model[0].weight[1]) > 0      # the caller's model is untouched


def test_a_mask_on_a_convolution_that_feeds_a_batchnorm_is_refused_with_the_way_out():
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.Conv2d(8, 4, 1)).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, torch.rand(1, 3, 8, 8), masks={"0": np.arange(8) < 4})
    assert result.masks["0"].all()
    assert result.pinned["0"] == ("not prunable: its output goes straight into '1', which takes "
                                  "the mask (mask that norm layer)")
    with pytest.raises(MaskError, match="not a channel producer"):
        gp.compile(model, torch.rand(1, 3, 8, 8), masks={"2": np.ones(8, dtype=bool)})


def test_groupnorm_masks_grow_to_whole_groups_with_the_reason(tmp_path):
    model = randomize(NoNormNet().eval())
    keep = np.zeros(16, dtype=bool)
    keep[[0, 5, 6]] = True                                  # parts of groups 0 and 1
    result = check_compile(model, torch.rand(1, 3, 16, 16), tmp_path, masks={"gn": keep})
    assert np.array_equal(np.asarray(result.masks["gn"]), np.arange(16) < 8)
    assert "whole groups of 4 channels" in result.pinned["gn"]
    assert slim_layer(result, "gn").num_groups == 2


def test_a_channel_layernorm_subclass_prunes_its_outputs_and_keeps_its_input_whole(tmp_path):
    model = randomize(ConvNeXt().eval())
    x = torch.rand(1, 3, 32, 32)
    names = ["stem_norm", "blocks.0.fc1", "blocks.1.fc1", "block3.fc1", "blocks.0.norm",
             "down_norm"]
    masks = random_producer_masks(model, names, seed=1)
    result = check_compile(model, x, tmp_path, masks=masks)
    for name in ("blocks.0.fc1", "blocks.1.fc1", "block3.fc1"):
        kept = int(np.asarray(result.masks[name]).sum())
        assert slim_layer(result, name).out_channels == kept < \
            model.get_submodule(name).out_channels
        assert slim_layer(result, name.replace("fc1", "fc2")).in_channels == kept
    # a LayerNorm reads all of its input channels: the trunk before it stays whole, its own
    # pruned outputs are dropped after it (the next 1x1 convolution loses input columns)
    norm = slim_layer(result, "blocks.0.norm")
    assert type(norm) is LayerNorm2d and norm.normalized_shape == (16,)
    assert slim_layer(result, "blocks.0.fc1").in_channels == \
        int(np.asarray(result.masks["blocks.0.norm"]).sum()) < 16
    # the stem feeds the trunk, which every block's depthwise convolution (bias: kept whole)
    # and LayerNorm read whole
    assert result.masks["stem_norm"].all() and not masks["stem_norm"].all()
    assert "blocks.0.conv_dw" in result.pinned["stem_norm"]


def test_a_convnext_prunes_by_ratio(tmp_path):
    model = randomize(ConvNeXt().eval())
    result = check_compile(model, torch.rand(2, 3, 32, 32), tmp_path, prune_ratio=0.5)
    assert result.stats.flops_after < 0.7 * result.stats.flops_before
    assert {s["kind"] for s in result.layers} == {"conv", "layernorm", "linear"}


def test_a_layernorm_that_does_not_normalise_the_channels_is_left_whole_with_the_reason():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.norm = nn.Conv2d(3, 8, 3, padding=1), LastDimNorm(8)
            self.c2 = nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c2(self.norm(self.c1(x)))

    model = randomize(Net().eval())
    report = gp.analyze(model, torch.rand(1, 3, 8, 8))      # width 8 == channels 8
    assert "does not normalise the channel dimension" in report.unprunable["norm"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, torch.rand(1, 3, 8, 8), masks={"norm": np.arange(8) < 4})
    assert result.masks["norm"].all() and "not prunable" in result.pinned["norm"]
    assert torch.allclose(outputs(result.module, torch.ones(1, 3, 8, 8)),
                          outputs(model, torch.ones(1, 3, 8, 8)))


def test_masks_on_producers_survive_a_checkpoint(tmp_path):
    model = randomize(ConvNeXt().eval())
    x = torch.rand(1, 3, 32, 32)
    result = check_compile(model, x, masks=random_producer_masks(
        model, ["blocks.0.fc1", "block3.fc1", "blocks.1.norm"], seed=2))
    path = result.save(tmp_path / "slim.graphprune.pt")
    again = gp.load(path, model=ConvNeXt())
    assert sum(p.numel() for p in again.parameters()) == result.stats.params_after


class StdConv(nn.Conv2d):
    """A weight-standardised convolution (NF-ResNet's ScaledStdConv2d): its own forward, traced
    through into functional calls, so it is no module call of the graph."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_a_convolution_traced_through_is_not_a_producer_and_says_why():
    model = nn.Sequential(StdConv(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(1, 3, 8, 8)
    assert set(gp.analyze(model, x).statistics) == {"2"}       # only the output convolution
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, x, masks={"0": np.arange(8) < 4})
    assert result.masks["0"].all()
    assert result.pinned["0"] == ("not prunable: its own forward (StdConv) was traced through "
                                  "as function calls, so the graph holds no call of it as a "
                                  "layer")
