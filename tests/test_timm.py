"""timm's own modules, in the second environment (``make test``'s ``-m ultralytics`` pass):
its fused BatchNormAct2d prunes and stays one; a model whose modules cache tensors during a
forward compiles (torch-pruning's dependency graph runs on a copy); an op the TorchScript ONNX
exporter lacks goes through the dynamo exporter. Random weights, nothing downloaded."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch
from timm.layers import BatchNormAct2d

from conftest import check_compile, random_masks, slim_layer
from graphprune.masks import batchnorms
from graphprune.models import randomize_batchnorm

pytestmark = pytest.mark.ultralytics


def build(name: str) -> torch.nn.Module:
    return randomize_batchnorm(timm.create_model(name, pretrained=False).eval(), 0)


def test_timm_batchnormact_prunes_and_stays_a_batchnormact(tmp_path):
    model = build("cspdarknet53")
    fused = [n for n, m in batchnorms(model).items() if type(m) is BatchNormAct2d]
    assert len(fused) > 50
    result = check_compile(model, torch.rand(1, 3, 64, 64), tmp_path,
                           masks=random_masks(model, 0.5, seed=0))
    assert result.stats.channels_pruned > 0.4
    for name in fused[:5]:
        slim = slim_layer(result, name)
        assert type(slim) is BatchNormAct2d
        assert slim.num_features == int(np.asarray(result.masks[name]).sum())


def test_a_model_that_caches_tensors_in_its_forward_compiles():
    model = build("efficientformer_l1")        # caches its attention biases in eval mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = check_compile(model, torch.rand(1, 3, 224, 224),
                               masks=random_masks(model, 0.5, seed=0))
    assert result.stats.channels_pruned > 0.3


def test_vgg_head_at_128_px_exports_through_the_dynamo_exporter(tmp_path):
    model = build("vgg11_bn")
    check_compile(model, torch.rand(1, 3, 128, 128), tmp_path,
                  masks=random_masks(model, 0.5, seed=0))


def test_timm_convnext_prunes_its_layernorm_and_convolution_channels(tmp_path):
    """ConvNeXt (no BatchNorm: LayerNorm2d and 1x1-convolution MLPs) prunes by ratio, the
    hidden channels of every block's MLP and the outputs of its LayerNorms, and stays exact."""
    from timm.layers import LayerNorm2d

    from graphprune.models import randomize_norms

    model = randomize_norms(timm.create_model("convnext_atto", pretrained=False).eval(), 0)
    result = check_compile(model, torch.rand(1, 3, 64, 64), tmp_path, prune_ratio=0.5)
    kinds = {row["kind"] for row in result.layers if row["kept"] < row["channels"]}
    assert {"conv", "layernorm"} <= kinds
    fc1 = "stages.0.blocks.0.mlp.fc1"
    kept = int(np.asarray(result.masks[fc1]).sum())
    assert slim_layer(result, fc1).out_channels == kept < model.get_submodule(fc1).out_channels
    assert slim_layer(result, fc1.replace("fc1", "fc2")).in_channels == kept
    assert type(slim_layer(result, "stages.0.blocks.0.norm")) is LayerNorm2d
    assert result.stats.flops_after < 0.8 * result.stats.flops_before
