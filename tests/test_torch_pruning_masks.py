"""graphprune.integrations.torch_pruning: a Torch-Pruning pruner's choice of channels, read as
keep-masks without cutting anything, and realised by the compiler to the same model
Torch-Pruning builds itself."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from conftest import assert_close, check_compile

from graphprune.errors import GraphpruneError
from graphprune.integrations.torch_pruning import masks_from_importance, masks_from_pruner
from graphprune.models import randomize_batchnorm, tiny_resnet


def test_torch_pruning_masks_compile_to_torch_pruning_s_own_model(tmp_path):
    model = randomize_batchnorm(tiny_resnet(), 0).eval()
    x = torch.rand(1, 3, 32, 32)
    before = copy.deepcopy(model.state_dict())
    masks = masks_from_importance(model, x, tp.importance.GroupMagnitudeImportance(p=2), 0.5,
                                  ignored_layers=[model.fc])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert masks and all(0 < m.sum() < len(m) for m in masks.values())
    result = check_compile(model, x, tmp_path, masks=masks, residual="couple")
    # torch-pruning's own cut of a copy, with the same importance and ratio
    theirs = copy.deepcopy(model)
    tp.pruner.MetaPruner(theirs, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                         pruning_ratio=0.5, ignored_layers=[theirs.fc]).step()
    with torch.no_grad():
        assert_close(result.module(x), theirs(x))
    ours = sum(p.numel() for p in result.module.parameters())
    assert ours == sum(p.numel() for p in theirs.parameters())


def test_a_pruner_built_on_another_model_is_refused():
    model = tiny_resnet().eval()
    other = tiny_resnet().eval()
    pruner = tp.pruner.MetaPruner(other, torch.rand(1, 3, 32, 32),
                                  importance=tp.importance.RandomImportance(), pruning_ratio=0.5,
                                  ignored_layers=[other.fc])
    with pytest.raises(GraphpruneError, match="not the model given"):
        masks_from_pruner(model, pruner)
    with pytest.raises(GraphpruneError, match="not a Torch-Pruning pruner"):
        masks_from_pruner(model, object())


def test_torch_pruning_masks_of_a_model_without_batchnorm_compile_to_its_own_model(tmp_path):
    """Without BatchNorm, Torch-Pruning's groups prune convolutions and linear layers; their
    masks compile to the same network Torch-Pruning cuts (a plain chain: no coupling to
    differ on)."""
    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.GELU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                   torch.nn.Linear(32, 24), torch.nn.ReLU(),
                                   torch.nn.Linear(24, 5)).eval()

    torch.manual_seed(0)
    model = build()
    x = torch.rand(1, 3, 16, 16)
    masks = masks_from_importance(model, x, tp.importance.MagnitudeImportance(p=2), 0.5,
                                  ignored_layers=[model[8]])
    assert set(masks) == {"0", "2", "6"}
    result = check_compile(model, x, tmp_path, masks=masks)
    assert not result.pinned
    theirs = copy.deepcopy(model)
    tp.pruner.MetaPruner(theirs, x, importance=tp.importance.MagnitudeImportance(p=2),
                         pruning_ratio=0.5, ignored_layers=[theirs[8]]).step()
    with torch.no_grad():
        assert_close(result.module(x), theirs(x))
    assert sum(p.numel() for p in result.module.parameters()) == \
        sum(p.numel() for p in theirs.parameters())
