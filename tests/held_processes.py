"""Processes held with SIGSTOP and let run in short slices: how the tests make a fast machine behave
like a loaded one, so a signal or a wall-time window lands mid-run however fast the steps are."""

from __future__ import annotations

import os
import signal
import time


def signal_all(pids: list[int], signum: signal.Signals) -> bool:
    """Sends `signum` to every process; False once one has ended."""
    try:
        for pid in pids:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def run_a_slice(pids: list[int], seconds: float) -> bool:
    """Lets the stopped processes run `seconds`, then stops them again; False once one has ended."""
    if not signal_all(pids, signal.SIGCONT):
        return False
    time.sleep(seconds)
    return signal_all(pids, signal.SIGSTOP)
