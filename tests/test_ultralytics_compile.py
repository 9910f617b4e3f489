"""gp.compile on ultralytics detection models built from their yaml (no weights), untouched.

Random masks p = 0.5; every compile is checked three ways by ``check_compile`` (slim ==
zero-masked original == onnxruntime).  Runs in the ultralytics environment (``make test``'s
second pass, ``-m ultralytics``).
"""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
from ultralytics import YOLO  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.masks import batchnorms  # noqa: E402

from conftest import check_compile, random_masks  # noqa: E402

pytestmark = pytest.mark.ultralytics
SIZE = 160


def build(name: str) -> torch.nn.Module:
    return YOLO(f"{name}.yaml").model.eval()


@pytest.mark.parametrize("name", ["yolov5nu", "yolov8n", "yolov8s", "yolo11n"])
def test_random_masks_compile_verify_and_onnx(name, tmp_path):
    model = build(name)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    masks = random_masks(model, 0.5, seed=1)
    result = check_compile(model, x, tmp_path, masks=masks)
    # most channels are really removed, not pinned
    assert result.stats.channels_pruned >= 0.3
    assert result.stats.params_after < 0.7 * result.stats.params_before
    # the detection head cannot be traced, but its box and class branches are pruned inside
    # it (graphprune.inner): their hidden channels shrink, their output layers keep every one
    head_name = f"model.{len(model.model) - 1}"
    original, slim = model.get_submodule(head_name), result.module.get_submodule(head_name)
    for i in range(original.nl):
        for branch, width in (("cv2", 4 * original.reg_max), ("cv3", original.nc)):
            out = slim.get_submodule(f"{branch}.{i}.2")
            assert out.out_channels == original.get_submodule(f"{branch}.{i}.2").out_channels \
                == width
            hidden = original.get_submodule(f"{branch}.{i}.2").in_channels
            assert out.in_channels < hidden             # the branch's hidden width shrank
    params = [sum(p.numel() for p in m.parameters()) for m in (original, slim)]
    assert params[1] <= 0.75 * params[0]
    # C2f's chunk is remapped to the slim widths (not pinned): its pieces are now unequal
    if name.startswith("yolov8"):
        splits = [n for n in result.module.graph.nodes
                  if n.op in ("call_function", "call_method") and "split" in str(n.target)]
        assert splits
        assert any(isinstance(n.args[1], (list, tuple)) and len(set(n.args[1])) > 1
                   for n in splits)


