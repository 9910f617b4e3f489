"""``graphprune compile --lfa-target`` and ``graphprune demo``, end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._pytree import tree_flatten

import graphprune as gp
from graphprune import data as gpdata
from graphprune.artifacts import REPORT_KEYS, REPORT_SCHEMA, new_report, write_artifacts
from graphprune.cli import main
from graphprune.detect.train import model_recipe
from graphprune.checkpoint import decode_masks
from graphprune.export import onnx_parity, save_checkpoint
from graphprune.models import randomize_batchnorm, tiny_resnet, yolov5n

from conftest import assert_close


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return gpdata.make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "d", 8, 8, seed=3, size=64)


def test_lfa_target_compile_writes_a_verified_model_a_report_and_plots(tiny_data, tmp_path,
                                                                        capsys):
    out = tmp_path / "run"
    model = yolov5n(num_classes=3)
    randomize_batchnorm(model, 0)
    ckpt = save_checkpoint(model, model_recipe(model, 64), tmp_path / "sparse.pt")
    before = ckpt.read_bytes()
    code = main(["compile", str(ckpt),
                 "--data", str(tiny_data), "--lfa-target", "0.05", "--imgsz", "64",
                 "--calib-images", "8", "--eval", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("params_before", "params_after", "flops_before", "flops_after", "threshold",
                "prune_ratio", "lfa", "lfa_target", "probes", "map50_before", "map50_after"):
        assert key in report, key
    assert report["lfa"] <= 0.05 and report["lfa_target"] == 0.05
    assert report["params_after"] < report["params_before"]
    n = report["candidates"]
    assert 0 < report["evaluations"] <= int(np.ceil(np.log2(n))) + 2
    assert sum(not p["reused"] for p in report["probes"]) == report["evaluations"]
    # the chosen probe's LFA is what the slim model measured again
    assert report["lfa"] == pytest.approx(report["lfa_probe"], abs=1e-5)
    # report.md shows the plots, and they are images
    md = (out / "report.md").read_text()
    for png in ("lfa_vs_prune.png", "attention.png"):
        assert f"]({png})" in md
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # slim == zero-masked reference == onnxruntime
    slim = gp.load(out / "slim.graphprune.pt")
    masks = decode_masks(slim.graphprune_recipe)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        want = gp.zero_mask(model, masks).eval()(x)
        got = slim.eval()(x)
    assert_close(got, want)
    assert onnx_parity(out / "slim.onnx", (x,), tree_flatten(got)[0]) is None
    assert "LFA⁺" in capsys.readouterr().out
    assert ckpt.read_bytes() == before                    # the input is never modified


def test_plain_and_target_guided_compiles_write_one_report_schema(tiny_data, tmp_path):
    """Both command-line compiles write through artifacts.write_artifacts: the same
    report.json keys (REPORT_KEYS), the same artifact names, and a report.md."""
    runs = {
        "ratio": ["--prune-ratio", "0.3", "--example-shape", "1,3,64,64"],
        "masks": ["--masks", str(tmp_path / "masks.json"), "--example-shape", "1,3,64,64"],
        "lfa": ["--data", str(tiny_data), "--lfa-target", "0.05", "--calib-images", "4",
                "--heatmaps", "0", "--eval", "--imgsz", "64"],
        "flops": ["--flops-target", "0.4", "--imgsz", "64"],
    }
    (tmp_path / "masks.json").write_text(json.dumps({"model.0.bn": [1, 0] * 8}))
    reports = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["compile", "yolov5n", "--num-classes", "3", "--random-bn", "1",
                     "--no-onnx", *extra, "--out", str(out)]) == 0
        reports[name] = json.loads((out / "report.json").read_text())
        assert sorted(reports[name]["artifacts"]) == sorted(p.name for p in out.iterdir()
                                                           if not p.is_dir()), name
        assert (out / "report.md").read_text().startswith("# graphprune compile report")
    for name, report in reports.items():
        assert list(report) == list(REPORT_KEYS), name
        assert report["schema"] == REPORT_SCHEMA
        assert report["example_shape"] == [1, 3, 64, 64]
        assert report["compile"]["stats"]["params_after"] == report["params_after"]
        assert {"slim.graphprune.pt", "slim.pt2", "report.json", "report.md"} <= \
            set(report["artifacts"])
    assert [reports[n]["goal"] for n in runs] == ["prune_ratio", "masks", "lfa", "flops"]
    assert reports["ratio"]["lfa"] is None and reports["ratio"]["probes"] == []
    assert reports["lfa"]["map50_after"] is not None and reports["lfa"]["lfa"] <= 0.05
    assert reports["masks"]["request"]["masks"] == str(tmp_path / "masks.json")


def test_a_report_outside_the_schema_is_refused_and_nothing_is_written(tmp_path):
    model = randomize_batchnorm(tiny_resnet(), 0)
    compiled = gp.compile(model, torch.rand(1, 3, 32, 32), prune_ratio=0.3)
    report = new_report(compiled, model="tiny_resnet", example=torch.rand(1, 3, 32, 32),
                        request={"prune_ratio": 0.3}, goal="prune_ratio")
    report["surprise"] = 1
    with pytest.raises(ValueError, match="surprise"):
        write_artifacts(compiled, tmp_path / "out", report, pt2=False, onnx=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    del report["surprise"], report["lfa"]
    with pytest.raises(ValueError, match="missing.*lfa"):
        write_artifacts(compiled, tmp_path / "out", report, pt2=False, onnx=False)
    assert not list(tmp_path.iterdir())


def test_flops_target_without_data(tmp_path):
    out = tmp_path / "run"
    assert main(["compile", "yolov5n", "--num-classes", "3", "--random-bn", "1",
                 "--flops-target", "0.5", "--imgsz", "64", "--no-onnx", "--no-pt2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["flops_after"] <= 0.5 * report["flops_before"]
    assert report["lfa"] is None and report["goal"] == "flops"
    assert (out / "report.md").exists()


@pytest.mark.parametrize("argv, message", [
    (["--lfa-target", "0.01"], "need --data"),
    (["--prune-ratio", "0.5", "--eval"], "target-guided"),
])
def test_target_compile_refusals(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compile", "yolov5n", "--imgsz", "64", "--out", str(out), *argv])
    assert code == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-0.1", "nan"])
def test_lfa_target_must_be_positive(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "yolov5n", "--lfa-target", value, "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "LFA target" in capsys.readouterr().err or value == "nan"


def test_quick_demo_runs_every_step(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for path in ("data/data.yaml", "baseline/last.pt", "sparse/last.pt", "sparse/sparsity.jsonl",
                 "sparse/gamma_distribution.png", "compile/report.md", "compile/slim.onnx",
                 "compile/slim.graphprune.pt"):
        assert (out / path).exists(), path
    assert summary["alpha_updates"] >= 1 and summary["sparsity"]["sparsity"] == "progressive"
    assert summary["verified_max_error"] <= 1e-3
    assert summary["lfa"] <= 0.01
    for key in ("baseline_map50", "sparse_map50", "map50_after", "map50_finetuned"):
        assert 0 <= summary[key] <= 1, key
    assert summary["final_drop_points"] == pytest.approx(
        100 * (summary["baseline_map50"] - summary["map50_finetuned"]))
    md = (out / "compile" / "report.md").read_text()
    assert "| baseline (baseline/last.pt) |" in md and "| pruned + fine-tuned 1 epochs |" in md
    assert (out / "compile" / "finetune" / "last.pt").exists()
    assert "graphprune demo" in capsys.readouterr().out
    # a second run refuses to overwrite without --overwrite
    assert main(["demo", "--quick", "--out", str(out)]) == 1


def test_finetune_and_fold_after_a_target_compile(tiny_data, tmp_path):
    model = yolov5n(num_classes=3)
    randomize_batchnorm(model, 1)
    ckpt = save_checkpoint(model, model_recipe(model, 64), tmp_path / "sparse.pt")
    out = tmp_path / "run"
    assert main(["compile", str(ckpt), "--data", str(tiny_data), "--params-target", "0.5",
                 "--imgsz", "64", "--calib-images", "4", "--fold-pruned-bias",
                 "--finetune-epochs", "1", "--no-onnx", "--no-pt2", "--heatmaps", "0",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params_after"] <= 0.5 * report["params_before"]
    assert report["fold_pruned_bias"]["folded"]
    assert report["finetune_epochs"] == 1 and report["map50_finetuned"] is not None
    tuned = gp.load(out / "finetune" / "last.pt")
    assert sum(p.numel() for p in tuned.parameters()) == report["params_after"]
    assert "bias folding" in (out / "report.md").read_text()


def test_baseline_row_and_the_recipe_of_the_training_run(tiny_data, tmp_path):
    """--baseline heads the accuracy table (the drop is measured from it); --finetune-epochs
    fine-tunes with the training recipe recorded in the sparse checkpoint."""
    from graphprune.detect.train import TrainConfig, train

    run = tmp_path / "sparse"
    train(TrainConfig(data=str(tiny_data), model="yolov5n", imgsz=64, epochs=1, batch=4,
                      nominal_batch=4, cls=2.0, workers=0, device="cpu", out=str(run),
                      sparsity="progressive", phase_epochs=1, max_phases=1))
    base = tmp_path / "base.pt"
    model = yolov5n(num_classes=3)
    save_checkpoint(model, model_recipe(model, 64), base)
    assert main(["compile", str(run / "last.pt"), "--data", str(tiny_data), "--imgsz", "64",
                 "--flops-target", "0.4", "--out", str(tmp_path / "o"), "--baseline",
                 str(base)]) == 1                                            # needs --eval
    out = tmp_path / "run"
    assert main(["compile", str(run / "last.pt"), "--data", str(tiny_data), "--imgsz", "64",
                 "--flops-target", "0.4", "--calib-images", "4", "--eval", "--baseline",
                 str(base), "--finetune-epochs", "1", "--no-onnx", "--no-pt2", "--heatmaps",
                 "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["baseline_model"] == str(base)
    assert report["baseline_params"] == report["params_before"] > report["params_after"]
    md = (out / "report.md").read_text()
    table = md[md.index("## Accuracy"):].split("\n\n")[1].splitlines()
    rows = [line for line in table if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == [f"| baseline ({base})",
                                                  "| sparse (before pruning)",
                                                  "| pruned, no fine-tuning",
                                                  "| pruned + fine-tuned 1 epochs"]
    delta = float(rows[2].split(" | ")[-1].split()[0])
    assert delta == pytest.approx(round(100 * (report["map50_after"] -
                                               report["baseline_map50"]), 1))
    config = json.loads(torch.load(out / "finetune" / "last.pt",
                                   weights_only=True)["train"]["config"])
    assert (config["batch"], config["nominal_batch"], config["cls"]) == (4, 4, 2.0)
    assert report["finetune_recipe"]["cls"] == 2.0
