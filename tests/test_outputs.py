"""The output discipline every writing command follows: everything checked before the output is
touched, outputs that overlap an input refused, an overwritten output kept until the new one is
whole, a concurrent writer refused instead of silently replaced, SIGTERM cleaned up like Ctrl-C;
inputs and earlier outputs stay byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_data import make_nwpu_tree, make_rsod_tree

import graphprune.cli as cli
import graphprune.export as export
from graphprune import data as gpdata
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.export import OutputRace, atomic_directory, save_checkpoint, staged_directory
from graphprune.models import tiny_resnet


def digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphprune: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def checkpoint_in(tmp_path):
    folder = tmp_path / "inp"
    folder.mkdir()
    model = tiny_resnet().eval()
    save_checkpoint(model, {"builder": "tiny_resnet", "kwargs": {}, "inputs": []},
                    folder / "model.pt")
    (folder / "notes.txt").write_text("mine")
    return folder


def test_a_compile_into_the_folder_of_its_input_is_refused(checkpoint_in, tmp_path, capsys):
    before = digest(tmp_path)
    code = main(["compile", str(checkpoint_in / "model.pt"), "--prune-ratio", "0.3",
                 "--example-shape", "1,3,32,32", "--out", str(checkpoint_in), "--overwrite"])
    assert code == 1
    assert "holds the input" in one_error_line(capsys)
    assert digest(tmp_path) == before


def test_a_training_with_a_missing_data_yaml_leaves_the_old_run_alone(tmp_path, capsys):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "best.pt").write_bytes(b"earlier weights")
    before = digest(tmp_path)
    assert main(["train", "--data", str(tmp_path / "typo.yaml"), "--out", str(run),
                 "--overwrite", "--epochs", "1"]) == 1
    assert "typo.yaml" in one_error_line(capsys)
    # the weights to start from lie inside the run an overwrite would replace
    assert main(["train", "--data", str(tmp_path / "typo.yaml"), "--weights",
                 str(run / "best.pt"), "--out", str(run), "--overwrite"]) == 1
    assert "holds the input" in one_error_line(capsys)
    assert digest(tmp_path) == before


@pytest.mark.parametrize("kind, make", [("nwpu", lambda p: make_nwpu_tree(p, count=3)),
                                        ("rsod", make_rsod_tree)])
def test_a_conversion_onto_its_own_source_is_refused(kind, make, tmp_path, capsys):
    src = tmp_path / "src"
    make(src)
    before = digest(tmp_path)
    assert main(["data", kind, str(src), str(src), "--overwrite"]) == 1
    assert "is the input" in one_error_line(capsys)
    assert main(["data", kind, str(src), str(src / "yolo")]) == 1
    assert "lies inside the input" in one_error_line(capsys)
    assert main(["data", kind, str(src), str(tmp_path), "--overwrite"]) == 1
    assert "holds the input" in one_error_line(capsys)
    assert digest(tmp_path) == before


def test_the_current_directory_is_never_an_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.3", "--example-shape",
                 "1,3,32,32", "--out", ".", "--overwrite"]) == 1
    assert "current directory" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_a_writer_that_lost_the_race_keeps_nothing_and_changes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(OutputRace, match="another process"):
        with atomic_directory(out) as tmp:
            (tmp / "mine.txt").write_text("this run")
            out.mkdir()                                  # the other writer finishes first
            (out / "theirs.txt").write_text("the other run")
    assert digest(tmp_path) == {"out/theirs.txt": hashlib.sha256(b"the other run").hexdigest()}
    # a run directory made between the up-front check and its creation
    monkeypatch.setattr(export, "refuse_existing_output", lambda *a, **k: None)
    with pytest.raises(OutputRace):
        with staged_directory(out):
            pass
    assert (out / "theirs.txt").read_text() == "the other run"


def test_an_overwritten_output_comes_back_when_the_new_one_fails(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    before = digest(tmp_path)
    with pytest.raises(GraphpruneError):
        with staged_directory(out, overwrite=True) as run:
            assert not (run / "summary.json").exists()   # the old one is aside meanwhile
            (run / "partial.txt").write_text("half")
            raise GraphpruneError("step 3 failed")
    assert digest(tmp_path) == before
    with pytest.raises(KeyboardInterrupt) as caught:     # a training keeps its partial run
        with staged_directory(out, overwrite=True, keep_partial=True) as run:
            (run / "last.pt").write_text("epoch 1")
            raise KeyboardInterrupt
    note = " ".join(caught.value.__notes__)
    assert "partial run stays" in note and "previous one at" in note
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(aside) == 1 and (aside[0] / "demo" / "summary.json").read_text() == "{}"
    assert (out / "last.pt").read_text() == "epoch 1"


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"

    def slow_compile(args):
        with atomic_directory(out) as tmp:
            (tmp / "slim.onnx").write_bytes(b"half written")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):                          # the handler raises in here
                torch.zeros(1)
        return 0

    monkeypatch.setattr(cli, "cmd_compile", slow_compile)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.3", "--out", str(out)]) == 143
    assert "terminated (SIGTERM); nothing was written" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                # no output, no hidden temporary
    assert signal.getsignal(signal.SIGTERM) is before    # the handler is put back


def _started_together(argvs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Run ``graphprune ARGV`` for each argv at the same moment; their results, in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "graphprune.cli", *argv], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for argv in argvs]
    results = []
    for argv, proc in zip(argvs, procs):
        out, err = proc.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    return results


def test_two_compiles_and_two_trainings_on_one_out_one_wins_whole(tmp_path):
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 4, 2, seed=0, size=64)
    jobs = {
        "compile": ["compile", "tiny_resnet", "--prune-ratio", "0.3", "--example-shape",
                    "1,3,32,32", "--no-onnx", "--no-pt2", "--out", str(tmp_path / "slim")],
        "train": ["train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64",
                  "--epochs", "1", "--batch", "2", "--workers", "0",
                  "--out", str(tmp_path / "run")],
    }
    for name, argv in jobs.items():
        results = _started_together([argv, argv], tmp_path)
        codes = sorted(r.returncode for r in results)
        assert codes == [0, 1], (name, [r.stderr[-400:] for r in results])
        loser = next(r for r in results if r.returncode == 1)
        line = loser.stderr.strip().splitlines()[-1]
        assert line.startswith("graphprune: error:") and "Traceback" not in loser.stderr
        assert "already exists" in line or "another process" in line, line
    report = json.loads((tmp_path / "slim" / "report.json").read_text())
    assert sorted(p.name for p in (tmp_path / "slim").iterdir()) == sorted(report["artifacts"])
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["train"]["epoch"] == 0
    assert len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no temporaries


def test_outputs_respect_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("x")
        save_checkpoint(tiny_resnet(), {"builder": "tiny_resnet", "kwargs": {}, "inputs": []},
                        tmp_path / "model.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "model.pt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("stop, code, said", [("ctrl-c", 130, "interrupted"),
                                              ("sigterm", 143, "terminated (SIGTERM)")])
def test_an_interrupted_demo_overwrite_leaves_the_previous_demo_whole(stop, code, said, tmp_path,
                                                                      monkeypatch, capsys):
    import graphprune.demo as demo

    old = tmp_path / "demo"
    (old / "baseline").mkdir(parents=True)
    (old / "summary.json").write_text('{"baseline_map50": 0.8}')
    (old / "baseline" / "best.pt").write_bytes(b"weights of the earlier demo")
    before = digest(tmp_path)

    def half_done(out, *args, **kwargs):
        (out / "data").mkdir()
        (out / "data" / "data.yaml").write_text("train: images/train\n")
        if stop == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):                              # the handler raises in here
            torch.zeros(1)

    monkeypatch.setattr(demo, "_demo_steps", half_done)
    assert main(["demo", "--quick", "--out", str(old), "--overwrite"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"graphprune: {said}; nothing was written"
    assert digest(tmp_path) == before                    # no partial demo, no hidden temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
