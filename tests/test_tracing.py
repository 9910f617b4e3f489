"""Tracing models we did not write."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.models import yolov5n
from graphprune.tracing import trace


class Routed(nn.Module):
    """ultralytics-style layer routing through a list, and a chunk iterated with list()."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(8, 8, 1)])

    def forward(self, x):
        y = [self.layers[0](x)]
        a, b = list(y[-1].chunk(2, 1))
        y.append(torch.cat([a, self.layers[1](b)], 1))
        return self.layers[2](y[-1])


def test_chunk_pieces_are_iterable_proxies():
    traced = gp.trace(Routed())
    assert traced.leaves == {}
    getitems = [n for n in traced.graph_module.graph.nodes if n.target is operator.getitem]
    assert len(getitems) == 2
    x = torch.randn(2, 3, 5, 5)
    model = Routed().eval()
    traced = gp.trace(model)
    assert torch.equal(traced.graph_module(x), model(x))


class VarargsRoot(nn.Module):
    """ultralytics' DetectionModel.forward(self, x, *args, **kwargs), which passes the varargs
    on: fx alone would hand the body a ``*args`` Proxy and fail to unpack it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x, *args, **kwargs):
        return self.predict(x, *args, **kwargs)

    def predict(self, x, profile=False, visualize=False):
        assert not profile and not visualize
        return self.out(torch.relu(self.bn(self.conv(x))))


def test_a_varargs_root_is_traced_with_its_required_arguments(tmp_path):
    from conftest import check_compile
    model = VarargsRoot().eval()
    gm = gp.trace(model).graph_module
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert placeholders == ["x"]
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(gm(x), model(x))
    keep = torch.tensor([True, False, True, True, False, True, False, True])
    result = check_compile(model, x, tmp_path, masks={"bn": keep})
    assert result.module.get_submodule("conv").out_channels == 5


def test_untraceable_head_becomes_a_leaf_and_the_trace_matches():
    model = yolov5n(num_classes=2).eval()
    traced = gp.trace(model)
    assert set(traced.leaves) == {"model.24"}
    assert "control flow" in traced.leaves["model.24"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(traced.graph_module(x)[0], model(x)[0])


def test_an_untraceable_root_is_a_clear_error():
    class Root(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(gp.TraceFailure, match="cannot trace the forward of Root itself"):
        gp.trace(Root())


def test_in_place_ops_are_traced_out_of_place_with_the_mutation_as_an_edge():
    """``x.relu_()`` whose result is unused, and ``torch.sigmoid_`` on a value read again
    afterwards: the traced graph has no in-place op left and computes what eager mode does."""
    class Mutates(nn.Module):
        def forward(self, x, y):
            x = x * 1.0
            x.relu_()                      # the mutation is the effect
            z = y + x
            torch.sigmoid_(z)
            return x - z

    traced = trace(Mutates()).graph_module
    targets = [n.target for n in traced.graph.nodes if n.op in ("call_function", "call_method")]
    assert "relu_" not in targets and torch.sigmoid_ not in targets
    assert "relu" in targets and torch.sigmoid in targets
    x, y = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(traced(x, y), Mutates()(x, y))
