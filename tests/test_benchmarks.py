"""The benchmark scripts still run (tiny settings; their figures live in benchmarks/results)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """benchmarks/NAME.py as ``python -m benchmarks.NAME`` imports it."""
    return importlib.import_module(f"benchmarks.{name}")


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
    assert (tmp_path / "latency_64.txt").exists()       # named by its size off 640 px


def test_latency_target_benchmark_times_every_variant_together(tmp_path):
    out = tmp_path / "latency_target.json"
    assert _script("latency_target").main(["--quick", "--json-out", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["target"] == 0.3 and payload["skipped"] == []
    (row,) = payload["rows"]
    assert set(row["variants"]) == {"round_to_1", "round_to_8", "dense"}
    for key, v in row["variants"].items():
        assert v["ms"] > 0 and v["ratio"] > 0 and 0 < v["flops"] < row["flops"]
        if key != "dense":
            # a search that says it reached the goal re-measured its choice at or below it
            assert not v["feasible"] or v["search_ratio"] <= 0.7
    # the dense twin is yolov5n narrowed (its channels come in steps of 8, so its FLOPs only
    # approach the pruned model's; the table shows both)
    assert 0 < row["variants"]["dense"]["width"] < 0.25


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


def test_ablation_trajectory_compiles_every_kept_checkpoint(tmp_path):
    """benchmarks/ablation.py --save-period: each checkpoint of a sparse run is compiled at the
    LFA target, and reconstruct vs couple is measured at the threshold chosen for it."""
    import torch

    import graphprune as gp
    from graphprune import data as gpdata
    from graphprune.checkpoint import read_checkpoint
    from graphprune.detect.train import TrainConfig, train
    from graphprune.export import save_checkpoint

    ablation = _script("ablation")
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", n_train=16, n_val=8, seed=3)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), model="yolov5n", imgsz=96, epochs=4, batch=8, workers=0,
                      device="cpu", out=str(run), nominal_batch=8, warmup_epochs=1, seed=7,
                      sparsity="l1rr", theta=1e-2, phase_epochs=1, save_period=1))
    # four epochs do not sparsify; make the last checkpoint look sparse-trained: a random half
    # of every layer's γ near zero
    recipe, _ = read_checkpoint(run / "epoch4.pt")
    model, rng = gp.load(run / "epoch4.pt"), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                small = torch.rand(m.num_features, generator=rng) < 0.5
                m.weight[small] = 1e-4 * torch.rand(int(small.sum()), generator=rng)
    save_checkpoint(model, recipe, run / "epoch4.pt")
    config = gpdata.load_data_config(data)
    calib = gp.CalibrationSet.from_dataset(
        gpdata.DetectionDataset(config.val, config.names, 96), 8)
    # a model trained this briefly loses almost nothing of its LFA whatever goes (1 % would
    # allow every channel), so ask for 0.01 %
    rows = ablation.trajectory(run, 2, 96, 1e-4, calib, "cpu")
    assert [r["epoch"] for r in rows] == [2, 4]
    for row in rows:
        gammas = torch.cat([m.weight.detach().abs() for m in gp.load(
            run / f"epoch{row['epoch']}.pt").modules() if isinstance(m, torch.nn.BatchNorm2d)])
        assert row["rho"] == pytest.approx(float((gammas < 0.01).float().mean()))
    sparse = rows[1]
    assert sparse["pruned"] and sparse["threshold"] is not None, sparse
    assert sparse["lfa_plus"] <= 1e-4
    # the search compiles with reconstruction: the same parameters as the pair's own compile
    assert sparse["params_pruned"] == pytest.approx(sparse["reconstruct_params_pruned"])
    assert sparse["reconstruct_params_pruned"] > sparse["couple_params_pruned"] > 0


def test_residual_headroom_masks_only_residual_members(tmp_path):
    """benchmarks/residual_headroom.py: with disjoint halves the union of every residual group
    is whole, so couple prunes nothing while reconstruct halves each producer."""
    import torch

    from graphprune.models import build

    headroom = _script("residual_headroom")
    model = build("yolov5n", num_classes=3).eval()
    example = torch.rand(1, 3, 64, 64)
    masks = headroom.residual_masks(model, example, 0.5, disjoint=True)
    # the backbone's four C3 blocks: their cv1 and every bottleneck's cv2 (1 + 1, 2, 3, 1)
    assert sorted(masks) == sorted(
        [f"model.{i}.cv1.bn" for i in (2, 4, 6, 8)]
        + [f"model.{i}.m.{j}.cv2.bn" for i, n in ((2, 1), (4, 2), (6, 3), (8, 1))
           for j in range(n)])
    assert all(m.mean() == 0.5 for m in masks.values())
    disjoint = headroom.headroom(model, example, 0.5, disjoint=True)
    assert disjoint["couple_params_pruned"] == 0
    assert disjoint["reconstruct_params_pruned"] > 0.05
    random = headroom.headroom(model, example, 0.5, disjoint=False)
    assert random["reconstruct_params_pruned"] > random["couple_params_pruned"] > 0


def test_residual_headroom_of_a_trained_model_counts_each_groups_union():
    """--weights: the model's own masks at δ; per residual group the members' kept channels,
    their union (what couple keeps) and intersection, and reconstruct ≥ couple."""
    import torch

    from graphprune.models import build, randomize_batchnorm

    headroom = _script("residual_headroom")
    model = randomize_batchnorm(build("yolov5n", num_classes=3), 2).eval()
    view = headroom.trained_view(model, torch.rand(1, 3, 64, 64), 0.1)
    modules = dict(model.named_modules())
    for g in view["groups"]:
        kept = [int((modules[n].weight.detach().abs() >= 0.1).sum()) for n in g["members"]]
        assert g["kept"] == kept                     # YOLOv5: every member a whole layer
        assert g["intersection"] <= min(g["kept"]) <= max(g["kept"]) <= g["union"] \
            <= g["channels"]
    for key in ("all_layers", "residual_members_only"):
        assert view[key]["reconstruct_params_pruned"] >= view[key]["couple_params_pruned"]
    assert view["residual_members_only"]["difference"] > 0


def test_tradeoff_benchmark_measures_every_method_and_yardstick(tmp_path, monkeypatch):
    """benchmarks/tradeoff.py --quick: every method cut at every operating point (FLOPs goals
    met), torch-pruning's cuts realised exactly, the dense family and the same-budget
    baseline measured, the verdicts computed."""
    out = tmp_path / "tradeoff.json"
    tradeoff = _script("tradeoff")
    assert tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--flops-targets",
                          "0.5,0.7", "--json-out", str(out)]) == 0
    payload = json.loads(out.read_text())
    seed = payload["per_seed"][0]
    cuts = {(p["method"], tuple(p["op"])) for p in seed["points"]}
    for method in ("ns", "l1rr", "progressive", "progressive-scratch"):
        assert {(method, ("lfa", 0.01)), (method, ("lfa2", 0.01)), (method, ("flops", 0.5)),
                (method, ("flops", 0.7))} <= cuts
    assert {("tp-groupnorm", ("flops", 0.5)), ("tp-bnscale", ("flops", 0.5))} <= cuts
    for p in seed["points"]:
        if "failed" in p:
            continue
        assert p["flops"] < seed["dense"][0]["flops"] and p["latency_ms"] > 0
        if p["op"][0] == "flops":
            assert p["flops_removed"] >= p["op"][1] - 1e-9
        for key in ("map50", "map50_ft", "map", "map_ft"):
            assert 0 <= p[key] <= 1
    tp = [p for p in seed["points"] if p["method"].startswith("tp-") and "failed" not in p]
    assert tp
    for p in tp:      # the compiled model is torch-pruning's own pruned model
        cut = json.loads((Path(p["path"]).parent / "done.json").read_text())
        assert cut["tp_max_diff"] <= 1e-3
    widths = [d["width"] for d in seed["dense"]]
    flops = [d["flops"] for d in seed["dense"]]
    assert widths == sorted(widths, reverse=True) and flops == sorted(flops, reverse=True)
    assert seed["reference"]["flops"] == seed["dense"][0]["flops"]
    progressive = json.loads((tmp_path / "work" / "seed0" / "sparse-progressive" /
                              "done.json").read_text())
    assert len(progressive["rho_by_epoch"]) == payload["preset"]["sparse_epochs"]
    assert set(payload["verdicts"]) == {"ns", "l1rr", "progressive", "progressive-scratch"}
    assert set(payload["verdicts"]["progressive"]) >= {"within_1pt_at_70pct_flops_map50_ft",
                                                       "beats_dense_map50_ft",
                                                       "beats_ns_map50_ft"}
    # a second run reuses every finished run
    assert tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--flops-targets",
                          "0.5,0.7", "--json-out", str(out)]) == 0
    again = json.loads(out.read_text())["summary"]["points"]
    assert [(p["method"], p["op"], p.get("map50_ft"), p.get("flops")) for p in again] == \
        [(p["method"], p["op"], p.get("map50_ft"), p.get("flops"))
         for p in payload["summary"]["points"]]
    # --widths chooses the dense family (a subset of the finished runs here: nothing retrains)
    assert tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--flops-targets",
                          "0.5,0.7", "--widths", "0.25", "--json-out", str(out)]) == 0
    assert [d["width"] for d in json.loads(out.read_text())["per_seed"][0]["dense"]] == [0.25]
    # --finished-only leaves out what has not finished instead of training it
    work = tmp_path / "work" / "seed0"
    (work / "sparse-l1rr" / "done.json").unlink()
    (work / "dense-w0.125" / "done.json").unlink()
    assert tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--flops-targets",
                          "0.5,0.7", "--finished-only", "--json-out", str(out)]) == 0
    partial = json.loads(out.read_text())
    assert "l1rr" not in {p["method"] for p in partial["per_seed"][0]["points"]}
    assert [d["width"] for d in partial["per_seed"][0]["dense"]] == [0.25]
    assert not (work / "sparse-l1rr" / "done.json").exists()
    assert not (work / "dense-w0.125" / "done.json").exists()
    # a cut that fails is in the table from its first run on, with its reason
    def refuse(*args, **kwargs):
        raise tradeoff.gp.GraphpruneError("no such cut")

    monkeypatch.setattr(tradeoff, "gp_point", refuse)
    assert tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--methods", "ns",
                          "--lfa-targets", "", "--flops-targets", "0.6", "--widths", "0.25",
                          "--json-out", str(out)]) == 0
    failed = json.loads(out.read_text())["per_seed"][0]["points"]
    assert failed == [{"method": "ns", "op": ["flops", 0.6], "failed": "no such cut"}]
    partial.setdefault("plot", "tradeoff.png")
    rows = [line for line in tradeoff.markdown(partial).splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| seeds |")
    assert all(r.endswith(("| 1 |", "| 0 |")) for r in rows[2:])


def test_tradeoff_parts_run_side_by_side_then_tabulate(tmp_path, monkeypatch):
    """benchmarks/tradeoff_parallel.py: every part a process of its own, at most --jobs at once,
    what starts from the baseline only after the baseline finished; the tables are made from the
    finished runs, the same rows a one-process run makes.  Relative paths name the same files
    in the parts and the tables as in the caller's folder."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "tradeoff.json"
    work = tmp_path / "work"
    code = _script("tradeoff_parallel").main(
        ["--jobs", "2", "--", "--quick", "--work", "work", "--methods",
         "ns,progressive-scratch", "--lfa-criteria", "plus", "--flops-targets", "0.5",
         "--widths", "0.25", "--json-out", "tradeoff.json"])
    assert code == 0
    assert (work / "seed0" / "baseline" / "done.json").exists()
    parts = {p["part"]: p for p in json.loads((work / "parts.json").read_text())["parts"]}
    assert set(parts) == {"baseline", "none", "ns", "progressive-scratch", "dense@0.25"}
    assert all(p["state"] == "finished" for p in parts.values())
    for later in ("none", "ns"):        # they start from the finished baseline
        assert parts[later]["start_s"] >= parts["baseline"]["end_s"]
    spans = sorted((p["start_s"], p["end_s"]) for p in parts.values())
    for t, _ in spans:                  # never more than --jobs at once
        assert sum(a <= t < b for a, b in spans) <= 2
    seed = json.loads(out.read_text())["per_seed"][0]
    assert {(p["method"], tuple(p["op"])) for p in seed["points"]} == {
        (m, op) for m in ("ns", "progressive-scratch") for op in (("lfa", 0.01), ("flops", 0.5))}
    assert [d["width"] for d in seed["dense"]] == [0.25]
    assert seed["reference"]["map50"] is not None
    assert "epoch" in Path(parts["ns"]["log"]).read_text()     # each part logs its own run


