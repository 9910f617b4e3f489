"""Bad input: one clear line, a non-zero exit (0 where there is simply nothing to do), no
traceback, and nothing half-written — the output directory is absent or untouched."""

from __future__ import annotations

import errno
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune import data as gpdata
from graphprune.cli import main
from graphprune.models import randomize_batchnorm, tiny_resnet, yolov5n

SMALL = ["--example-shape", "1,3,32,32", "--no-onnx", "--no-pt2"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("graphprune: "), err
    assert "Traceback" not in err
    text = " ".join(lines)
    for needle in needles:
        assert needle in text, (needle, text)
    return text


class _Marker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def checkpoints(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"weights": torch.zeros(4)}, good)
    made = {
        "random": (tmp_path / "random.pt", bytes(range(7, 250)) * 8, "not a checkpoint"),
        "truncated": (tmp_path / "truncated.pt", good.read_bytes()[:200], "not a readable"),
        "empty": (tmp_path / "empty.pt", b"", "is empty"),
    }
    for path, content, _ in made.values():
        path.write_bytes(content)
    return made


@pytest.mark.parametrize("kind", ["random", "truncated", "empty"])
def test_damaged_checkpoints(kind, checkpoints, tmp_path, capsys):
    path, _, message = checkpoints[kind]
    before = path.read_bytes()
    out = tmp_path / "out"
    assert main(["compile", str(path), "--prune-ratio", "0.5", *SMALL, "--out", str(out)]) == 1
    _one_line_error(capsys, message, path.name)
    assert not out.exists() and path.read_bytes() == before


def test_missing_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(tmp_path / "nope.pt"), "--prune-ratio", "0.5", "--out",
                 str(out)]) == 1
    _one_line_error(capsys, "nope.pt", "neither a file nor a built-in model")
    assert not out.exists()


def test_code_in_a_pickle_does_not_run_without_trust(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:                       # a raw pickle, not torch.save
        pickle.dump(_Marker(str(marker)), f, protocol=4)
    out = tmp_path / "out"
    assert main(["compile", str(evil), "--prune-ratio", "0.5", "--out", str(out)]) == 1
    _one_line_error(capsys, "arbitrary code", "--trust-checkpoint")
    assert not marker.exists() and not out.exists()


def test_a_trusted_pickle_of_something_that_is_not_a_model(tmp_path, capsys):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--trust-checkpoint", "--prune-ratio", "0.5",
                 "--out", str(out)]) == 1
    _one_line_error(capsys, "holds a list of plain data, not a model")
    assert not out.exists()


def test_a_pickled_module_whose_classes_cannot_be_imported(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    torch.save(tiny_resnet(), path)
    # the class's module renamed to one that does not exist (same length: the archive's
    # layout stays valid)
    data = path.read_bytes().replace(b"graphprune.models.resnet", b"nowhere_pk.models.resnet")
    path.write_bytes(data)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--trust-checkpoint", "--prune-ratio", "0.5",
                 "--out", str(out)]) == 1
    _one_line_error(capsys, "cannot be imported", "nowhere_pk")
    assert not out.exists()


def test_a_model_without_channel_producers_has_nothing_to_prune(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.AvgPool2d(2), nn.ReLU()), path)
    out = tmp_path / "out"
    assert main(["compile", str(path), "--trust-checkpoint", "--prune-ratio", "0.5", *SMALL,
                 "--out", str(out)]) == 0
    _one_line_error(capsys, "nothing to prune", "no BatchNorm, GroupNorm, LayerNorm")
    assert not out.exists()


def test_a_model_without_batchnorm_prunes_its_convolutions(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)), path)
    out = tmp_path / "out"
    # layers of 4 and 2 channels: the default --round-to 8 would keep them whole
    assert main(["compile", str(path), "--trust-checkpoint", "--prune-ratio", "0.5", *SMALL,
                 "--round-to", "1", "--out", str(out), "--no-onnx", "--no-pt2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["compile"]["stats"]["params_after"] < report["compile"]["stats"]["params_before"]
    slim = gp.load(out / "slim.graphprune.pt",
                   model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)))
    assert slim.get_submodule("0").out_channels == 2


class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.special.expit(self.bn(self.conv(x))))


def test_unsupported_ops_are_pinned_and_named():
    model = randomize_batchnorm(_Unsupported(), 0).eval()
    with pytest.warns(gp.GraphpruneWarning, match=r"without a channel rule.*special_expit"):
        result = gp.compile(model, torch.rand(1, 3, 8, 8), prune_ratio=0.5)
    assert bool(result.masks["bn"].all())            # kept whole, not guessed


def test_untraceable_parts_become_leaves_with_a_warning(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", "yolov5n", "--random-bn", "0", "--prune-ratio", "0.3",
                 "--example-shape", "1,3,64,64", "--no-onnx", "--no-pt2", "--out",
                 str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "model.24" in report["compile"]["leaves"]
    assert any("model.24" in w and "cannot be traced" in w for w in report["warnings"])


@pytest.mark.parametrize("masks, message", [
    ({"no.such.bn": [1, 0]}, "no.such.bn"),
    ({"stem.1": [1, 0, 1]}, "stem.1"),
    ({"stem.1": "not a mask"}, "stem.1"),
])
def test_bad_mask_files(masks, message, tmp_path, capsys):
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(masks))
    out = tmp_path / "out"
    assert main(["compile", "tiny_resnet", "--masks", str(path), *SMALL, "--out",
                 str(out)]) == 1
    _one_line_error(capsys, message)
    assert not out.exists()


