"""Two gloo processes give the same contrastive loss and gradients as one process on the global batch."""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from oner_lab.grad_sync import GradientSync
from oner_lab.objectives import info_nce

BATCH, DIM = 8, 6


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(BATCH, DIM, generator=g),
        torch.randn(BATCH, DIM, generator=g),
        torch.randn(DIM, DIM, generator=g),
    )


def loss_and_grad(x: torch.Tensor, y: torch.Tensor, weight: torch.nn.Parameter) -> torch.Tensor:
    left, right = F.normalize(x @ weight, dim=-1), F.normalize(y @ weight, dim=-1)
    return info_nce(left, right, torch.tensor(math.log(1 / 0.1)))


def worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y, w = global_batch()
    weight = torch.nn.Parameter(w.clone())
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    sync = GradientSync([weight])
    loss = loss_and_grad(x[rows], y[rows], weight)
    loss.backward()
    (mean_loss,) = sync.step_report([loss]).losses
    results[rank] = (mean_loss, weight.grad.clone())
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_infonce_equals_single_process() -> None:
    x, y, w = global_batch()
    weight = torch.nn.Parameter(w.clone())
    single = loss_and_grad(x, y, weight)
    single.backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, free_port(), results), nprocs=2, join=True)
        for rank in range(2):
            loss, grad = results[rank]
            assert abs(loss - single.item()) < 1e-5
            torch.testing.assert_close(grad, weight.grad, rtol=1e-5, atol=1e-6)
