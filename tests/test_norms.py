"""Norm layers however they are written: BatchNorm subclasses that fuse an activation into
their forward (timm's BatchNormAct2d is one), SyncBatchNorm; each pruned like a BatchNorm and
emitted as its own type, or left unpruned with the reason when its forward does not send a
zeroed channel to zero."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import check_compile, slim_layer

import graphprune as gp
from graphprune.models import randomize_batchnorm


class NormAct(nn.BatchNorm2d):
    """A BatchNorm with its activation fused in (the functional call, then the act), as timm
    writes BatchNormAct2d."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.SiLU):
        super().__init__(channels)
        self.act = act()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return self.act(x)


class Net(nn.Module):
    def __init__(self, last_act: type[nn.Module] = nn.ReLU, norm=NormAct):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), norm(16)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), norm(16)
        self.c3, self.n3 = nn.Conv2d(16, 12, 1, bias=False), NormAct(12, last_act)
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        y = self.n1(self.c1(x))
        y = y + self.n2(self.c2(y))                      # a residual add across fused norms
        return self.head(self.n3(self.c3(y)))


def test_a_batchnorm_with_a_fused_activation_prunes_and_stays_its_own_type(tmp_path):
    model = randomize_batchnorm(Net(), 0)
    result = check_compile(model, torch.rand(1, 3, 32, 32), tmp_path, prune_ratio=0.5)
    assert set(result.masks) == {"n1", "n2", "n3"} and not result.unprunable
    for name in ("n1", "n2", "n3"):
        slim = slim_layer(result, name)
        keep = int(np.asarray(result.masks[name]).sum())
        assert type(slim) is NormAct and slim.num_features == keep < 16
        assert slim.weight.shape == slim.running_mean.shape == (keep,)
    assert isinstance(slim_layer(result, "n3").act, nn.ReLU)
    assert slim_layer(result, "c3").in_channels < 16


@pytest.mark.parametrize("act, why", [(nn.Sigmoid, "turns a zeroed channel into a non-zero")])
def test_a_fused_norm_that_does_not_keep_zero_is_left_whole_with_the_reason(act, why,
                                                                           tmp_path):
    model = randomize_batchnorm(Net(last_act=act), 0)
    result = check_compile(model, torch.rand(1, 3, 32, 32), tmp_path, prune_ratio=0.5)
    assert "n3" not in result.masks and why in result.unprunable["n3"]
    assert "NormAct" in result.unprunable["n3"]
    assert slim_layer(result, "n3").num_features == 12
    assert set(result.masks) == {"n1", "n2"}


def test_sync_batchnorm_prunes_like_batchnorm(tmp_path):
    model = randomize_batchnorm(Net(norm=nn.SyncBatchNorm), 0)
    result = check_compile(model, torch.rand(1, 3, 32, 32), tmp_path, prune_ratio=0.5)
    assert {"n1", "n2"} <= set(result.masks)
    assert type(slim_layer(result, "n1")) is nn.SyncBatchNorm
    assert slim_layer(result, "n1").num_features < 16


class RepBlock(nn.Module):
    """A RepVGG/MobileOne-style block before re-parameterisation: a 3x3 conv-BN, a 1x1 conv-BN
    and an identity BN, summed, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))
        self.point = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                   nn.BatchNorm2d(channels))
        self.identity = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(self.dense(x) + self.point(x) + self.identity(x))


class RepNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(RepBlock(16), RepBlock(16))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


BRANCHES = ("dense.1", "point.1", "identity")


def test_reparameterisable_blocks_prune_exactly_and_couple_to_one_mask(tmp_path):
    model = randomize_batchnorm(RepNet(), 0)
    x = torch.rand(1, 3, 32, 32)
    rng = np.random.default_rng(0)
    masks = {}
    for name in ["stem.1", *[f"blocks.{b}.{n}" for b in (0, 1) for n in BRANCHES]]:
        keep = rng.random(16) < 0.5                  # random, but channels 0-3 go everywhere
        keep[:4] = False
        masks[name] = keep
    # reconstruct: each branch keeps its own channels, the sum is rebuilt, exactly
    result = check_compile(model, x, tmp_path, masks=masks)
    kept = {n: int(np.asarray(m).sum()) for n, m in result.masks.items()}
    assert kept["blocks.0.dense.1"] < 16 and result.stats.channels_pruned > 0
    # couple: the branches of a block share one mask, so the block can still be fused into one
    # convolution after pruning
    coupled = check_compile(model, x, tmp_path, masks=masks, residual="couple")
    for b in (0, 1):
        branch = [np.asarray(coupled.masks[f"blocks.{b}.{n}"]) for n in BRANCHES]
        assert all(np.array_equal(branch[0], m) for m in branch[1:])
    assert not np.asarray(coupled.masks["blocks.0.dense.1"])[:4].any()


class FrozenBN(nn.Module):
    """A BatchNorm written by hand with its statistics as buffers, as torchvision's and
    detectron2's FrozenBatchNorm2d are."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", torch.ones(channels)), ("bias", torch.zeros(channels)),
                            ("running_mean", torch.zeros(channels)),
                            ("running_var", torch.ones(channels))):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def test_a_frozen_batchnorm_written_as_buffers_prunes_and_stays_frozen(tmp_path):
    from graphprune.masks import BATCHNORMS

    model = Net(norm=FrozenBN)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBN):
            m.weight.copy_(10 ** (-3 * torch.rand(m.weight.shape, generator=g)))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.bias.shape, generator=g))
    assert isinstance(model.n1, BATCHNORMS) and not isinstance(model.head, BATCHNORMS)
    result = check_compile(randomize_batchnorm(model, 0), torch.rand(1, 3, 32, 32), tmp_path,
                           prune_ratio=0.5)
    assert {"n1", "n2"} <= set(result.masks)
    slim = slim_layer(result, "n1")
    keep = int(np.asarray(result.masks["n1"]).sum())
    assert type(slim) is FrozenBN and keep < 16
    assert dict(slim.named_buffers())["weight"].shape == (keep,)
    assert not list(slim.parameters())                     # its buffers stay buffers