def test_tradeoff_parallel_stops_parts_at_the_deadline(tmp_path):
    """At the deadline the running parts are stopped (their process groups gone), the waiting
    ones skipped; with no finished baseline there is nothing to tabulate (exit 1)."""
    import os

    work = tmp_path / "work"
    code = _script("tradeoff_parallel").main(
        ["--jobs", "2", "--deadline", "0.02", "--", "--quick", "--work", str(work),
         "--methods", "ns", "--widths", "0.25"])
    assert code == 1
    parts = {p["part"]: p for p in json.loads((work / "parts.json").read_text())["parts"]}
    assert parts["baseline"]["state"] == "stopped"
    assert parts["ns"]["state"] == "skipped" and parts["ns"]["start_s"] is None
    assert not (work / "seed0" / "baseline" / "done.json").exists()
    # no process of a stopped part is left
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert str(work).encode() not in cmd


def test_tradeoff_part_arguments_are_checked(tmp_path, capsys):
    tradeoff = _script("tradeoff")
    for bad, says in ((["--part", "l1rr", "--methods", "ns"], "one of --methods"),
                      (["--part", "dense@3"], "in (0, 2]"),
                      (["--part", "baseline", "--finished-only"], "give one of them"),
                      (["--workers", "-1"], "--workers"),
                      (["--name", "../elsewhere"], "without folders"),
                      (["--name", ""], "without folders")):
        with pytest.raises(SystemExit):
            tradeoff.parse(["--quick", *bad])
        assert says in capsys.readouterr().err
    # --name changes the results' stem, not where the runs (and their baselines) are kept
    args, _, stem, _, _ = tradeoff.parse(["--data", "nwpu", "--name", "tradeoff_nwpu_t50"])
    plain, _, plain_stem, _, _ = tradeoff.parse(["--data", "nwpu"])
    assert (stem, plain_stem) == ("tradeoff_nwpu_t50", "tradeoff_nwpu")
    assert args.work == plain.work
    # a part that starts from the baseline refuses to run before it has finished
    with pytest.raises(SystemExit, match="run --part baseline first"):
        tradeoff.main(["--quick", "--work", str(tmp_path / "work"), "--methods", "ns",
                       "--part", "ns"])
    with pytest.raises(SystemExit):
        _script("tradeoff_parallel").main(["--", "--quick", "--part", "ns"])
    assert "this script's to give" in capsys.readouterr().err


