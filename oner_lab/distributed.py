"""torch.distributed from the environment (torchrun, or submitit's exported SLURM variables).

Also the one place that decides which device a rank trains on, because the answer depends on
the task layout a site uses (every task sees all GPUs of the node, or one GPU per task) and
must be settled before any CUDA work, or every rank creates its context on cuda:0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Long enough for rank 0's evaluation and checkpoint while the others wait at a barrier, short
# enough that a rank that died is noticed within minutes, not NCCL's default of ten.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=5)

# Set by SLURM when the job holds GPUs (gres): the launcher asked for them.
_SLURM_GPU_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_PER_TASK")


class DeviceError(RuntimeError):
    """The requested device cannot be used by this rank; the message says what to change."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def gpus_requested(environ: dict[str, str] | None = None) -> bool:
    """True when the scheduler gave this job GPUs (so silently training on the CPU is a failure)."""
    env = os.environ if environ is None else environ
    for name in _SLURM_GPU_VARIABLES:
        value = env.get(name, "").strip()
        if value and value not in ("0", "(null)", "N/A"):
            return True
    return env.get("ONER_EXPECT_GPUS", "") == "1"


def cuda_report() -> str:
    """torch's CUDA build and, when torch can tell, why CUDA is unusable (driver too old, no device)."""
    reason = "no CUDA device is visible"
    if torch.version.cuda is None:
        reason = "this torch is a CPU-only build"
    else:
        try:
            torch.cuda.init()
        except Exception as error:  # noqa: BLE001 - torch's own words name the driver problem
            reason = str(error).strip().splitlines()[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"torch {torch.__version__} built for CUDA {torch.version.cuda or 'none'}; {reason}; "
        f"CUDA_VISIBLE_DEVICES={visible if visible is not None else '(unset)'}"
    )


def select_device(
    requested: str, *, local_rank: int, world_size: int, visible: int, gpus_requested: bool
) -> torch.device:
    """The device one rank trains on, for every task layout.

    `visible` is the number of CUDA devices this process sees: all of the node's when every
    task sees every GPU (then rank `local_rank` takes `cuda:local_rank`), or one when the site
    binds one GPU per task (then it is `cuda:0` for every rank)."""
    name = requested.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda:"):
        if world_size > 1:
            raise DeviceError(
                f"train.device: {requested!r} puts all {world_size} ranks on one GPU; use `cuda` or `auto`, "
                "which give each rank the GPU of its local rank"
            )
        index = int(name.split(":", 1)[1])
        if index >= visible:
            raise DeviceError(
                f"train.device: {requested!r} but this process sees {visible} CUDA device(s); {cuda_report()}"
            )
        return torch.device("cuda", index)
    if name not in ("auto", "cuda"):
        raise DeviceError(f"train.device: {requested!r}; allowed: auto, cpu, cuda, cuda:N")
    if visible == 0:
        if name == "cuda" or gpus_requested:
            asked = "train.device is cuda" if name == "cuda" else "the job was given GPUs by SLURM"
            raise DeviceError(
                f"{asked} but torch can use none, so training would silently run on the CPU: {cuda_report()}. "
                "Install a torch build whose CUDA the node's driver supports (docs/gpu.md, 'Driver and torch "
                "build'), or set train.device: cpu to train on the CPU on purpose"
            )
        return torch.device("cpu")
    if visible == 1:
        return torch.device("cuda", 0)
    if local_rank >= visible:
        raise DeviceError(
            f"local rank {local_rank} but this task sees only {visible} GPUs (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}); give each node one task per GPU"
        )
    return torch.device("cuda", local_rank)


def env_ranks() -> DistInfo:
    """Rank, world size and local rank from the environment (1 process when unset)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_from_env(device: torch.device | str) -> DistInfo:
    """Bind this rank's GPU first, then join the process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU)."""
    device = torch.device(device)
    info = env_ranks()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before any CUDA work: contexts and NCCL communicators on this rank's GPU
    if info.world_size > 1 and not dist.is_initialized():
        options: dict = {"timeout": PROCESS_GROUP_TIMEOUT}
        if device.type == "cuda":
            options["device_id"] = device
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=info.rank, world_size=info.world_size, **options
        )
    if dist.is_initialized():
        info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank)
    return info


def collective_device() -> torch.device:
    """Where a small tensor for a collective must live: this rank's GPU under NCCL (the one `init_from_env`
    bound, which is cuda:0 on sites giving each task one GPU), else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def main_rank_says(flag: bool) -> bool:
    """Rank 0's `flag` on every rank: a decision only rank 0 can make (it asked the scheduler) is
    taken by every rank, so no rank takes another branch and waits in a collective the others skip."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=collective_device())
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
