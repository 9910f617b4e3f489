"""Training: exact resume, safe checkpoints that the compiler and the CLI take, learning."""

from __future__ import annotations

import json

import pytest
import torch

import graphprune as gp
from graphprune.cli import main
from graphprune.data import make_synthetic_dataset
from graphprune.detect.train import TrainConfig, resume, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn") / "data", n_train=16, n_val=8,
                                  seed=3)


def tiny_config(data, out, **kw):
    base = dict(data=str(data), model="yolov5n", imgsz=96, epochs=3, batch=8, workers=0,
                device="cpu", out=str(out), nominal_batch=8, warmup_epochs=1, seed=7)
    return TrainConfig(**{**base, **kw})


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path):
    torch.use_deterministic_algorithms(True)
    try:
        straight = train(tiny_config(tiny_data, tmp_path / "a"))
        train(tiny_config(tiny_data, tmp_path / "b"), stop_after=1)
        resumed = resume(tmp_path / "b" / "last.pt")
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.start_epoch == 1
    for kind in ("state_dict", "train"):
        a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)[kind]
        b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)[kind]
        if kind == "train":
            a, b = a["model"], b["model"]
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert [r["epoch"] for r in resumed.history] == [0, 1, 2]
    assert straight.history[-1]["box"] == resumed.history[-1]["box"]