@pytest.mark.parametrize("yaml_text, message", [
    (None, "does not exist"),
    ("names: [a]\n", "train"),
    ("train: images\nval: images\n", "names"),
    ("train: [: bad yaml\n", "YAML"),
])
def test_bad_data_yaml(yaml_text, message, tmp_path, capsys):
    path = tmp_path / "data.yaml"
    if yaml_text is not None:
        path.write_text(yaml_text)
    out = tmp_path / "out"
    assert main(["compile", "yolov5n", "--random-bn", "0", "--data", str(path),
                 "--lfa-target", "0.01", "--imgsz", "64", "--out", str(out)]) == 1
    _one_line_error(capsys, message)
    assert not out.exists()
    assert main(["train", "--data", str(path), "--model", "yolov5n", "--imgsz", "64",
                 "--epochs", "1", "--out", str(tmp_path / "train")]) == 1
    _one_line_error(capsys, message)


def test_disk_full_while_writing_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gp.CompileResult, "save", full)
    out = tmp_path / "out"
    assert main(["compile", "tiny_resnet", "--random-bn", "0", "--prune-ratio", "0.5",
                 *SMALL, "--out", str(out)]) == 1
    _one_line_error(capsys, "No space left on device")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []          # no temporary left either


def test_an_existing_output_is_untouched_when_writing_fails(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    def denied(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(out))

    monkeypatch.setattr(gp.CompileResult, "export_onnx", denied)
    assert main(["compile", "tiny_resnet", "--random-bn", "0", "--prune-ratio", "0.5",
                 "--example-shape", "1,3,32,32", "--no-pt2", "--out", str(out),
                 "--overwrite"]) == 1
    _one_line_error(capsys, "Permission denied")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_ctrl_c_during_compile_writes_nothing(tmp_path, capsys, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("graphprune.cli.gp_compile", interrupted)     # what `compile` calls
    out = tmp_path / "out"
    assert main(["compile", "tiny_resnet", "--prune-ratio", "0.5", *SMALL, "--out",
                 str(out)]) == 130
    _one_line_error(capsys, "interrupted", "nothing was written")
    assert not out.exists()


def test_ctrl_c_during_training_keeps_the_last_complete_epoch(tmp_path, capsys, monkeypatch):
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 8, 4, seed=0, size=64)
    from graphprune.detect.train import Trainer

    calls = {"n": 0}
    original = Trainer._end_epoch

    def end_epoch(self, epoch, record):
        original(self, epoch, record)
        calls["n"] += 1
        if calls["n"] == 2:                            # Ctrl-C right after the second epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", end_epoch)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "yolov5n", "--imgsz", "64",
                 "--epochs", "5", "--batch", "4", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "resume with: graphprune train --resume" in err and "Traceback" not in err
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert json.loads(ckpt["recipe"]) and ckpt["train"]["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]   # no partial file


def test_unreadable_images_and_malformed_labels_are_skipped_and_reported(tmp_path, capsys):
    data = gpdata.make_synthetic_dataset(tmp_path / "syn", 4, 4, seed=1, size=64)
    val = data.parent / "images" / "val"
    (val / "broken.jpg").write_bytes(b"not an image at all")
    label = sorted((data.parent / "labels" / "val").glob("*.txt"))[0]
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\nnot a label\n")
    before = label.read_text()
    model = randomize_batchnorm(yolov5n(num_classes=3), 0)
    from graphprune.detect.train import model_recipe
    from graphprune.export import save_checkpoint
    ckpt = save_checkpoint(model, model_recipe(model, 64), tmp_path / "w.pt")
    with pytest.warns(gp.GraphpruneWarning, match="dataset problems"):
        assert main(["val", "--weights", str(ckpt), "--data", str(data), "--imgsz", "64",
                     "--workers", "0"]) == 0
    assert label.read_text() == before               # inputs are never modified


def test_16_bit_and_float_images_are_scaled_not_saturated(tmp_path):
    from PIL import Image

    from graphprune.data.dataset import _decode

    ramp = np.linspace(0, 1, 64, dtype=np.float64)[None, :].repeat(32, axis=0)
    Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(ramp.astype(np.float32)).save(tmp_path / "unit.tif")
    Image.fromarray((100 + 200 * ramp).astype(np.float32)).save(tmp_path / "wide.tif")
    expected = np.rint(ramp * 255)
    for name in ("a16.png", "unit.tif", "wide.tif"):
        img, orig = _decode(tmp_path / name, 64)
        assert orig == (32, 64) and img.shape == (32, 64, 3) and img.dtype == np.uint8
        assert np.abs(img[..., 0].astype(float) - expected).max() <= 1, name
        assert (img[..., 0] == img[..., 2]).all()


def test_an_exception_without_a_message_still_gives_a_line():
    from graphprune.errors import first_line, summary

    assert summary(RuntimeError("")) == "RuntimeError"          # the old [0] raised IndexError
    assert summary(ValueError("\n  bad value\nmore")) == "ValueError: bad value"
    assert first_line(OSError("x" * 500), 40) == "x" * 40 and first_line(KeyError()) == ""
