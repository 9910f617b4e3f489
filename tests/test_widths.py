"""Runtime-aware widths (``round_to=gp.WidthTable(...)``, ``--round-to runtime``): the layer
shapes the table times, the rounding rule, the cache, and compiles with it — driven by a fake
timer whose times are a known staircase (no test asserts a measured time)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from conftest import check_compile

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.context import CompileConfig
from graphprune.pipeline import prepare_analysis
from graphprune.widths import (ConvShape, WidthTable, candidates, layer_shapes, stand_in,
                               widest_fast)


class StairTimer:
    """A fake runtime: a stand-in's time is a staircase of its output width (steps of
    ``step`` channels) times ``scale``; it records what it was asked to time."""

    def __init__(self, step: int = 16, scale: float = 1.0):
        self.step, self.scale = step, scale
        self.widths: dict[str, int] = {}
        self.timed: list[int] = []

    def prepare_onnx(self, name, model, inputs):
        graph = onnx.load_from_string(model).graph
        w1 = next(i for i in graph.initializer if i.name == "w1")
        self.widths[name] = int(w1.dims[0])

    def measure(self, names, rounds):
        out = {}
        for n in names:
            w = self.widths[n]
            self.timed.append(w)
            out[n] = [self.scale * (1 + -(-w // self.step))] * rounds
        return out

    def drop(self, name):
        self.widths.pop(name, None)


class Net(nn.Module):
    """conv-bn-act into a conv (a consumer), a depthwise conv (not timed), a residual add."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40)
        self.c2, self.b2 = nn.Conv2d(40, 40, 1, bias=False), nn.BatchNorm2d(40)
        self.dw, self.bdw = nn.Conv2d(40, 40, 3, padding=1, groups=40, bias=False), \
            nn.BatchNorm2d(40)
        self.c3, self.b3 = nn.Conv2d(40, 24, 3, stride=2, padding=1, bias=False), \
            nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, 5, 1)
        g = torch.Generator().manual_seed(0)
        for bn in (self.b1, self.b2, self.bdw, self.b3):
            bn.weight.data = torch.rand(bn.num_features, generator=g) + 0.01
            bn.running_mean.data = torch.randn(bn.num_features, generator=g) * 0.1

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        b = torch.relu(self.b2(self.c2(a)))
        d = torch.relu(self.bdw(self.dw(b)))
        return self.head(torch.relu(self.b3(self.c3(d + a))))


X = torch.rand(1, 3, 16, 16)


def test_candidates_are_kept_the_multiples_of_4_above_it_and_the_full_width_in_reach():
    assert candidates(13, 64, 8) == [13, 16, 20]
    assert candidates(13, 18, 32) == [13, 16, 18]
    assert candidates(16, 64, 8) == [16, 20, 24]
    assert candidates(64, 64, 8) == [64]


def test_the_widest_width_within_the_tolerance_of_the_fastest_is_kept():
    assert widest_fast({13: 2.0, 16: 1.5, 20: 1.52, 24: 1.6}, 0.02) == 20
    assert widest_fast({13: 2.0, 16: 1.5, 20: 1.52, 24: 1.6}, 0.0) == 16
    assert widest_fast({13: 1.0, 16: 1.5}, 0.02) == 13


def test_layer_shapes_time_plain_convolutions_with_their_consumer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ctx = prepare_analysis(Net().eval(), X, CompileConfig())
    shapes = layer_shapes(ctx.analysis)
    # the depthwise layer is not timed; the head (a convolution without a norm) is
    assert set(shapes) == {"b1", "b2", "b3", "head"}
    assert shapes["head"] == ConvShape(24, 5, (1, 1), (1, 1), (0, 0), (1, 1), 8, 8, None)
    assert shapes["b1"] == ConvShape(3, 40, (3, 3), (1, 1), (1, 1), (1, 1), 16, 16,
                                     (40, 1, 1, 0))    # read by c2
    assert shapes["b2"].consumer is None               # read by the depthwise conv first
    assert shapes["b3"] == ConvShape(40, 24, (3, 3), (2, 2), (1, 1), (1, 1), 16, 16,
                                     (5, 1, 1, 0))


