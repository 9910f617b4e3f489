"""benchmarks/zoo.py: random masks on a zoo of architectures, slim == zero-masked for each.

Only models the core environment can build (no torchvision or ultralytics); the full zoo's
results live in benchmarks/results/zoo.{json,md}.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from graphprune.models import tiny_resnet

ROOT = Path(__file__).resolve().parents[1]


def _zoo():
    return importlib.import_module("benchmarks.zoo")


def _rows(path: Path) -> dict:
    return {r["model"]: r for r in json.loads(path.read_text())["rows"]}


def test_zoo_compiles_and_verifies_builtin_models(tmp_path):
    out = tmp_path / "zoo.json"
    code = _zoo().main(["--models", "yolov5n,tiny_resnet", "--quick", "--no-onnx",
                        "--json-out", str(out), "--results", str(tmp_path / "results")])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["torch"] == torch.__version__ and payload["date"] and payload["machine"]
    rows = _rows(out)
    assert set(rows) == {"yolov5n", "tiny_resnet"}
    for name, row in rows.items():
        assert row["status"] == "pass", (name, row["reason"])
        assert row["compiled"] is True and row["verified"] is True, name
        assert row["onnx"] is None                       # --no-onnx
        assert row["channels_pruned"] >= 0.15, name
        assert row["channels_after"] < row["channels_before"]
        assert row["params_after"] < row["params_before"]
        assert row["max_abs_diff"] <= 1e-3 and row["reason"] is None
    assert rows["yolov5n"]["imgsz"] == 64
    assert not (tmp_path / "results").exists()           # --quick writes no results files


def test_zoo_reports_a_model_without_producers_and_goes_on(tmp_path):
    zoo = _zoo()

    def conv_relu_conv():       # no BatchNorm: its first convolution's outputs are masked
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3))

    def pooling():              # no layer whose channels a mask could name
        return nn.Sequential(nn.AvgPool2d(2), nn.ReLU())

    def conv_bn():                                       # its only BatchNorm is an output
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))

    class IteratesItsInput(nn.Module):               # like torchvision's detectors' forward
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, images):
            return [self.head(self.bn(self.conv(image[None]))) for image in images]

    entries = [zoo.ZooEntry("conv_relu_conv", "test", conv_relu_conv, imgsz=16),
               zoo.ZooEntry("pooling", "test", pooling, imgsz=16),
               zoo.ZooEntry("conv_bn", "test", conv_bn, imgsz=16),
               zoo.ZooEntry("broken", "test", lambda: 1 / 0),
               zoo.ZooEntry("iterates_input", "test", IteratesItsInput, imgsz=16)]
    out = tmp_path / "zoo.json"
    code = zoo.main(["--models",
                     "conv_relu_conv,pooling,conv_bn,broken,iterates_input,tiny_resnet",
                     "--no-onnx",
                     "--json-out", str(out), "--results", str(tmp_path)], extra=entries)
    assert code == 0
    rows = _rows(out)
    plain = rows["pooling"]
    assert plain["status"] == "fail" and plain["source"] == "test"
    assert "nothing to prune" in plain["reason"] and plain["batchnorms"] == 0
    no_bn = rows["conv_relu_conv"]
    assert no_bn["status"] == "pass" and no_bn["batchnorms"] == 0 and no_bn["verified"]
    assert no_bn["channels_before"] == 8 + 4 and no_bn["channels_after"] < 8 + 4
    assert rows["conv_bn"]["status"] == "pinned everything"
    assert rows["conv_bn"]["compiled"] and rows["conv_bn"]["verified"]
    assert rows["conv_bn"]["channels_pruned"] == 0 and "model output" in rows["conv_bn"]["reason"]
    assert rows["broken"]["status"] == "fail"
    assert rows["broken"]["reason"].startswith("build: ZeroDivisionError")
    root = rows["iterates_input"]                        # the torchvision detectors' failure
    assert root["status"] == "fail" and root["compiled"] is False
    assert "TraceFailure" in root["reason"] and "IteratesItsInput itself" in root["reason"]
    assert rows["tiny_resnet"]["status"] == "pass"       # the failures did not stop the run
    md = (tmp_path / "zoo.md").read_text()               # not --quick: the results files
    assert "| pooling | test |" in md and "nothing to prune" in md
    assert json.loads((tmp_path / "zoo.json").read_text())["rows"] == \
        json.loads(out.read_text())["rows"]


def test_zoo_independent_check_flags_a_mismatch():
    zoo = _zoo()
    a = torch.ones(2, 3)
    assert zoo.compare((a, [a]), (a.clone(), [a + 1e-6])) is None
    assert "max |diff|" in zoo.compare((a, [a]), (a, [a + 1e-2]))
    assert "shape" in zoo.compare((a,), (a.t(),))
    assert "output tensors" in zoo.compare((a,), (a, a))


def test_torch_pruning_runs_on_the_same_model_by_its_own_check(monkeypatch):
    import time

    zoo = _zoo()
    entry = zoo.default_entries()["tiny_resnet"]
    row = zoo.evaluate_tp(entry, 32)
    assert row["tp_status"] == "pass" and row["tp_pruned"] >= zoo.MIN_PRUNED
    assert 0 < row["tp_params_ratio"] < 1 and row["tp_reason"] is None
    # a torch-pruning run that does not finish is stopped and reported, not waited for
    monkeypatch.setattr(zoo, "TP_LIMIT_S", 0.5)
    slow = zoo.ZooEntry("slow", "test", lambda: time.sleep(30) or tiny_resnet())
    row = zoo.evaluate_tp(slow, 32)
    assert row["tp_status"] == "fail" and "did not finish within 0.5 s" in row["tp_reason"]
    assert row["tp_seconds"] < 5
