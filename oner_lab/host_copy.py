"""Host-to-device copies that do not stall the host.

A copy from ordinary (pageable) CPU memory to a GPU makes the host wait until it is done; from pinned
memory with `non_blocking=True` it is queued behind the GPU's work instead. The batch, the masks and
the random draws of a step are all made on the CPU (its generators make them reproducible on any
device), so each goes through here. On the CPU it is the plain `.to`.
"""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`tensor` on `device`; through pinned memory and without blocking when `device` is a GPU."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