def test_the_stand_in_runs_in_onnxruntime_at_the_width_asked():
    shape = ConvShape(8, 32, (3, 3), (2, 2), (1, 1), (1, 1), 12, 10, (6, 1, 1, 0))
    session = ort.InferenceSession(stand_in(shape, 20, batch=2),
                                   providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": np.zeros((2, 8, 12, 10), np.float32)})[0]
    assert y.shape == (2, 6, 6, 5)
    alone = ConvShape(8, 32, (1, 1), (1, 1), (0, 0), (1, 1), 4, 4, None)
    y = ort.InferenceSession(stand_in(alone, 20, 1), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 8, 4, 4), np.float32)})[0]
    assert y.shape == (1, 20, 4, 4)


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_a_compile_with_the_table_keeps_widths_on_the_runtimes_steps(ratio, tmp_path):
    """Times step every 16 channels: every timed layer keeps the top of the step its kept count
    falls on (capped at its width), the untimed depthwise layer a multiple of 8; the compile is
    exact (slim == zero-masked == onnxruntime)."""
    model = Net().eval()
    timer = StairTimer(16)
    table = WidthTable(timer=timer, cache=None, span=32)
    result = check_compile(model, X, tmp_path, prune_ratio=ratio, round_to=table)
    plain = check_compile(model, X, prune_ratio=ratio)
    kept = {n: int(m.sum()) for n, m in result.masks.items()}
    for name, total in (("b1", 40), ("b2", 40), ("b3", 24)):
        base = int(plain.masks[name].sum())
        assert kept[name] >= base
        assert kept[name] == min(-(-base // 16) * 16, total) or kept[name] == total
    assert kept["bdw"] % 8 == 0 or kept["bdw"] == 40
    assert result.module.get_submodule("c3").out_channels == kept["b3"]
    assert result.pinned["b3"].startswith("round_to=runtime:") or kept["b3"] == \
        int(plain.masks["b3"].sum())
    # the extra channels are the pruned ones with the largest |γ|
    for name in ("b1", "b3"):
        g = model.get_submodule(name).weight.detach().abs().numpy()
        added = result.masks[name] & ~plain.masks[name]
        still = ~result.masks[name]
        if added.any() and still.any():
            assert g[added].min() >= g[still].max()


def test_the_cache_is_reused_and_a_broken_one_is_timed_again(tmp_path, capsys):
    path = tmp_path / "cache" / "widths.json"
    first = WidthTable(timer=StairTimer(), cache=path)
    shape = ConvShape(8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 8, 8, None)
    chosen = first.choose(shape, 17)
    assert chosen == 32 and first.timed > 0
    data = json.loads(path.read_text())
    assert data["machine"]["onnxruntime"] == ort.__version__
    again = WidthTable(timer=StairTimer(), cache=path)
    assert again.choose(shape, 17) == 32 and again.timed == 0
    fresh = WidthTable(timer=StairTimer(), cache=path, refresh=True)
    assert fresh.choose(shape, 17) == 32 and fresh.timed > 0
    path.write_text("{not json")
    broken = WidthTable(timer=StairTimer(), cache=path)
    assert "unreadable width cache" in capsys.readouterr().err
    assert broken.choose(shape, 17) == 32 and broken.timed > 0
    assert json.loads(path.read_text())["version"] == 1          # rewritten whole
    # a choice made from widths already timed rewrites nothing; one that times new widths does
    def stamp_of(p):
        return p.stat().st_ino, p.stat().st_mtime_ns

    stamp, timed = stamp_of(path), broken.timed
    broken.choices.clear()                                # 17..48 timed, no choice kept
    assert broken.choose(shape, 17) == 32 and broken.timed == timed
    assert stamp_of(path) == stamp
    assert broken.choose(shape, 20) == 32 and broken.timed > timed      # 52 was not timed
    assert stamp_of(path) != stamp


def test_times_taken_later_are_scaled_by_a_width_timed_in_both_runs():
    """A layer timed once on a quiet machine and again on a busy one (every time doubled):
    the new widths are timed with one known width and scaled back, so they still compare."""
    timer = StairTimer(16, scale=1.0)
    table = WidthTable(timer=timer, cache=None, span=8)
    shape = ConvShape(8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 8, 8, None)
    table.choose(shape, 13)                         # times 13, 16, 20
    timer.scale, timer.timed = 2.0, []
    assert table.choose(shape, 30) == 32            # times 30, 32, 36 and one known width
    assert len(timer.timed) == 4 and set(timer.timed) & {13, 16, 20}
    known = table.times[shape.key(1)]
    assert known[32] == pytest.approx(known[16] + 1)  # steps of 1 (scale 1), not 2


def test_bad_table_options_are_refused():
    with pytest.raises(GraphpruneError, match="tolerance"):
        WidthTable(timer=StairTimer(), cache=None, tolerance=1.5)
    with pytest.raises(GraphpruneError, match="span"):
        WidthTable(timer=StairTimer(), cache=None, span=0)
    with pytest.raises(GraphpruneError, match="not installed"):
        WidthTable("tensorrt", cache=None)
    with pytest.raises(gp.MaskError, match="round_to"):
        gp.compile(Net().eval(), X, prune_ratio=0.5, round_to="runtime")


def test_compile_round_to_runtime_end_to_end(tmp_path, monkeypatch, capsys):
    """The real onnxruntime timer on a small built-in model (no assertion on the times): a
    verified model whose report names the rounding, and a cache a second compile reuses."""
    monkeypatch.setenv("GRAPHPRUNE_CACHE_DIR", str(tmp_path / "cache"))
    args = ["compile", "yolov5n", "--imgsz", "64", "--prune-ratio", "0.5", "--round-to",
            "runtime", "--no-pt2", "--no-onnx"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["request"]["round_to"] == "runtime:ort-cpu"
    (cache,) = (tmp_path / "cache").glob("widths-ort-cpu-2t-*.json")
    stamp = cache.stat().st_mtime_ns
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    again = json.loads((tmp_path / "b" / "report.json").read_text())
    # the same widths, from the cache: nothing new was chosen, so the file was not rewritten
    assert again["compile"]["layers"] == report["compile"]["layers"]
    assert again["params_after"] == report["params_after"]
    assert cache.stat().st_mtime_ns == stamp
    # a target-guided compile rounds with the table as well
    assert main(["compile", "yolov5n", "--imgsz", "64", "--flops-target", "0.4", "--round-to",
                 "runtime", "--no-pt2", "--no-onnx", "--out", str(tmp_path / "f")]) == 0
    target = json.loads((tmp_path / "f" / "report.json").read_text())
    assert target["request"]["round_to"] == "runtime:ort-cpu"
    assert target["flops_after"] <= 0.6 * target["flops_before"] + 1


def test_round_to_defaults_to_8_and_bad_values_are_refused(tmp_path, capsys):
    assert main(["compile", "yolov5n", "--imgsz", "64", "--prune-ratio", "0.5", "--no-pt2",
                 "--no-onnx", "--out", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["request"]["round_to"] == 8
    for bad in ("0", "fast"):
        with pytest.raises(SystemExit) as caught:
            main(["compile", "yolov5n", "--round-to", bad, "--out", str(tmp_path / "b")])
        assert caught.value.code == 2 and "'runtime'" in capsys.readouterr().err
    code = main(["compile", "yolov5n", "--imgsz", "64", "--prune-ratio", "0.5", "--round-to",
                 "runtime", "--latency-rounds", "5", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--latency-rounds" in err
    code = main(["compile", "yolov5n", "--imgsz", "64", "--prune-ratio", "0.5", "--round-to",
                 "runtime", "--runtime", "openvino", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "pip install" in err
    assert not any((tmp_path / n).exists() for n in "bcd")
