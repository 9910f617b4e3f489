"""Pruning inside a module the trace keeps whole: its sealed blocks compiled on their own
(graphprune.inner).  The fixture's head cannot be traced (it branches on its input's size, as
ultralytics' Detect does), holds a branch it calls once (sealed) and one it calls twice (not)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune as gp

from conftest import assert_close, check_compile, outputs


def cba(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.SiLU())


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(cba(8, 16), cba(16, 16), nn.Conv2d(16, 5, 1))
        self.shared = nn.Sequential(cba(8, 12), nn.Conv2d(12, 3, 1))
        self.size = None

    def forward(self, x):
        if x.shape[-1] != self.size:          # state behind a shape check: untraceable
            self.size = x.shape[-1]
        return self.branch(x), self.shared(x) + self.shared(x * 2)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cba(3, 8)
        self.head = Head()

    def forward(self, x):
        return self.head(self.stem(x))


def _model() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    for m in model.modules():                 # γ and statistics away from their defaults
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
ASKED = {"head.branch.0.1": np.arange(16) % 2 == 0, "head.branch.1.1": np.arange(16) < 5}


def test_a_sealed_block_of_a_kept_whole_module_is_pruned_exactly(tmp_path):
    model = _model()
    result = check_compile(model, X, tmp_path, masks=ASKED)      # slim == zero-masked == ORT
    assert "head" in result.leaves
    for name, keep in ASKED.items():
        assert np.array_equal(result.masks[name].numpy(), keep) and name not in result.pinned
    slim = result.module.get_submodule("head.branch")
    assert slim.get_submodule("0.0").out_channels == 8
    assert slim.get_submodule("1.0").in_channels == 8
    assert slim.get_submodule("1.0").out_channels == 5
    assert slim.get_submodule("2").in_channels == 5 and slim.get_submodule("2").out_channels == 5
    assert slim.get_submodule("0.0").in_channels == 8      # the head's input stays whole
    before = sum(p.numel() for p in model.head.branch.parameters())
    assert sum(p.numel() for p in slim.parameters()) < 0.5 * before
    layers = {row["name"]: row for row in result.layers}
    assert layers["head.branch.1.1"]["kept"] == 5 and layers["head.branch.1.1"]["channels"] == 16
    # the caller's model still computes the unpruned function
    assert model.head.branch[0][0].out_channels == 16


def test_a_block_called_twice_stays_whole_and_says_why():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, X, masks={"head.shared.0.1": np.arange(12) < 6})
    assert bool(result.masks["head.shared.0.1"].all())
    assert "kept whole" in result.pinned["head.shared.0.1"]
    assert result.module.get_submodule("head.shared.0.0").out_channels == 12


def test_a_ranking_and_sparse_training_reach_inside_a_kept_whole_module():
    """The producers inside sealed blocks are ranked with the graph's own: a ratio prunes them
    by |γ| too, a threshold cuts them where it cuts the rest, and sparse training regularises
    them."""
    from graphprune.sparsity import prunable_batchnorms

    model = _model()
    model.head.branch[1][1].weight.data[:10] = 1e-3          # the smallest γ of the model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        by_ratio = gp.compile(model, X, prune_ratio=10 / 32)    # of the 32 rankable channels
        by_threshold = gp.compile(model, X, threshold=0.01)
        report = gp.analyze(model, X)
    for result in (by_ratio, by_threshold):
        assert int(result.masks["head.branch.1.1"].sum()) == 6
        assert result.module.get_submodule("head.branch.1.0").out_channels == 6
    assert "head.branch.1.1" in report.statistics and "head.branch.1.1" not in report.unprunable
    assert report.pinned_channels["head.branch.1.1"] == 0
    assert {"head.branch.0.1", "head.branch.1.1"} <= set(prunable_batchnorms(model, X))
    assert "head.shared.0.1" not in prunable_batchnorms(model, X)      # called twice
    # --exclude reaches inside too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        spared = gp.compile(model, X, threshold=0.01, exclude=["head.branch.1.1"])
    assert bool(spared.masks["head.branch.1.1"].all())
    assert spared.module.get_submodule("head.branch.1.0").out_channels == 16
    # a module kept whole on request stays whole inside
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        kept = gp.compile(model, X, prune_ratio=0.2, leaves=["head"])
    assert kept.module.get_submodule("head.branch.1.0").out_channels == 16
    assert "head.branch.1.1" not in kept.masks


def test_a_search_plans_inside_blocks_as_their_compile_applies():
    """prune_to_target with a FLOPs goal: the planner's masks for the inside of a block are what
    its own compile applies (prune_to_target checks every mask), and the goal is met."""
    from graphprune.search import prune_to_target

    model = _model()
    model.head.branch[0][1].weight.data[:12] = 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        found = prune_to_target(model, X, None, flops_target=0.3)
    assert not found.compiled.masks["head.branch.0.1"].all()
    assert 1 - found.compiled.stats.flops_after / found.compiled.stats.flops_before >= 0.3


def test_a_checkpoint_with_masks_inside_a_leaf_rebuilds(tmp_path):
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, X, masks=ASKED)
        path = result.save(tmp_path / "slim.graphprune.pt")
        loaded = gp.load(path, model=_model())
    assert_close(outputs(loaded, X), outputs(result.module, X))
    assert loaded.get_submodule("head.branch.1.0").out_channels == 5


def test_a_block_s_own_pins_come_back_with_where_they_were_decided():
    """A depthwise convolution inside the block ties its input and output channels: the
    block's own compile keeps the union, and says so under the model's names."""
    model = _model()
    model.head.branch[1] = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
                                         nn.BatchNorm2d(16), nn.SiLU())
    model.eval()
    masks = {"head.branch.0.1": np.arange(16) < 8,
             "head.branch.1.1": (np.arange(16) >= 4) & (np.arange(16) < 12)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, X, masks=masks, min_channels=1)
    pinned = [n for n in masks if n in result.pinned]
    assert pinned and all("'head.branch'" in result.pinned[n] for n in pinned)
    union = np.arange(16) < 12
    for name in masks:
        assert np.array_equal(result.masks[name].numpy(), union)
    assert result.module.get_submodule("head.branch.1.0").out_channels == 12
    ref = gp.zero_mask(model, result.masks)
    assert_close(outputs(result.module, X), outputs(ref, X))


class TwoBranchHead(Head):
    """Both branches read the input only through their first convolution: the input may
    arrive slim, and each branch is compiled inside too."""

    def __init__(self):
        super().__init__()
        self.other = nn.Sequential(cba(8, 10), nn.Conv2d(10, 2, 1))

    def forward(self, x):
        if x.shape[-1] != self.size:
            self.size = x.shape[-1]
        return self.branch(x), self.other(x)


def test_a_slim_input_and_a_pruned_inside_combine(tmp_path):
    model = _model()
    model.head = TwoBranchHead()
    model.eval()
    masks = {**ASKED, "stem.1": np.arange(8) != 3, "head.other.0.1": np.arange(10) >= 4}
    result = check_compile(model, X, tmp_path, masks=masks)      # slim == zero-masked == ORT
    for name, keep in masks.items():
        assert np.array_equal(result.masks[name].numpy(), keep), name
    head = result.module.get_submodule("head")
    assert head.get_submodule("branch.0.0").in_channels == 7       # the stem's cut
    assert head.get_submodule("other.0.0").in_channels == 7
    assert head.get_submodule("other.0.0").out_channels == 6       # and the inside's
    assert head.get_submodule("branch.1.0").out_channels == 5
