"""Bad values refused up front, in one line, before anything is written: every number of the
command line (a typed range), values only the model can judge (example shapes, leaves,
devices, its class count against the dataset's), non-finite weights, and any unexpected failure
kept to one line unless --debug."""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import warnings
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphprune.cli as cli
from graphprune import data as gpdata
from graphprune.cli import main
from graphprune.errors import GraphpruneError, GraphpruneWarning
from graphprune.export import save_checkpoint
from graphprune.models import tiny_resnet, yolov5n
from test_outputs import one_error_line


@pytest.mark.parametrize("argv, option", [
    (["train", "--data", "d.yaml", "--epochs", "0"], "--epochs"),
    (["train", "--data", "d.yaml", "--epochs", "-5"], "--epochs"),
    (["train", "--data", "d.yaml", "--batch", "0"], "--batch"),
    (["train", "--data", "d.yaml", "--imgsz", "0"], "--imgsz"),
    (["train", "--data", "d.yaml", "--imgsz", "100"], "--imgsz"),
    (["train", "--data", "d.yaml", "--val-every", "0"], "--val-every"),
    (["train", "--data", "d.yaml", "--lr0", "nan"], "--lr0"),
    (["train", "--data", "d.yaml", "--theta", "-1"], "--theta"),
    (["val", "--weights", "m.pt", "--data", "d.yaml", "--conf", "nan"], "--conf"),
    (["val", "--weights", "m.pt", "--data", "d.yaml", "--iou", "1.5"], "--iou"),
    (["compile", "tiny_resnet", "--num-classes", "0", "--prune-ratio", "0.3"], "--num-classes"),
    (["compile", "tiny_resnet", "--num-classes", "100000000", "--prune-ratio", "0.3"],
     "--num-classes"),
    (["compile", "tiny_resnet", "--flops-target", "0.5", "--calib-images", "0"],
     "--calib-images"),
    (["data", "synthetic", "out", "--train", "0"], "--train"),
    (["data", "synthetic", "out", "--size", "8"], "--size"),
])
def test_every_number_is_checked_before_any_work(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_unexpected_failure_is_one_line_unless_debug(tmp_path, monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(cli, "cmd_inspect", broken)
    assert main(["inspect", "tiny_resnet"]) == 1
    line = one_error_line(capsys)
    assert "unexpected ZeroDivisionError: division by zero" in line and "--debug" in line
    with pytest.raises(ZeroDivisionError):
        main(["inspect", "tiny_resnet", "--debug"])


def test_nan_weights_are_refused_as_such(tmp_path, capsys):
    import graphprune as gp
    from graphprune.models import randomize_batchnorm

    model = randomize_batchnorm(tiny_resnet(), 0).eval()
    with torch.no_grad():
        model.stem[1].weight[3] = float("nan")
    with pytest.raises(GraphpruneError, match=r"stem\.1\.weight.*1 NaN/Inf value"):
        gp.compile(model, torch.rand(1, 3, 32, 32), prune_ratio=0.3)
    path = save_checkpoint(model, {"builder": "tiny_resnet", "kwargs": {}, "inputs": []},
                           tmp_path / "nan.pt")
    assert main(["compile", str(path), "--prune-ratio", "0.3", "--example-shape", "1,3,32,32",
                 "--out", str(tmp_path / "out")]) == 1
    assert "NaN/Inf" in one_error_line(capsys) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, phrase", [
    (["--example-shape", "1,4,32,32", "--prune-ratio", "0.3"], "cannot run on an example input"),
    (["--example-shape", "3,32,32", "--prune-ratio", "0.3"], "cannot run on an example input"),
    (["--example-shape", "1,3,100000,100000", "--prune-ratio", "0.3"], "GiB"),
    (["--example-shape", "1,3,32,32", "--prune-ratio", "0.3", "--leaf", "no.such"],
     "'no.such' is not a submodule"),
    (["--imgsz", "32", "--flops-target", "0.3", "--device", "banana"], "'banana' is not a device"),
    (["--imgsz", "32", "--flops-target", "0.3", "--device", "meta"], "is not supported"),
])
def test_bad_values_the_parser_cannot_see_are_one_line_before_any_output(extra, phrase, tmp_path,
                                                                         capsys):
    out = tmp_path / "out"
    assert main(["compile", "tiny_resnet", *extra, "--out", str(out)]) == 1
    assert phrase in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_class_count_that_differs_from_the_dataset_is_refused(tmp_path, capsys):
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 4, 4, seed=0, size=64)   # 3 classes
    model = yolov5n(num_classes=5).eval()
    path = save_checkpoint(model, {"builder": "yolov5n", "kwargs": {"num_classes": 5},
                                   "inputs": [{"shape": [1, 3, 64, 64], "dtype": "float32"}]},
                           tmp_path / "five.pt")
    assert main(["val", "--weights", str(path), "--data", str(data), "--imgsz", "64"]) == 1
    assert "predicts 5 classes, the dataset names 3" in one_error_line(capsys)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--data", str(data), "--lfa-target", "0.01",
                 "--imgsz", "64", "--out", str(out)]) == 1
    assert "predicts 5 classes" in one_error_line(capsys)
    assert not out.exists()
    # a model graphprune's evaluator cannot read
    other = save_checkpoint(tiny_resnet(), {"builder": "tiny_resnet", "kwargs": {},
                                            "inputs": []}, tmp_path / "resnet.pt")
    assert main(["val", "--weights", str(other), "--data", str(data), "--imgsz", "64"]) == 1
    assert "no YOLOv5 Detect head" in one_error_line(capsys)


