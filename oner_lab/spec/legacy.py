"""Configs and hashes as earlier versions of the lab logged them, for `python -m oner_lab.migrate`.

Scheme 1 (until the identity split) hashed the canonical JSON of *every* field, defaults and
operational ones included. A run logged under it holds its full config twice: the `config.yaml`
artifact (exact) and the dotted MLflow params (`train.lr` -> `0.001`). `upgrade` turns either,
in the layout it was logged in, into the current `RunConfig` layout: it is the one place to
extend when a config key is renamed or moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

SCHEME_V1 = 1


def v1_hash(logged: Mapping[str, Any], parent_hash: str | None = None) -> str:
    """The scheme-1 hash of a config as logged (the JSON dump of the full config, before `upgrade`)."""
    canonical = json.dumps(logged, sort_keys=True, separators=(",", ":"))
    if parent_hash is not None:
        canonical += f"\nparent {parent_hash}"
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def from_params(params: Mapping[str, str]) -> dict[str, Any]:
    """The nested config the dotted MLflow params of a run spell (the inverse of `tracking.flatten`).

    Every value was logged as JSON except strings, which were logged bare; a bare string that
    happens to parse as JSON cannot be told apart, which is why `migrate` prefers `config.yaml`
    and checks each rebuilt config against the run's logged hash.
    """
    tree: dict[str, Any] = {}
    for key, text in params.items():
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return tree


def upgrade(logged: Mapping[str, Any]) -> dict[str, Any]:
    """A config in the layout an earlier version logged -> the current `RunConfig` layout.

    Scheme 1's layout is today's, so this is the identity (a deep copy); a change of the config's
    layout (a renamed key, a section split) adds its translation here, so old runs keep migrating.
    """
    return json.loads(json.dumps(logged))
