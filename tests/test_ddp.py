"""The sparsity regulariser under DistributedDataParallel: two CPU processes (gloo)."""

from __future__ import annotations

import os
import sys
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from graphprune.sparsity import SparsityRegularizer

STEPS = 6
GLOBAL_BATCH = 8


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))


def batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 3, 8, 8, generator=gen),
             torch.randn(GLOBAL_BATCH, 2, 8, 8, generator=gen)) for _ in range(STEPS)]


def train(model, step_fn, shard: slice, eval_bn: bool) -> list[list[torch.Tensor]]:
    """STEPS SGD steps with the regulariser (a phase every 2 steps); γ after every step."""
    net = model.module if hasattr(model, "module") else model
    reg = SparsityRegularizer(net, layers=["1", "4"], theta=0.05, phase_steps=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train(not eval_bn)
    history = []
    for x, y in batches():
        loss = ((model(x[shard]) - y[shard]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        step_fn(reg)
        opt.step()
        history.append([net[1].weight.detach().clone(), net[4].weight.detach().clone()])
    return history


def worker(rank: int, world: int, out: str, eval_bn: bool) -> None:
    torch.set_num_threads(1)
    # a file rendezvous: no TCP port to pick and lose to a parallel test
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out, 'rendezvous')}",
                            rank=rank, world_size=world)
    code = 1
    try:
        model = nn.parallel.DistributedDataParallel(make_model())
        per = GLOBAL_BATCH // world
        history = train(model, lambda reg: reg.apply(), slice(rank * per, (rank + 1) * per),
                        eval_bn)
        torch.save(history, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()              # neither rank tears gloo down while the other still talks
        code = 0
    except Exception:
        traceback.print_exc()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's shutdown: gloo's background threads can abort the
    # process there ("terminate called without an active exception") after all work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_two(tmp_path, eval_bn: bool):
    mp.spawn(worker, args=(2, str(tmp_path), eval_bn), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("eval_bn", [True, False], ids=["frozen-bn", "train-bn"])
def test_two_processes_hold_identical_gamma_after_every_step(tmp_path, eval_bn):
    rank0, rank1 = run_two(tmp_path, eval_bn)
    for step0, step1 in zip(rank0, rank1):
        for g0, g1 in zip(step0, step1):
            assert torch.equal(g0, g1)
    if eval_bn:
        # BatchNorm statistics frozen: the 2-process run is the 1-process run, same global batch
        single = train(make_model(), lambda reg: reg.apply(), slice(None), eval_bn=True)
        for step0, step1 in zip(rank0, single):
            for g0, g1 in zip(step0, step1):
                assert torch.allclose(g0, g1, atol=1e-6, rtol=0)
    # the regulariser really acted in the distributed run: without it γ ends elsewhere
    plain = train(make_model(), lambda reg: None, slice(None), eval_bn)
    assert not torch.allclose(rank0[-1][0], plain[-1][0], atol=1e-3)