def test_checkpoints_are_safe_and_compile(tiny_data, tmp_path, capsys):
    trainer = train(tiny_config(tiny_data, tmp_path / "run", epochs=1))
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)   # no pickled code
    assert ckpt["format"] == "graphprune" and json.loads(ckpt["train"]["config"])["epochs"] == 1
    model = gp.load(tmp_path / "run" / "best.pt")
    assert model.model[-1].nc == 3
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "map50" in json.loads(lines[0])["metrics"]
    out = tmp_path / "slim"
    assert main(["compile", str(tmp_path / "run" / "best.pt"), "--prune-ratio", "0.3",
                 "--no-onnx", "--no-pt2", "--out", str(out)]) == 0
    assert main(["val", "--weights", str(out / "slim.graphprune.pt"), "--data", str(tiny_data),
                 "--imgsz", "96", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "mAP50-95" in text and "aircraft" in text
    assert trainer.history[0]["metrics"]["images"] == 8


def test_a_compiled_slim_model_fine_tunes_and_reloads(tiny_data, tmp_path):
    model = gp.load(train(tiny_config(tiny_data, tmp_path / "dense", epochs=1)).out / "best.pt")
    slim = gp.compile(model, torch.rand(1, 3, 96, 96), prune_ratio=0.4)
    slim.save(tmp_path / "slim.pt")
    tuned = train(tiny_config(tiny_data, tmp_path / "tuned", epochs=1,
                              weights=str(tmp_path / "slim.pt")))
    reloaded = gp.load(tuned.out / "last.pt")
    assert sum(p.numel() for p in reloaded.parameters()) == slim.stats.params_after
    before = slim.module.state_dict()
    changed = [k for k, v in reloaded.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed                                   # the weights were trained


def test_train_cli_runs_resumes_and_refuses_bad_settings(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["train", "--data", str(tiny_data), "--model", "yolov5n", "--imgsz", "96",
            "--batch", "8", "--workers", "0", "--device", "cpu", "--out", str(out)]
    assert main(args + ["--epochs", "1"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    assert main(["train", "--resume", str(out / "last.pt"), "--epochs", "2"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert main(args + ["--epochs", "1"]) == 1                      # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--epochs", "1", "--overwrite", "--hyp", "fliplr=0.5",
                        "--hyp", "sheer=3"]) == 1
    assert "unknown augmentation setting(s) sheer" in capsys.readouterr().err


def test_save_period_keeps_loadable_checkpoints_along_the_run(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_data, run, epochs=4, save_period=2))
    assert sorted(p.name for p in run.glob("epoch*.pt")) == ["epoch2.pt", "epoch4.pt"]
    last, second, fourth = (gp.load(run / n).state_dict() for n in
                            ("last.pt", "epoch2.pt", "epoch4.pt"))
    assert all(torch.equal(last[k], fourth[k]) for k in last)
    assert not all(torch.equal(last[k], second[k]) for k in last)


def test_a_short_training_on_synthetic_data_learns(tmp_path):
    """The short version of benchmarks/synthetic.py (which reaches mAP50 > 0.8 in 30 epochs):
    160 images, 12 epochs.  Measured here: mAP50 0.20 with one torch thread (0.07 with two:
    the kernels' summation order changes the trajectory), box loss 0.123 -> 0.085; an
    untrained model scores 0."""
    data = make_synthetic_dataset(tmp_path / "syn", n_train=160, n_val=40, seed=1)
    trainer = train(TrainConfig(data=str(data), model="yolov5n", imgsz=256, epochs=12, batch=8,
                                nominal_batch=8, lr0=0.02, warmup_epochs=1, cls=2.0, workers=0,
                                val_every=4, seed=0, out=str(tmp_path / "run")))
    maps = [r["metrics"]["map50"] for r in trainer.history if r["metrics"]]
    box = [r["box"] for r in trainer.history]
    assert maps[-1] >= 0.03 and maps[-1] > maps[0]
    assert box[-1] < 0.8 * box[0]


def test_sparse_training_logs_plots_and_resumes_exactly(tiny_data, tmp_path):
    kw = dict(epochs=3, sparsity="l1rr", theta=1e-2, phase_epochs=1)
    torch.use_deterministic_algorithms(True)
    try:
        straight = train(tiny_config(tiny_data, tmp_path / "a", **kw))
        train(tiny_config(tiny_data, tmp_path / "b", **kw), stop_after=2)
        resumed = resume(tmp_path / "b" / "last.pt")
    finally:
        torch.use_deterministic_algorithms(False)
    assert resumed.sparsity.phase == straight.sparsity.phase == 2
    assert resumed.sparsity.lam == straight.sparsity.lam
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["train"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["train"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    log = [json.loads(line) for line in (tmp_path / "b" / "sparsity.jsonl").read_text()
           .splitlines()]
    assert [row["epoch"] for row in log] == [0, 1, 2] and [row["phase"] for row in log] == \
        [0, 1, 2]
    assert set(log[-1]["layers"]) == set(straight.sparsity.names)
    assert sum(log[-1]["histogram"]["counts"]) == sum(g.numel() for g in
                                                     straight.sparsity.gammas)
    for png in ("gamma_distribution.png", "layer_sparsity.png"):
        assert (tmp_path / "b" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sparsity_term_is_added_after_the_task_gradient_is_clipped():
    """The trainer clips the task's gradient to MAX_GRAD_NORM first and only then lets the
    regulariser add its term: a large sparsity term must neither be clipped itself nor shrink
    the task's gradient; post-step hooks run after the step."""
    from graphprune.detect.train import MAX_GRAD_NORM, Trainer
    from graphprune.sparsity import SparsityRegularizer

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    reg = SparsityRegularizer(model, layers=["1"], mode="polar", theta=100.0)   # a huge term
    seen = []

    class Spy:
        def before_optimizer_step(self, trainer):
            seen.append(float(torch.cat([p.grad.flatten() for p in model.parameters()])
                              .norm()))

        def after_optimizer_step(self, trainer):
            seen.append(model[1].weight.detach().clone())

    trainer = Trainer.__new__(Trainer)
    trainer.model, trainer.ema = model, None
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer.scaler = torch.amp.GradScaler("cpu", enabled=False)
    trainer.callbacks = [Spy(), reg, Spy()]
    task = {name: torch.full_like(p, 50.0) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = task[name].clone()
    gamma = model[1].weight.detach().clone()
    term = reg.terms()[0]
    trainer._optimizer_step()
    clipped = MAX_GRAD_NORM / float(torch.cat([t.flatten() for t in task.values()]).norm())
    assert seen[0] == pytest.approx(MAX_GRAD_NORM, rel=1e-4)   # clipped before the term
    assert seen[1] > 10 * MAX_GRAD_NORM                          # the term itself is not
    unclamped = gamma - (clipped * task["1.weight"] + term)      # lr 1: one plain SGD step
    assert torch.allclose(seen[2], unclamped, rtol=1e-5)          # after the step, before the
    assert torch.allclose(model[1].weight, unclamped.clamp(0, 1))  # regulariser's clamp
