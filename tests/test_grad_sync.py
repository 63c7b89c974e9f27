"""The bucketed gradient all-reduce on two real gloo processes: the gradients are the single-process
mean, buckets go out while backward runs, unused parameters keep no gradient, and a NaN on one rank
is seen by both."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed import free_port

from oner_lab.grad_sync import GradientSync

BATCH, WIDTH, DEPTH = 8, 16, 4


def model() -> torch.nn.Module:
    """A stack of linears (each its own parameters, so small buckets split them) plus a head used only at step 3."""
    torch.manual_seed(0)
    net = torch.nn.ModuleDict(
        {
            "layers": torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)]),
            "late_head": torch.nn.Linear(WIDTH, 1),
            "unused": torch.nn.Linear(WIDTH, 1),
        }
    )
    return net


def batch(step: int) -> torch.Tensor:
    return torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(step))


def loss_of(net: torch.nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
    hidden = net["layers"](x)
    loss = hidden.pow(2).mean()
    if step == 3:  # a parameter no rank used before: its bucket may have gone before its gradient was ready
        loss = loss + net["late_head"](hidden).mean()
    return loss


def worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = model()
    params = list(net.parameters())
    sync = GradientSync(params, bucket_bytes=WIDTH * WIDTH * 4)  # about one layer a bucket
    out = {"buckets": len(sync.buckets)}
    for step in (1, 2, 3):
        x = batch(step)[rank * BATCH // world : (rank + 1) * BATCH // world]
        for p in params:
            p.grad = None
        loss = loss_of(net, x, step)
        loss.backward()
        report = sync.step_report([loss])
        out[step] = {
            "loss": report.losses[0],
            "in_backward": sync.launched_in_backward,
            "grads": [None if p.grad is None else p.grad.clone() for p in params],
        }
    x = batch(4)[rank * BATCH // world : (rank + 1) * BATCH // world]
    loss = loss_of(net, x, 4)
    if rank == 1:
        loss = loss * float("nan")
    loss.backward()
    report = sync.step_report([loss])
    out["nan"] = (report.non_finite, report.ranks)
    results[rank] = out
    dist.destroy_process_group()


def test_buckets_average_during_backward_and_match_one_process() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), results), nprocs=2, join=True)
        results = dict(results)
    net = model()
    params = list(net.parameters())
    assert results[0]["buckets"] >= DEPTH, "the bucket size did not split the layers"
    for step in (1, 2, 3):
        for p in params:
            p.grad = None
        # each rank's loss is the mean over its half, so the mean over ranks is the global mean
        loss = loss_of(net, batch(step), step)
        loss.backward()
        for rank in (0, 1):
            got = results[rank][step]
            assert abs(got["loss"] - loss.item()) < 1e-6
            for name_grad, (p, grad) in enumerate(zip(params, got["grads"])):
                if p.grad is None:
                    assert grad is None, f"step {step}: parameter {name_grad} got a gradient no rank produced"
                else:
                    torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-7)
    # step 1 waits for every parameter (the unused ones only arrive at the end); from step 2 on, the
    # parameters used in the step before are expected and the buckets overlap backward
    assert results[0][1]["in_backward"] == 0
    assert results[0][2]["in_backward"] >= DEPTH - 1, results[0][2]["in_backward"]
    assert results[1][2]["in_backward"] >= DEPTH - 1
    assert results[0]["nan"] == results[1]["nan"] == ([True], [1])