def test_a_training_whose_loss_turns_nan_stops_and_keeps_the_last_finite_epoch(tmp_path, capsys,
                                                                             monkeypatch):
    from graphprune.detect.loss import YOLOv5Loss

    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 8, 4, seed=0, size=64)
    calls = {"n": 0}
    original = YOLOv5Loss.__call__

    def loss(self, *args, **kwargs):
        value, parts = original(self, *args, **kwargs)
        calls["n"] += 1
        return (value * float("nan"), parts) if calls["n"] == 3 else (value, parts)

    monkeypatch.setattr(YOLOv5Loss, "__call__", loss)      # batch 1 of epoch 2
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64",
                 "--epochs", "3", "--batch", "4", "--workers", "0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]           # after the first epoch's progress lines
    assert line.startswith("graphprune: error:") and "Traceback" not in err
    assert "loss became nan at epoch 2, batch 1" in line and "last finite epoch" in line
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["train"]["epoch"] == 0
    assert all(bool(torch.isfinite(t).all()) for t in ckpt["state_dict"].values()
               if t.is_floating_point())


def png_header(width: int, height: int) -> bytes:
    """The signature and IHDR chunk of a PNG of that size (8-bit grey), then IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_hostile_files_are_bounded_skipped_and_reported(tmp_path):
    from graphprune.data import labels as gplabels

    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 6, 2, seed=0, size=64)
    train = data.parent / "images" / "train"
    images = sorted(train.iterdir())
    # a truncated body behind an intact header: passes the header check, fails the decode
    cut = images[0].read_bytes()
    images[0].write_bytes(cut[:len(cut) // 3])
    # a header declaring 30000 × 30000 px (a decompression bomb), and nothing behind it
    (train / "bomb.png").write_bytes(png_header(30000, 30000))
    # a FIFO where an image and a label file should be
    os.mkfifo(train / "pipe.jpg")
    with pytest.warns(GraphpruneWarning):
        dataset = gpdata.DetectionDataset(sorted(train.iterdir()), ["a", "b", "c"], 64,
                                          augment=False)
    text = " ".join(dataset.problems)
    assert "pipe.jpg: not a regular file" in text and "bomb.png" in text
    with pytest.warns(GraphpruneWarning, match="replaced by the next readable image"):
        items = [dataset[k] for k in range(len(dataset))]        # no exception mid-run
    assert len(items) == len(dataset) and images[0].name not in {item[2] for item in items}
    # an oversized label file is left out, not read
    big = tmp_path / "big.txt"
    big.write_bytes(b"0 0.5 0.5 0.1 0.1\n" * (gplabels.MAX_LABEL_BYTES // 18 + 1))
    rows, problems = gplabels.read_yolo_labels(big, 3)
    assert len(rows) == 0 and "MiB" in problems[0]
    fifo = tmp_path / "labels.txt"
    os.mkfifo(fifo)
    assert "not a regular file" in gplabels.read_yolo_labels(fifo, 3)[1][0]
    yaml_fifo = tmp_path / "data.yaml"
    os.mkfifo(yaml_fifo)
    with pytest.raises(GraphpruneError, match="not a regular file"):
        gpdata.load_data_config(yaml_fifo)


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(builder="os.system"), "builder"),
    (lambda r: r.update(kwargs={"num_classes": 10 ** 9}), "num_classes"),
    (lambda r: r.update(kwargs={"width": float("inf")}), "width"),
    (lambda r: r.update(kwargs={"no_such_argument": 1}), "kwargs"),
    (lambda r: r.update(kwargs=[1, 2]), "kwargs"),
    (lambda r: r.update(masks={"stem.1": "01x"}), "masks"),
    (lambda r: r.update(inputs=[{"shape": [1, 3, 10 ** 6, 10 ** 6], "dtype": "float32"}]),
     "inputs[0].shape"),
    (lambda r: r.update(inputs=[{"shape": [1, 3, 32, 32], "dtype": "object"}]),
     "inputs[0].dtype"),
    (lambda r: r.update(leaves="stem"), "leaves"),
    (lambda r: r.update(parent=_nested(40)), "parent"),
])
def test_hostile_recipe_values_are_refused_before_anything_is_built(change, field, tmp_path,
                                                                    capsys):
    import graphprune as gp

    recipe = {"builder": "tiny_resnet", "kwargs": {}, "inputs": [
        {"shape": [1, 3, 32, 32], "dtype": "float32"}]}
    change(recipe)
    payload = {"format": "graphprune", "version": 1, "recipe": json.dumps(recipe),
               "state_dict": {}}
    path = tmp_path / "hostile.pt"
    torch.save(payload, path)
    with pytest.raises(GraphpruneError, match="damaged recipe") as exc:
        gp.load(path)
    assert field in str(exc.value)
    assert main(["compile", str(path), "--prune-ratio", "0.3", "--out",
                 str(tmp_path / "out")]) == 1
    assert field in one_error_line(capsys) and not (tmp_path / "out").exists()


def _nested(depth: int) -> dict:
    recipe: dict = {"builder": "tiny_resnet", "kwargs": {}}
    for _ in range(depth):
        recipe = {"parent": recipe, "masks": {}}
    return recipe


NUMBER_TEXT = st.one_of(
    st.integers(-10 ** 6, 10 ** 6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "-0", "1e309", "0x10", "½", "1,5", " 3", "abc"]))
SHAPE_TEXT = st.one_of(
    st.lists(st.integers(-3, 80), min_size=0, max_size=5).map(lambda d: ",".join(map(str, d))),
    st.sampled_from(["1,3,32,32", "1x3x32x32", "1,3,,32", "a,b", "1,3,32,32,", "1,4,32,32",
                     "1,3,1,1"]))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ratio=st.one_of(st.floats(0, 0.95).map(repr), NUMBER_TEXT),
       shape=st.one_of(st.sampled_from(["1,3,32,32", "2,3,64,48"]), SHAPE_TEXT),
       min_channels=st.one_of(st.integers(1, 4).map(str), NUMBER_TEXT),
       round_to=st.one_of(st.integers(1, 8).map(str), NUMBER_TEXT))
def test_any_option_values_give_a_whole_output_or_one_line_and_nothing(
        ratio, shape, min_channels, round_to, tmp_path_factory):
    """Whatever the values: exit 0 with every artifact the report lists, or a non-zero exit with
    one error line (a usage error from the parser, or graphprune's own) and nothing written."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    argv = ["compile", "tiny_resnet", "--prune-ratio", ratio, "--example-shape", shape,
            "--min-channels", min_channels, "--round-to", round_to, "--no-onnx", "--no-pt2",
            "--out", str(out)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exc:               # the parser's usage error
            code = exc.code
    text = err.getvalue()
    assert "Traceback" not in text
    if code == 0:
        report = json.loads((out / "report.json").read_text())
        assert sorted(p.name for p in out.iterdir()) == sorted(report["artifacts"])
    else:
        assert code in (1, 2), code
        assert text.strip().splitlines()[-1].startswith(
            "graphprune: error:" if code == 1 else "graphprune compile: error:"), text
        assert list(root.iterdir()) == []


@pytest.mark.parametrize("field, value", [("epochs", -5), ("batch", 0), ("lr0", "fast"),
                                          ("imgsz", 100), ("ema", "yes"), ("hyp", [1])])
def test_a_tampered_resume_state_is_refused_naming_the_field(field, value, tmp_path, capsys):
    import json

    from graphprune.detect.train import TrainConfig, train

    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 4, 2, seed=0, size=64)
    run = tmp_path / "run"
    train(TrainConfig(data=str(data), model="yolov5n", imgsz=64, epochs=1, batch=2, workers=0,
                      out=str(run)))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    config = json.loads(ckpt["train"]["config"])
    config[field] = value
    ckpt["train"]["config"] = json.dumps(config)
    torch.save(ckpt, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("graphprune: error:") and f"{field} = " in line
    assert (run / "last.pt").read_bytes() == before
