"""Every ultralytics task beyond detection — oriented boxes (OBB), segmentation and pose — end to
end: random masks inside every head branch, and sparse training in the task's own trainer →
``graphprune compile --lfa-target`` on its ultralytics-format data (rotated-rectangle M for
OBB) → fine-tuning in the task's own trainer → val, predict, ONNX.

The data is the synthetic set written in each task's format (``graphprune data synthetic
--task``), 16 + 8 images at 96 px; the models are built from their yaml (nothing is
downloaded).  Runs in the ultralytics environment (``-m ultralytics``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="graphprune-yolo-"))
from ultralytics import YOLO  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.cli import main  # noqa: E402
from graphprune.data import make_synthetic_dataset  # noqa: E402
from graphprune.integrations import ultralytics as gpu  # noqa: E402

from conftest import check_compile, random_masks  # noqa: E402

pytestmark = pytest.mark.ultralytics
IMGSZ = 96
ULTRALYTICS = dict(device="cpu", workers=0, amp=False, plots=False, verbose=False)
# the yaml, the branch each task adds to Detect's box and class branches, and its output width
TASKS = {"obb": ("yolov8n-obb", "ne"), "segment": ("yolov8n-seg", "nm"),
         "pose": ("yolov8n-pose", "nk")}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("task", sorted(TASKS))
def test_random_masks_prune_every_branch_of_the_tasks_head(task, tmp_path):
    model = YOLO(f"{TASKS[task][0]}.yaml").model.eval()
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    result = check_compile(model, x, tmp_path, masks=random_masks(model, 0.5, seed=1))
    head_name = f"model.{len(model.model) - 1}"
    original, slim = model.get_submodule(head_name), result.module.get_submodule(head_name)
    width = getattr(original, TASKS[task][1])
    for i in range(original.nl):
        for branch, out in (("cv2", 4 * original.reg_max), ("cv3", original.nc), ("cv4", width)):
            layer = slim.get_submodule(f"{branch}.{i}.2")
            # the output layer keeps every channel, the hidden width before it shrank
            assert layer.out_channels == out
            assert layer.in_channels < original.get_submodule(f"{branch}.{i}.2").in_channels
    params = [_params(m) for m in (original, slim)]
    assert params[1] <= 0.75 * params[0]
    if task == "segment":           # the prototype masks keep their count, not their width
        proto = slim.get_submodule("proto")
        assert _params(proto) < _params(original.get_submodule("proto"))
        assert proto.get_submodule("cv3").conv.out_channels == original.nm


def _ultralytics_yaml(root: Path) -> Path:
    data = yaml.safe_load((root / "data.yaml").read_text())
    data["path"] = str(root)
    path = root / "ultralytics.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=sorted(TASKS))
def run(request, tmp_path_factory):
    """One epoch of sparse training in the task's trainer, then graphprune compile with an LFA
    target and an ultralytics checkpoint."""
    task = request.param
    tmp = tmp_path_factory.mktemp(f"ultralytics-{task}")
    make_synthetic_dataset(tmp / "data", n_train=16, n_val=8, size=IMGSZ, task=task)
    data = _ultralytics_yaml(tmp / "data")
    model = YOLO(f"{TASKS[task][0]}.yaml")
    callbacks = gpu.add_sparsity(model, mode="l1rr", theta=1e-2, phase_steps=1)
    model.train(data=str(data), epochs=1, imgsz=IMGSZ, batch=8, project=str(tmp / "runs"),
                name="sparse", seed=0, val=False, **ULTRALYTICS)
    best = tmp / "runs" / "sparse" / "weights" / "best.pt"
    slim, out = tmp / "slim.pt", tmp / "compile"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The tensor attributes", UserWarning)
        code = main(["compile", str(best), "--trust-checkpoint", "--data", str(data),
                     "--lfa-target", "0.05", "--calib-images", "8", "--heatmaps", "0",
                     "--min-channels", "8", "--out", str(out),
                     "--ultralytics-checkpoint", str(slim)])
    assert code == 0
    return {"task": task, "tmp": tmp, "data": data, "best": best, "slim": slim,
            "callbacks": callbacks, "report": json.loads((out / "report.json").read_text())}


def test_sparse_training_runs_in_the_tasks_trainer(run):
    regularizer = run["callbacks"].regularizer
    # (ultralytics accumulates gradients up to 64 images: one optimizer step this epoch)
    assert regularizer is not None and regularizer.steps >= 1
    lines = (run["best"].parent.parent / "sparsity.jsonl").read_text().splitlines()
    assert len(lines) == 1
    # the task's own head branch (angle, mask coefficients, keypoints) is regularised too
    layers = json.loads(lines[0])["layers"]
    assert any(".cv4." in name for name in layers)


def test_lfa_target_holds_with_the_tasks_boxes(run):
    report = run["report"]
    assert report["lfa"] <= 0.05 and len(report["fa_sparse"]) == 3
    assert all(fa > 0 for fa in report["fa_sparse"])
    assert report["request"]["calib_boxes"] == ("rotated" if run["task"] == "obb"
                                                else "axis-aligned")
    assert report["params_after"] < report["params_before"]


def test_the_slim_checkpoint_finetunes_validates_predicts_and_exports(run, tmp_path):
    import onnxruntime as ort

    task = run["task"]
    slim = YOLO(str(run["slim"]))
    assert isinstance(slim.model, gpu.slim_model_class(task)) and slim.task == task
    slim_params = _params(slim.model)
    assert slim_params == run["report"]["params_after"]
    image = sorted((run["tmp"] / "data" / "images" / "val").iterdir())[0]
    # the compiled checkpoint predicts as it is (a pose model needs its kpt_shape)
    assert YOLO(str(run["slim"]))(str(image), imgsz=IMGSZ, conf=0.0001, device="cpu",
                                  verbose=False)
    trained = gpu.finetune(run["slim"], data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=8,
                           project=str(tmp_path), name="ft", seed=0, **ULTRALYTICS)
    assert isinstance(trained.model, gpu.slim_model_class(task))
    best = tmp_path / "ft" / "weights" / "best.pt"
    model = YOLO(str(best))
    assert isinstance(model.model, gpu.slim_model_class(task)) and model.task == task
    assert _params(model.model) == slim_params
    before, after = YOLO(str(run["slim"])).model.state_dict(), model.model.state_dict()
    assert any(not torch.equal(after[k].float(), v.float()) for k, v in before.items()
               if v.is_floating_point())                            # it did train

    metrics = YOLO(str(best)).val(data=str(run["data"]), imgsz=IMGSZ, batch=8,
                                  project=str(tmp_path), name="val", **ULTRALYTICS)
    assert 0.0 <= metrics.results_dict["metrics/mAP50(B)"] <= 1.0
    results = YOLO(str(best))(str(image), imgsz=IMGSZ, conf=0.0001, device="cpu",
                              verbose=False)
    found = {"obb": results[0].obb, "segment": results[0].boxes,
             "pose": results[0].keypoints}[task]
    assert found is not None

    onnx_path = YOLO(str(best)).export(format="onnx", imgsz=IMGSZ)
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = YOLO(str(best)).model.float().eval()(x)
    reference = [t.numpy() for t in gpu._flat(reference[0])]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(got) == len(reference)
    for g, r in zip(got, reference):
        assert g.shape == r.shape
        assert np.allclose(g, r, atol=1e-3, rtol=1e-3)


def test_a_slim_model_of_one_task_is_refused_by_another_tasks_trainer(run, tmp_path):
    other = "detect" if run["task"] != "detect" else "obb"
    with pytest.raises(gp.GraphpruneError, match="slim detect checkpoint"):
        YOLO(str(run["slim"])).train(trainer=gpu.slim_trainer_class(other),
                                     data=str(run["data"]), epochs=1, imgsz=IMGSZ, batch=8,
                                     project=str(tmp_path), name="wrong", **ULTRALYTICS)
