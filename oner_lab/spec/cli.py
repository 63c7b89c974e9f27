"""The command-line arguments that name a spec, shared by `run`, `table` and `status`."""

from __future__ import annotations

import argparse


def add_spec_arguments(parser: argparse.ArgumentParser, only: bool = True) -> None:
    """SPEC, --profile and --set (and --only): the same selection of runs in every command."""
    parser.add_argument("spec", help="the experiment spec (YAML), e.g. experiments/ablation.yaml")
    parser.add_argument("--profile", help="a profile of the spec (a named partial override)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="YAML-typed value at a dotted spec path, after the profile (repeatable): --set base.train.lr=3e-4",
    )
    if only:
        parser.add_argument("--only", metavar="K=V,...", help="only the runs matching, e.g. variant=oner,seed=0")
