"""SpecError: the one exception a bad spec raises, and its did-you-mean helper."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable
from pathlib import Path

_SHOW = reprlib.Repr()
_SHOW.maxstring = 80
_SHOW.maxother = 80
_SHOW.maxlist = 8
_SHOW.maxdict = 6


def show(value: object) -> str:
    """A short repr of a user's value, cut so one huge value cannot flood the message."""
    return _SHOW.repr(value)


def did_you_mean(word: object, choices: Iterable[object]) -> str | None:
    """The closest allowed spelling of `word`, if one is close enough to be a likely typo."""
    options = [str(choice) for choice in choices]
    matches = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    return matches[0] if matches else None


def one_of(choices: Iterable[object]) -> str:
    """'one of: a, b, c' for a message, or a note that there is nothing to choose."""
    names = [str(choice) for choice in choices]
    return "one of: " + ", ".join(names) if names else "none is defined"


class SpecError(Exception):
    """An invalid spec, profile, `--set` or `--only`: one paragraph naming where, what and what is allowed.

    Attributes let callers (the CLI, tests) read the parts: `file` (None for a command-line
    argument checked without a spec), `key` (dotted, e.g. `base.train.lr`; empty for a YAML
    syntax error, which has `line` instead), `value` (the bad value as given), `allowed`
    (what would be accepted) and `suggestion` (did-you-mean).
    """

    def __init__(
        self,
        file: str | Path | None,
        key: str,
        problem: str,
        allowed: str,
        *,
        value: object = None,
        suggestion: str | None = None,
        line: int | None = None,
        note: str = "",
    ) -> None:
        self.file = None if file is None else Path(file)
        self.key = key
        self.value = value
        self.allowed = allowed
        self.suggestion = suggestion
        self.line = line
        where = "" if file is None else f"{file}{f', line {line}' if line else ''}: "
        message = f"{where}{key}: {problem}" if key else f"{where}{problem}"
        message += f"; allowed: {allowed}" + ("" if allowed.endswith((".", "?")) else ".")
        if suggestion is not None:
            message += f" Did you mean {suggestion!r}?"
        if note:
            message += f" ({note})"
        super().__init__(message)


class ConfigError(SpecError):
    """A run config the project's code refuses (`train.validate`): a SpecError without a file, whose
    message keeps the `key: value is not allowed; allowed: ...` form; the CLI says where it was set."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        Exception.__init__(self, f"{key}: {value!r} is not allowed; {allowed}")
        self.file = None
        self.key = key
        self.value = value
        self.allowed = allowed
        self.suggestion = None
        self.line = None
