"""The output discipline every writing command follows: everything checked before the output is
touched, outputs that overlap an input refused, an overwritten output kept until the new one is
whole, a concurrent writer refused instead of silently replaced, SIGTERM cleaned up like Ctrl-C;
inputs and earlier outputs stay byte-identical."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
import torch

import graphprune.cli as cli
import graphprune.export as export
from graphprune.cli import main
from graphprune.errors import GraphpruneError
from graphprune.export import OutputRace, atomic_directory, save_checkpoint, staged_directory
from graphprune.models import tiny_resnet
from test_data import make_nwpu_tree


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


def test_a_conversion_onto_its_own_source_is_refused(tmp_path, capsys):
    src = tmp_path / "src"
    make_nwpu_tree(src, count=3)
    before = digest(tmp_path)
    assert main(["data", "nwpu", str(src), str(src), "--overwrite"]) == 1
    assert "is the input" in one_error_line(capsys)
    assert main(["data", "nwpu", str(src), str(src / "yolo")]) == 1
    assert "lies inside the input" in one_error_line(capsys)
    assert main(["data", "nwpu", str(src), str(tmp_path), "--overwrite"]) == 1
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
