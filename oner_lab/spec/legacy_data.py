"""Data keys of runs logged before training sources and eval set formats were units, in today's layout.

Until then `data.source` was a string and a source's settings were flat keys of `data`
(`data.urls`, `data.csv_separator`, ...); every eval source logged every format's keys. This maps
such dotted params (as logged to MLflow) to the keys the same run has today, so an old run's
config can be compared with, or rebuilt as, a current one. The old layout is fixed history: the
tables below describe it, not the registered units.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_FLAT_KEYS = {  # old `data.<key>` -> new `data.source.<key>`
    "urls": "urls",
    "weights": "weights",
    "csv_separator": "separator",
    "csv_img_key": "img_key",
    "csv_caption_key": "caption_key",
    "image_root": "image_root",
    "splits": "splits",
}
_KIND_KEYS = {  # the new keys each old kind has
    "shapes": (),
    "webdataset": ("urls", "weights"),
    "csv": ("urls", "weights", "separator", "img_key", "caption_key"),
    "karpathy": ("urls", "weights", "image_root", "splits"),
    "retrieval_json": ("urls", "weights", "image_root"),
}
_EVAL_FORMAT_KEYS = {  # the keys each built-in eval set format has
    "retrieval_json": ("format", "path", "image_root"),
    "karpathy": ("format", "path", "image_root", "split"),
    "class_folders": ("format", "path", "class_names", "templates"),
}


def upgrade_data_keys(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """`dotted` (param key -> value) with old data keys in the current layout; other keys unchanged.

    `data.source: csv` + `data.csv_separator` become `data.source.kind: csv` + `data.source.separator`;
    flat keys the run's kind did not use are dropped (they were defaults it never read), and so are an
    eval source's keys its format does not have. A mapping already in the current layout is returned as is.
    """
    out = dict(dotted)
    kind = out.get("data.source")
    if isinstance(kind, str) and "data.source.kind" not in out:
        del out["data.source"]
        out["data.source.kind"] = kind
        for old, new in _FLAT_KEYS.items():
            if f"data.{old}" in out:
                value = out.pop(f"data.{old}")
                if new in _KIND_KEYS.get(kind, tuple(_FLAT_KEYS.values())):
                    out[f"data.source.{new}"] = value
    prefix = "data.eval_sources."
    formats = {
        key[len(prefix) : -len(".format")]: value
        for key, value in out.items()
        if key.startswith(prefix) and key.endswith(".format")
    }
    for name, fmt in formats.items():
        allowed = _EVAL_FORMAT_KEYS.get(str(fmt))
        if allowed is None:
            continue
        for key in [k for k in out if k.startswith(f"{prefix}{name}.")]:
            if key[len(prefix) + len(name) + 1 :] not in allowed:
                del out[key]
    return out
