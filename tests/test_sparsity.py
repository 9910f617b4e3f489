"""The sparsity regulariser: Eq. 3–7 by hand, phases, state, and behaviour on a toy task."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.sparsity import SparsityRegularizer

THETA = 1e-3


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


G1 = [0.5, -0.005, 2.0, 0.001]            # two of four near zero (|γ| < 0.01)
G2 = [1.0, 1.0, 0.002, -0.5, 0.5, 0.5]     # one of six


def toy(g1=G1, g2=G2):
    model = TwoLayers()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor(g1))
        model.bn2.weight.copy_(torch.tensor(g2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    return model


def added(model, reg, scale=1.0):
    """The gradient the regulariser adds to each γ in one apply()."""
    for p in model.parameters():
        p.grad.zero_()
    reg.apply(scale)
    return model.bn1.weight.grad.clone(), model.bn2.weight.grad.clone()


def expected(g, lam):
    return torch.tensor([THETA * lam * (1 / (abs(v) + 0.01)) * math.copysign(1, v) for v in g])


def test_eq_3_to_7_by_hand():
    model = toy()
    reg = SparsityRegularizer(model, layers=["bn1", "bn2"], theta=THETA, phase_epochs=5)
    reg.set_epoch(0)
    assert [t.abs().sum() for t in added(model, reg)] == [0, 0]        # α⁽⁰⁾ = 0: plain training
    reg.set_epoch(4)
    assert reg.phase == 0 and added(model, reg)[0].abs().sum() == 0
    reg.set_epoch(5)                                                    # first update (Eq. 3–6)
    rho = 3 / 10
    lam1, lam2 = 2 ** (rho - 2 / 4), 2 ** (rho - 1 / 6)                # a = 1, s = 0
    assert reg.phase == 1 and reg.lam == pytest.approx([lam1, lam2])
    assert torch.allclose(reg.alpha[0], torch.tensor([1 / (abs(v) + 0.01) for v in G1]))
    d1, d2 = added(model, reg)                                          # Eq. 7
    assert torch.allclose(d1, expected(G1, lam1)) and torch.allclose(d2, expected(G2, lam2))
    # γ unchanged, so both layers' sparsity stayed put: saturated, λ halves (λ-decay, Eq. 6)
    reg.set_epoch(10)
    assert reg.saturated == [1, 1]
    assert reg.lam == pytest.approx([lam1 / 2, lam2 / 2])
    d1, _ = added(model, reg, scale=1024.0)                             # scaled gradients (AMP)
    assert torch.allclose(d1, 1024 * expected(G1, lam1 / 2))


def test_growing_sparsity_is_not_saturation_and_empty_layers_never_saturate():
    model = toy(g1=[0.5, 0.5, 2.0, 0.3], g2=[1.0, 1.0, 0.002, 0.5, 0.5, 0.5])
    reg = SparsityRegularizer(model, layers=["bn1", "bn2"], theta=THETA, phase_epochs=1)
    reg.set_epoch(1)
    with torch.no_grad():
        model.bn2.weight[3] = 0.0                                       # bn2: 1/6 -> 2/6
    reg.set_epoch(2)
    assert reg.saturated == [0, 0]          # bn1 has no near-zero channel; bn2 grew 16 points
    rho = 2 / 10
    assert reg.lam == pytest.approx([2 ** (rho - 0), 2 ** (rho - 2 / 6)])


def test_phases_stop_after_max_phases_and_can_count_steps():
    model = toy()
    reg = SparsityRegularizer(model, layers=["bn1"], phase_epochs=2, max_phases=3)
    for epoch in range(20):
        reg.set_epoch(epoch)
    assert reg.phase == 3 and reg.saturated == [2]
    steps = SparsityRegularizer(model, layers=["bn1"], phase_steps=4)
    for _ in range(4):
        assert added(model, steps)[0].abs().sum() == 0
    assert steps.phase == 0
    added(model, steps)                                                  # step 5 opens phase 1
    assert steps.phase == 1


def test_dsm_keeps_lambda_one_and_ns_is_constant():
    model = toy()
    dsm = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="dsm", phase_epochs=1)
    dsm.set_epoch(1)
    dsm.set_epoch(2)
    assert dsm.lam == [1.0, 1.0]
    assert torch.allclose(added(model, dsm)[0], expected(G1, 1.0))
    ns = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="ns")
    d1, d2 = added(model, ns)                                           # from the first step
    assert torch.allclose(d1, THETA * torch.sign(torch.tensor(G1)))
    assert torch.allclose(d2, THETA * torch.sign(torch.tensor(G2)))


def test_state_round_trip_continues_identically():
    model = toy()
    reg = SparsityRegularizer(model, layers=["bn1", "bn2"], phase_epochs=1)
    reg.set_epoch(1)
    reg.set_epoch(2)
    other = SparsityRegularizer(toy(), layers=["bn1", "bn2"], phase_epochs=1)
    other.load_state_dict(reg.state_dict())
    assert (other.phase, other.lam, other.saturated) == (reg.phase, reg.lam, reg.saturated)
    reg.set_epoch(3)
    other.set_epoch(3)
    assert other.lam == reg.lam and all(torch.equal(a, b) for a, b in zip(other.alpha, reg.alpha))
    with pytest.raises(gp.GraphpruneError, match="another model or mode"):
        SparsityRegularizer(toy(), layers=["bn1"], phase_epochs=1).load_state_dict(
            reg.state_dict())


def test_only_prunable_layers_are_regularised():
    from graphprune.models import yolov5n

    model = yolov5n(num_classes=2)
    reg = SparsityRegularizer(model, torch.zeros(1, 3, 64, 64))
    all_bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert sorted(reg.names) == sorted(all_bns)    # every YOLOv5 BatchNorm can be pruned
    class WithOutputBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)
            self.b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn_b(self.b(self.bn_a(self.a(x))))    # bn_b is the model's output
    assert SparsityRegularizer(WithOutputBN(), torch.zeros(1, 3, 4, 4)).names == ["bn_a"]
    with pytest.warns(gp.GraphpruneWarning, match="every affine BatchNorm"):
        assert SparsityRegularizer(WithOutputBN()).names == ["bn_a", "bn_b"]


# -- behaviour -----------------------------------------------------------------------------------
class SumDetector(nn.Module):
    """A one-layer toy: each BatchNorm channel is a feature map, the output is their sum.
    BatchNorm statistics are frozen at mean 0, variance 1, so channel j outputs γⱼ·xⱼ + βⱼ."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels).eval()
        self.bn.running_var.fill_(1 - self.bn.eps)

    def forward(self, x):
        return self.bn(x).sum(1)


