"""The config hash of every run of every shipped spec and profile, and every identity field's baseline.

    python tests/golden_hashes.py --write    # regenerate tests/golden_hashes.json, deliberately

Run hashes are planned exactly as `python -m oner_lab.run SPEC --profile P --dry-run` plans them
(`load_spec` + `expand`). Regenerate only when a hash is meant to change (a changed recipe in a
shipped spec, a `Baseline` marker, a new hashing scheme), and say in the commit why.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from oner_lab.spec import RunConfig, expand, load_spec
from oner_lab.spec.identity import SCHEME, field_roles

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden_hashes.json"
DEFAULT_PROFILE = "(none)"


def shipped_specs() -> list[Path]:
    return sorted((ROOT / "experiments").glob("*.yaml"))


def current() -> dict[str, Any]:
    """What the golden file holds, computed from the code and specs of this checkout."""
    runs: dict[str, dict[str, dict[str, str]]] = {}
    for path in shipped_specs():
        relative = str(path.relative_to(ROOT))
        profiles = [None, *load_spec(path).profiles]
        runs[relative] = {
            profile or DEFAULT_PROFILE: {
                run.run_name: run.config_hash for run in expand(load_spec(path, profile=profile))
            }
            for profile in profiles
        }
    baselines = {
        role.key: "(required)" if role.baseline is PydanticUndefined else role.baseline
        for role in field_roles(RunConfig)
        if role.identity
    }
    return {"scheme": SCHEME, "baselines": baselines, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.name}")
    args = parser.parse_args()
    text = json.dumps(current(), indent=1, sort_keys=False) + "\n"
    if args.write:
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