def test_tradeoff_front_comparison():
    """A point beats a front when its mAP exceeds the front's best at ≤ its FLOPs (linear
    between the front's points; below the front's smallest model, that model's mAP)."""
    front = _script("tradeoff").front_value
    dense = [(1.0, 0.5), (2.0, 0.7), (4.0, 0.8)]
    assert front(dense, 3.0) == pytest.approx(0.75)
    assert front(dense, 0.5) == 0.5 and front(dense, 8.0) == 0.8
    assert front([(1.0, 0.9), (2.0, 0.6)], 2.0) == 0.9       # the envelope, not the last point
    assert front([], 1.0) == float("-inf")


def test_tradeoff_verdicts_without_a_yardstick_say_not_measured():
    """A table run without the dense family or NS (--widths none, --methods without ns) claims
    no win over them: an empty front would be beaten by every point."""
    tradeoff = _script("tradeoff")
    row = dict(method="progressive-scratch@0.5", op=["flops", 0.5], seeds=1, flops=5e8,
               flops_spread=0.0, params=5e5, params_spread=0.0, flops_removed=0.5,
               flops_removed_spread=0.0, map50=0.30, map50_spread=0.0, map=0.1, map_spread=0.0,
               map50_ft=0.31, map50_ft_spread=0.0, map_ft=0.1, map_ft_spread=0.0,
               latency_ms=1.0, latency_ms_spread=0.0)
    ref = dict(flops=1e9, flops_spread=0.0, params=1e6, params_spread=0.0, map50=0.305,
               map50_spread=0.0, map=0.1, map_spread=0.0, map50_ft=0.40, map50_ft_spread=0.0,
               map_ft=0.1, map_ft_spread=0.0)
    summary = {"points": [row], "dense": [], "reference": ref}
    v = tradeoff.verdicts(summary, "progressive-scratch@0.5")
    assert v["not_measured"] == ["dense", "ns"]
    assert v["beats_dense_map50"] == v["beats_ns_map50_ft"] == []
    assert v["within_1pt_at_50pct_flops_map50"] == [["flops", 0.5]]       # 0.30 ≥ 0.305 − 0.01
    assert v["within_1pt_at_50pct_flops_map50_ft"] == []                  # 0.31 < 0.40 − 0.01
    payload = dict(data="nwpu", preset=dict(model="yolov5n", imgsz=320, base_epochs=60,
                                             sparse_epochs=40, finetune_epochs=7),
                   total_epochs=107, seeds=[0], machine="m", torch="t", date="d",
                   train_minutes=1.0, summary=summary, verdicts={"p": v}, plot="p.png")
    text = tradeoff.markdown(payload)
    assert "higher mAP50 than the dense family at ≤ equal FLOPs: not measured in this run" in text
    assert "than NS (pruned only): not measured in this run" in text
    # with a dense family that the point does beat, the verdict names it
    summary["dense"] = [dict(width=0.125, flops=6e8, map50=0.2)]
    v = tradeoff.verdicts(summary, "progressive-scratch@0.5")
    assert v["not_measured"] == ["ns"] and v["beats_dense_map50"] == [["flops", 0.5]]
    # every question verdicts() answers has its line in the table, and no line is left over
    assert {k for k, _, _ in tradeoff.VERDICT_LABELS} == set(v) - {"method", "not_measured"}


