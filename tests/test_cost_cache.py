"""Counts kept on disk (oner_lab/cost_cache.py): the next process reads what was counted, an entry
that is broken is counted again, and an entry follows the code it was counted with.

Each test counts as a new process would (nothing counted in memory) against a cache of its own; an
entry's value is changed on disk to tell a count that was read from one that was made."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from dataclasses import asdict
from pathlib import Path

import lab_plugins.align_term as align_term
import pytest

from oner_lab import cost, cost_cache
from oner_lab.objectives import TERMS, Term, TermOptions, Views
from oner_lab.spec import expand, load_spec, parse_only
from oner_lab.spec.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"
MARK = 12345
"""A FLOP count no config here has: found after a count, it was read from the entry."""


def config(*overrides: str, seed: int = 0) -> RunConfig:
    spec = load_spec(SMOKE, overrides=[f"grid.seed=[{seed}]", *overrides])
    (run,) = expand(spec, parse_only(f"variant=oner,seed={seed}"))
    return run.config


def count_afresh(run: RunConfig, monkeypatch: pytest.MonkeyPatch) -> cost.Cost:
    """`cost.count` as a new process makes it: nothing counted in this process yet."""
    monkeypatch.setattr(cost, "_COUNTED", {})
    return cost.count(run)


def mark(entry: Path) -> None:
    entry.write_text(json.dumps({**json.loads(entry.read_text()), "flops_per_step": MARK}))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cost"
    monkeypatch.setenv(cost_cache.ENV, str(folder))
    return folder


def test_a_count_is_kept_and_the_next_process_reads_it_instead_of_counting(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = config()
    first = count_afresh(run, monkeypatch)
    (entry,) = cache.glob("*.json")
    assert json.loads(entry.read_text()) == asdict(first)
    assert first.flops_per_step != MARK
    mark(entry)
    assert count_afresh(run, monkeypatch).flops_per_step == MARK
    assert count_afresh(config(seed=1), monkeypatch).flops_per_step == MARK, "another seed costs the same"
    bigger = count_afresh(config("base.train.batch_size=32"), monkeypatch)
    assert bigger.flops_per_step == pytest.approx(2 * first.flops_per_step, rel=0.05)
    assert len(list(cache.glob("*.json"))) == 2
    assert not list(cache.glob(".*")), "a temporary file was left behind"


@pytest.mark.parametrize(
    "broken",
    ['{"params_total": 1, "flops_per', '{"flops_per_step": 7}', '{"flops_per_step": "7"}', "[]", "\x00" * 16],
    ids=["truncated", "missing-fields", "not-an-integer", "not-a-mapping", "zeros"],
)
def test_a_broken_entry_is_counted_again_and_replaced(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    run = config()
    first = count_afresh(run, monkeypatch)
    (entry,) = cache.glob("*.json")
    entry.write_text(broken)
    with caplog.at_level(logging.WARNING, logger=cost_cache.__name__):
        assert count_afresh(run, monkeypatch) == first
    assert json.loads(entry.read_text()) == asdict(first)
    assert str(entry) in caplog.text and "counting again" in caplog.text


def test_an_entry_follows_the_code_of_the_plugin_term_it_trains(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The term's module is read from its file: an edit there (here to a copy) is another key."""
    copy = tmp_path / "align_term.py"
    shutil.copy(align_term.__file__, copy)
    monkeypatch.setattr(align_term, "__file__", str(copy))
    run = config("base.plugins=[lab_plugins.align_term]", "base.objective.terms.align=0.5")
    first = count_afresh(run, monkeypatch)
    mark(next(cache.glob("*.json")))
    assert count_afresh(run, monkeypatch).flops_per_step == MARK
    copy.write_text(copy.read_text() + "\n# edited\n")
    assert count_afresh(run, monkeypatch) == first, "the edited term's entry was read"
    assert len(list(cache.glob("*.json"))) == 2


def test_an_edit_anywhere_in_the_package_changes_its_fingerprint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "oner_lab"
    shutil.copytree(Path(cost_cache.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cost_cache, "_PACKAGE", copy)
    before = cost_cache.package_fingerprint.__wrapped__()
    assert cost_cache.package_fingerprint.__wrapped__() == before
    tower = copy / "model" / "tower.py"
    tower.write_text(tower.read_text().replace("def ", "def  ", 1))
    assert cost_cache.package_fingerprint.__wrapped__() != before


def test_a_cache_that_cannot_be_written_or_is_off_still_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = config()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(cost_cache.ENV, cost_cache.OFF)
    counted = count_afresh(run, monkeypatch)
    assert not (tmp_path / "xdg").exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cost_cache.ENV, str(blocker / "cost"))  # its parent is a file: mkdir fails
    assert count_afresh(run, monkeypatch) == counted
    monkeypatch.delenv(cost_cache.ENV)
    assert count_afresh(run, monkeypatch) == counted
    assert len(list((tmp_path / "xdg" / "oner_lab" / "cost").glob("*.json"))) == 1


def test_a_term_whose_code_has_no_file_is_counted_every_time(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A term defined in a notebook cell has no file to key its count by: a kept count could outlive an edit."""
    cell = types.ModuleType("notebook_cell")
    monkeypatch.setitem(sys.modules, cell.__name__, cell)

    def loss(views: Views, options: TermOptions) -> dict:
        return {"cell": views.info_nce(views.contrast("I"), views.contrast("T"))}

    loss.__module__ = cell.__name__
    monkeypatch.setitem(TERMS, "cell", Term("cell", loss, views=("I", "T")))
    with_cell = count_afresh(config("base.objective.terms.cell=0.5"), monkeypatch)
    assert with_cell.flops_per_step > count_afresh(config(), monkeypatch).flops_per_step, (
        "the cell's term was not counted"
    )
    assert len(list(cache.glob("*.json"))) == 1, "only the count without the cell's term is kept"
