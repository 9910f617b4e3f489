"""One tiny fixture per graph situation the compiler must handle (residual chains, C3, SPPF,
chunk/split, depthwise, detect heads, leaves, unknown ops, exclusions, wrong rules); each checks
structure and numbers."""

from __future__ import annotations

import operator
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import check_compile, graph_targets, random_masks, slim_layer

import graphprune as gp
from graphprune.masks import batchnorms
from graphprune.models import randomize_batchnorm
from graphprune.models.yolov5 import C3, SPPF, Bottleneck, Conv

ZERO_MAKERS = {torch.zeros, torch.zeros_like, torch.empty, F.pad, torch.constant_pad_nd}


def assert_no_padding(result):
    """Never zero-padded rows or channels: no op that makes zeros, and every constant the slim
    graph holds is an integer index."""
    assert not ZERO_MAKERS & set(graph_targets(result))
    for name, buf in result.module.named_buffers():
        if name.split(".")[-1].startswith("_graphprune_index"):
            assert buf.dtype == torch.long


def keep(n, idx):
    m = np.zeros(n, dtype=bool)
    m[list(idx)] = True
    return m


# -- a chain of three residual adds -----------------------------------------------------------
class ResidualChain(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = Conv(3, c, 3)
        self.b1, self.b2, self.b3 = Conv(c, c, 3), Conv(c, c, 3), Conv(c, c, 1)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = x0 + self.b1(x0)
        x2 = x1 + self.b2(x1)
        x3 = x2 + self.b3(x2)
        return self.head(x3)


def test_chain_of_three_residual_adds(tmp_path):
    model = randomize_batchnorm(ResidualChain(), 1)
    masks = {"stem.bn": keep(16, range(0, 8)), "b1.bn": keep(16, range(4, 12)),
             "b2.bn": keep(16, [1, 3, 5, 7, 9, 11, 13]), "b3.bn": keep(16, [0, 15])}
    x = torch.randn(2, 3, 12, 12)
    result = check_compile(model, x, tmp_path, masks=masks)
    assert not result.pinned
    assert all(np.array_equal(result.masks[n].numpy(), m) for n, m in masks.items())
    union = np.logical_or.reduce(list(masks.values()))
    # each branch computes only its own channels; the head reads exactly the union
    for name, m in masks.items():
        assert slim_layer(result, name.replace(".bn", ".conv")).out_channels == m.sum()
    assert slim_layer(result, "head").in_channels == union.sum()
    assert slim_layer(result, "b2.conv").in_channels == (masks["stem.bn"] | masks["b1.bn"]).sum()
    adds = [t for t in graph_targets(result) if t is operator.add]
    assert 3 <= len(adds)
    # the first add needs no gather; later ones at most one each (the trunk, never the branch)
    assert result.emit_stats["gathers"] <= 2
    assert_no_padding(result)
    coupled = gp.compile(model, x, masks=masks, residual="couple")
    assert coupled.stats.params_after > result.stats.params_after
    for name in masks:      # the conventional baseline gives the whole chain one (OR) mask
        assert np.array_equal(coupled.masks[name].numpy(), union)


def test_residual_add_where_one_branch_keeps_nothing_shared(tmp_path):
    model = randomize_batchnorm(ResidualChain(), 2)
    masks = {"stem.bn": keep(16, range(0, 8)), "b1.bn": keep(16, range(8, 16)),
             "b2.bn": keep(16, range(16)), "b3.bn": keep(16, [3])}
    result = check_compile(model, torch.randn(1, 3, 10, 10), tmp_path, masks=masks)
    assert slim_layer(result, "b2.conv").in_channels == 16
    assert not result.pinned


# -- C3 (bottleneck chain inside a CSP block) -------------------------------------------------
class C3Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 32, 3, 2)
        self.c3 = C3(32, 32, n=3)

    def forward(self, x):
        return self.c3(self.stem(x))