def test_tradeoff_does_not_ask_ns_whether_it_beats_ns():
    """NS's verdicts hold no question of NS against itself, and a table keeps none, also from a
    results file written when it was asked."""
    tradeoff = _script("tradeoff")
    row = dict(method="ns", op=["flops", 0.5], seeds=1, flops=5e8, flops_spread=0.0,
               params=5e5, params_spread=0.0, flops_removed=0.5, flops_removed_spread=0.0,
               map50=0.30, map50_spread=0.0, map=0.1, map_spread=0.0, map50_ft=0.31,
               map50_ft_spread=0.0, map_ft=0.1, map_ft_spread=0.0, latency_ms=1.0,
               latency_ms_spread=0.0)
    ours = {**row, "method": "progressive", "map50": 0.35, "map50_ft": 0.36}
    dense = dict(width=0.125, flops=4e8, params=4e5, map50=0.2, map50_spread=0.0, map=0.1,
                 map_spread=0.0, latency_ms=1.0, latency_ms_spread=0.0, seeds=1)
    summary = {"points": [row, ours], "dense": [dense], "reference": None}
    v = tradeoff.verdicts(summary, "ns")
    assert not any(k.startswith("beats_ns") for k in v)
    assert v["beats_dense_map50"] == [["flops", 0.5]]
    mine = tradeoff.verdicts(summary, "progressive")
    assert mine["beats_ns_map50"] == mine["beats_ns_map50_ft"] == [["flops", 0.5]]
    old = {**v, "beats_ns_map50": [], "beats_ns_map50_ft": []}    # as written before
    payload = dict(data="nwpu", preset=dict(model="yolov5n", imgsz=320, base_epochs=60,
                                             sparse_epochs=40, finetune_epochs=7),
                   total_epochs=107, seeds=[0], machine="m", torch="t", date="d",
                   train_minutes=1.0, summary=summary, plot="p.png",
                   verdicts={"ns": old, "progressive": mine})
    sections = tradeoff.markdown(payload).split("## Verdicts: ")
    ns_text = next(t for t in sections if t.startswith("ns "))
    ours_text = next(t for t in sections if t.startswith("progressive "))
    assert "than NS" not in ns_text and "than the dense family" in ns_text
    assert "higher mAP50 than NS at ≤ equal FLOPs: FLOPs −50 %" in ours_text


