"""The command line: outputs, summaries, refusals and clear one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import graphprune as gp
from graphprune.cli import main
from graphprune.models import randomize_batchnorm, tiny_resnet

SMALL = ["--example-shape", "2,3,32,32"]


def test_compile_writes_every_artifact_and_a_report(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compile", "tiny_resnet", "--prune-ratio", "0.4", "--random-bn", "1", *SMALL,
                 "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md",
                                                     "slim.graphprune.pt", "slim.onnx",
                                                     "slim.pt2"]
    report = json.loads((out / "report.json").read_text())
    stats = report["compile"]["stats"]
    assert stats["params_after"] < stats["params_before"]
    assert report["max_error"] <= 1e-4 and report["example_shape"] == [2, 3, 32, 32]
    text = capsys.readouterr().out
    assert "Channels kept per layer" in text and "verified" in text
    slim = gp.load(out / "slim.graphprune.pt")
    assert sum(p.numel() for p in slim.parameters()) == stats["params_after"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temp left


def test_compile_with_a_mask_file_and_couple(tmp_path):
    masks = {"stem.1": [1, 0] * 8}
    (tmp_path / "masks.json").write_text(json.dumps(masks))
    out = tmp_path / "run"
    assert main(["compile", "tiny_resnet", "--masks", str(tmp_path / "masks.json"), *SMALL,
                 "--residual", "couple", "--no-onnx", "--no-pt2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "stem.1" in report["pinned"]          # coupled through residual adds with layer1
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md",
                                                     "slim.graphprune.pt"]


def test_compile_with_residual_auto_reports_its_choice_and_rebuilds(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.5", "--random-bn", "1", *SMALL,
                 "--residual", "auto", "--no-onnx", "--no-pt2", "--out", str(out)]) == 0
    assert "residual auto:" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    choice = report["compile"]["residual_choice"]
    assert choice and all({"layers", "extra_nodes", "flops_saved", "coupled"} <= set(c)
                          for c in choice.values())
    slim = gp.load(out / "slim.graphprune.pt")
    assert sum(p.numel() for p in slim.parameters()) == report["compile"]["stats"]["params_after"]


def test_existing_output_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["compile", "tiny_resnet", "--prune-ratio", "0.3", *SMALL, "--out", str(out)]
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main(args + ["--overwrite", "--no-onnx", "--no-pt2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md",
                                                     "slim.graphprune.pt"]


def test_compile_a_graphprune_checkpoint_again(tmp_path):
    first = tmp_path / "one"
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.3", "--random-bn", "2", *SMALL,
                 "--no-onnx", "--no-pt2", "--out", str(first)]) == 0
    second = tmp_path / "two"
    assert main(["compile", str(first / "slim.graphprune.pt"), "--prune-ratio", "0.3",
                 "--no-onnx", "--no-pt2", "--out", str(second)]) == 0
    one = json.loads((first / "report.json").read_text())["compile"]["stats"]
    two = json.loads((second / "report.json").read_text())["compile"]["stats"]
    assert two["params_before"] == one["params_after"]
    assert two["params_after"] < two["params_before"]
    # the twice-compiled checkpoint rebuilds through both recipes
    slim = gp.load(second / "slim.graphprune.pt")
    assert sum(p.numel() for p in slim.parameters()) == two["params_after"]


def test_inspect_prints_groups_pins_and_histogram(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "yolov5n", "--example-shape", "1,3,64,64", "--random-bn", "0"]) == 0
    text = capsys.readouterr().out
    assert "Dependency groups" in text and "residual only" in text
    assert "Residual groups" in text and "model.2.m.0.cv2.bn" in text
    assert "model.2.cv1.bn" in text and "|γ| histogram" in text
    assert "kept whole (untraceable): model.24" in text
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_is_one_clear_line(capsys):
    assert main(["compile", "yolov9000", "--prune-ratio", "0.5", "--out", "x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("graphprune: error: 'yolov9000' is neither a file nor a built-in")
    assert "\n" not in err


@pytest.mark.parametrize("ratio", ["1.5", "-0.2", "half"])
def test_bad_ratio_is_a_usage_error(ratio, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "tiny_resnet", "--prune-ratio", ratio, "--out", "x"])
    assert exc.value.code == 2
    assert "--prune-ratio" in capsys.readouterr().err


@pytest.mark.parametrize("period", ["-1", "2.5"])
def test_bad_save_period_is_a_usage_error(period, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "x.yaml", "--save-period", period])
    assert exc.value.code == 2
    assert "--save-period" in capsys.readouterr().err


class _Payload:
    """Unpickling this object creates a file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoints_need_explicit_trust(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(str(marker)), evil)
    assert main(["inspect", str(evil)]) == 1
    err = capsys.readouterr().err
    assert "arbitrary code" in err and "--trust-checkpoint" in err
    assert not marker.exists()

    model = randomize_batchnorm(tiny_resnet(), 3)
    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)
    out = tmp_path / "run"
    assert main(["compile", str(pickled), "--prune-ratio", "0.3", *SMALL, "--no-onnx",
                 "--no-pt2", "--out", str(out)]) == 1
    assert main(["compile", str(pickled), "--trust-checkpoint", "--prune-ratio", "0.3", *SMALL,
                 "--no-onnx", "--no-pt2", "--out", str(out)]) == 0


def test_console_script_errors_without_traceback(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00not a checkpoint at all" * 10)
    proc = subprocess.run([sys.executable, "-m", "graphprune.cli", "compile", str(bad),
                           "--prune-ratio", "0.5", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("graphprune: error:") and "garbage.pt" in proc.stderr
    assert not (tmp_path / "o").exists()
    debug = subprocess.run([sys.executable, "-m", "graphprune.cli", "--debug", "compile",
                            str(bad), "--prune-ratio", "0.5", "--out", str(tmp_path / "o")],
                           capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_train_sparsity_defaults_to_progressive_with_phases_for_the_run(tmp_path, capsys):
    from graphprune.data import make_synthetic_dataset
    from graphprune.sparsity import default_phases

    data = make_synthetic_dataset(tmp_path / "d", 8, 4, seed=1, size=64)
    common = ["train", "--data", str(data), "--imgsz", "64", "--batch", "4", "--epochs", "2",
              "--workers", "0"]
    assert main([*common, "--sparsity-target", "0.3", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "apply to --sparsity progressive" in err and len(err.strip().splitlines()) == 1
    assert main([*common, "--model", "yolov5n", "--sparsity", "--sparsity-target", "0.3",
                 "--out", str(tmp_path / "b")]) == 0
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    config = json.loads(ckpt["train"]["config"])
    assert config["sparsity"] == "progressive"
    assert (config["phase_epochs"], config["max_phases"]) == default_phases("progressive", 2) \
        == (1, 1)
    assert config["sparsity_options"] == {"target": 0.3}
    state = next(s for s in ckpt["train"]["callbacks"] if s and s.get("mode") == "progressive")
    assert state["phase"] == 1 and sum(int(c.sum()) for c in state["chosen"]) > 0