def test_c3_block(tmp_path):
    model = randomize_batchnorm(C3Net(), 3)
    masks = random_masks(model, 0.5, seed=3)
    result = check_compile(model, torch.randn(2, 3, 16, 16), tmp_path, masks=masks)
    m = {n: v.numpy() for n, v in result.masks.items()}
    assert set(result.pinned) == {"c3.cv3.bn"}      # reaches the output
    chain = m["c3.cv1.bn"] | m["c3.m.0.cv2.bn"] | m["c3.m.1.cv2.bn"] | m["c3.m.2.cv2.bn"]
    assert slim_layer(result, "c3.cv3.conv").in_channels == chain.sum() + m["c3.cv2.bn"].sum()
    assert slim_layer(result, "c3.m.2.cv1.conv").in_channels == \
        (m["c3.cv1.bn"] | m["c3.m.0.cv2.bn"] | m["c3.m.1.cv2.bn"]).sum()
    assert_no_padding(result)


# -- SPPF: one tensor concatenated four times --------------------------------------------------
class SPPFNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = Conv(3, 16, 3)
        self.sppf = SPPF(16, 24)
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        return self.head(self.sppf(self.stem(x)))


def test_sppf_concatenates_one_tensor_four_times(tmp_path):
    model = randomize_batchnorm(SPPFNet(), 4)
    masks = {"sppf.cv1.bn": keep(8, [1, 2, 6])}
    result = check_compile(model, torch.randn(1, 3, 16, 16), tmp_path, masks=masks)
    assert slim_layer(result, "sppf.cv1.conv").out_channels == 3
    assert slim_layer(result, "sppf.cv2.conv").in_channels == 12
    assert [t for t in graph_targets(result) if t is torch.cat]


# -- chunk / split (C2f-style blocks) ----------------------------------------------------------
class C2fLike(nn.Module):
    """ultralytics-style: cv1 -> chunk(2) -> a bottleneck chain on the last piece -> cat."""

    def __init__(self, c=16, n=2):
        super().__init__()
        self.stem = Conv(3, c, 3)
        self.cv1 = Conv(c, 2 * c, 1)
        self.m = nn.ModuleList(Bottleneck(c, c, True, expansion=1.0) for _ in range(n))
        self.cv2 = Conv((2 + n) * c, c, 1)
        self.side = Conv(c, 24, 1)
        self.tail = Conv(8, 8, 1)
        self.head = nn.Conv2d(c + 16 + 8, 3, 1)

    def forward(self, x):
        x = self.stem(x)
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        out = self.cv2(torch.cat(y, 1))
        a, b = torch.split(self.side(x), [8, 16], dim=1)
        return self.head(torch.cat([out, b, self.tail(a)], 1))


def test_chunk_and_split(tmp_path):
    model = randomize_batchnorm(C2fLike(), 5)
    masks = random_masks(model, 0.5, seed=5)
    result = check_compile(model, torch.randn(2, 3, 8, 8), tmp_path, masks=masks)
    m = {n: v.numpy() for n, v in result.masks.items()}
    assert not any("cv1" in n or "side" in n for n in result.pinned)
    first, second = m["cv1.bn"][:16], m["cv1.bn"][16:]
    y2 = second | m["m.0.cv2.bn"]
    y3 = y2 | m["m.1.cv2.bn"]
    assert slim_layer(result, "cv2.conv").in_channels == first.sum() + second.sum() + \
        y2.sum() + y3.sum()
    assert slim_layer(result, "tail.conv").in_channels == m["side.bn"][:8].sum()
    assert slim_layer(result, "head").in_channels == m["cv2.bn"].sum() + \
        m["side.bn"][8:].sum() + m["tail.bn"].sum()
    assert_no_padding(result)


