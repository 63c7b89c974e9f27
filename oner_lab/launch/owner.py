"""Who owns an MLflow run: the invocation (or job) training it, named so that a second invocation
leaves it alone while it lives and takes it over once it is gone.

An owner is (host, PID, process start time). The start time makes a reused PID read as a different
process. A process on another host cannot be looked up here; its liveness is the heartbeat it
refreshes in the store (a lease: alive while the last beat is younger than LEASE_S).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LEASE_S = 180.0
"""A remote owner whose heartbeat is older than this is taken for gone (it beats every HEARTBEAT_S)."""
HEARTBEAT_S = 30.0


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str
    """The process's start time as the kernel counts it (boot id + clock ticks), '' where unknown."""

    def to_tag(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "started": self.started})

    @classmethod
    def from_tag(cls, text: str | None) -> Owner | None:
        """The owner a tag names; None for a missing or unreadable tag (an older run)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["host"]), int(data["pid"]), str(data.get("started", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def __str__(self) -> str:
        return f"PID {self.pid} on {self.host}"


def start_time(pid: int) -> str | None:
    """The start time of process `pid` as this machine's kernel records it; None when there is no such
    process. '' when the system does not say (no /proc): then only the PID is compared."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _exists(pid)
    ticks = stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name
    boot = Path("/proc/sys/kernel/random/boot_id")
    return f"{boot.read_text().strip() if boot.exists() else ''}:{ticks}"


def _exists(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, start_time(pid) or "")


def is_alive(owner: Owner | None, heartbeat: float | None, now: float | None = None) -> bool:
    """True while `owner` runs: on this host, the same PID with the same start time; elsewhere, a
    heartbeat younger than LEASE_S."""
    if owner is None:
        return False
    if owner.host == socket.gethostname():
        started = start_time(owner.pid)
        return started is not None and (started == owner.started or "" in (started, owner.started))
    return heartbeat is not None and (now if now is not None else time.time()) - heartbeat < LEASE_S