def test_tradeoff_resumes_an_interrupted_run_and_restarts_a_changed_one(tmp_path):
    import torch
    from rich.console import Console

    from graphprune.data import make_synthetic_dataset
    from graphprune.detect.train import TrainConfig, train

    tradeoff = _script("tradeoff")
    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, seed=1)
    config = TrainConfig(data=str(data), model="yolov5n", imgsz=64, epochs=2, batch=4,
                         nominal_batch=4, workers=0, device="cpu", warmup_epochs=0, seed=3,
                         out=str(tmp_path / "run"))
    train(config, stop_after=1)                         # the interruption: one epoch of two
    first = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(first) == 1
    assert tradeoff.interrupted(tmp_path / "run" / "last.pt", config)
    changed = TrainConfig(**{**config.__dict__, "seed": 4})
    assert not tradeoff.interrupted(tmp_path / "run" / "last.pt", changed)
    console = Console(quiet=True)
    info = tradeoff.training(tmp_path / "run", config, console)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == first[0]      # continued, not trained again
    assert info["epochs"] == 2 and info["map50"] is not None
    assert info["minutes"] >= json.loads(first[0])["seconds"] / 60
    assert json.loads((tmp_path / "run" / "done.json").read_text()) == info
    # an unfinished run of another configuration in the folder is trained again from the start
    stale = TrainConfig(**{**config.__dict__, "out": str(tmp_path / "run2")})
    train(stale, stop_after=1)
    stale_line = (tmp_path / "run2" / "results.jsonl").read_text().splitlines()[0]
    wanted = TrainConfig(**{**changed.__dict__, "out": str(tmp_path / "run2")})
    assert tradeoff.training(tmp_path / "run2", wanted, console)["epochs"] == 2
    lines = (tmp_path / "run2" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] != stale_line
    saved = json.loads(torch.load(tmp_path / "run2" / "last.pt", weights_only=True)
                       ["train"]["config"])
    assert saved["seed"] == 4


def test_the_benchmarks_readme_is_what_the_results_give(tmp_path):
    """benchmarks/README.md is generated (python -m benchmarks.summary): committed, it equals
    what the template and the committed results give, and a changed result changes it."""
    summary = _script("summary")
    assert summary.main(["--check"]) == 0
    template = summary.TEMPLATE.read_text()
    assert "<!-- tradeoff: nwpu -->" in template and "<!-- tradeoff: synthetic -->" in template
    results = tmp_path / "results"
    shutil.copytree(summary.RESULTS, results)
    payload = json.loads((results / "tradeoff_nwpu.json").read_text())
    payload["summary"]["reference"]["map50"] = 0.123456
    (results / "tradeoff_nwpu.json").write_text(json.dumps(payload))
    assert summary.render(template, summary.RESULTS) == summary.OUTPUT.read_text()
    text = summary.render(template, results)
    assert text != summary.OUTPUT.read_text()
    assert re.search(r"0 % · 0\.123( ± [0-9.]+)? → ", text)      # ± the seeds' spread
    # every method of the run has a row, every operating point a column
    payload = json.loads((results / "tradeoff_nwpu.json").read_text())
    table = [line for line in summary.tradeoff_table(payload) if line.startswith("|")]
    methods = {p["method"] for p in payload["summary"]["points"]}
    assert {line.split(" | ")[0].strip("| ") for line in table[2:]} >= methods
    ops = {tuple(p["op"]) for p in payload["summary"]["points"]}
    assert table[0].count("|") == len(ops) + 2
    with pytest.raises(SystemExit, match="tradeoff_missing.json"):
        summary.render("<!-- tradeoff: missing -->", results)


