"""End to end with ultralytics: sparse training in its trainer, compile of its checkpoint, and
a slim checkpoint that ultralytics itself loads, validates and predicts with.

One tiny run is shared by the tests: yolov8n on a 16 + 8-image synthetic set at 96 px, one
epoch through the ultralytics trainer with ``add_sparsity``, then ``graphprune compile best.pt
--trust-checkpoint --data ... --lfa-target 0.01 --min-channels 8 --ultralytics-checkpoint
slim.pt``.  Runs in
the ultralytics environment (``-m ultralytics``); nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="graphprune-yolo-"))
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import load_checkpoint  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.attention import AttentionReader  # noqa: E402
from graphprune.checkpoint import open_model  # noqa: E402
from graphprune.cli import main  # noqa: E402
from graphprune.data import load_data_config, make_synthetic_dataset  # noqa: E402
from graphprune.integrations.ultralytics import (SlimDetectionModel, SlimTrainer,  # noqa: E402
                                                 add_sparsity, finetune,
                                                 save_ultralytics_checkpoint)

pytestmark = pytest.mark.ultralytics
IMGSZ = 96
ULTRALYTICS = dict(device="cpu", workers=0, amp=False, plots=False, verbose=False)


def _ultralytics_yaml(root: Path) -> Path:
    """data.yaml as ultralytics writes them: an absolute ``path``, split folders relative to
    it, and names as an {index: name} mapping."""
    names = load_data_config(root / "data.yaml").names
    path = root / "ultralytics.yaml"
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n" +
                    "".join(f"  {i}: {n}\n" for i, n in enumerate(names)))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Sparse-train one epoch with ultralytics, then compile its best.pt through the CLI."""
    tmp = tmp_path_factory.mktemp("ultralytics-e2e")
    make_synthetic_dataset(tmp / "data", n_train=16, n_val=8, size=IMGSZ)
    data = _ultralytics_yaml(tmp / "data")
    model = YOLO("yolov8n.yaml")
    add_sparsity(model, mode="l1rr", theta=1e-2, phase_steps=1)
    model.train(data=str(data), epochs=1, imgsz=IMGSZ, batch=8, project=str(tmp / "runs"),
                name="sparse", seed=0, val=False, **ULTRALYTICS)
    best = tmp / "runs" / "sparse" / "weights" / "best.pt"
    slim, out = tmp / "slim.pt", tmp / "compile"
    with warnings.catch_warnings():       # torch.export on the head's cached anchor grid
        warnings.filterwarnings("ignore", "The tensor attributes", UserWarning)
        # (at least 8 channels a layer: this one-epoch model's attention barely changes, so
        # the search would cut 99 % of it, below the 0.1 MB that ultralytics' export accepts)
        code = main(["compile", str(best), "--trust-checkpoint", "--data", str(data),
                     "--lfa-target", "0.01", "--calib-images", "8", "--heatmaps", "0",
                     "--min-channels", "8", "--out", str(out),
                     "--ultralytics-checkpoint", str(slim)])
    assert code == 0
    return {"tmp": tmp, "data": data, "best": best, "slim": slim, "out": out,
            "report": json.loads((out / "report.json").read_text())}


def test_compile_of_an_ultralytics_checkpoint_gives_one_ultralytics_validates(run):
    # the trainer's checkpoint: a half-precision DetectionModel with the sparsity state beside
    ckpt = torch.load(run["best"], map_location="cpu", weights_only=False)
    assert next(ckpt["model"].parameters()).dtype == torch.float16
    assert (run["best"].parent / "sparsity.pt").exists()
    report = run["report"]
    assert report["imgsz"] == IMGSZ                      # the training size, from train_args
    assert report["lfa"] <= 0.01 and len(report["fa_sparse"]) == 3
    assert report["ultralytics_checkpoint"] == str(run["slim"])
    assert {"slim.graphprune.pt", "slim.onnx", "slim.pt2"} <= set(report["artifacts"])

    slim = YOLO(str(run["slim"]))
    assert isinstance(slim.model, SlimDetectionModel) and slim.task == "detect"
    assert slim.model.names == ckpt["model"].names
    original = sum(p.numel() for p in ckpt["model"].parameters())
    assert sum(p.numel() for p in slim.model.parameters()) < original
    metrics = slim.val(data=str(run["data"]), imgsz=IMGSZ, batch=8, project=str(run["tmp"]),
                       name="val", **ULTRALYTICS)
    values = metrics.results_dict
    for key in ("metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)",
                "metrics/mAP50-95(B)"):
        assert 0.0 <= values[key] <= 1.0

    image = sorted((run["tmp"] / "data" / "images" / "val").iterdir())[0]
    results = slim(str(image), imgsz=IMGSZ, conf=0.0001, device="cpu", verbose=False)
    assert len(results) == 1 and results[0].boxes.data.shape[1] == 6
    assert results[0].names == ckpt["model"].names