def test_c2f_residual_branches_keep_different_channels():
    """model.2 is a C2f whose bottleneck adds the second chunk of cv1 to m.0.cv2: compiled,
    both branches keep exactly what was asked, although the two masks differ."""
    model = build("yolov8n")
    x = torch.rand(1, 3, SIZE, SIZE)
    masks = random_masks(model, 0.5, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        rebuilt = gp.compile(model, x, masks=masks)
    half = model.get_submodule("model.2.cv1.bn").num_features // 2
    branch = rebuilt.masks["model.2.m.0.cv2.bn"]
    shortcut = rebuilt.masks["model.2.cv1.bn"][half:]
    assert bool((branch == torch.as_tensor(masks["model.2.m.0.cv2.bn"])).all())
    assert bool((shortcut == torch.as_tensor(masks["model.2.cv1.bn"][half:])).all())
    assert not bool((branch == shortcut).all())
    slim = rebuilt.module.get_submodule("model.2.m.0.cv2.conv")
    assert slim.out_channels == int(branch.sum())


def test_couple_ties_c2f_shortcuts_through_the_chunk(tmp_path):
    """The conventional baseline must give the chunked shortcut (cv1's second half) and the
    bottleneck's cv2 one mask: the OR of what was asked of both."""
    model = build("yolov8n")
    x = torch.rand(1, 3, SIZE, SIZE)
    masks = random_masks(model, 0.5, seed=2)
    coupled = check_compile(model, x, tmp_path, masks=masks, residual="couple")
    half = model.get_submodule("model.2.cv1.bn").num_features // 2
    union = masks["model.2.cv1.bn"][half:] | masks["model.2.m.0.cv2.bn"]
    assert bool((coupled.masks["model.2.m.0.cv2.bn"] == torch.as_tensor(union)).all())
    assert bool((coupled.masks["model.2.cv1.bn"][half:] == torch.as_tensor(union)).all())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        rebuilt = gp.compile(model, x, masks=masks)
    assert rebuilt.stats.params_after < coupled.stats.params_after


def test_attention_channels_are_pinned_not_broken(tmp_path):
    """yolo11n's C2PSA attention reshapes its qkv channels into heads: those stay whole, the
    rest of the block is still pruned, and the numbers hold."""
    model = build("yolo11n")
    x = torch.rand(1, 3, SIZE, SIZE)
    masks = random_masks(model, 0.5, seed=3)
    result = check_compile(model, x, tmp_path, masks=masks)
    qkv = [n for n in batchnorms(model) if n.endswith("attn.qkv.bn")]
    assert qkv
    for name in qkv:
        assert bool(result.masks[name].all())
        assert "view" in result.pinned[name]
    ffn = [n for n in batchnorms(model) if ".ffn." in n]
    assert any(not bool(result.masks[n].all()) for n in ffn)


def test_heads_benchmark_measures_the_head_pruned_inside(tmp_path):
    """benchmarks/heads.py --quick: yolov8n's head loses more than a quarter of its
    parameters at random masks p = 0.5 and under the FLOPs goal, both compiles verified and
    ONNX Runtime agreeing; Torch-Pruning's row is a measurement or its failure."""
    import importlib
    import json

    heads = importlib.import_module("benchmarks.heads")
    out = tmp_path / "heads.json"
    assert heads.main(["--quick", "--json-out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["random"]["head_removed"] >= 0.25 and row["random"]["onnx_parity"]
    assert row["random"]["max_error"] <= 1e-3 and row["graphprune"]["max_error"] <= 1e-3
    assert row["graphprune"]["flops_after"] <= 0.5 * row["flops"]
    assert row["graphprune"]["head_removed"] > 0
    assert row["random"]["head_share_before"] == pytest.approx(
        row["random"]["head_params_before"] / row["params"])
    tp = row["torch_pruning"]
    assert "failed" in tp or tp["params_after"] < row["params"]
    assert set(row["latency_ms"]) >= {"baseline", "graphprune"}


@pytest.mark.parametrize("name", ["rtdetr-l", "rtdetr-resnet50"])
def test_rtdetr_compiles_exactly_and_its_onnx_is_refused_only_for_near_ties(name, tmp_path):
    """RT-DETR keeps its 300 best-scoring queries (a top-k in the decoder, kept whole): float32
    rounding decides near-ties there, so the slim and the zero-masked model — and the dense
    model with itself in float64 — can pick different queries.  The compile is verified in
    float64 (exact), the backbone and hybrid encoder are pruned, and the ONNX export is refused
    in one line naming the near-ties exactly when the module's own float32 and float64 outputs
    disagree."""
    from ultralytics import RTDETR

    from graphprune.context import ATOL, RTOL
    from graphprune.export import float32_spread
    from torch.utils._pytree import tree_flatten

    torch.manual_seed(0)                        # the initial weights decide where ties fall
    model = RTDETR(f"{name}.yaml").model.eval()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = gp.compile(model, x, masks=random_masks(model, 0.5, seed=1))
    assert result.stats.params_after < 0.75 * result.stats.params_before
    reference = gp.zero_mask(model, result.masks).double()
    with torch.no_grad():
        got = tree_flatten(copy.deepcopy(result.module).double()(x.double()))[0]
        want = tree_flatten(reference(x.double()))[0]
    assert len(got) == len(want)
    for g, w in zip(got, want):                 # within the compile's tolerance (the decoder
        if isinstance(w, torch.Tensor):         # caches its anchors in float32)
            assert torch.allclose(g, w, atol=ATOL, rtol=RTOL)
    with torch.no_grad():
        expected = [t for t in tree_flatten(result.module(x))[0] if isinstance(t, torch.Tensor)]
    spread = float32_spread(result.module, (x,), expected)
    path = tmp_path / "slim.onnx"
    if spread is None:
        result.export_onnx(path)
        assert path.exists()
    else:
        with pytest.raises(gp.VerificationError, match="near-ties") as caught:
            result.export_onnx(path)
        assert "--no-onnx" in caught.value.hint and not path.exists()