TARGET = [6.0, 6.5, 7.0, 8.0, 9.0]       # channels carrying the target, strongly
BACKGROUND = [0.3, 0.6, 1.0, 1.5, 0.5]   # channels carrying only weak background signal


def sparse_train(mode: str, seed: int) -> torch.Tensor:
    """Inputs xⱼ ~ N(0, 1); the target map is Σ wⱼ xⱼ; loss c·MSE, so the task pulls γⱼ to wⱼ
    with gradient 2c(γⱼ − wⱼ).  With r = θ / 2c = 7.5, network slimming settles at γⱼ = wⱼ − r
    and loses every channel with wⱼ ≤ 7.5 (three target channels); L1RR's stride θ/(|γ|+ε)
    settles at the larger root of γ² − wγ + r = 0, which exists for wⱼ ≥ 2√r ≈ 5.5: all target
    channels stay, every background one goes.  Plain SGD, lr decaying as (1 − t/T)⁴ so the
    sign chatter of dead channels dies out at the end."""
    torch.manual_seed(seed)
    w = torch.tensor(TARGET + BACKGROUND)
    c = THETA / (2 * 7.5)
    model = SumDetector(len(w))
    reg = SparsityRegularizer(model, mode=mode, theta=THETA, phase_epochs=5, layers=["bn"])
    opt = torch.optim.SGD([model.bn.weight, model.bn.bias], lr=0.1 / (2 * c))
    gen = torch.Generator().manual_seed(seed)
    epochs, steps = 40, 25
    for epoch in range(epochs):
        reg.set_epoch(epoch)
        for i in range(steps):
            t = epoch * steps + i
            opt.param_groups[0]["lr"] = 0.1 / (2 * c) * (1 - t / (epochs * steps)) ** 4
            x = torch.randn(16, len(w), 8, 8, generator=gen)
            loss = c * ((model(x) - (x * w[:, None, None]).sum(1)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            reg.apply()
            opt.step()
    return model.bn.weight.detach().abs()


@pytest.mark.parametrize("seed", [0, 1])
def test_l1rr_keeps_target_channels_that_network_slimming_loses(seed):
    near_zero = 0.01
    l1rr, ns = sparse_train("l1rr", seed), sparse_train("ns", seed)
    k = len(TARGET)
    assert torch.all(l1rr[k:] < near_zero)                   # background pruned
    assert torch.all(l1rr[:k] > 1.0)                         # every target channel kept
    lost_ns = int((ns[:k] < near_zero).sum())
    lost_l1rr = int((l1rr[:k] < near_zero).sum())
    assert lost_ns == 3 > lost_l1rr == 0
    assert torch.all(ns[k:] < near_zero)                     # NS prunes background too


# -- the ultralytics callbacks, driven by a stand-in that follows BaseTrainer's protocol ----------
class StandInTrainer:
    """What the callbacks use of ultralytics' BaseTrainer: ``model``, ``args.imgsz``,
    ``epoch``, ``save_dir``/``wdir``, ``scaler`` and an ``optimizer_step`` that unscales, clips,
    steps and updates; callbacks run at the same events in the same order."""

    def __init__(self, model, save_dir, scale):
        from types import SimpleNamespace
        self.model, self.args = model, SimpleNamespace(imgsz=64, resume=False)
        self.save_dir, self.wdir, self.epoch = save_dir, save_dir / "weights", 0
        self.wdir.mkdir(parents=True)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10 ** 6)
        self.callbacks = {}

    def add_callback(self, event, fn):
        self.callbacks.setdefault(event, []).append(fn)

    def run(self, event):
        for fn in self.callbacks.get(event, []):
            fn(self)

    def optimizer_step(self):
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()

    def train(self, epochs, x):
        self.run("on_train_start")
        for self.epoch in range(epochs):
            self.run("on_train_epoch_start")
            loss = sum(m.float().pow(2).mean() for m in self.model(x))
            self.scaler.scale(loss).backward()
            self.optimizer_step()
            self.run("on_train_epoch_end")
            self.run("on_model_save")


def test_ultralytics_callbacks_add_the_term_to_unscaled_gradients(tmp_path):
    from graphprune.integrations.ultralytics import add_sparsity
    from graphprune.models import yolov5n

    x = torch.rand(2, 3, 64, 64)
    results = []
    for scale in (1.0, 1024.0):
        torch.manual_seed(0)
        model = yolov5n(num_classes=2).train()
        trainer = StandInTrainer(model, tmp_path / f"run{int(scale)}", scale)
        callbacks = add_sparsity(trainer, mode="l1rr", theta=0.01, phase_epochs=1)
        trainer.train(3, x)
        assert callbacks.regularizer.phase == 2 and callbacks.regularizer.steps == 3
        results.append(model.state_dict())
        state = torch.load(trainer.wdir / "sparsity.pt", weights_only=True)
        assert state["phase"] == 2 and (trainer.save_dir / "layer_sparsity.png").exists()
    for name, value in results[0].items():                  # AMP scale changes nothing
        assert torch.allclose(value.float(), results[1][name].float(), atol=1e-6), name
    torch.manual_seed(0)
    plain = yolov5n(num_classes=2).train()
    StandInTrainer(plain, tmp_path / "plain", 1.0).train(3, x)
    assert not torch.allclose(plain.model[0].bn.weight, results[0]["model.0.bn.weight"])