def test_the_residual_sweep_threshold_prunes_the_share_and_its_ties():
    import numpy as np

    share_threshold = _script("ablation").share_threshold
    gammas = np.sort(np.array([0.5, 0.1, 0.3, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 1.0]))
    delta = share_threshold(gammas, 0.3)
    assert (gammas < delta).sum() == 3                       # continuous γ: exactly the share
    faded = np.sort(np.array([0.0] * 8 + [0.5, 0.9]))        # a progressive model: exact zeros
    for share in (0.3, 0.5, 0.7):
        assert (faded < share_threshold(faded, share)).sum() == 8


def _tradeoff_run(seeds, map50, ref_map50, date="2026-12-05", sparse_epochs=40):
    """A tradeoff.py results payload of one method cut at FLOPs −50 %, with the given mAP50
    per seed for the cut and for the seed's same-budget baseline (fine-tuned: + 1 point)."""
    tradeoff = _script("tradeoff")
    per_seed = []
    for seed, m, r in zip(seeds, map50, ref_map50):
        point = dict(method="progressive-scratch@0.5", op=["flops", 0.5], params=5e5, flops=5e8,
                     flops_removed=0.5, params_removed=0.5, map50=m, map=m / 3,
                     map50_ft=m + 0.01, map_ft=m / 3, lfa=None, lfa_two_sided=None,
                     threshold=0.01, ft_minutes=1.0, path=None, latency_ms=2.0)
        ref = dict(method="none", op=["none", 0.0], params=1e6, flops=1e9, flops_removed=0.0,
                   map50=r, map=r / 3, map50_ft=r + 0.01, map_ft=r / 3, latency_ms=None)
        per_seed.append(dict(seed=seed, runs={}, points=[point], dense=[], reference=ref,
                             train_minutes=10.0))
    summary = tradeoff.aggregate(per_seed)
    payload = dict(data="nwpu", preset=dict(model="yolov5n", imgsz=320, base_epochs=60,
                                             sparse_epochs=sparse_epochs, finetune_epochs=7),
                   methods={"none": {"kind": "gp"}, "progressive-scratch@0.5": {"kind": "gp"}},
                   total_epochs=67 + sparse_epochs, seeds=list(seeds), machine="x86_64, 2 cores",
                   torch="2.13.0+cpu", date=date, train_device="the CPU", minutes=60.0,
                   train_minutes=10.0 * len(seeds), plot="run.png", summary=summary,
                   per_seed=per_seed)
    payload["verdicts"] = {"progressive-scratch@0.5":
                           tradeoff.verdicts(summary, "progressive-scratch@0.5")}
    return payload


def test_tradeoff_pairs_each_cut_with_its_seeds_own_baseline():
    """The paired differences: each seed's cut minus the same seed's same-budget baseline, their
    mean, half range, and a standard error only from three seeds on."""
    import statistics

    tradeoff = _script("tradeoff")
    two = _tradeoff_run([0, 1], [0.381, 0.409], [0.333, 0.467])
    (entry,) = two["summary"]["paired"]
    assert entry["seeds"] == [0, 1]
    assert entry["d_map50"] == pytest.approx([0.048, -0.058])
    assert entry["d_map50_mean"] == pytest.approx(-0.005)
    assert entry["d_map50_spread"] == pytest.approx(0.053)
    assert entry["d_map50_se"] is None
    assert entry["d_map50_ft"] == pytest.approx([0.048, -0.058])
    text = tradeoff.markdown(two)
    assert "| progressive-scratch@0.5 | FLOPs −50 % | 0, 1 | +4.8, −5.8 | −0.5 ± 5.3 |" in text
    four = tradeoff.aggregate(two["per_seed"] + _tradeoff_run([2, 3], [0.40, 0.42],
                                                              [0.40, 0.43])["per_seed"])
    (entry,) = four["paired"]
    diffs = [0.048, -0.058, 0.0, -0.01]
    assert entry["d_map50_se"] == pytest.approx(statistics.stdev(diffs) / 2)
    assert "(s.e. " in tradeoff.paired_cell(entry, "d_map50")
    # the generated README's matrix gives the same differences in a Δ row
    summary = _script("summary")
    table = summary.tradeoff_table(two)
    assert "| progressive-scratch@0.5: Δ mAP50 to each seed's own baseline, points | " \
           "−0.5 ± 5.3 → −0.5 ± 5.3 |" in table
    # a one-seed table pairs nothing: its rows already hold both models
    one = _tradeoff_run([0], [0.381], [0.333])
    assert tradeoff.paired_of(one) == [] and summary.paired_rows(one, ["x"], []) == []
    assert "own same-budget baseline" not in tradeoff.markdown(one)
    assert not any("Δ" in line for line in summary.tradeoff_table(one))
    # a seed whose fine-tune has no mAP keeps its place (–), the others their values
    gap = json.loads(json.dumps(two["per_seed"]))
    gap[1]["points"][0]["map50_ft"] = None
    (entry,) = tradeoff.paired(gap)
    assert entry["d_map50_ft"][1] is None and entry["d_map50_ft_mean"] == pytest.approx(0.048)
    assert tradeoff.points_text(entry["d_map50_ft"]) == "+4.8, –"
    # a failed cut and a seed without a baseline pair with nothing
    seed = json.loads(json.dumps(two["per_seed"][0]))
    seed["points"].append({"method": "ns", "op": ["flops", 0.5], "failed": "no cut"})
    assert [e["method"] for e in tradeoff.paired([seed])] == ["progressive-scratch@0.5"]
    seed["reference"] = None
    assert tradeoff.paired([seed]) == []


