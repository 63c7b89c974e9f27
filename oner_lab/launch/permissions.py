"""Who may write the folders whose files the CLI unpickles.

submitit writes each job's outcome as a pickle in `<runs_dir>/submitit/<job id>/`, and the CLI
unpickles it: anyone who can write there can make the CLI run code. So these folders must not be
writable by group or other users.
"""

from __future__ import annotations

import stat
from pathlib import Path

from oner_lab.launch.cluster import LaunchError

UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH


def private_folder(path: Path) -> None:
    """Creates `path` (and missing parents) writable by its owner only, or checks the one that exists.

    Raises LaunchError naming the folder and the chmod that fixes it when group or other users may
    write it (a sticky /tmp-like folder too: its other users can still add files)."""
    if not path.exists():
        missing = [path, *[parent for parent in path.parents if not parent.exists()]]
        path.mkdir(parents=True, exist_ok=True)
        for folder in missing:  # a umask of 002 (common on clusters) would leave them group-writable
            folder.chmod(folder.stat().st_mode & ~UNSAFE_BITS)
        return
    mode = path.stat().st_mode
    if mode & UNSAFE_BITS:
        who = " and ".join(
            name for bit, name in ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "every user")) if mode & bit
        )
        raise LaunchError(
            f"{path} is writable by {who} (mode {stat.filemode(mode)}): the CLI reads the job results that submitit "
            f"pickles there, and a file planted by another user would run code as you. Run `chmod go-w {path}` "
            "(or choose another launcher.runs_dir) and start again."
        )


def check_runs_dir(runs_dir: Path) -> None:
    """`runs_dir` and its `submitit/` folder: private (created so, or refused when they are not)."""
    private_folder(runs_dir)
    private_folder(runs_dir / "submitit")