def test_a_batchnorm_without_affine_parameters_is_left_whole_with_the_reason(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8, affine=False),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
    result = check_compile(randomize_batchnorm(model, 0), torch.rand(1, 3, 16, 16), tmp_path,
                           prune_ratio=0.5)
    assert "no affine" in result.unprunable["1"] and "1" not in result.masks
    assert slim_layer(result, "1").num_features == 8 and "4" in result.masks


class FunctionalBN(nn.Module):
    """A convolution and a batch norm written as a function call on the module's own tensors
    (``torch.batch_norm``'s argument order with ``functional=False``)."""

    def __init__(self, cin: int, c: int, functional: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, c, 3, padding=1, bias=False)
        self.bn_weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bn_bias = nn.Parameter(torch.randn(c) * 0.3)
        self.register_buffer("bn_mean", torch.randn(c) * 0.1)
        self.register_buffer("bn_var", torch.rand(c) + 0.5)
        self.functional = functional

    def forward(self, x):
        y = self.conv(x)
        if self.functional:
            y = F.batch_norm(y, self.bn_mean, self.bn_var, self.bn_weight, self.bn_bias,
                             False, 0.1, 1e-5)
        else:
            y = torch.batch_norm(y, self.bn_weight, self.bn_bias, self.bn_mean, self.bn_var,
                                 False, 0.1, 1e-5, False)
        return F.silu(y)


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1, self.b2 = FunctionalBN(3, 16), FunctionalBN(16, 16, functional=False)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        y = self.b1(x)
        return self.head(y + self.b2(y))           # a residual add across functional norms


def test_a_functional_batch_norm_on_a_module_s_tensors_prunes_like_a_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = FunctionalNet().eval()
    x = torch.rand(1, 3, 16, 16)
    result = check_compile(model, x, tmp_path, prune_ratio=0.5)
    assert set(result.masks) == {"b1.bn_weight", "b2.bn_weight"}   # named by their weight
    for block in ("b1", "b2"):
        keep = int(np.asarray(result.masks[f"{block}.bn_weight"]).sum())
        assert 0 < keep < 16
        assert slim_layer(result, f"{block}.conv").out_channels == keep   # its rows go
        slim_block = result.module.get_submodule(block)
        for tensor in ("bn_weight", "bn_bias", "bn_mean", "bn_var"):
            assert getattr(slim_block, tensor).shape == (keep,)
    # the zero-masked reference zeroes the weight and its paired bias
    ref = gp.zero_mask(model, result.masks)
    pruned = ~np.asarray(result.masks["b1.bn_weight"])
    assert torch.count_nonzero(ref.b1.bn_weight[pruned]) == 0
    assert torch.count_nonzero(ref.b1.bn_bias[pruned]) == 0
    again = gp.load(result.save(tmp_path / "slim.graphprune.pt"), model=FunctionalNet())
    assert sum(p.numel() for p in again.parameters()) == result.stats.params_after


def test_a_functional_batch_norm_with_another_bias_than_its_weight_s_pair_is_not_a_producer():
    """The module holds bn_weight and bn_bias (a pair), but the call takes another tensor as
    its bias: zeroing the pair would not zero the call's output, so it is no producer, and a
    mask naming it says why."""
    class OtherBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 2, 1)
            self.bn_weight = nn.Parameter(torch.rand(8) + 0.5)
            self.bn_bias, self.offset = nn.Parameter(torch.rand(8)), nn.Parameter(torch.rand(8))

        def forward(self, x):
            y = F.batch_norm(self.conv(x), None, None, self.bn_weight, self.offset, True)
            return self.head(y + 0 * self.bn_bias[None, :, None, None])

    model = OtherBias().eval()
    x = torch.rand(1, 3, 8, 8)
    assert "bn_weight" not in gp.analyze(model, x).statistics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(model, x, masks={"bn_weight": np.arange(8) < 4})
    assert result.masks["bn_weight"].all()
    assert "no batch norm call of the graph uses it as its weight" in result.pinned["bn_weight"]
