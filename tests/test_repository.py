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


def test_a_local_job_waiting_for_its_slot_has_not_imported_torch() -> None:
    """Every local job process unpickles its `TrainingJob` and then waits for a slot; with the 18 runs
    of the built-in ablation, importing torch and the data there cost about 10 s of CPU each, taken
    from the runs that train (benchmarks/ablation_time.py)."""
    probe = "import sys, oner_lab.launch.job; print(sorted({'torch', 'torchvision'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout


@pytest.mark.parametrize("module", ["oner_lab.table", "oner_lab.analysis"])
def test_the_table_and_analysis_start_without_torch(module: str) -> None:
    """`python -m oner_lab.table` and the notebooks read MLflow only; importing torch, timm and
    torchvision there (via the sweep's metric check) took 12.4 s of a 2-core machine's start-up
    instead of 4.8 s (docs/analysis.md)."""
    probe = f"import sys, {module}; print(sorted({{'torch', 'torchvision', 'timm'}} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == "[]", loaded.stdout
