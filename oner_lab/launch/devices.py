"""The devices a cost estimate knows: dense peak, memory and the model-FLOPs utilisation a whole
training step reaches on each, with where that figure comes from.

A site with another card adds a line here and names it in its cluster profile (`gpu:`). Figures
marked assumed are replaced by measured ones as the lab measures them (benchmarks/gpu_check.py on a
GPU, benchmarks/cost_estimate.py on a CPU); docs/cost.md says how to read an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """One accelerator (or the CPU): what an estimate divides the FLOPs by."""

    name: str
    peak_flops: float | None
    """Dense bf16 FLOP/s from the vendor's datasheet; None for the CPU (measured at estimate time)."""
    memory_gb: float | None
    mfu: float
    """Model-FLOPs utilisation of a whole training step: counted FLOPs per second over the peak."""
    source: str
    """Where `mfu` comes from: "measured: ..." or "assumed: ..."."""

    @property
    def measured(self) -> bool:
        return self.source.startswith("measured")


_GPU_ASSUMED = (
    "assumed: open_clip's published LAION-400M ViT-B/16 run, end to end (data, evaluation and all), by a FLOP "
    "count (docs/cost.md); the lab has not measured this card yet"
)
DEVICES: dict[str, Device] = {
    device.name: device
    for device in (
        Device("a100-80gb", 312e12, 80, 0.13, _GPU_ASSUMED),
        Device("a100-40gb", 312e12, 40, 0.13, _GPU_ASSUMED),
        Device("h100-80gb", 989e12, 80, 0.13, _GPU_ASSUMED),
        Device(
            "h200",
            989e12,
            141,
            0.26,
            "measured: benchmarks/gpu_check.py on one H200 (torch 2.11, CUDA 13.0), the ablation's paper recipe "
            "(oner, ViT-B/16) at 128 samples per GPU, bf16, eager: 0.246, 0.257 and 0.260 in three runs (0.32 with "
            "train.compile); the step alone on synthetic inputs, so data loading and evaluation are not in it "
            "(docs/gpu.md)",
        ),
        Device(
            "cpu",
            None,
            None,
            0.56,
            "measured: benchmarks/cost_estimate.py on the 2-core CI machine, tiny preset at batch 128, fastest "
            "window of each run, against the count of every position: 0.552 (itc), 0.566 (oner) and 0.583 "
            "(oner_cumulative) of the best float32 matmul rate once CPU passes also left the last block's unread "
            "rows out (oner_lab/model/packing.py); 0.546 (oner) and 0.552 (itc) with the text padding alone left "
            "out (the built-in captions fill 60% of the positions); 0.40 to 0.48 before it, 0.28 to 0.45 before "
            "short CPU sequences skipped SDPA (oner_lab/model/attention.py)",
        ),
    )
}
"""Cluster profiles name one of these in `gpu` (slurm/a100.yaml: a100-80gb)."""


def device(name: str) -> Device:
    """The table's entry for `name`; KeyError names the allowed ones."""
    if name not in DEVICES:
        raise KeyError(
            f"no device {name!r} in the cost table (oner_lab/launch/devices.py); allowed: {', '.join(DEVICES)}"
        )
    return DEVICES[name]


__all__ = ["DEVICES", "Device", "device"]