# -- depthwise convolution: structural coupling -----------------------------------------------
class Inverted(nn.Module):
    def __init__(self, c=8, hidden=16):
        super().__init__()
        self.stem = Conv(3, c, 3)
        self.expand = Conv(c, hidden, 1)
        self.dw = Conv(hidden, hidden, 3, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        x = self.stem(x)
        return x + self.project(self.dw(self.expand(x)))


def test_depthwise_conv_couples_its_input_and_output(tmp_path):
    model = randomize_batchnorm(Inverted(), 6)
    masks = {"expand.bn": keep(16, range(0, 10)), "dw.bn": keep(16, range(6, 16)),
             "stem.bn": keep(8, range(0, 5)), "project.1": keep(8, range(3, 8))}
    result = check_compile(model, torch.randn(2, 3, 8, 8), tmp_path, masks=masks)
    e, d = result.masks["expand.bn"].numpy(), result.masks["dw.bn"].numpy()
    assert np.array_equal(e, d) and e.sum() == 16      # the OR of both requests
    assert "structurally coupled" in result.pinned["expand.bn"]
    assert "structurally coupled" in result.pinned["dw.bn"]
    dw = slim_layer(result, "dw.conv")
    assert dw.groups == dw.in_channels == dw.out_channels == 16
    # the residual add is not a structural tie: its branches keep their own masks
    assert "stem.bn" not in result.pinned and "project.1" not in result.pinned


def test_depthwise_conv_prunes_when_both_sides_agree(tmp_path):
    model = randomize_batchnorm(Inverted(), 7)
    masks = {"expand.bn": keep(16, range(0, 10)), "dw.bn": keep(16, range(0, 10))}
    result = check_compile(model, torch.randn(1, 3, 8, 8), tmp_path, masks=masks)
    dw = slim_layer(result, "dw.conv")
    assert dw.groups == dw.in_channels == dw.out_channels == 10
    assert slim_layer(result, "project.0").in_channels == 10
    assert not result.pinned


# -- the YOLOv5 Detect head (kept whole: shape-dependent grid cache) ---------------------------
def test_detect_head_inputs_shrink_outputs_stay(tmp_path):
    from graphprune.models import yolov5n

    model = randomize_batchnorm(yolov5n(num_classes=3), 8)
    masks = random_masks(model, 0.5, seed=8)
    result = check_compile(model, torch.rand(2, 3, 64, 64), tmp_path, masks=masks)
    assert "model.24" in result.leaves
    head = slim_layer(result, "model.24")
    for conv, layer in zip(head.m, (17, 20, 23)):
        assert conv.in_channels == result.masks[f"model.{layer}.cv3.bn"].sum()
        assert conv.out_channels == 3 * (3 + 5)
    pred, maps = result.module(torch.rand(1, 3, 64, 64))
    assert pred.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 8)


# -- a submodule that must become a leaf -------------------------------------------------------
class ShapeDependent(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, 6, 3, padding=1)

    def forward(self, x):
        if x.shape[-1] > 4:
            x = F.max_pool2d(self.conv(x), 2)
        else:
            x = self.conv(x)
        return x


class UsesInputDirectly(ShapeDependent):
    def forward(self, x):
        y = self.conv(x)
        if x.shape[-1] > 4:
            y = y + x.mean(1, keepdim=True)
        return y


class ReadsChannels(ShapeDependent):
    def forward(self, x):
        if x.shape[1] > 4:              # depends on the channel count: must see it whole
            return self.conv(x)
        return x


