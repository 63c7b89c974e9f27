"""Local runs sharing the machine split its CPUs between the runs training now (real slot locks, real
torch thread settings), and a run left alone takes them all back."""

from __future__ import annotations

import fcntl
from pathlib import Path

import torch

from oner_lab.launch.cpu_share import CpuShare, busy_slots


class Never:
    def should_stop(self) -> bool:
        return False


def hold(path: Path):
    handle = path.open("a")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_threads_follow_the_runs_holding_a_slot(tmp_path: Path) -> None:
    slots = [tmp_path / f"slot{k}.lock" for k in range(3)]
    before = torch.get_num_threads()
    mine = hold(slots[0])
    other = hold(slots[2])  # another run's lock: flock conflicts between open files, even in one process
    try:
        share = CpuShare(Never(), slots, slots[0], cpus=4, every_s=0)
        assert busy_slots(slots, slots[0]) == 2 and torch.get_num_threads() == 2
        third = hold(slots[1])
        assert share.should_stop() is False and torch.get_num_threads() == 1  # 4 CPUs // 3 runs
        third.close()
        other.close()
        share.should_stop()
        assert torch.get_num_threads() == 4  # alone: every CPU
        taken = hold(slots[1])  # the probe released the free slots it tried: a waiting run still gets one
        taken.close()
    finally:
        mine.close()
        torch.set_num_threads(before)


def test_a_stop_request_still_goes_through(tmp_path: Path) -> None:
    class Stop:
        def should_stop(self) -> bool:
            return True

    slots = [tmp_path / "slot0.lock", tmp_path / "slot1.lock"]
    before = torch.get_num_threads()
    try:
        assert CpuShare(Stop(), slots, slots[0], cpus=2).should_stop() is True
    finally:
        torch.set_num_threads(before)
