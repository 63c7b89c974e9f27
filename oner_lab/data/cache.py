"""Build a cache directory once, atomically, even with several processes racing to build it.

The directory is built under a temporary name and renamed into place, so its existence means it
is complete: a process killed mid-build leaves only a temporary directory, removed by the next
builder. A file lock makes concurrent builders wait for the first instead of duplicating work.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)


def build_once(root: Path, name: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """`root/name`, calling `build(empty_directory)` first if it does not exist; returns (path, built now)."""
    final = root / name
    if final.is_dir():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if final.is_dir():  # another process built it while we waited
            return final, False
        for stale in root.glob(f".tmp-{name}-*"):  # left by a killed builder; only lock holders write these
            shutil.rmtree(stale, ignore_errors=True)
        temporary = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        log.info("building %s", final)
        try:
            build(temporary)
            os.rename(temporary, final)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return final, True
