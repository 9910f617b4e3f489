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