def test_tradeoff_pairs_each_cut_with_its_seeds_own_dense_family():
    """Against the dense family: each seed's cut minus that seed's dense front at the cut's
    FLOPs (linear between widths, the narrowest model's below it), pruned and fine-tuned
    against the same dense models; a seed without dense models pairs with nothing."""
    tradeoff = _script("tradeoff")
    run = _tradeoff_run([2, 3], [0.384, 0.366], [0.334, 0.386])
    assert run["summary"]["paired_dense"] == []
    assert "own dense family" not in tradeoff.markdown(run)
    widths = {2: [(6e8, 0.390), (4e8, 0.290)], 3: [(6e8, 0.331), (4e8, 0.311)]}
    for seed in run["per_seed"]:
        seed["dense"] = [dict(width=w, flops=f, params=1e5, map50=m, map=m / 3)
                         for w, (f, m) in zip((0.16, 0.15), widths[seed["seed"]])]
    summary = tradeoff.aggregate(run["per_seed"])
    (entry,) = summary["paired_dense"]
    # the cut has 5e8 FLOPs: half way along each seed's own line
    assert entry["d_map50"] == pytest.approx([0.384 - 0.340, 0.366 - 0.321])
    assert entry["d_map50_ft"] == pytest.approx([0.394 - 0.340, 0.376 - 0.321])
    assert entry["d_map50_mean"] == pytest.approx((0.044 + 0.045) / 2)
    # the baseline pairing is unchanged by the dense models
    assert summary["paired"] == run["summary"]["paired"]
    run["summary"] = summary
    text = tradeoff.markdown(run)
    assert "## Against each seed's own dense family" in text
    assert "| progressive-scratch@0.5 | FLOPs −50 % | 2, 3 | +4.4, +4.5 | +4.5 |" in text
    rows = _script("summary").tradeoff_table(run)
    assert "| progressive-scratch@0.5: Δ mAP50 to each seed's dense family, points | " \
           "+4.5 → +5.5 |" in rows
    # a results file written before the dense pairing was kept: computed from its seeds
    kept = run["summary"].pop("paired_dense")
    assert tradeoff.paired_of(run, "dense") == kept
    # below the narrowest width the yardstick is the narrowest model; a seed without dense
    # models is left out
    run["per_seed"][0]["points"][0]["flops"] = 1e8
    run["per_seed"][1]["dense"] = []
    (entry,) = tradeoff.paired(run["per_seed"], against="dense")
    assert entry["seeds"] == [2] and entry["d_map50"] == pytest.approx([0.384 - 0.290])