def test_the_written_model_computes_exactly_the_compiled_module(run, tmp_path):
    source = open_model(str(run["best"]), trust=True)
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)       # the head is kept whole
        result = gp.compile(source, x[:1], prune_ratio=0.5)
    path = save_ultralytics_checkpoint(result, source, tmp_path / "slim.pt")
    with torch.no_grad():
        expected = result.module(x)
        for loaded in (torch.load(path, map_location="cpu", weights_only=False)["model"],
                       load_checkpoint(path)[0], YOLO(str(path)).model):
            got = loaded.eval()(x)
            assert torch.equal(got[0], expected[0])
            for key in ("boxes", "scores"):
                assert torch.equal(got[1][key], expected[1][key])
        fused = load_checkpoint(path)[0].fuse(verbose=False)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x)[0], expected[0], atol=1e-3, rtol=1e-4)


def test_a_ratio_compile_writes_one_too(run, tmp_path):
    path = tmp_path / "slim.pt"
    assert main(["compile", str(run["best"]), "--trust-checkpoint", "--prune-ratio", "0.3",
                 "--no-onnx", "--no-pt2", "--out", str(tmp_path / "out"),
                 "--ultralytics-checkpoint", str(path)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["example_shape"] == [1, 3, IMGSZ, IMGSZ]
    assert report["ultralytics_checkpoint"] == str(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    original = torch.load(run["best"], map_location="cpu", weights_only=False)
    assert original["train_args"].items() <= ckpt["train_args"].items()
    assert ckpt["epoch"] == -1
    assert ckpt["version"] == original["version"] and ckpt["ema"] is None
    assert ckpt["graphprune"]["stats"]["params_after"] == \
        sum(p.numel() for p in ckpt["model"].parameters())


def test_lfa_reads_the_class_scores_of_each_level(run):
    """F on a v8 head: the max class probability per cell, split back into the levels."""
    model = open_model(str(run["best"]), trust=True)
    x = torch.rand(2, 3, IMGSZ, IMGSZ)
    maps = AttentionReader()(model, x)
    assert [tuple(f.shape) for f in maps] == [(2, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32)]
    with torch.no_grad():
        decoded = model(x)[0]                     # [B, 4 + nc, cells], classes as probabilities
    assert torch.allclose(torch.cat([f.flatten(1) for f in maps], 1), decoded[:, 4:].amax(1))


def test_an_ultralytics_checkpoint_is_not_unpickled_without_trust(run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(run["best"]), "--data", str(run["data"]), "--lfa-target",
                 "0.01", "--out", str(out), "--ultralytics-checkpoint",
                 str(tmp_path / "slim.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "arbitrary code" in err and "--trust-checkpoint" in err
    assert not out.exists() and not (tmp_path / "slim.pt").exists()


def test_ultralytics_checkpoint_refuses_other_models(tmp_path, capsys):
    assert main(["compile", "yolov5n", "--num-classes", "2", "--prune-ratio", "0.5",
                 "--example-shape", "1,3,64,64", "--no-onnx", "--no-pt2",
                 "--out", str(tmp_path / "out"),
                 "--ultralytics-checkpoint", str(tmp_path / "slim.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ultralytics DetectionModel" in err
    assert main(["compile", "yolov5n", "--prune-ratio", "0.5", "--out", str(tmp_path / "o"),
                 "--ultralytics-checkpoint", str(tmp_path / "slim.onnx")]) == 1
    assert "must end in .pt" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "slim.pt").exists()


def test_a_dataset_path_relative_to_the_working_directory(run, tmp_path, monkeypatch):
    """ultralytics reads a relative ``path`` from the working directory; so does graphprune
    when it is not relative to the yaml's folder."""
    monkeypatch.chdir(run["tmp"])
    config = tmp_path / "data.yaml"
    config.write_text("path: data\ntrain: images/train\nval: images/val\n"
                      "names: {0: a, 1: b, 2: c}\n")
    loaded = load_data_config(config)
    assert len(loaded.train) == 16 and len(loaded.val) == 8 and loaded.names == ["a", "b", "c"]


def test_eval_on_an_ultralytics_model_is_refused_in_one_line(run, tmp_path, capsys):
    """graphprune's evaluator reads YOLOv5 outputs only: --eval says so and points to
    ultralytics' own validation, before any work and without writing anything."""
    out = tmp_path / "out"
    assert main(["compile", str(run["best"]), "--trust-checkpoint", "--data", str(run["data"]),
                 "--lfa-target", "0.01", "--eval", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--eval" in err and ".val(" in err
    assert not out.exists()


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_ultralytics_own_trainer_refuses_a_slim_checkpoint(run, tmp_path):
    """ultralytics' trainer would rebuild the unpruned network from the yaml (and train it,
    silently, with the slim weights loaded where shapes match): refused, saying how."""
    with pytest.raises(gp.GraphpruneError, match="rebuild the unpruned network") as caught:
        YOLO(str(run["slim"])).train(data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=8,
                                     project=str(tmp_path), name="plain", **ULTRALYTICS)
    assert "finetune" in caught.value.hint


def test_finetune_trains_the_slim_model_in_ultralytics_own_loop(run, tmp_path):
    slim_params = _params(YOLO(str(run["slim"])).model)
    trained = finetune(run["slim"], data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=8,
                       project=str(tmp_path), name="ft", seed=0, **ULTRALYTICS)
    assert isinstance(trained.model, SlimDetectionModel)
    weights = tmp_path / "ft" / "weights"
    before = {k: v.float() for k, v in YOLO(str(run["slim"])).model.state_dict().items()}
    for name in ("best.pt", "last.pt"):
        model = YOLO(str(weights / name)).model
        assert isinstance(model, SlimDetectionModel) and _params(model) == slim_params
    after = YOLO(str(weights / "last.pt")).model.state_dict()
    assert any(not torch.equal(after[k].float(), v) for k, v in before.items()
               if v.is_floating_point())                           # it did train
    metrics = YOLO(str(weights / "best.pt")).val(data=str(run["data"]), imgsz=IMGSZ, batch=8,
                                                 project=str(tmp_path), name="val",
                                                 **ULTRALYTICS)
    assert 0.0 <= metrics.results_dict["metrics/mAP50(B)"] <= 1.0
    onnx_path = YOLO(str(weights / "best.pt")).export(format="onnx", imgsz=IMGSZ)
    assert Path(onnx_path).exists()


class _Stop(Exception):
    pass


def test_an_interrupted_finetune_resumes_as_the_slim_model(run, tmp_path):
    model = YOLO(str(run["slim"]))

    def stop(trainer):                    # after epoch 0 is saved: an interruption
        raise _Stop

    model.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(_Stop):
        model.train(trainer=SlimTrainer, data=str(run["data"]), epochs=2, imgsz=IMGSZ, batch=8,
                    project=str(tmp_path), name="ft", seed=0, **ULTRALYTICS)
    last = tmp_path / "ft" / "weights" / "last.pt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    resumed = finetune(last, resume=True)
    assert isinstance(resumed.model, SlimDetectionModel)
    assert _params(resumed.model) == _params(YOLO(str(run["slim"])).model)
    rows = (tmp_path / "ft" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2                      # a header and both epochs


def test_compile_finetunes_an_ultralytics_model_in_ultralytics(run, tmp_path):
    out, slim = tmp_path / "out", tmp_path / "slim.pt"
    assert main(["compile", str(run["best"]), "--trust-checkpoint", "--data", str(run["data"]),
                 "--flops-target", "0.3", "--calib-images", "8", "--heatmaps", "0",
                 "--finetune-epochs", "1", "--no-onnx", "--no-pt2", "--out", str(out),
                 "--ultralytics-checkpoint", str(slim)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["finetune_epochs"] == 1 and 0.0 <= report["map50_finetuned"] <= 1.0
    tuned = YOLO(str(out / "finetune" / "weights" / "best.pt")).model
    assert isinstance(tuned, SlimDetectionModel)
    assert _params(tuned) == _params(YOLO(str(slim)).model)


def test_finetune_refuses_data_with_other_classes_and_a_plain_checkpoint(run, tmp_path):
    other = tmp_path / "two.yaml"
    other.write_text(run["data"].read_text().split("names:")[0] + "names:\n  0: a\n  1: b\n")
    with pytest.raises(gp.GraphpruneError, match="classes and the data has 2"):
        finetune(run["slim"], data=str(other), epochs=1, imgsz=IMGSZ, batch=8,
                 project=str(tmp_path), name="other", **ULTRALYTICS)
    with pytest.raises(gp.GraphpruneError, match="not a graphprune slim model"):
        finetune(run["best"], data=str(run["data"]), epochs=1)


def test_progressive_sparsity_in_ultralytics_trainer_adds_its_term_after_clipping(run, tmp_path,
                                                                                  monkeypatch):
    """The collapse-proof mode in ultralytics' own loop: in each optimizer step the term goes
    in after the task's gradient is unscaled and clipped and before the step, the fade right
    after it (graphprune's trainer's order); the chosen channels reach the target and are
    zero in the model being trained."""
    from graphprune.sparsity import SparsityRegularizer

    events = []

    def spy(name, method):
        def wrapped(*args, **kwargs):
            events.append(name)
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch.amp.GradScaler, "unscale_",
                        spy("unscale", torch.amp.GradScaler.unscale_))
    monkeypatch.setattr(torch.amp.GradScaler, "step", spy("step", torch.amp.GradScaler.step))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        spy("clip", torch.nn.utils.clip_grad_norm_))
    monkeypatch.setattr(SparsityRegularizer, "apply", spy("apply", SparsityRegularizer.apply))
    monkeypatch.setattr(SparsityRegularizer, "after_step",
                        spy("after_step", SparsityRegularizer.after_step))
    model = YOLO("yolov8n.yaml")
    callbacks = add_sparsity(model, mode="progressive", target=0.3, phase_steps=1, max_phases=1)
    model.train(data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=4, nbs=4,
                project=str(tmp_path), name="progressive", seed=0, val=False, **ULTRALYTICS)
    steps = len(events) // 5
    assert steps >= 2
    assert events == ["unscale", "clip", "apply", "step", "after_step"] * steps
    reg = callbacks.regularizer
    assert reg.phase == 1 and reg.removed() >= 0.3
    for gamma, chosen in zip(reg.gammas, reg.chosen):
        assert torch.all(gamma[chosen] == 0)


def test_a_checkpoint_with_a_pruned_head_loads_fuses_finetunes_and_exports(run, tmp_path):
    """Masks inside the head (its box and class branches, compiled on their own inside the
    kept-whole Detect): the ultralytics checkpoint computes the compiled module, fuses every
    BatchNorm (the branches' too), fine-tunes at its own size, and its ONNX export computes
    what PyTorch does."""
    import numpy as np
    import onnxruntime as ort

    source = open_model(str(run["best"]), trust=True)
    head = f"model.{len(source.model) - 1}"
    rng = np.random.default_rng(3)
    masks = {n: rng.random(m.num_features) < 0.5 for n, m in source.named_modules()
             if isinstance(m, torch.nn.BatchNorm2d)}
    x = torch.rand(2, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        result = gp.compile(source, x[:1], masks=masks)
    inside = [n for n in result.masks if n.startswith(head + ".")]
    assert inside and all(not result.masks[n].all() for n in inside)
    params = [_params(m.get_submodule(head)) for m in (source, result.module)]
    assert params[1] <= 0.75 * params[0]
    path = save_ultralytics_checkpoint(result, source, tmp_path / "slim.pt")
    loaded = YOLO(str(path)).model
    with torch.no_grad():
        expected, got = result.module(x), loaded.eval()(x)
        assert torch.equal(got[0], expected[0])
        fused = load_checkpoint(path)[0].fuse(verbose=False)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x)[0], expected[0], atol=1e-3, rtol=1e-4)
    trained = finetune(path, data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=8,
                       project=str(tmp_path), name="ft", seed=0, **ULTRALYTICS)
    best = tmp_path / "ft" / "weights" / "best.pt"
    assert isinstance(trained.model, SlimDetectionModel)
    assert _params(YOLO(str(best)).model) == _params(loaded) == result.stats.params_after
    onnx_path = YOLO(str(best)).export(format="onnx", imgsz=IMGSZ)
    model = YOLO(str(best)).model.float().eval()
    with torch.no_grad():
        reference = model(x[:1])[0].numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0]
    assert np.allclose(onnx_out, reference, atol=1e-3, rtol=1e-3)
