"""Gradient averaging over ranks that overlaps backward, with one host sync per training step.

The objectives call the tower's submodules directly (views, heads), which DDP's forward hooks cannot
see, so DDP's reducer is not used. This does the part of it the lab needs:

- fixed buckets of about `BUCKET_BYTES`, in reverse parameter order (about the order backward
  produces gradients), identical on every rank;
- each bucket all-reduced asynchronously from a gradient hook as soon as the gradients it expects
  have been accumulated, and strictly in bucket order, so every rank issues the same collectives in
  the same order whatever order its own backward ran in;
- after backward, one small all-reduce carries the step's losses, their non-finite flags and which
  parameters got a gradient on any rank, and is read on the host once: the loss check, the logged
  losses and the choice between an averaged gradient and none (AdamW leaves a parameter without a
  gradient untouched, so an unused head must stay unused) all come from that one read.

With one process nothing is reduced and the same single read serves the losses and the check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_BYTES = 25 * 2**20  # DDP's default bucket size


@dataclass
class StepReport:
    """What the one host read of a step returns: mean losses over ranks and who saw a non-finite one."""

    losses: list[float]
    """Each loss's mean over ranks (NaN or inf when a rank's was)."""
    non_finite: list[bool]
    """Per loss: not finite on at least one rank."""
    ranks: list[int]
    """The ranks whose losses were not all finite (empty with one process)."""
    same: list[float]
    """The rank-identical scalars passed as `same`, as they were."""


class GradientSync:
    """Averages `params`' gradients over the process group while backward runs (see the module docstring).

    Call `step_report(losses)` after `backward()`: it returns the reduced losses and, unless a loss is
    non-finite, leaves every parameter's `.grad` the mean over ranks (None where no rank produced one)."""

    def __init__(self, params: list[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
        self.params = list(params)
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.buckets: list[list[int]] = []
        current: list[int] = []
        size = 0
        for index in reversed(range(len(self.params))):
            current.append(index)
            size += self.params[index].numel() * self.params[index].element_size()
            if size >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {index: b for b, indices in enumerate(self.buckets) for index in indices}
        self.expected = set(range(len(self.params)))
        """Parameters that got a gradient on some rank in the last step: a bucket waits for these only."""
        self.launched_in_backward = 0
        """Buckets all-reduced from a gradient hook in the last step, i.e. overlapping its backward."""
        self._reset()
        self._hooks = []
        if self.world_size > 1:
            self._hooks = [
                param.register_post_accumulate_grad_hook(self._hook(index)) for index, param in enumerate(self.params)
            ]

    def _reset(self) -> None:
        self.waiting = [sum(1 for i in indices if i in self.expected) for indices in self.buckets]
        self.next_bucket = 0
        self.works: list[tuple[int, torch.Tensor, dist.Work]] = []
        self.in_backward = 0

    def _hook(self, index: int):
        def ready(_: torch.Tensor) -> None:
            if index in self.expected:
                self.waiting[self.bucket_of[index]] -= 1
                while self.next_bucket < len(self.buckets) and self.waiting[self.next_bucket] <= 0:
                    self._launch()
                    self.in_backward += 1

        return ready

    def _launch(self) -> None:
        """All-reduce the next bucket in order; a parameter without a gradient here contributes zeros."""
        b = self.next_bucket
        params = [self.params[i] for i in self.buckets[b]]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        self.works.append((b, flat, dist.all_reduce(flat, async_op=True)))
        self.next_bucket += 1

    def step_report(self, losses: list[torch.Tensor], same: list[torch.Tensor] = ()) -> StepReport:
        """After backward: finish the gradient buckets and read the step's losses on the host, once.

        `same` are scalars equal on every rank (the temperature): read along, not reduced, and
        returned in `StepReport.same`."""
        values = torch.stack([loss.detach().float().reshape(()) for loss in losses])
        bad = (~torch.isfinite(values)).float()
        alike = torch.stack([v.detach().float().reshape(()) for v in same]) if same else values[:0]
        n, k = len(losses), len(same)
        if self.world_size == 1:
            read = torch.cat([values, bad, alike]).tolist()
            return StepReport(read[:n], [flag > 0 for flag in read[n : 2 * n]], [], read[2 * n :])
        while self.next_bucket < len(self.buckets):
            self._launch()
        self.launched_in_backward = self.in_backward
        rank_bad = torch.zeros(self.world_size, device=values.device)
        rank_bad[self.rank] = bad.max()
        has_grad = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32).to(values.device)
        summary = torch.cat([values, bad, rank_bad, has_grad])
        dist.all_reduce(summary)
        read = torch.cat([summary, alike]).tolist()
        w = self.world_size
        report = StepReport(
            [value / w for value in read[:n]],
            [flag > 0 for flag in read[n : 2 * n]],
            [r for r, flag in enumerate(read[2 * n : 2 * n + w]) if flag > 0],
            read[len(read) - k :] if k else [],
        )
        used = [flag > 0 for flag in read[2 * n + w : len(read) - k]]
        late = {index for index, flag in enumerate(used) if flag and index not in self.expected}
        for b, flat, work in self.works:
            work.wait()
            flat /= w
            offset = 0
            for index in self.buckets[b]:
                param = self.params[index]
                piece = flat[offset : offset + param.numel()].view_as(param)
                offset += param.numel()
                if not used[index]:
                    param.grad = None
                elif index in late:
                    continue  # its bucket may have gone before its gradient was ready: reduced below
                elif param.grad is None:
                    param.grad = piece.clone()
                else:
                    param.grad.copy_(piece)
        for index in late:  # a parameter no rank used in the last step: known to all ranks, so all reduce it
            param = self.params[index]
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            dist.all_reduce(param.grad)
            param.grad /= w
        self.expected = {index for index, flag in enumerate(used) if flag}
        self._reset()
        return report

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
