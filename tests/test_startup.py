"""Start-up without the cyclic collector (oner_lab/startup.py): paused in a job process only, and back on
(with the imports frozen) once the job starts; every other process that imports oner_lab keeps it."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import startup_probe
import submitit

from oner_lab import startup


def test_importing_oner_lab_elsewhere_leaves_the_collector_alone() -> None:
    assert startup.entry_module() != startup.JOB_ENTRY
    assert gc.isenabled()
    assert startup.report()["paused_at_import"] is False


def test_a_job_process_imports_with_the_collector_paused_and_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real submitit job (`python -m submitit.core._submit`, what the local and SLURM backends run)."""
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    executor = submitit.LocalExecutor(folder=tmp_path)
    executor.update_parameters(timeout_min=5)
    before, after = executor.submit(startup_probe.imported_then_resumed).result()
    assert before == {"paused_at_import": True, "enabled": False, "frozen": 0}, before
    assert after["enabled"] is True and after["frozen"] > 0, after  # what was imported is frozen
