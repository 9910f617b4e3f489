"""benchmarks/flops.py: its FLOPs are graphprune's, and its torch-pruning cross-check is exact.

torch-pruning's ``count_ops_and_params`` (``torch_pruning/utils/op_counter.py``) hooks modules by
exact type and returns per-image MACs: k²·C_in/groups per conv output element plus 1 when the
conv has a bias, 2 per element of an affine BatchNorm, 1 per input element of a pooling call,
1 per output element of ``nn.Upsample``; SiLU and functional ops count 0.  flop_counter counts
2 × the convolution MACs only.  So, with E the element terms counted here by our own hooks,

    tp MACs = F/2 + E          and          F / (2 · tp MACs) = 1 / (1 + E / (F/2))  < 1.

Lower bound: every element in E belongs to one convolution's output — 2 for the BatchNorm after
it, 1 for a bias (the Detect convs), 3 for SPPF's cv1 (its MaxPool2d runs three times on that
size), 4 for the convs feeding the 2× nearest upsamples (layers 10 and 14) — at most 2 + 4 = 6
per output element, and that element costs at least m_min = min over convs of k²·C_in/groups
MACs, so the ratio is at least m_min / (m_min + 6).
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.models import randomize_batchnorm, yolov5n
from graphprune.stats import count_flops, count_params

pytest.importorskip("torch_pruning")

ROOT = Path(__file__).resolve().parents[1]
IMGSZ, RATIO = 64, 0.5


def _flops_script():
    return importlib.import_module("benchmarks.flops")


def element_terms(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """(E, conv output elements, m_min): torch-pruning's non-MAC terms, counted independently."""
    terms = {"E": 0, "outputs": 0}
    m_min = [None]

    def conv(m, inp, out):
        terms["outputs"] += out.numel()
        terms["E"] += out.numel() if m.bias is not None else 0
        per_output = m.weight[0].numel()
        m_min[0] = per_output if m_min[0] is None else min(m_min[0], per_output)

    hooks = {nn.Conv2d: conv,
             nn.BatchNorm2d: lambda m, i, o: terms.__setitem__("E", terms["E"] + 2 * o.numel()),
             nn.MaxPool2d: lambda m, i, o: terms.__setitem__("E", terms["E"] + i[0].numel()),
             nn.Upsample: lambda m, i, o: terms.__setitem__("E", terms["E"] + o.numel())}
    handles = [m.register_forward_hook(hooks[type(m)]) for m in model.modules()
               if type(m) in hooks]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return terms["E"], terms["outputs"], m_min[0]


def test_flops_benchmark_counts_match_graphprune_and_torch_pruning(tmp_path):
    out = tmp_path / "flops.json"
    code = _flops_script().main(["--models", "yolov5n", "--imgsz", str(IMGSZ),
                                 "--ratios", str(RATIO), "--json-out", str(out),
                                 "--results", str(tmp_path)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert (tmp_path / "flops.txt").exists() and (tmp_path / "flops.json").exists()
    assert payload["convention"] == ("GFLOPs = 2 × GMACs of convolutions and matrix products "
                                     "(torch.utils.flop_counter)")
    for key in ("machine", "torch", "date", "tp_convention"):
        assert payload[key]
    rows = {r["variant"]: r for r in payload["rows"]}
    assert list(rows) == ["baseline", "pruned 50%"]

    # the same models, rebuilt: the script's numbers are graphprune's counts of them
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    base = randomize_batchnorm(yolov5n(num_classes=10), 0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(base, x, prune_ratio=RATIO)
    models = {"baseline": base, "pruned 50%": result.module.eval()}
    assert isinstance(models["pruned 50%"], torch.fx.GraphModule)
    assert rows["pruned 50%"]["leaves"] == {"model.24": "Detect"}     # head kept whole

    for variant, model in models.items():
        r = rows[variant]
        assert r["tp_error"] is None
        assert r["flops"] == count_flops(model, (x,))
        assert r["params"] == count_params(model) == r["tp_params"]
        assert r["tp_mac_layers_counted"] == "60/60" and r["tp_terms_sum_to_total"]
        # torch-pruning counts every conv MAC, the head's included: 2·(its conv MACs) == F
        assert r["flops_over_2tp_conv"] == pytest.approx(1.0, abs=1e-9)
        assert 2 * r["tp_terms"]["mac_layers"] == r["flops"]
        # ... plus exactly the element terms read from its source
        extra, outputs, m_min = element_terms(model, x)
        assert r["tp_macs"] == r["flops"] // 2 + extra
        assert 0 < extra <= 6 * outputs
        ratio = r["flops_over_2tp"]
        assert ratio == pytest.approx((r["flops"] / 2) / (r["flops"] / 2 + extra), abs=1e-9)
        assert m_min / (m_min + 6) <= ratio < 1

    assert rows["pruned 50%"]["flops"] == result.stats.flops_after
    assert rows["baseline"]["flops"] == result.stats.flops_before
    for key in ("flops", "params", "tp_macs"):
        assert rows["pruned 50%"][key] < rows["baseline"][key]
