"""A fresh MLflow SQLite store per test, copied from one created per session.

Creating MLflow's tables takes ~6 s (schema migrations); copying the migrated file takes
milliseconds, and the copy is still a real MLflow store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite database."""
    database = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


def copy_store(template: Path, directory: Path) -> str:
    """Copies the template to `directory/mlflow.db`; returns its absolute sqlite URI."""
    target = directory / "mlflow.db"
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def subprocess_env() -> dict[str, str]:
    """os.environ plus the checkout on PYTHONPATH, so a subprocess in tmp_path imports this oner_lab."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
