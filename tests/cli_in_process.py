"""`python -m oner_lab.run ARGS` run by its `main` in the test's own process, for tests that read what
it prints and returns and need no process of its own (dry runs, refusals before anything starts).

A new interpreter pays 15-18 s of imports on the 2-core CI machine (torch, timm, torchvision, MLflow)
before the CLI does anything; the tests that kill, signal or wait on the CLI keep running it as one.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from oner_lab.run import main


def oner_run(arguments: Sequence[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> subprocess.CompletedProcess[str]:
    """What the CLI run in `cwd` printed (200 columns wide, as a log would hold it) and its exit status."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("COLUMNS", "200")
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(arguments))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 1
    return subprocess.CompletedProcess(
        ["python", "-m", "oner_lab.run", *arguments], code, out.getvalue(), err.getvalue()
    )