def test_tradeoff_merge_puts_the_seeds_of_several_runs_in_one_table(tmp_path, capsys,
                                                                     monkeypatch):
    """benchmarks/tradeoff_merge.py: the seeds of two runs of one configuration in one table
    (means, paired differences, verdicts, each run named); runs of another configuration,
    other operating points or a seed measured twice are refused in one line, and the inputs
    are only read."""
    tradeoff, merge = _script("tradeoff"), _script("tradeoff_merge")
    first = _tradeoff_run([0, 1], [0.381, 0.409], [0.333, 0.467])
    later = _tradeoff_run([2, 3], [0.40, 0.42], [0.40, 0.43], date="2026-12-06")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, payload in (("a.json", first), ("b.json", later)):
        (inputs / name).write_text(json.dumps(payload))
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    results = tmp_path / "results"
    assert merge.main([str(inputs / "a.json"), str(inputs / "b.json"), "--name", "merged",
                       "--results", str(results)]) == 0
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before
    assert sorted(p.name for p in results.iterdir()) == ["merged.json", "merged.md",
                                                         "merged.png"]
    out = json.loads((results / "merged.json").read_text())
    assert out["seeds"] == [0, 1, 2, 3] and out["plot"] == "merged.png"
    assert out["date"] == "2026-12-05 and 2026-12-06" and out["train_minutes"] == 40.0
    assert [s["seeds"] for s in out["sources"]] == [[0, 1], [2, 3]]
    (row,) = out["summary"]["points"]
    assert row["seeds"] == 4 and row["map50"] == pytest.approx((0.381 + 0.409 + 0.4 + 0.42) / 4)
    assert out["summary"]["reference"]["map50"] == pytest.approx((0.333 + 0.467 + 0.4 + 0.43) / 4)
    (entry,) = out["summary"]["paired"]
    assert entry["seeds"] == [0, 1, 2, 3] and entry["d_map50_se"] is not None
    assert out["verdicts"]["progressive-scratch@0.5"]["within_1pt_at_50pct_flops_map50"] == \
        [["flops", 0.5]]
    text = (results / "merged.md").read_text()
    assert "Merged from 2 runs" in text and "`b.json`, seeds [2, 3]: 2026-12-06" in text
    assert "| 0, 1, 2, 3 | +4.8, −5.8, +0.0, −1.0 |" in text
    # refused, in one line each, writing nothing
    other_budget = _tradeoff_run([4], [0.3], [0.3], sparse_epochs=30)
    other_ops = json.loads(json.dumps(later))
    for s in other_ops["per_seed"]:
        s["points"][0]["op"] = ["flops", 0.7]
    for name, payload in (("budget.json", other_budget), ("ops.json", other_ops),
                          ("list.json", [1, 2]), ("bad.json", None)):
        path = inputs / name
        path.write_text("{not json" if payload is None else json.dumps(payload))
    for bad, says in (([inputs / "a.json", inputs / "budget.json"], "its 'preset' (sparse_epochs) does not match"),
                      ([inputs / "a.json", inputs / "ops.json"], "operating points differ"),
                      ([inputs / "a.json", inputs / "a.json"], "seed 0 is also in"),
                      ([inputs / "a.json"], "at least two"),
                      ([inputs / "a.json", inputs / "list.json"], "not a tradeoff.py results"),
                      ([inputs / "a.json", inputs / "bad.json"], "not JSON"),
                      ([inputs / "a.json", inputs / "gone.json"], "cannot read it"),
                      ([inputs / "a.json", inputs / "b.json"], "would overwrite this input")):
        argv = [*map(str, bad), "--name", "a" if "overwrite" in says else "again",
                "--results", str(inputs if "overwrite" in says else results)]
        with pytest.raises(SystemExit) as exc:
            merge.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (results / "again.json").exists()
    # the same method names with other settings are another configuration
    other_method = json.loads(json.dumps(later))
    other_method["methods"]["progressive-scratch@0.5"]["theta"] = 1e-3
    with pytest.raises(ValueError, match="its 'methods' does not match"):
        tradeoff.merge([first, other_method], ["a.json", "m.json"])
    # results written before the training device was recorded trained on the CPU
    older = {k: v for k, v in first.items() if k != "train_device"}
    merged = tradeoff.merge([older, later], ["a.json", "b.json"], "m")
    assert merged["train_device"] == "the CPU" and merged["plot"] == "m.png"
    assert "trained on the CPU" in tradeoff.markdown(merged) and "None" not in \
        tradeoff.markdown(merged)
    # the default seeds of the preset are no part of the configuration
    reseeded = json.loads(json.dumps(later))
    reseeded["preset"]["seeds"] = [2, 3]
    assert tradeoff.merge([first, reseeded], ["a", "b"])["seeds"] == [0, 1, 2, 3]
    # a broken seed record is one error naming the file
    broken = json.loads(json.dumps(later))
    del broken["per_seed"][0]["seed"]
    with pytest.raises(ValueError, match="^b.json: not a tradeoff.py results file"):
        tradeoff.merge([first, broken], ["a.json", "b.json"])
    # a table that fails to draw leaves the files of the earlier table as they were
    kept = {p.name: p.read_bytes() for p in results.iterdir()}

    def no_plot(*args):
        raise RuntimeError("no display")

    monkeypatch.setattr(tradeoff, "plot", no_plot)
    with pytest.raises(RuntimeError):
        tradeoff.write_tables(tradeoff.merge([first, later], ["a", "b"]), results, "merged")
    assert {p.name: p.read_bytes() for p in results.iterdir()} == kept
    assert (inputs / "a.json").read_bytes() == before["a.json"]
    with pytest.raises(ValueError, match="no 'per_seed'"):
        tradeoff.merge([first, {k: v for k, v in later.items() if k != "per_seed"}],
                       ["a", "b"])
