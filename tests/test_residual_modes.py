"""Residual modes: "couple" ties every BatchNorm feeding a residual group (chunked shortcuts
too); "auto" reconstructs a group only where the FLOPs it saves outweigh the extra nodes its
rebuilt adds take, and couples it otherwise."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import graphprune as gp
from graphprune import costs
from graphprune.models import randomize_batchnorm
from graphprune.models.yolov5 import Conv
from conftest import check_compile, random_masks
from test_compile_situations import ResidualChain, keep

MASKS = {"stem.bn": keep(16, range(0, 8)), "b1.bn": keep(16, range(4, 12)),
         "b2.bn": keep(16, [1, 3, 5, 7, 9, 11, 13]), "b3.bn": keep(16, [0, 15])}


def compute_nodes(result) -> int:
    return sum(1 for n in result.module.graph.nodes if n.op in ("call_function", "call_module"))


def test_auto_reports_what_reconstruction_saves_and_costs():
    model = randomize_batchnorm(ResidualChain(), 1).eval()
    x = torch.randn(1, 3, 12, 12)
    rec = gp.compile(model, x, masks=MASKS, residual="reconstruct")
    cpl = gp.compile(model, x, masks=MASKS, residual="couple")
    auto = gp.compile(model, x, masks=MASKS, residual="auto")
    (choice,) = auto.residual_choice.values()
    assert set(choice["layers"]) == set(MASKS)
    # the estimate is the counted difference, and the extra nodes are the nodes really emitted
    assert choice["flops_saved"] == cpl.stats.flops_after - rec.stats.flops_after > 0
    assert choice["extra_nodes"] == compute_nodes(rec) - compute_nodes(cpl) > 0
    assert choice["coupled"] == (choice["flops_saved"] < choice["extra_nodes"] * costs.NODE_FLOPS)


def test_auto_couples_where_nodes_cost_more_and_reconstructs_where_flops_do(monkeypatch,
                                                                             tmp_path):
    model = randomize_batchnorm(ResidualChain(), 1).eval()
    x = torch.randn(2, 3, 12, 12)
    union = np.logical_or.reduce(list(MASKS.values()))
    monkeypatch.setattr(costs, "NODE_FLOPS", 1e15)      # nodes dear: the chain is coupled
    dear = check_compile(model, x, tmp_path, masks=MASKS, residual="auto")
    assert all(np.array_equal(dear.masks[n].numpy(), union) for n in MASKS)
    assert all("coupled through residual adds" in dear.pinned[n] for n in MASKS)
    assert [c["coupled"] for c in dear.residual_choice.values()] == [True]
    monkeypatch.setattr(costs, "NODE_FLOPS", 0.0)       # nodes free: reconstructed as asked
    free = check_compile(model, x, tmp_path, masks=MASKS, residual="auto")
    assert all(np.array_equal(free.masks[n].numpy(), m) for n, m in MASKS.items())
    assert not free.pinned
    assert free.stats.params_after < dear.stats.params_after
    assert [c["coupled"] for c in free.residual_choice.values()] == [False]


def test_auto_leaves_groups_whose_branches_agree_alone():
    model = randomize_batchnorm(ResidualChain(), 1).eval()
    same = {n: keep(16, range(0, 10)) for n in MASKS}
    result = gp.compile(model, torch.randn(1, 3, 12, 12), masks=same, residual="auto")
    (choice,) = result.residual_choice.values()
    assert choice["extra_nodes"] == 0 and not choice["coupled"]
    assert all(np.array_equal(result.masks[n].numpy(), m) for n, m in same.items())


class ChunkedShortcut(nn.Module):
    """A C2f-style block: the shortcut of each bottleneck is a chunk piece of one convolution."""

    def __init__(self, c=8):
        super().__init__()
        self.cv1 = Conv(3, 2 * c, 1)
        self.m0 = nn.Sequential(Conv(c, c, 3), Conv(c, c, 3))
        self.m1 = nn.Sequential(Conv(c, c, 3), Conv(c, c, 3))
        self.cv2 = Conv(4 * c, 8, 1)

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.append(y[-1] + self.m0(y[-1]))
        y.append(y[-1] + self.m1(y[-1]))
        return self.cv2(torch.cat(y, 1))


def test_couple_ties_a_chunked_shortcut_to_its_source_channels(tmp_path):
    model = randomize_batchnorm(ChunkedShortcut(), 3).eval()
    x = torch.randn(2, 3, 10, 10)
    masks = random_masks(model, 0.5, seed=4)
    coupled = check_compile(model, x, tmp_path, masks=masks, residual="couple")
    second_half = coupled.masks["cv1.bn"].numpy()[8:]
    for name in ("m0.1.bn", "m1.1.bn"):     # the branches ending in the two adds
        assert np.array_equal(coupled.masks[name].numpy(), second_half)
    union = masks["cv1.bn"][8:] | masks["m0.1.bn"] | masks["m1.1.bn"]
    assert np.array_equal(second_half, union)
    # the first chunk piece feeds no add: it keeps what was asked
    assert np.array_equal(coupled.masks["cv1.bn"].numpy()[:8], masks["cv1.bn"][:8])
    rebuilt = check_compile(model, x, tmp_path, masks=masks)
    assert rebuilt.stats.params_after < coupled.stats.params_after


def test_analyze_lists_the_residual_groups_couple_would_tie():
    report = gp.analyze(ChunkedShortcut(), torch.randn(1, 3, 10, 10))
    (group,) = report.residual
    members = {name: local.tolist() for name, local, _ in group.members}
    assert members == {"cv1.bn": list(range(8, 16)), "m0.1.bn": list(range(8)),
                       "m1.1.bn": list(range(8))}
