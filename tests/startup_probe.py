"""A callable for a real submitit job process (tests/test_startup.py): what the package's import left
the collector in, then the state after `startup.resume()`, as `TrainingJob.__call__` does first."""

from __future__ import annotations

from oner_lab import startup


def imported_then_resumed() -> tuple[dict[str, object], dict[str, object]]:
    before = startup.report()
    startup.resume()
    return before, startup.report()
