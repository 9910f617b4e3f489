"""Prune to a measured speed (``--latency-target``): the search logic with fake timers (no
test asserts a time), the runtime refusals, and the command line end to end."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_lfa import _two_level

import graphprune as gp
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.latency import check_runtime, prune_to_latency
from graphprune.search import MaskPlanner
from graphprune.stats import count_flops

EXAMPLE = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))


class FlopsTimer:
    """A stand-in runtime whose latency is ``floor + FLOPs / the baseline's FLOPs`` (× 10 ms),
    plus ``final_bias`` on re-measurements (rounds ≥ 20) of pruned models; it logs every
    measurement."""

    def __init__(self, floor: float = 0.0, final_bias: float = 0.0, bias_times: int = 1):
        self.floor, self.final_bias, self.bias_times = floor, final_bias, bias_times
        self.flops: dict[str, int] = {}
        self.calls: list[tuple[tuple[str, ...], int]] = []
        self.dropped: list[str] = []

    def prepare(self, name, module, example):
        self.flops[name] = count_flops(module, example)

    def measure(self, names, rounds):
        self.calls.append((tuple(names), rounds))
        base = self.flops["baseline"]
        out = {}
        for n in names:
            ms = 10 * (self.floor + (1 - self.floor) * self.flops[n] / base)
            if n != "baseline" and rounds >= 20 and self.bias_times > 0:
                ms *= 1 + self.final_bias
            out[n] = [ms] * rounds
        if rounds >= 20 and self.final_bias:
            self.bias_times -= 1
        return out

    def drop(self, name):
        self.dropped.append(name)
        self.flops.pop(name)


def _search(model, target, timer, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prune_to_latency(model, EXAMPLE, target, timer=timer, resolution=1 / 32,
                                rounds=3, final_rounds=20, **kwargs)


@pytest.mark.parametrize("target", [0.2, 0.45, 0.7])
def test_the_fewest_channels_that_reach_the_speed_are_found(target):
    model, _ = _two_level()
    timer = FlopsTimer()
    result = _search(model, target, timer)
    goal = 1 - target
    planner = MaskPlanner(model, EXAMPLE)
    before = planner.flops_before
    # with latency ∝ FLOPs the answer is the smallest prune whose FLOPs ratio reaches the goal
    fewest = min(k for k in range(planner.size + 1) if planner.plan(k).flops / before <= goal)
    assert result.search.plan.count == fewest and result.search.feasible
    assert result.chosen.final and result.chosen.ratio <= goal
    assert result.chosen.rounds == 20 and result.chosen.count == fewest
    # each probe was timed interleaved with the baseline, then its session released
    assert all(names == ("baseline", f"prune-{k}") for (names, _), k in
               zip(timer.calls, [p.count for p in result.probes]))
    assert timer.dropped == [f"prune-{p.count}" for p in result.probes]
    # a bisection: about log2(32) probes, not a scan
    assert len(result.probes) <= 8
    # the compiled model is the searched plan, verified
    for name, mask in result.search.plan.masks.items():
        assert np.array_equal(result.compiled.masks[name].numpy(), mask)
    assert result.compiled.stats.flops_after == result.search.plan.flops
    info = result.latency_dict()
    assert info["latency_ratio"] == pytest.approx(result.chosen.ratio)
    assert len(info["latency_probes"]) == len(result.probes)


@pytest.mark.parametrize("times", [1, 2])
def test_a_remeasurement_above_the_goal_searches_again_above_it(times):
    """The first re-measurement (and with ``times`` = 2 the long-round probes after it) runs
    8 % slow: the part above is searched again with the long rounds, then stepped up."""
    model, _ = _two_level()
    plain = _search(model, 0.45, FlopsTimer())
    timer = FlopsTimer(final_bias=0.08, bias_times=times)
    noisy = _search(model, 0.45, timer)
    assert noisy.search.plan.count > plain.search.plan.count
    assert any("searched again above" in n for n in noisy.search.notes)
    assert noisy.chosen.ratio <= 0.55 and noisy.search.feasible and noisy.chosen.final
    # the second search used the long rounds only, above the first choice
    first = next(p for p in noisy.probes if p.final)
    later = noisy.probes[noisy.probes.index(first) + 1:]
    assert later and all(p.rounds == 20 and p.count > first.count for p in later)


def test_an_unreachable_speed_is_said_plainly():
    model, _ = _two_level()
    result = _search(model, 0.5, FlopsTimer(floor=0.8))     # never below 0.8 × the baseline
    assert not result.search.feasible
    assert result.search.plan.count == result.search.candidates      # the largest prune
    assert "short of 0.50" in result.search.notes[0]


def test_with_an_lfa_target_only_prunes_within_its_bound_are_searched():
    model, calib = _two_level()
    kwargs = dict(calibration=calib, lfa_target=0.02, mode="features",
                  layers=["act_a", "act_b"])
    bounded = _search(model, 0.2, FlopsTimer(), **kwargs)
    assert bounded.lfa_bound is not None and 0 < bounded.lfa_bound < 32
    assert bounded.search.plan.count <= bounded.lfa_bound
    assert bounded.lfa_slim.plus <= 0.02 + 1e-6
    # a speed the bound does not allow: the largest prune within it, said so
    far = _search(model, 0.9, FlopsTimer(), **kwargs)
    assert not far.search.feasible and far.search.plan.count == far.lfa_bound
    assert "within the LFA bound" in far.search.notes[0]


@pytest.mark.parametrize("bad, message", [(0.0, "latency target"), (1.0, "latency target")])
def test_bad_targets_are_refused(bad, message):
    model, _ = _two_level()
    with pytest.raises(GraphpruneError, match=message):
        _search(model, bad, FlopsTimer())


def test_a_runtime_that_is_not_installed_is_refused_saying_how_to_install_it():
    assert check_runtime("ort-cpu") == "CPUExecutionProvider"
    for runtime in ("tensorrt", "openvino"):
        with pytest.raises(GraphpruneError, match="not installed") as caught:
            check_runtime(runtime)
        assert "pip install" in caught.value.hint
    with pytest.raises(GraphpruneError, match="unknown runtime"):
        check_runtime("tflite")


def test_compile_latency_target_end_to_end(tmp_path, capsys):
    """The real onnxruntime timer on a small built-in model: a verified model, the report's
    latency figures and every probe, and the plot (no assertion on the times themselves)."""
    out = tmp_path / "out"
    assert main(["compile", "yolov5n", "--imgsz", "64", "--latency-target", "0.3",
                 "--latency-rounds", "2", "--no-pt2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["goal"] == "latency" and report["latency_target"] == 0.3
    assert report["runtime"] == "ort-cpu" and report["latency_rounds"] == 20
    finals = [p for p in report["latency_probes"] if p["final"]]
    assert finals and finals[-1]["latency_ratio"] == pytest.approx(report["latency_ratio"])
    assert report["request"]["latency_target"] == 0.3
    assert (out / "latency_vs_prune.png").exists() and (out / "slim.onnx").exists()
    assert "latency on ort-cpu" in capsys.readouterr().out
    assert report["probes"] == []               # no LFA search without --lfa-target
    md = (out / "report.md").read_text()
    assert "Goal: remove at least 30" in md and "## Latency probes" in md
    assert md.count("(re-measured)") == len(finals)


def test_compile_refuses_latency_with_another_goal_and_a_missing_runtime(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["compile", "yolov5n", "--latency-target", "0.3", "--flops-target", "0.5",
              "--out", str(tmp_path / "a")])
    assert caught.value.code == 2
    assert "combines with --lfa-target only" in capsys.readouterr().err
    code = main(["compile", "yolov5n", "--imgsz", "64", "--latency-target", "0.3",
                 "--runtime", "tensorrt", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "pip install" in err
    assert not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as caught:
        main(["compile", "yolov5n", "--out", str(tmp_path / "c")])
    assert caught.value.code == 2 and "--latency-target" in capsys.readouterr().err


def test_a_provider_that_does_not_load_is_refused_not_timed_on_the_cpu(monkeypatch, tmp_path):
    """onnxruntime lists a provider whose libraries may still fail to load, and then falls
    back to the CPU: the timer refuses instead of labelling CPU times as the provider's."""
    from graphprune import latency, timing

    monkeypatch.setattr(timing.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model, _ = _two_level()
    with latency.OrtTimer("ort-cuda") as timer, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(GraphpruneError, match="did not load") as caught:
            timer.prepare("baseline", model, (EXAMPLE,))
    assert "onnxruntime-gpu" in caught.value.hint
    assert not timer.dir.exists()


def test_timing_options_without_a_latency_target_are_refused(tmp_path, capsys):
    code = main(["compile", "yolov5n", "--imgsz", "64", "--flops-target", "0.5",
                 "--latency-rounds", "5", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "--latency-rounds" in err
    assert not (tmp_path / "a").exists()
