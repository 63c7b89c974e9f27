"""Checkpoint files: atomic, code-free, kept in a short history, read back newest first.

A checkpoint holds only tensors and plain containers (dicts, lists, tuples, numbers, strings), so
it loads with `torch.load(..., weights_only=True)`: a crafted file cannot run code on resume. The
newest is `last.pt`; older ones are `last.pt.1`, `last.pt.2`, ... (`train.keep_checkpoints` in all),
so a newest file that a crash, a full disk or a bad sector corrupted is skipped, not fatal.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
"""`.last.pt.tmp-<pid>`: a checkpoint being written by process <pid>."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely, or none of a run's checkpoints loads; names the file(s)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota); the previous checkpoints are untouched."""


def _tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a nested state (about the size of the file torch.save writes)."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _disk_full(error: BaseException) -> bool:
    """True when `error` or what it wraps is ENOSPC/EDQUOT (torch.save wraps it in a RuntimeError)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def tmp_path(path: Path, pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def save_atomic(state: dict[str, Any], path: Path, keep: int = 1) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it.

    `keep` > 1 first shifts the existing `path` to `path.1` (and `path.1` to `path.2`, ...), so the
    `keep` newest checkpoints stay. The temporary file is removed whatever goes wrong; a full disk
    raises `CheckpointWriteError` naming the path and the size needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if _disk_full(error):
            free = shutil.disk_usage(path.parent).free
            raise CheckpointWriteError(
                f"disk full writing checkpoint {path}: it needs about {_size(_tensor_bytes(state))}, "
                f"{_size(free)} is free there (older checkpoints are untouched); free space or move launcher.runs_dir"
            ) from None
        raise
    if keep > 1 and path.exists():
        _rotate(path, keep)
    os.replace(tmp, path)


def _rotate(path: Path, keep: int) -> None:
    """path.(keep-2) -> path.(keep-1), ..., then path -> path.1 as a hard link, so `path` never vanishes."""
    for index in range(keep - 2, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    first = path.with_name(f"{path.name}.1")
    first.unlink(missing_ok=True)
    try:
        os.link(path, first)
    except OSError:  # a file system without hard links: a moment without `path`; resume reads path.1 then
        os.replace(path, first)


def prune(path: Path, keep: int) -> None:
    """Removes history files beyond `keep` (left by a run that kept more before)."""
    for candidate in history(path)[max(keep, 1) :]:
        candidate.unlink(missing_ok=True)


def history(path: Path) -> list[Path]:
    """The checkpoints of `path`'s run, newest first: `path`, `path.1`, `path.2`, ... as they exist."""
    found = [path] if path.exists() else []
    numbered = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    return found + [candidate for _, candidate in sorted(numbered)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(directory: Path) -> list[Path]:
    """Removes `.<name>.tmp-<pid>` files of writers that are no longer alive (a kill or a full disk
    mid-write); returns them. A live pid's file is left: it may be writing now."""
    removed = []
    if not directory.is_dir():
        return removed
    for candidate in directory.iterdir():
        match = TMP_PATTERN.match(candidate.name)
        if match and int(match["pid"]) != os.getpid() and not _alive(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        log.warning(
            "removed %d stale checkpoint temp file(s) of dead writers: %s", len(removed), ", ".join(map(str, removed))
        )
    return removed


def _safe_numpy_globals() -> list[Any]:
    """What an older checkpoint's numpy RNG state needs to load with weights_only (plain arrays, no code)."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read(path: Path, *, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)`; raises CheckpointError naming `path` for any file that
    does not load that way (corrupt, truncated, or holding code)."""
    try:
        with torch.serialization.safe_globals(_safe_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - torch raises several types for an unreadable file
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if "Weights only load failed" in reason or "weights_only" in str(error):
            reason = "it holds objects other than tensors and plain containers (refused: loading it could run code)"
        raise CheckpointError(f"{path}: not a readable checkpoint: {type(error).__name__}: {reason}") from None


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none yet (CheckpointError when it does not load)."""
    if not path.exists():
        return None
    state = read(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint of this project (a {type(state).__name__}, not a dict)")
    return state


def load_newest(path: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint of `path`'s history that loads, and its file; None when there is none.

    Each file skipped is logged with why; CheckpointError naming every file when none loads."""
    candidates = history(path)
    failures = []
    for candidate in candidates:
        try:
            state = load(candidate)
        except CheckpointError as error:
            failures.append(str(error))
            log.warning("skipping checkpoint %s", error)
            continue
        if state is not None:
            if failures:
                log.warning("resuming from the older checkpoint %s (step %s)", candidate, state.get("step"))
            return state, candidate
    if failures:
        raise CheckpointError(
            f"none of the {len(failures)} checkpoints of {path.parent} loads, so the run cannot resume (it is not "
            "restarted from step 0 over them): " + "; ".join(failures) + ". Move them away to start the run afresh."
        )
    return None


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from (dropout, drop-path), as tensors and plain values."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        np.random.set_state(
            ("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        )
    else:  # a checkpoint written before RNG states were stored as tensors
        np.random.set_state(numpy_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