class WithLeaves(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Conv(3, 12, 3), Conv(3, 10, 3)
        self.leaf = ShapeDependent(12)
        self.other = UsesInputDirectly(10)

    def forward(self, x):
        return self.leaf(self.a(x)), self.other(self.b(x))


def test_untraceable_module_becomes_a_leaf(tmp_path):
    model = randomize_batchnorm(WithLeaves(), 9)
    masks = {"a.bn": keep(12, [0, 2, 4, 6, 8]), "b.bn": keep(10, [1, 2])}
    with pytest.warns(gp.GraphpruneWarning, match="'leaf' cannot be traced"):
        gp.compile(model, torch.randn(1, 3, 8, 8), masks=masks)
    result = check_compile(model, torch.randn(2, 3, 8, 8), tmp_path, masks=masks)
    assert set(result.leaves) == {"leaf", "other"}
    # consumed only by its inner convolution: the conv loses the pruned input columns
    assert slim_layer(result, "leaf").conv.in_channels == 5
    assert slim_layer(result, "a.conv").out_channels == 5
    # used directly (x.mean inside the leaf): its producer is pinned, with the reason
    assert result.masks["b.bn"].all()
    assert "other" in result.pinned["b.bn"] and "mean" in result.pinned["b.bn"]


# -- unknown ops and outputs pin what they consume ---------------------------------------------
class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = Conv(3, 8, 3), Conv(8, 8, 1), Conv(8, 8, 1)

    def forward(self, x):
        a = self.a(x)
        gate = torch.sigmoid(self.b(a))          # sigmoid(0) = 0.5: not zero-preserving
        return self.c(a * gate), a.sum()


def test_unknown_ops_and_outputs_pin_channels(tmp_path):
    model = randomize_batchnorm(Gate(), 10)
    masks = {n: keep(8, [0, 1, 2]) for n in ("a.bn", "b.bn", "c.bn")}
    result = check_compile(model, torch.randn(1, 3, 8, 8), tmp_path, masks=masks)
    assert result.masks["b.bn"].all() and "sigmoid" in result.pinned["b.bn"]
    assert result.masks["c.bn"].all() and "output" in result.pinned["c.bn"]
    assert result.masks["a.bn"].all()


def test_exclude_and_min_channels():
    model = randomize_batchnorm(C3Net(), 11)
    masks = {n: np.zeros(m.num_features, dtype=bool) for n, m in
             batchnorms(model).items()}
    result = check_compile(model, torch.randn(1, 3, 16, 16), masks=masks,
                           exclude=["c3.m"], min_channels=3)
    for name, m in result.masks.items():
        if name.startswith("c3.m."):
            assert m.all() and result.pinned[name] == "excluded by the user"
        else:
            assert m.sum() >= 3


def test_leaf_that_reads_the_channel_count_pins_its_input(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Conv(3, 8, 3)
            self.leaf = ReadsChannels(8)

        def forward(self, x):
            return self.leaf(self.a(x))

    model = randomize_batchnorm(Net(), 12)
    result = check_compile(model, torch.randn(1, 3, 8, 8), tmp_path,
                           masks={"a.bn": keep(8, [0, 1])})
    assert result.masks["a.bn"].all()
    assert "channel count" in result.pinned["a.bn"]


def test_a_wrong_channel_rule_is_refused_naming_the_diverging_node(monkeypatch):
    """Sigmoid maps 0 to 0.5, so treating it as zero-preserving is wrong: verify catches it."""
    from graphprune import channels

    monkeypatch.setattr(channels, "_MODULE_RULES", list(channels._MODULE_RULES))
    channels.register_module_rule((nn.Sigmoid,), channels.ZeroPreservingModule())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.head = Conv(3, 8, 3), nn.Sigmoid(), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.s(self.a(x)))

    model = randomize_batchnorm(Net(), 13)
    with pytest.raises(gp.VerificationError, match="first diverging node: head"):
        gp.compile(model, torch.randn(1, 3, 8, 8), masks={"a.bn": keep(8, [0, 1, 2, 3])})


class _Steps(nn.Module):
    """floor(x · 2¹⁶): a step function, as a top-k or an argmax is one, whose steps float32
    rounding can cross."""

    def forward(self, x):
        return torch.floor(x * 65536.0)


def test_outputs_that_hinge_on_near_ties_are_verified_in_float64():
    """The slim and zero-masked models round differently in float32 (fewer channels, another
    summation order), so some of the 8 × 32 × 32 steps land on either side; in float64 they
    agree exactly and the compile is accepted, saying why."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.steps = Conv(3, 64, 3), nn.Conv2d(64, 8, 3, padding=1), _Steps()

        def forward(self, x):
            return self.steps(self.b(self.a(x)))

    torch.manual_seed(0)
    model = randomize_batchnorm(Net(), 14)
    x = torch.rand(1, 3, 32, 32)
    masks = {"a.bn": np.arange(64) % 2 == 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, x, masks=masks, leaves=("steps",))
    with torch.no_grad():
        float32 = (result.module(x) - gp.zero_mask(model, result.masks)(x)).abs().max()
    assert float32 >= 1                       # whole steps apart in float32 ...
    assert result.max_error < 1e-6            # ... and equal in float64
    assert any("in float64 they agree" in w for w in result.warnings)
    assert result.module.b.in_channels == 32


def test_a_real_difference_is_refused_in_float64_too(monkeypatch):
    """A wrong rule behind a step function: float64 does not excuse it."""
    from graphprune import channels

    monkeypatch.setattr(channels, "_MODULE_RULES", list(channels._MODULE_RULES))
    channels.register_module_rule((nn.Sigmoid,), channels.ZeroPreservingModule())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.s, self.head = Conv(3, 8, 3), nn.Sigmoid(), nn.Conv2d(8, 2, 1)
            self.steps = _Steps()

        def forward(self, x):
            return self.steps(self.head(self.s(self.a(x))))

    model = randomize_batchnorm(Net(), 13)
    with pytest.raises(gp.VerificationError, match="first diverging node: head"):
        gp.compile(model, torch.randn(1, 3, 8, 8), masks={"a.bn": keep(8, [0, 1, 2, 3])},
                   leaves=("steps",))


class _ShapeCachingHead(nn.Module):
    """A kept-whole module that remembers the shape it last saw, as ultralytics' Detect does."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 1)
        self.shape = None

    def forward(self, x):
        if self.shape != x.shape:
            self.shape = x.shape
        return self.conv(x)


def test_a_leaf_that_keeps_the_shape_it_saw_still_compiles(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU(), _ShapeCachingHead())
    result = check_compile(randomize_batchnorm(model, 0), torch.rand(1, 3, 16, 16), tmp_path,
                           prune_ratio=0.5, leaves=["3"])
    assert result.leaves == {"3": "requested"}
    assert bool(torch.as_tensor(result.masks["1"]).all())   # it reads the channel count
    assert model[3].shape is None                      # the caller's model is not run


def test_an_in_place_op_whose_result_is_unused_stays_in_the_slim_graph(tmp_path):
    """``out.mul_(g)`` changes ``out`` for the ops after it (NFNet's skip-init gain), though
    nothing reads its result: the trace rewrites it as ``out = out.mul(g)``, so the channel
    analysis sees the dependency and the slim graph (which reorders ``out`` here) keeps it."""
    class SkipInit(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.c2, self.drop = nn.Conv2d(8, 8, 1), nn.Identity()
            self.gain = nn.Parameter(torch.tensor(0.25))

        def forward(self, x):
            y = torch.relu(self.bn(self.c1(x)))
            out = self.drop(self.c2(y) * 2.0)
            out.mul_(self.gain)
            return out * 0.5 + y

    model = randomize_batchnorm(SkipInit(), 0).eval()
    result = check_compile(model, torch.rand(1, 3, 8, 8), tmp_path,
                           masks={"bn": np.arange(8) % 2 == 0})
    methods = [n.target for n in result.module.graph.nodes if n.op == "call_method"]
    assert "mul" in methods and "mul_" not in methods


def test_a_learnable_scalar_affine_after_a_batchnorm_pins_it_with_the_reason(tmp_path):
    """HGNetV2's pattern (the reason of its zoo row): ``scale * bn(x) + bias`` with one-element
    learnable tensors; a pruned channel would still carry ``bias`` after it, and the product
    with a tensor that has no channel dimension has no rule, so the BatchNorm stays whole and
    says why."""
    class ScalarAffine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.scale, self.bias = nn.Parameter(torch.ones(1)), nn.Parameter(torch.zeros(1))
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.scale * self.bn(self.conv(x)) + self.bias)

    model = randomize_batchnorm(ScalarAffine(), 0).eval()
    result = check_compile(model, torch.rand(1, 3, 8, 8), tmp_path,
                           masks={"bn": np.arange(8) < 4})
    assert result.masks["bn"].all()
    assert "consumed by node 'mul' (mul), which is not prunable" in result.pinned["bn"]


def test_an_in_place_op_through_a_view_stays_in_place(tmp_path):
    """``y[:, :4].mul_(2)`` changes ``y`` through a view, and nothing reads its result: it stays
    in the slim graph, in place, where the view still reaches ``y``."""
    class Mutates(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            y[:, :4].mul_(2.0)
            return self.head(y)

    model = randomize_batchnorm(Mutates(), 0).eval()
    result = check_compile(model, torch.rand(1, 3, 8, 8), onnx=False,
                           masks={"bn": np.arange(8) < 6})
    assert "mul_" in [n.target for n in result.module.graph.nodes]
    # the TorchScript ONNX exporter loses a mutation through a view: the parity check refuses
    # the file instead of writing a wrong one
    with pytest.raises(gp.VerificationError, match="onnxruntime disagrees"):
        result.export_onnx(tmp_path / "slim.onnx")
    assert not (tmp_path / "slim.onnx").exists()
