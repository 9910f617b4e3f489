"""Norm layers however they are written: BatchNorm subclasses that fuse an activation into
their forward (timm's BatchNormAct2d is one), SyncBatchNorm; each pruned like a BatchNorm and
emitted as its own type, or left unpruned with the reason when its forward does not send a
zeroed channel to zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import check_compile, slim_layer

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
