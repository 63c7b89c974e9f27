"""The repository stands on its own: no file needs anything outside it, docs/paper.md carries the
paper's numbers exactly as `oner_lab.analysis.paper` prints them, and the analysis reads tracking only."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oner_lab.analysis import paper

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = ("../" + "shared", "PAPER" + ".md")  # spelt in two parts so this file does not match itself


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, check=True
    )
    return [ROOT / name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


def test_no_file_but_docs_paper_points_outside_the_repository() -> None:
    offenders = []
    for path in _tracked_files():
        if path == ROOT / "docs" / "paper.md":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{path.relative_to(ROOT)}: {needle}" for needle in OUTSIDE if needle in text]
    assert not offenders, f"point these at docs/paper.md: {offenders}"


def _table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first markdown table under `### heading` in docs/paper.md."""
    text = (ROOT / "docs" / "paper.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    lines = [line for line in re.split(r"\n#{2,3} ", section)[0].splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _number(text: str) -> float | None:
    return None if text == "-" else float(text)


def test_docs_paper_tables_hold_the_numbers_the_lab_prints() -> None:
    ablation = {row[0]: tuple(float(cell) for cell in row[1:]) for row in _table("Ablation")}
    assert ablation == paper.ABLATION_ROWS

    retrieval = {}
    for method, arch, pre, images, *recalls in _table("Main retrieval table"):
        parsed = [None if cell == "-" else tuple(_number(part) for part in cell.split("/")) for cell in recalls]
        retrieval[method] = paper.RetrievalRow(arch, pre == "O", images, *parsed)
    assert retrieval == paper.RETRIEVAL_ROWS

    transfer = {
        row[0]: {
            "two heads": tuple(map(float, row[1].split(" / "))),
            "one tower": tuple(map(float, row[2].split(" / "))),
        }
        for row in _table("Cross-modal transfer")
    }
    assert transfer == paper.TRANSFER_ROWS


def test_analysis_never_imports_the_model_the_objectives_or_training() -> None:
    """oner_lab/analysis reads what runs logged to MLflow; rebuilding a model there re-derives the
    trainer's choices and drifts from them."""
    walled = ("oner_lab.model", "oner_lab.objectives", "oner_lab.train", "oner_lab.evaluate", "oner_lab.finetune")
    offenders = []
    for path in sorted((ROOT / "oner_lab" / "analysis").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                package = ".".join(["oner_lab", "analysis"][: 2 - node.level + 1]) if node.level else ""
                module = ".".join(part for part in (package, node.module) if part)
                names = [module] + [f"{module}.{alias.name}" for alias in node.names]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {name}"
                for name in names
                if any(name == wall or name.startswith(wall + ".") for wall in walled)
            ]
    assert not offenders, offenders


UNPICKLE_JOB = """
import pickle, sys
with open(sys.argv[1], "rb") as handle:
    job = pickle.load(handle).function
print("torch" in sys.modules, job.run_name)
planned = job.planned
print("torch" in sys.modules, planned.config_hash)
"""


@pytest.mark.parametrize("spec", ["ablation.yaml", "retrieval_4m.yaml"])
def test_a_local_job_waiting_for_its_slot_has_not_imported_torch(spec: str, tmp_path: Path) -> None:
    """Every local job process unpickles its `TrainingJob` (as submitit wrote it) and then waits for a
    slot; with the 18 runs of the built-in ablation starting at once, importing torch and the data
    there had cost each 10.5-11.4 CPU-s and 804 MB instead of 3.3-3.8 and 170 MB, taken from the runs
    that train (docs/cost.md). The run's config, whose units' modules import the data package, is
    unpickled once the job trains."""
    from submitit.core.utils import DelayedSubmission

    from oner_lab.launch.job import TrainingJob
    from oner_lab.spec import expand, load_spec

    planned = expand(load_spec(ROOT / "experiments" / spec))[-1]
    job = TrainingJob(planned, "sqlite:///unused.db", "0" * 32, tmp_path / "run", max_parallel=2, owner_pid=1)
    DelayedSubmission(job).dump(tmp_path / "job.pkl")
    loaded = subprocess.run(
        [sys.executable, "-c", UNPICKLE_JOB, str(tmp_path / "job.pkl")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    waiting, training = loaded.stdout.splitlines()
    assert waiting == f"False {planned.run_name}"
    assert training == f"True {planned.config_hash}"  # the config, loaded once the job trains, needs it


@pytest.mark.parametrize("module", ["oner_lab.table", "oner_lab.analysis"])
def test_the_table_and_analysis_start_without_torch(module: str) -> None:
    """`python -m oner_lab.table` and the notebooks read MLflow only; importing torch, timm and
    torchvision there (via the sweep's metric check) took 12.4 s of a 2-core machine's start-up
    instead of 4.8 s (docs/analysis.md)."""
    probe = f"import sys, {module}; print(sorted({{'torch', 'torchvision', 'timm'}} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout
