"""The sparsity regulariser: Eq. 3–7 by hand, phases, state, and behaviour on a toy task."""

from __future__ import annotations

import math
import warnings

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


# -- the scale-aware modes: si, hoyer, polar ------------------------------------------------------
def test_si_term_has_no_component_along_gamma_and_scales_with_the_layer():
    """Mode si: θ·λ·sᵢ·P⊥(α ⊙ sign γ) — orthogonal to γ in every layer, so it never shrinks or
    grows a layer as a whole; scaling a layer by c scales its term by c (relative speed kept),
    and α and SASM's shares are measured relative to sᵢ, so λ is unchanged too."""
    def term(g1, g2):
        model = toy(g1, g2)
        reg = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="si", theta=THETA,
                                  phase_epochs=1)
        reg.set_epoch(1)
        return reg, added(model, reg)

    reg, (d1, d2) = term(G1, G2)
    for g, d in ((G1, d1), (G2, d2)):
        g = torch.tensor(g)
        assert abs(float((d * g).sum())) < 1e-6 * float((d * g).abs().sum())   # ⟨term, γ⟩ = 0
        small, large = g.abs() < g.pow(2).sum() / g.abs().sum(), g.abs() > g.pow(2).sum() / \
            g.abs().sum()
        assert torch.all(d[small] * torch.sign(g[small]) > 0)           # pushed towards 0
        assert torch.all(d[large] * torch.sign(g[large]) < 0)           # pushed away from 0
    c = 1e-3                                         # a whole layer 1000× smaller ...
    shrunk, (e1, e2) = term([c * v for v in G1], G2)
    assert torch.allclose(e1, c * d1, rtol=1e-5, atol=0) and torch.allclose(e2, d2)
    assert shrunk.lam == pytest.approx(reg.lam)      # ... is not "sparser" to SASM
    absolute = SparsityRegularizer(toy([c * v for v in G1], G2), layers=["bn1", "bn2"],
                                   mode="l1rr", phase_epochs=1)
    absolute.set_epoch(1)
    assert absolute.sparsity()[1][0] == 1.0          # while L1RR's yardstick sees it all gone


def test_hoyer_and_polarization_terms_are_the_gradients_of_their_regularisers():
    model = toy()
    g1, g2 = model.bn1.weight, model.bn2.weight
    hoyer = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="hoyer", theta=THETA)
    d1, d2 = added(model, hoyer)                                         # from the first step
    for g, d in ((g1, d1), (g2, d2)):
        x = g.detach().clone().requires_grad_(True)
        (THETA * x.abs().sum() ** 2 / x.pow(2).sum()).backward()
        assert torch.allclose(d, x.grad, rtol=1e-5, atol=1e-9)
    t = 1.2
    positive = toy([abs(v) for v in G1], [abs(v) for v in G2])     # polarization keeps γ ≥ 0
    polar = SparsityRegularizer(positive, layers=["bn1", "bn2"], mode="polar", theta=THETA, t=t)
    d1, d2 = added(positive, polar)
    x = torch.cat([positive.bn1.weight, positive.bn2.weight]).detach().clone()
    x.requires_grad_(True)
    (THETA * (t * x.abs().sum() - (x - x.mean()).abs().sum())).backward()
    assert torch.allclose(torch.cat([d1, d2]), x.grad, rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        positive.bn1.weight.copy_(torch.tensor([1.7, -0.2, 0.5, 0.0]))
    polar.after_step()                                               # γ is kept in [0, 1]
    assert positive.bn1.weight.tolist() == [1.0, 0.0, 0.5, 0.0]
    ns = SparsityRegularizer(positive, layers=["bn1"], mode="ns")
    ns.after_step()                                                  # other modes: no clamp
    assert positive.bn1.weight.tolist() == [1.0, 0.0, 0.5, 0.0]


def regulariser_only(mode: str, steps: int = 800) -> torch.Tensor:
    """Only the sparsity term acts (the task's gradient is zero, as it is along a layer's
    overall scale when the next BatchNorm renormalises): SGD with momentum on one layer."""
    model = toy(g1=[1.0, 0.9, 0.8, 0.3], g2=G2)
    reg = SparsityRegularizer(model, layers=["bn1"], mode=mode, theta=THETA, phase_epochs=1)
    reg.set_epoch(1)
    opt = torch.optim.SGD([model.bn1.weight], lr=0.5, momentum=0.9)
    for i in range(steps):
        opt.param_groups[0]["lr"] = 0.5 * (1 - i / steps)
        opt.zero_grad(set_to_none=False)
        reg.apply()
        opt.step()
    return model.bn1.weight.detach().abs()


def test_a_uniform_shrink_earns_nothing_in_si_mode():
    l1rr, si = regulariser_only("l1rr"), regulariser_only("si")
    assert float(l1rr.max()) < 0.05                      # L1RR takes the whole layer down
    norm = float(torch.tensor([1.0, 0.9, 0.8, 0.3]).norm())
    assert 0.95 * norm < float(si.norm()) < 1.1 * norm    # si keeps the layer's scale and
    assert float(si[3]) < 0.01 < float(si[2])             # takes channels out one at a time,
    assert si.tolist() == sorted(si.tolist(), reverse=True)   # the smallest first


# -- mode progressive ------------------------------------------------------------------------------
def test_progressive_schedule_choice_and_fade():
    """The chosen share follows target·(1 − (1 − k/K)³); the least important channels by the
    phase's Taylor sums go first, no layer beyond max_layer_share; a chosen channel's task
    gradient is zeroed and its γ and β fall linearly to exactly zero over one phase."""
    model = toy()
    reg = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="progressive", target=0.5,
                              unit="channels", max_phases=3, phase_steps=4, max_layer_share=0.5)
    assert [reg.schedule(k) for k in (0, 1, 2, 3)] == pytest.approx(
        [0, 0.5 * 19 / 27, 0.5 * 26 / 27, 0.5])
    with torch.no_grad():
        model.bn1.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    grads = {"bn1": torch.tensor([1.0, 2.0, 3.0, 4.0]), "bn2": torch.tensor([3, 2, 1, 1, 1, 1.0])}
    taylor = {n: torch.zeros(len(g)) for n, g in grads.items()}
    for _ in range(4):                                     # phase 0: plain, Taylor accumulates
        for name, g in grads.items():
            bn = getattr(model, name)
            bn.weight.grad, bn.bias.grad = g.clone(), g.clone()
            taylor[name] += ((bn.weight.detach() + bn.bias.detach()) * g) ** 2
        reg.apply()
        reg.after_step()
    assert torch.allclose(reg.scores[0], taylor["bn1"]) and torch.allclose(reg.scores[1],
                                                                            taylor["bn2"])
    expected = sorted(range(10), key=lambda k: float(torch.cat(list(taylor.values()))[k]))
    model.bn1.weight.grad = torch.ones(4)
    model.bn2.weight.grad = torch.ones(6)
    reg.apply()                       # step 5 opens phase 1: the fewest reaching 35 %, 4 of 10
    assert reg.phase == 1 and sum(int(c.sum()) for c in reg.chosen) == 4
    assert int(reg.chosen[0].sum()) <= 2                   # max_layer_share 0.5 of bn1's four
    chosen = [k for k in range(10) if torch.cat(reg.chosen)[k]]
    first = [k for k in expected if k >= 4 or sum(1 for c in expected[:expected.index(k)]
                                                   if c < 4) < 2][:4]
    assert sorted(chosen) == sorted(first)
    grad = torch.cat([model.bn1.weight.grad, model.bn2.weight.grad])
    assert torch.all(grad[torch.cat(reg.chosen)] == 0) and torch.all(grad[~torch.cat(reg.chosen)]
                                                                     == 1)
    start = torch.cat([model.bn1.weight, model.bn2.weight]).detach().clone()
    held = torch.cat(reg.chosen).clone()
    values = []
    for step in range(5):                                  # (phase 2 opens at step 9)
        reg.after_step()
        values.append(torch.cat([model.bn1.weight, model.bn2.weight]).detach().clone())
        reg.apply()
    for k, v in enumerate(values):                         # r = 1 − (steps since chosen) / 4
        r = max(0.0, 1 - (k + 1) / 4)
        assert torch.allclose(v[held], start[held] * r)
    assert torch.all(values[-1][held] == 0) and torch.all(values[3][~held] == start[~held])
    assert torch.all(model.bn1.bias[held[:4]] == 0)
    assert sum(int(c.sum()) for c in reg.chosen) == 5        # phase 2: 48 %, 5 of 10


def test_progressive_state_round_trip():
    model = toy()
    reg = SparsityRegularizer(model, layers=["bn1", "bn2"], mode="progressive", target=0.4,
                              unit="channels", phase_epochs=1, max_phases=2, importance="gamma")
    for epoch in range(2):
        reg.set_epoch(epoch)
        for _ in range(3):
            reg.apply()
            reg.after_step()
    assert reg.steps_per_epoch == 3 and sum(int(c.sum()) for c in reg.chosen) > 0
    # importance "gamma": the smallest |γ| relative to the layer's RMS go first
    assert bool(reg.chosen[0][1]) and bool(reg.chosen[0][3]) and bool(reg.chosen[1][2])
    other = SparsityRegularizer(toy(), layers=["bn1", "bn2"], mode="progressive", target=0.4,
                                unit="channels", phase_epochs=1, max_phases=2,
                                importance="gamma")
    other.load_state_dict(reg.state_dict())
    for a, b in ((other.chosen, reg.chosen), (other.chosen_at, reg.chosen_at),
                 (other.start_gamma, reg.start_gamma), (other.scores, reg.scores)):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert other.steps_per_epoch == 3 and other.fade_steps() == reg.fade_steps() == 3


def test_progressive_flops_target_is_what_the_compiler_removes():
    """unit="flops": channels are chosen by importance per FLOP they cost until the compiler's
    own estimate removes the schedule's share; compiling without them removes exactly that."""
    from graphprune.models import yolov5n

    model = yolov5n(num_classes=2)
    x = torch.zeros(1, 3, 64, 64)
    reg = SparsityRegularizer(model, x, mode="progressive", target=0.5, max_phases=1,
                              phase_steps=1, importance="gamma")
    with pytest.raises(gp.GraphpruneError, match="example inputs"):
        SparsityRegularizer(model, layers=reg.names, mode="progressive")
    reg.apply()
    reg.apply()                                             # step 2 opens phase 1: the target
    removed = reg.removed()
    assert 0.5 <= removed < 0.52
    masks = {n: ~c for n, c in zip(reg.names, reg.chosen)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        stats = gp.compile(model, x, masks=masks).stats
    assert 1 - stats.flops_ratio == pytest.approx(removed, abs=1e-9)
    # every γ is 1 in an untrained model: the layers whose channels cost most go first
    first = max(range(len(reg.names)), key=lambda i: reg.layer_flops[i])
    assert int(reg.chosen[first].sum()) == int(0.9 * reg.gammas[first].numel())


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


def test_ultralytics_callbacks_add_the_term_after_unscaling_and_clipping(tmp_path, monkeypatch):
    """In ultralytics' optimizer_step the term goes in where graphprune's own trainer adds it:
    after the task's gradient is unscaled (AMP) and clipped to 10, just before the step; the
    term itself is neither scaled nor clipped, and the regulariser's clamp follows the step."""
    from graphprune.integrations.ultralytics import add_sparsity

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3)).train()
    trainer = StandInTrainer(model, tmp_path / "run", 1024.0)
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    callbacks = add_sparsity(trainer, mode="polar", theta=100.0, layers=["1"])  # a huge term
    with warnings.catch_warnings():     # the stand-in's imgsz: no 3-channel example to analyse
        warnings.simplefilter("ignore", gp.GraphpruneWarning)
        trainer.run("on_train_start")
    trainer.scaler.scale(torch.zeros(()))           # a step's scale(loss), as in training
    trainer.run("on_train_epoch_start")
    reg, events = callbacks.regularizer, []
    clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(params, *args, **kwargs):
        events.append("clip")
        return clip(params, *args, **kwargs)

    def spy(name, method):
        def wrapped(*args, **kwargs):
            norm = float(torch.cat([q.grad.flatten() for q in model.parameters()]).norm())
            events.append((name, norm))
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    monkeypatch.setattr(reg, "apply", spy("apply", reg.apply))
    monkeypatch.setattr(trainer.optimizer, "step", spy("step", trainer.optimizer.step))
    task = {name: torch.full_like(q, 50.0) for name, q in model.named_parameters()}
    for name, q in model.named_parameters():      # the task's gradient, as AMP scaled it
        q.grad = task[name] * 1024.0
    gamma, term = model[1].weight.detach().clone(), reg.terms()[0]
    trainer.optimizer_step()
    assert [e if isinstance(e, str) else e[0] for e in events] == ["clip", "apply", "step"]
    assert events[1][1] == pytest.approx(10.0, rel=1e-4)     # unscaled and clipped first
    assert events[2][1] > 100.0                                # then the term, unclipped
    clipped = 10.0 / float(torch.cat([t.flatten() for t in task.values()]).norm())
    stepped = gamma - (clipped * task["1.weight"] + term)      # lr 1: one plain SGD step
    assert torch.allclose(model[1].weight, stepped.clamp(0, 1), rtol=1e-5)


def test_ultralytics_callbacks_fade_progressive_channels_after_each_step(tmp_path):
    from graphprune.integrations.ultralytics import add_sparsity
    from graphprune.models import yolov5n

    torch.manual_seed(0)
    model = yolov5n(num_classes=2).train()
    trainer = StandInTrainer(model, tmp_path / "run", 1024.0)
    callbacks = add_sparsity(trainer, mode="progressive", target=0.3, phase_epochs=1,
                             max_phases=1)
    trainer.train(4, torch.rand(2, 3, 64, 64))
    reg = callbacks.regularizer
    assert reg.phase == 1 and reg.removed() >= 0.3
    modules = dict(model.named_modules())
    for name, chosen in zip(reg.names, reg.chosen):       # faded out after the steps
        bn = modules[name]
        assert torch.all(bn.weight[chosen] == 0) and torch.all(bn.bias[chosen] == 0)


def test_ultralytics_callbacks_take_their_phases_from_the_run_length(tmp_path):
    """Without phase_epochs or phase_steps, add_sparsity's phases follow the run's epochs as
    graphprune train's do (default_phases); given ones are kept."""
    from graphprune.integrations.ultralytics import add_sparsity
    from graphprune.models import yolov5n
    from graphprune.sparsity import default_phases

    for k, (mode, options, epochs) in enumerate((("progressive", {}, 30), ("l1rr", {}, 300),
                                                  ("progressive", {"phase_epochs": 7}, 30))):
        trainer = StandInTrainer(yolov5n(num_classes=2).train(), tmp_path / f"run{k}", 1.0)
        trainer.epochs = epochs
        callbacks = add_sparsity(trainer, mode=mode, **options)
        trainer.run("on_train_start")
        reg = callbacks.regularizer
        if options:
            assert (reg.phase_epochs, reg.max_phases) == (7, 10)
        else:
            assert (reg.phase_epochs, reg.max_phases) == default_phases(mode, epochs)
    assert default_phases("progressive", 30) == (3, 9)
