"""One case per channel rule of ``graphprune.channels``: a tiny graph whose op under test sits
after one or two masked BatchNorms.  Each case checks (1) the node dispatches to that rule,
(2) what the rule decides about the channel dimension — the channels live after it, the masks
after the requirements settle, the physical order — and (3) that the compiled model equals the
zero-masked model, in torch and in onnxruntime."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from graphprune import channels as ch
from graphprune.analysis import ChannelAnalysis
from graphprune.context import CompileConfig
from graphprune.pipeline import prepare_analysis
from graphprune.specs import RULE
from conftest import check_compile

C = 8
M1 = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)        # the first BatchNorm keeps 5
M2 = np.array([0, 1, 1, 0, 0, 1, 1, 0], dtype=bool)        # the second keeps 4
KEPT1 = np.flatnonzero(M1)
ALL = np.ones(C, dtype=bool)
GN_ASKED = np.array([0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
GN_GROWN = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)


class Net(nn.Module):
    """stem → bn1 (and a second stem → bn2) → ``op`` → 1×1 head; ``op`` is the forward under
    test, ``parts`` any modules it uses."""

    def __init__(self, op: Callable, parts: dict[str, nn.Module] | None = None,
                 head_in: int = C, head: bool = True):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)
        self.c2, self.bn2 = nn.Conv2d(3, C, 3, padding=1, bias=False), nn.BatchNorm2d(C)
        for name, module in (parts or {}).items():
            self.add_module(name, module)
        self.head = nn.Conv2d(head_in, 4, 1) if head else nn.Identity()
        self._op = op

    def forward(self, x):
        a, b = self.bn1(self.c1(x)), self.bn2(self.c2(x))
        return self.head(self._op(self, a, b))


@dataclass
class Case:
    rule: str                                  # the rule's name, as node.meta records it
    net: Callable[[], nn.Module]
    pick: Callable[[torch.fx.Node], bool]      # the node under test
    check: Callable[[ChannelAnalysis, torch.fx.Node], None]
    leaves: tuple[str, ...] = ()
    masks: dict[str, np.ndarray] | None = None   # masks of other producers, beside bn1 and bn2


def _module(name):
    return lambda n: n.op == "call_module" and n.target == name


def _function(*targets):
    return lambda n: n.op in ("call_function", "call_method") and n.target in targets


def _live(expected):
    def check(A, node):
        np.testing.assert_array_equal(A.live(node), expected)
    return check


def _masks(bn1=M1, bn2=None):
    def check(A, node):
        np.testing.assert_array_equal(A.mask("bn1"), bn1)
        if bn2 is not None:
            np.testing.assert_array_equal(A.mask("bn2"), bn2)
    return check


def _all(*checks):
    def check(A, node):
        for c in checks:
            c(A, node)
    return check


def _order(expected):
    def check(A, node):
        np.testing.assert_array_equal(A.order(node), expected)
    return check


class Sigmoid1(nn.Module):
    """A single-channel spatial gate: x * σ(conv(x))."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Conv2d(C, 1, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.gate(x))


