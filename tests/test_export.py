"""Artifacts: the graphprune checkpoint, slim.pt2 and slim.onnx, reloaded in fresh processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.checkpoint import read_checkpoint
from graphprune.export import onnx_parity
from graphprune.models import randomize_batchnorm, tiny_resnet, yolov5n
from conftest import random_masks


@pytest.fixture(scope="module")
def compiled():
    model = randomize_batchnorm(yolov5n(num_classes=4), seed=1)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        return gp.compile(model, x, masks=random_masks(model, 0.5, seed=1)), x


def run_fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_checkpoint_and_pt2_reproduce_the_slim_module_in_a_fresh_process(compiled, tmp_path):
    result, x = compiled
    result.save(tmp_path / "slim.graphprune.pt")
    result.export_pt2(tmp_path / "slim.pt2")
    xb = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.save({"x": x, "xb": xb}, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = [result.module(x)[0], result.module(xb)[0]]
    torch.save({"y": expected[0], "yb": expected[1]}, tmp_path / "expected.pt")
    out = run_fresh(f"""
        import torch, graphprune as gp
        torch.set_num_threads(1)        # as in this process (conftest): same kernels, same bits
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r}, weights_only=True)
        expected = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
        m = gp.load({str(tmp_path / 'slim.graphprune.pt')!r})
        p = torch.export.load({str(tmp_path / 'slim.pt2')!r}).module()
        with torch.no_grad():
            print(torch.equal(m(inputs['x'])[0], expected['y']),
                  torch.equal(m(inputs['xb'])[0], expected['yb']),
                  torch.equal(p(inputs['x'])[0], expected['y']),
                  torch.equal(p(inputs['xb'])[0], expected['yb']))
    """)
    assert out.split() == ["True"] * 4


def test_checkpoint_holds_only_tensors_and_plain_data(compiled, tmp_path):
    result, _ = compiled
    path = result.save(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)           # no pickled code needed
    assert payload["format"] == "graphprune" and isinstance(payload["recipe"], str)
    recipe, state = read_checkpoint(path)
    assert recipe["builder"] == "yolov5n" and recipe["kwargs"] == {"num_classes": 4}
    masks = {n: np.array([c == "1" for c in s]) for n, s in recipe["masks"].items()}
    for name, m in result.masks.items():
        assert np.array_equal(masks[name], m.numpy())
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_load_needs_the_architecture_for_models_it_did_not_build(tmp_path):
    model = randomize_batchnorm(tiny_resnet(), seed=3)
    del model.graphprune_config                      # as if the user wrote this class
    x = torch.rand(2, 3, 16, 16)
    result = gp.compile(model, x, masks=random_masks(model, 0.5, seed=3))
    path = result.save(tmp_path / "custom.pt")
    with pytest.raises(gp.CheckpointError, match="pass an instance of that architecture"):
        gp.load(path)
    again = gp.load(path, model=tiny_resnet())
    with torch.no_grad():
        assert torch.equal(again(x), result.module(x))


def test_onnx_is_checked_has_a_dynamic_batch_and_matches(compiled, tmp_path):
    result, x = compiled
    path = result.export_onnx(tmp_path / "slim.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == gp.export.ONNX_OPSET
    assert [o.name for o in model.graph.output] == ["output0", "output1", "output2", "output3"]
    xb = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = [result.module(xb)[0], *result.module(xb)[1]]
    assert onnx_parity(path, (xb,), expected) is None


def test_failed_export_leaves_no_partial_file(tmp_path):
    class Unexportable(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigvals(x).real       # no ONNX operator for this

    with pytest.raises(gp.GraphpruneError, match="ONNX export failed"):
        gp.export.export_onnx(Unexportable(), (torch.rand(1, 3, 3),), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_a_slim_model_compiled_again_reloads_exactly(tmp_path):
    model = randomize_batchnorm(yolov5n(num_classes=2), seed=4)
    x = torch.rand(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        first = gp.compile(model, x, prune_ratio=0.3)
        second = gp.compile(first.module, x, masks=random_masks(first.module, 0.6, seed=4))
    assert second.stats.params_after < first.stats.params_after
    again = gp.load(second.save(tmp_path / "twice.pt"))
    with torch.no_grad():
        assert torch.equal(again(x)[0], second.module(x)[0])


def test_an_op_the_torchscript_exporter_lacks_goes_through_the_dynamo_exporter(tmp_path):
    """An adaptive pooling whose output size does not divide its input (timm's VGG head at
    128 px) is refused by the TorchScript-based exporter; the file still comes out whole and
    matches in onnxruntime."""
    from graphprune.export import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(72, 4)).eval()
    x = torch.rand(1, 3, 4, 4)
    with pytest.raises(Exception):
        torch.onnx.export(model, (x,), str(tmp_path / "ts.onnx"), dynamo=False)
    path = export_onnx(model, (x,), tmp_path / "slim.onnx")
    onnx.checker.check_model(str(path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
