"""Path fields of specs and configs: `$VAR`, `${VAR}` and a leading `~` expanded when the spec loads.

docs/spec.md shows `runs_dir: /scratch/$USER/oner-runs`; without this, a folder literally named
`$USER` would be made. A variable that is not set is an error naming it (pydantic adds the key),
never an empty string that silently moves a path to `/scratch//oner-runs`.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator

VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
URI_PREFIXES = ("sqlite:///", "journal:", "file://")
"""URIs whose rest is a file path, where a leading `~` is expanded too."""


def expand_path(value: str) -> str:
    """`value` with environment variables and a leading `~` expanded; ValueError naming an unset variable."""
    unset = sorted({match["braced"] or match["bare"] for match in VARIABLE.finditer(value)} - os.environ.keys())
    if unset:
        names = ", ".join(f"${name}" for name in unset)
        raise ValueError(
            f"a path whose environment variables are set; {names} {'is' if len(unset) == 1 else 'are'} not set here "
            "(export it before running, or write the path out)"
        )
    expanded = VARIABLE.sub(lambda match: os.environ[match["braced"] or match["bare"]], value)
    for prefix in URI_PREFIXES:
        if expanded.startswith(prefix):
            return prefix + os.path.expanduser(expanded[len(prefix) :])
    return os.path.expanduser(expanded)


PathStr = Annotated[str, AfterValidator(expand_path)]
"""A string naming a file, folder, URL pattern or store URI: expanded at load time."""
