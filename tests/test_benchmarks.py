"""The benchmark scripts still run (tiny settings; their figures live in benchmarks/results)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_benchmark_reports_every_ratio(tmp_path):
    out = tmp_path / "latency.json"
    code = _script("latency").main(["--model", "yolov5n", "--imgsz", "64", "--rounds", "2",
                                    "--targets", "0.4,0.6", "--round-to", "8", "--threads", "1",
                                    "--json-out", str(out), "--results", str(tmp_path)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["flops_target"], r["round_to"]) for r in rows] == \
        [(0.4, 1), (0.6, 1), (0.4, 8), (0.6, 8)]
    for r in rows:
        assert r["flops_ratio"] <= 1 - r["flops_target"] + 1e-9
        assert r["ideal_speedup"] == pytest.approx(1 / r["flops_ratio"])
        assert r["efficiency"] == pytest.approx(r["measured_speedup"] / r["ideal_speedup"])
        for key in ("prune_ratio", "measured_speedup", "dense_speedup", "slim_vs_dense"):
            assert r[key] > 0
    assert (tmp_path / "latency.txt").exists()


def test_residual_benchmark_compares_reconstruct_couple_and_torch_pruning(tmp_path):
    out = tmp_path / "residual.json"
    code = _script("residual").main(["--random", "yolov5n", "--imgsz", "64",
                                     "--latency-imgsz", "64", "--rounds", "2",
                                     "--json-out", str(out), "--no-write"])
    assert code == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"reconstruct", "couple", "auto", "torch-pruning bnscale"} <= set(rows)
    # the reconstruction never keeps more than the coupled masks; auto lies between them
    assert rows["reconstruct"]["params"] <= rows["auto"]["params"] <= rows["couple"]["params"]
    assert rows["reconstruct"]["flops"] <= rows["auto"]["flops"] <= rows["couple"]["flops"]
    for r in rows.values():
        assert 0 < r["params_ratio"] < 1 and r["ms"] > 0


def test_node_cost_benchmark_prices_a_node_in_flops(tmp_path):
    code = _script("node_cost").main(["--quick", "--threads", "1", "--results", str(tmp_path)])
    assert code == 0
    rows = json.loads((tmp_path / "node_cost.json").read_text())["rows"]
    assert len(rows) == 1
    r = rows[0]
    assert r["extra_nodes"] > 0 and r["plain_ms"] > 0 and r["gflops_per_s"] > 0
    assert r["node_mflops"] == pytest.approx(r["node_us"] * 1e-6 * r["gflops_per_s"] * 1e3)