class Opaque(nn.Module):
    """Kept whole as a leaf: its input reaches only its inner conv."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(C, C, 1)

    def forward(self, x):
        return self.inner(x).relu()


def _swap_halves(x):
    first, second = torch.chunk(x, 2, 1)
    return torch.cat([second, first], 1)


def _ops(name):
    """The three spellings of a binary op in a traced graph: ``a * b``, ``torch.mul``, ``.mul``."""
    return (getattr(operator, name), getattr(torch, name), name)


CASES = [
    Case("batchnorm", lambda: Net(lambda s, a, b: a), _module("bn1"),
         _all(_live(M1), _order(KEPT1))),
    Case("conv", lambda: Net(lambda s, a, b: s.op(a), {"op": nn.Conv2d(C, 6, 3, padding=1)},
                             head_in=6), _module("op"),
         _all(_live(np.ones(6, dtype=bool)), _masks(M1))),
    Case("depthwise", lambda: Net(lambda s, a, b: s.op(a),
                                  {"op": nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False)}),
         _module("op"), _all(_live(M1), _order(KEPT1))),
    Case("passthrough", lambda: Net(lambda s, a, b: s.op(a), {"op": nn.SiLU()}), _module("op"),
         _all(_live(M1), _order(KEPT1))),
    Case("passthrough", lambda: Net(lambda s, a, b: F.max_pool2d(a, 2)),
         _function(F.max_pool2d), _all(_live(M1), _order(KEPT1))),
    Case("passthrough", lambda: Net(lambda s, a, b: a.relu()), _function("relu"),
         _all(_live(M1), _order(KEPT1))),
    Case("scale", lambda: Net(lambda s, a, b: a * 0.5), _function(torch.mul, *_ops("mul")),
         _all(_live(M1), _order(KEPT1))),
    Case("reduce", lambda: Net(lambda s, a, b: a.mean((2, 3), keepdim=True)), _function("mean"),
         _all(_live(M1), _order(KEPT1))),
    Case("shape", lambda: Net(lambda s, a, b: a * (a.size(2) / 8)), _function("size"),
         _masks(M1)),                                       # a spatial size: nothing pinned
    Case("shape", lambda: Net(lambda s, a, b: a * (a.size(1) / 8)), _function("size"),
         _masks(ALL)),                                      # the channel count is read
    Case("cat", lambda: Net(lambda s, a, b: torch.cat([a, b], 1), head_in=2 * C),
         _function(torch.cat),
         _all(_live(np.concatenate([M1, M2])),
              _order(np.concatenate([KEPT1, C + np.flatnonzero(M2)])))),
    Case("split", lambda: Net(lambda s, a, b: _swap_halves(a)), _function(torch.chunk),
         _all(_masks(M1), lambda A, n: [np.testing.assert_array_equal(live, want)
                                        for live, want in zip(A.live(n), (M1[:4], M1[4:]))])),
    Case("getitem", lambda: Net(lambda s, a, b: a[:, 2:6], head_in=4),
         lambda n: n.op == "call_function" and n.target.__name__ == "getitem",
         _live(M1[2:6])),
    Case("flatten", lambda: Net(lambda s, a, b: s.fc(torch.flatten(F.adaptive_avg_pool2d(a, 2),
                                                                   1)),
                                {"fc": nn.Linear(4 * C, 3)}, head=False),
         _function(torch.flatten), _live(np.repeat(M1, 4))),
    Case("mul", lambda: Net(lambda s, a, b: a * b), _function(*_ops("mul")),
         _live(M1 & M2)),
    Case("mul_broadcast", lambda: Net(lambda s, a, b: s.op(a), {"op": Sigmoid1()}),
         lambda n: n.op == "call_function" and n.target.__name__ == "mul", _live(M1)),
    Case("add", lambda: Net(lambda s, a, b: a + b), _function(*_ops("add")),
         _all(_live(M1 | M2), _masks(M1, M2))),               # independent masks, none grown
    Case("leaf", lambda: Net(lambda s, a, b: s.op(a), {"op": Opaque()}), _module("op"),
         _masks(M1), leaves=("op",)),
    # a GroupNorm of two groups of four, asked to keep one channel: its group stays whole
    Case("groupnorm", lambda: Net(lambda s, a, b: s.gn(s.op(a)),
                                  {"op": nn.Conv2d(C, C, 1), "gn": nn.GroupNorm(2, C)}),
         _module("gn"),
         _all(_live(GN_GROWN), _order(np.flatnonzero(GN_GROWN)),
              lambda A, n: np.testing.assert_array_equal(A.mask("gn"), GN_GROWN)),
         masks={"gn": GN_ASKED}),
    # a LayerNorm over [N, C] reads every input channel: bn1 grows back to all of them
    Case("layernorm", lambda: Net(lambda s, a, b: s.fc(s.ln(a.mean((2, 3)))),
                                  {"ln": nn.LayerNorm(C), "fc": nn.Linear(C, 3)}, head=False),
         _module("ln"), _all(_live(M2), _order(np.flatnonzero(M2)), _masks(ALL)),
         masks={"ln": M2}),
    Case("unknown", lambda: Net(lambda s, a, b: torch.special.expit(a) * b),
         _function(torch.special.expit), _masks(ALL, M2)),      # its input is required whole
]


def _analysed(model, x, masks, leaves=()):
    gm, ctx = prepare_analysis(model, x, CompileConfig(leaves=tuple(leaves)))
    A = ChannelAnalysis(gm, {k: v.copy() for k, v in masks.items()})
    A.solve()
    A.compute_orders()
    return gm, A


def _prepare(case):
    torch.manual_seed(0)
    model = case.net().eval()
    for norm in model.modules():
        if isinstance(norm, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.uniform_(-0.5, 0.5)
    return model, {"bn1": M1, "bn2": M2, **(case.masks or {})}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule}-{k}" for k, c in enumerate(CASES)])
def test_rule(case, tmp_path):
    model, masks = _prepare(case)
    x = torch.rand(2, 3, 8, 8)
    gm, A = _analysed(model, x, masks, case.leaves)
    nodes = [n for n in gm.graph.nodes if case.pick(n)]
    assert nodes, f"no node picked in {[n.format_node() for n in gm.graph.nodes]}"
    node = nodes[0]
    assert node.meta[RULE] == case.rule, node.format_node()
    case.check(A, node)
    check_compile(model, x, tmp_path, masks=masks, leaves=case.leaves)


def test_every_rule_has_a_case():
    """A rule added to the registry tables without a case here fails this test."""
    registered = {rule.name for table in (ch.MODULE_TABLE, ch.FUNCTION_TABLE, ch.METHOD_TABLE)
                  for _, rule in table} | {ch.LEAF.name, ch.UNKNOWN.name}
    assert registered - {c.rule for c in CASES} == set()
