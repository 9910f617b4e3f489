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
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_outputs import one_error_line

import graphprune.cli as cli
from graphprune import data as gpdata
from graphprune.cli import main
from graphprune.errors import GraphpruneError, GraphpruneWarning
from graphprune.export import save_checkpoint
from graphprune.models import tiny_resnet, yolov5n


@pytest.mark.parametrize("argv, option", [
    (["train", "--data", "d.yaml", "--epochs", "0"], "--epochs"),
    (["train", "--data", "d.yaml", "--epochs", "-5"], "--epochs"),
    (["train", "--data", "d.yaml", "--batch", "0"], "--batch"),
    (["train", "--data", "d.yaml", "--imgsz", "0"], "--imgsz"),
    (["train", "--data", "d.yaml", "--imgsz", "100"], "--imgsz"),
    (["train", "--data", "d.yaml", "--val-every", "0"], "--val-every"),
    (["train", "--data", "d.yaml", "--lr0", "nan"], "--lr0"),
    (["train", "--data", "d.yaml", "--theta", "-1"], "--theta"),
    (["train", "--data", "d.yaml", "--workers", "100000"], "--workers"),
    (["val", "--weights", "m.pt", "--data", "d.yaml", "--conf", "nan"], "--conf"),
    (["val", "--weights", "m.pt", "--data", "d.yaml", "--iou", "1.5"], "--iou"),
    (["compile", "tiny_resnet", "--num-classes", "0", "--prune-ratio", "0.3"], "--num-classes"),
    (["compile", "tiny_resnet", "--num-classes", "-1", "--prune-ratio", "0.3"], "--num-classes"),
    (["compile", "tiny_resnet", "--num-classes", "100000000", "--prune-ratio", "0.3"],
     "--num-classes"),
    (["compile", "tiny_resnet", "--flops-target", "0.5", "--calib-images", "0"],
     "--calib-images"),
    (["data", "synthetic", "out", "--train", "0"], "--train"),
    (["data", "synthetic", "out", "--val", "0"], "--val"),
    (["data", "nwpu", "src", "out", "--val-fraction", "0"], "--val-fraction"),
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


def test_a_dataset_with_an_empty_split_is_never_written(tmp_path):
    with pytest.raises(GraphpruneError, match="the val split of .* would hold no images"):
        gpdata.make_synthetic_dataset(tmp_path / "syn", 2, 0, seed=0, size=32)
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
    (["--example-shape", "1,4,32,32", "--prune-ratio", "0.3"],
     "tiny_resnet cannot run on the example inputs (1x4x32x32 float32)"),
    (["--example-shape", "3,32,32", "--prune-ratio", "0.3"],
     "tiny_resnet cannot run on the example inputs (3x32x32 float32)"),
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
@example(ratio="0.3", shape="1,3,32,32", min_channels="1", round_to="1")
def test_any_option_values_give_a_whole_output_or_one_line_and_nothing(
        ratio, shape, min_channels, round_to, tmp_path_factory):
    """Whatever the values: exit 0 with every artifact the report lists, or a non-zero exit with
    one error line (a usage error from the parser, or graphprune's own) and nothing written."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "out"
    code, text = _run_cli(["compile", "tiny_resnet", "--prune-ratio", ratio, "--example-shape",
                           shape, "--min-channels", min_channels, "--round-to", round_to,
                           "--no-onnx", "--no-pt2", "--out", str(out)])
    if code == 0:
        report = json.loads((out / "report.json").read_text())
        assert sorted(p.name for p in out.iterdir()) == sorted(report["artifacts"])
    else:
        _assert_one_line_failure(code, text, "compile")
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


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, capsys):
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 2, 2, seed=0, size=64)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["train", "--data", str(data), "--batch", "100000", "--imgsz", "4096",
                 "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert "a training batch of shape 100000,3,4096,4096 needs at least" in line and "GiB" in line
    path = save_checkpoint(yolov5n(num_classes=3).eval(), {"builder": "yolov5n", "kwargs": {
        "num_classes": 3}, "inputs": []}, tmp_path / "model.pt")
    assert main(["val", "--weights", str(path), "--data", str(data), "--batch", "100000",
                 "--imgsz", "4096", "--json-out", str(tmp_path / "m.json")]) == 1
    assert "a validation batch of shape 100000,3,4096,4096" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "model.pt"])
    # the library refuses it too, before the run directory exists
    from graphprune.detect.train import TrainConfig

    with pytest.raises(GraphpruneError, match="a training batch"):
        TrainConfig(data=str(data), batch=100000, imgsz=4096, out=str(tmp_path / "run")).check()
    assert not (tmp_path / "run").exists()


def _run_cli(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with its output captured: (exit code, stderr); the parser's usage errors
    become their exit code."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def _assert_one_line_failure(code: int, text: str, command: str) -> None:
    assert "Traceback" not in text
    assert code in (1, 2), (code, text)
    assert text.strip().splitlines()[-1].startswith(
        "graphprune: error:" if code == 1 else f"graphprune {command}: error:"), text


SMALL_COUNT = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(
    ["", "nan", "1.5", "1e3x", "½", "-0", "abc", " 2"]))
SIDE_TEXT = st.one_of(st.sampled_from(["32", "64", "96"]), st.integers(-64, 200).map(str),
                      st.sampled_from(["", "nan", "64.0", "1e9", "99999", "0x40"]))


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    data = gpdata.make_synthetic_dataset(root / "syn", 2, 2, seed=0, size=64)
    model = save_checkpoint(yolov5n(num_classes=3).eval(), {
        "builder": "yolov5n", "kwargs": {"num_classes": 3}, "inputs": []}, root / "model.pt")
    return data, model


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(epochs=st.one_of(st.integers(1, 3).map(str), NUMBER_TEXT),
       batch=st.one_of(st.integers(1, 4).map(str), NUMBER_TEXT, st.just("100000000")),
       imgsz=SIDE_TEXT, lr0=st.one_of(st.floats(1e-4, 0.1).map(repr), NUMBER_TEXT),
       val_every=st.one_of(st.integers(1, 3).map(str), NUMBER_TEXT),
       warmup=st.one_of(st.floats(0, 3).map(repr), NUMBER_TEXT))
@example(epochs="2", batch="2", imgsz="64", lr0="0.01", val_every="1", warmup="0.5")
def test_any_training_option_values_start_a_run_or_give_one_line_and_nothing(
        epochs, batch, imgsz, lr0, val_every, warmup, tiny_inputs, tmp_path_factory,
        monkeypatch):
    """The whole validation layer of ``graphprune train`` (argument types, TrainConfig.check,
    the memory bound, the output check, the trainer's set-up) before the training loop:
    whatever the values, either the loop is reached with settings that pass TrainConfig.check,
    or one line and no run."""
    from graphprune.detect.train import Trainer

    data, _ = tiny_inputs
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    reached = []

    def loop(trainer, stop_after=None):         # stands in for the training loop
        reached.append(trainer.config.check())
        (trainer.out / "last.pt").write_bytes(b"weights")
        return []

    monkeypatch.setattr(Trainer, "fit", loop)
    code, text = _run_cli(["train", "--data", str(data), "--model", "yolov5n", "--epochs", epochs,
                           "--batch", batch, "--imgsz", imgsz, "--lr0", lr0, "--val-every",
                           val_every, "--warmup-epochs", warmup, "--workers", "0",
                           "--out", str(out)])
    if code == 0:
        assert len(reached) == 1 and reached[0].epochs == int(epochs)
        assert sorted(p.name for p in out.iterdir()) == ["last.pt"]
    else:
        _assert_one_line_failure(code, text, "train")
        assert not reached and list(root.iterdir()) == []


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(imgsz=SIDE_TEXT, batch=st.one_of(st.integers(1, 4).map(str), NUMBER_TEXT),
       conf=st.one_of(st.floats(0, 1).map(repr), NUMBER_TEXT),
       iou=st.one_of(st.floats(0, 1).map(repr), NUMBER_TEXT),
       max_det=st.one_of(st.integers(1, 300).map(str), NUMBER_TEXT))
@example(imgsz="64", batch="2", conf="0.001", iou="0.6", max_det="300")
def test_any_validation_option_values_give_metrics_or_one_line_and_nothing(
        imgsz, batch, conf, iou, max_det, tiny_inputs, tmp_path_factory):
    data, model = tiny_inputs
    root = tmp_path_factory.mktemp("cli")
    code, text = _run_cli(["val", "--weights", str(model), "--data", str(data), "--imgsz", imgsz,
                           "--batch", batch, "--conf", conf, "--iou", iou, "--max-det", max_det,
                           "--workers", "0", "--device", "cpu",
                           "--json-out", str(root / "metrics.json")])
    if code == 0:
        metrics = json.loads((root / "metrics.json").read_text())
        assert 0 <= metrics["map"] <= metrics["map50"] <= 1
    else:
        _assert_one_line_failure(code, text, "val")
        assert list(root.iterdir()) == []


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=SMALL_COUNT, val=SMALL_COUNT, size=SIDE_TEXT, seed=SMALL_COUNT)
@example(train="2", val="1", size="64", seed="3")
def test_any_dataset_option_values_give_a_loadable_dataset_or_one_line_and_nothing(
        train, val, size, seed, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    out = root / "syn"
    code, text = _run_cli(["data", "synthetic", str(out), "--train", train, "--val", val,
                           "--size", size, "--seed", seed])
    if code == 0:
        config = gpdata.load_data_config(out / "data.yaml")
        assert len(config.train) == int(train) and len(config.val) == int(val)
        gpdata.DetectionDataset(config.train, config.names, 32, augment=False)[0]
    else:
        _assert_one_line_failure(code, text, "data synthetic")
        assert list(root.iterdir()) == []


@pytest.mark.parametrize("extra, phrase", [
    (["--hyp", "fliplr=5"], "augmentation setting fliplr = 5.0 is not in [0, 1]"),
    (["--hyp", "scale=1"], "augmentation setting scale = 1.0 is not in [0, 1)"),
    (["--hyp", "hsv_h=nan"], "hsv_h = nan"),
    (["--device", "banana"], "'banana' is not a device"),
    (["--weights", "notes.txt"], "not a graphprune checkpoint"),
])
def test_a_training_refused_at_set_up_leaves_no_run_and_the_old_one_whole(extra, phrase,
                                                                          tiny_inputs, tmp_path,
                                                                          capsys):
    from test_outputs import digest

    data, _ = tiny_inputs
    (tmp_path / "notes.txt").write_text("not weights")
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"an earlier run")
    before = digest(tmp_path)
    argv = ["train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64", "--epochs", "1",
            "--workers", "0", *[str(tmp_path / v) if v == "notes.txt" else v for v in extra]]
    assert main([*argv, "--out", str(tmp_path / "new")]) == 1
    assert phrase in one_error_line(capsys)
    assert main([*argv, "--out", str(run), "--overwrite"]) == 1
    assert phrase in one_error_line(capsys)
    assert digest(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "run"]


@pytest.mark.parametrize("extra, phrase", [
    (["--baseline", "base.pt"], "--baseline applies only to a target-guided compile"),
    (["--data", "d.yaml", "--eval"], "--data, --eval apply only to a target-guided compile"),
    (["--device", "cpu"], "--device applies only"),
    (["--heatmaps", "0"], "--heatmaps applies only"),
    (["--imgsz", "64", "--example-shape", "1,3,32,32"], "--imgsz 64 and --example-shape "
                                                        "1,3,32,32 disagree"),
])
def test_a_plain_compile_refuses_options_it_would_ignore(extra, phrase, tmp_path, capsys):
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.3", *extra,
                 "--out", str(tmp_path / "out")]) == 1
    assert phrase in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_plain_compile_takes_imgsz_as_its_example(tmp_path):
    out = tmp_path / "out"
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.3", "--imgsz", "64", "--no-onnx",
                 "--no-pt2", "--out", str(out)]) == 0
    import graphprune as gp

    assert gp.load(out / "slim.graphprune.pt").graphprune_recipe["inputs"][0]["shape"] == [
        1, 3, 64, 64]


@pytest.mark.parametrize("argv", [
    ["compile", "tiny_resnet", "--prune-ratio", "0.3", "--out", "{f}/out"],
    ["train", "--data", "{data}", "--model", "yolov5n", "--imgsz", "64", "--out", "{f}/run"],
    ["data", "synthetic", "{f}/syn", "--train", "2", "--val", "1", "--size", "32"],
    ["demo", "--quick", "--out", "{f}/demo"],
    ["val", "--weights", "{model}", "--data", "{data}", "--imgsz", "64", "--json-out", "{f}/m.json"],
])
def test_an_output_below_a_file_is_refused_up_front(argv, tiny_inputs, tmp_path, capsys):
    data, model = tiny_inputs
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    argv = [a.format(f=afile, data=data, model=model) for a in argv]
    assert main(argv) == 1
    assert f"'{afile}' is a file, not a folder" in one_error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]
    assert afile.read_text() == "a file, not a folder"


def test_a_json_out_that_is_a_directory_is_refused_before_validating(tiny_inputs, tmp_path,
                                                                      capsys, monkeypatch):
    data, model = tiny_inputs
    monkeypatch.setattr(cli, "validate", lambda *a, **k: pytest.fail("validated first"))
    (tmp_path / "metrics").mkdir()
    assert main(["val", "--weights", str(model), "--data", str(data), "--imgsz", "64",
                 "--json-out", str(tmp_path / "metrics")]) == 1
    line = one_error_line(capsys)
    assert f"--json-out '{tmp_path / 'metrics'}' is a directory" in line
    assert [p.name for p in tmp_path.iterdir()] == ["metrics"]


@pytest.mark.parametrize("call, phrase", [
    (lambda gp, m, x: gp.compile("model.pt", x, prune_ratio=0.3),
     "the model must be a torch.nn.Module, got str"),
    (lambda gp, m, x: gp.compile(m, x.half(), prune_ratio=0.3),
     "the model cannot run on the example inputs (1x3x32x32 float16)"),
    (lambda gp, m, x: gp.compile(m, torch.rand(1, 4, 32, 32), prune_ratio=0.3),
     "the model cannot run on the example inputs (1x4x32x32 float32)"),
    (lambda gp, m, x: gp.compile(m, x * float("nan"), prune_ratio=0.3),
     "example input 0 holds NaN/Inf values"),
    (lambda gp, m, x: gp.compile(m, x, prune_ratio=0.3, exclude=[3]),
     "exclude must be a list of module names or patterns"),
    (lambda gp, m, x: gp.analyze(m, (x, x)), "the model cannot run on the example inputs"),
])
def test_the_library_refuses_bad_inputs_as_the_inputs_fault(call, phrase):
    import graphprune as gp
    from graphprune.models import randomize_batchnorm

    model = randomize_batchnorm(tiny_resnet(), 0).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(GraphpruneError) as exc:
        call(gp, model, torch.rand(1, 3, 32, 32))
    assert phrase in str(exc.value) and "please report" not in str(exc.value)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_one_name_given_as_a_string_is_one_name_not_its_letters():
    import graphprune as gp
    from graphprune.models import randomize_batchnorm

    model = randomize_batchnorm(tiny_resnet(), 0).eval()
    x = torch.rand(1, 3, 32, 32)
    as_string = gp.compile(model, x, prune_ratio=0.5, exclude="stem")
    as_list = gp.compile(model, x, prune_ratio=0.5, exclude=["stem"])
    assert as_string.masks.keys() == as_list.masks.keys()
    assert all(torch.equal(torch.as_tensor(as_string.masks[k]), torch.as_tensor(as_list.masks[k]))
               for k in as_list.masks)
    assert bool(torch.as_tensor(as_list.masks["stem.1"]).all())


def test_a_truncated_image_is_skipped_and_reported_through_train_and_val(tmp_path, capsys):
    from test_outputs import digest

    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 4, 3, seed=0, size=64)
    for split in ("train", "val"):
        image = sorted((data.parent / "images" / split).iterdir())[0]
        body = image.read_bytes()
        image.write_bytes(body[:len(body) // 3])       # the header intact, the body cut
    before = digest(data.parent)
    run = tmp_path / "run"
    with pytest.warns(GraphpruneWarning, match="replaced by the next readable image"):
        assert main(["train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64",
                     "--epochs", "1", "--batch", "2", "--workers", "0", "--out", str(run)]) == 0
    assert len((run / "results.jsonl").read_text().splitlines()) == 1
    with pytest.warns(GraphpruneWarning, match="replaced by the next readable image"):
        assert main(["val", "--weights", str(run / "last.pt"), "--data", str(data), "--imgsz",
                     "64", "--workers", "0", "--json-out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["map50"] >= 0
    assert digest(data.parent) == before                 # the dataset is only read


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=5) |
                    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
LAYER = st.sampled_from(["stem.1", "layer1.0.conv1.1", "layer1.0.conv2.1", "nope", ""])


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(JSON, st.dictionaries(LAYER, st.one_of(
    st.lists(st.sampled_from([0, 1, True, False, 2, -1, 0.5, "1", None]), max_size=20),
    st.lists(st.booleans(), min_size=16, max_size=16), st.text(max_size=16), JSON), max_size=3)),
       raw=st.one_of(st.none(), st.binary(max_size=40)))
@example(content={"stem.1": [1] * 8 + [0] * 8}, raw=None)
def test_any_mask_file_gives_a_whole_output_or_one_line_and_nothing(content, raw,
                                                                   tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    masks = root / "masks.json"
    masks.write_bytes(raw if raw is not None else json.dumps(content).encode())
    out = root / "out"
    code, text = _run_cli(["compile", "tiny_resnet", "--random-bn", "0", "--masks", str(masks),
                           "--example-shape", "1,3,32,32", "--no-onnx", "--no-pt2",
                           "--out", str(out)])
    if code == 0:
        report = json.loads((out / "report.json").read_text())
        assert sorted(p.name for p in out.iterdir()) == sorted(report["artifacts"])
    else:
        _assert_one_line_failure(code, text, "compile")
        assert sorted(p.name for p in root.iterdir()) == ["masks.json"]


PATH_PIECE = st.sampled_from(["", ".", "..", "out", "inp", "model.pt", "afile", "a b", "ü",
                              "x" * 300, "-o", "new"])


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(PATH_PIECE, min_size=1, max_size=3), overwrite=st.booleans())
@example(pieces=["new", "out"], overwrite=False)
def test_any_output_path_gives_a_whole_output_or_one_line_and_changes_nothing(
        pieces, overwrite, tmp_path_factory, monkeypatch):
    """Whatever --out names (the input's folder, the input itself, a file, the current
    directory or above it, a name too long, odd characters): a whole output in a new place, or
    one line, and every file that was there before is unchanged."""
    from test_outputs import digest

    root = tmp_path_factory.mktemp("paths")
    here = root / "l1" / "l2" / "l3"                # three ".." still land inside root
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    (here / "inp").mkdir()
    save_checkpoint(tiny_resnet().eval(), {"builder": "tiny_resnet", "kwargs": {}, "inputs": []},
                    here / "inp" / "model.pt")
    (here / "afile").write_text("mine")
    (here / "out").mkdir()
    (here / "out" / "old.txt").write_text("an earlier output")
    before = digest(root)
    out = "/".join(pieces).lstrip("/") or "."     # relative: below root whatever the pieces
    code, text = _run_cli(["compile", "inp/model.pt", "--prune-ratio", "0.3", "--example-shape",
                           "1,3,32,32", "--no-onnx", "--no-pt2", f"--out={out}",
                           *(["--overwrite"] if overwrite else [])])
    after = digest(root)
    if code == 0:
        written = (here / out).resolve()
        report = json.loads((written / "report.json").read_text())
        assert sorted(p.name for p in written.iterdir()) == sorted(report["artifacts"])
        replaced = written.relative_to(root)
        kept = {k: v for k, v in before.items() if not Path(k).is_relative_to(replaced)}
        assert {k: after[k] for k in kept} == kept
    else:
        _assert_one_line_failure(code, text, "compile")
        assert after == before
        assert not [p for p in root.rglob(".*")]            # no temporaries left
