"""What a researcher sees in the MLflow UI: experiment kind and description, links, who and what made a run.

MLflow 3's UI opens an experiment in GenAI mode unless the experiment is tagged as a model-training
one (`mlflow.experimentKind` = `custom_model_development`) or the link says `workflowType=machine_learning`;
the lab does both. Runs carry MLflow's documented system tags (`mlflow.user`, `mlflow.source.name`,
`mlflow.source.type`), so a run page shows "Created by" and "Source". Written through `tracking`'s
client and lock retries; docs/tracking.md shows the result.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from mlflow import MlflowClient
from mlflow.entities import RunTag

from oner_lab import tracking

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from oner_lab.spec import PlannedRun, Spec
    from oner_lab.spec.models import TrackingConfig

TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
"""The value MLflow's UI reads as "Model training": the runs list, not the GenAI overview."""
TAG_DESCRIPTION = "mlflow.note.content"
"""An experiment's (and a run's) description in the UI."""
TAG_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_ENTRY_POINT = "mlflow.project.entryPoint"
ENTRY_POINT = "oner_lab.run"
UI_ENV = "ONER_MLFLOW_UI"
"""Base URL of the MLflow UI the lab's links point at; default: `mlflow ui`'s http://127.0.0.1:5000 for a
file store, the tracking server itself for an http(s) tracking URI."""
DEFAULT_UI = "http://127.0.0.1:5000"
ANALYSIS_SUFFIX = "/analysis"
"""Analysis outputs live in the companion experiment `<experiment>/analysis`, never among training runs."""


@dataclass(frozen=True)
class JobOptions:
    """The `tracking.*` settings a training job needs (the CLI passes them with each run)."""

    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    log_weights: bool = True

    @classmethod
    def of(cls, config: TrackingConfig) -> JobOptions:
        return cls(
            system_metrics=getattr(config, "system_metrics", cls.system_metrics),
            system_metrics_interval_s=getattr(config, "system_metrics_interval_s", cls.system_metrics_interval_s),
            log_weights=getattr(config, "log_weights", cls.log_weights),
        )


def ui_base(uri: str) -> str:
    """Where the UI of tracking store `uri` is served (env ONER_MLFLOW_UI wins)."""
    configured = os.environ.get(UI_ENV)
    if configured:
        return configured.rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return DEFAULT_UI


def runs_link(uri: str, experiment_key: str) -> str:
    """The experiment's runs list in Model training mode (MLflow 3's UI routes are hash routes)."""
    return f"{ui_base(uri)}/#/experiments/{quote(experiment_key)}/runs?workflowType=machine_learning"


def run_link(uri: str, experiment_key: str, run_id: str) -> str:
    """One run's page, in Model training mode."""
    return f"{ui_base(uri)}/#/experiments/{quote(experiment_key)}/runs/{run_id}?workflowType=machine_learning"


def experiment_link(uri: str, name: str) -> str | None:
    """`runs_link` of experiment `name`, None when the store or the experiment is not there (reads only)."""
    if not tracking.store_exists(uri):
        return None
    client = tracking.connect(uri)
    key = tracking.experiment_id(client, name, create=False)
    return None if key is None else runs_link(uri, key)


def mark_experiment(client: MlflowClient, experiment_key: str, description: str | None) -> None:
    """Tags an experiment as model training and (when given) sets its description."""
    tracking.retry_locked(lambda: client.set_experiment_tag(experiment_key, TAG_EXPERIMENT_KIND, MODEL_TRAINING))
    if description:
        tracking.retry_locked(lambda: client.set_experiment_tag(experiment_key, TAG_DESCRIPTION, description.strip()))


def submitting_user() -> str:
    """Who launched the run: the login of the CLI's process (on SLURM too: the CLI submits the jobs)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return str(os.getuid())


def source_name(spec: Spec) -> str:
    """The spec file, relative to the working directory when it is below it (what a colleague can rerun)."""
    path = Path(spec.source_file)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def identity_tags(spec: Spec) -> dict[str, str]:
    """MLflow's system tags for who and what made a run (the git commit is set by `tracking.create_run`)."""
    return {
        TAG_USER: submitting_user(),
        TAG_SOURCE_NAME: source_name(spec),
        TAG_SOURCE_TYPE: "JOB" if spec.launcher.backend == "slurm" else "LOCAL",
        TAG_ENTRY_POINT: ENTRY_POINT,
    }


def describe_run(client: MlflowClient, run_id: str, spec: Spec, planned: PlannedRun) -> None:
    """Everything the UI shows beyond params: experiment kind and description, who and what, the
    datasets (training and eval), and a Model-training link in the run's description."""
    from oner_lab import tracking_datasets  # imports mlflow.data only when a run is created

    run = tracking.retry_locked(lambda: client.get_run(run_id))
    experiment_key = run.info.experiment_id
    mark_experiment(client, experiment_key, spec.description)
    tags = identity_tags(spec)
    note = run.data.tags.get(tracking.TAG_NOTE)
    if note is not None:
        uri = client.tracking_uri
        tags[tracking.TAG_NOTE] = f"{note}\n\nIn the UI: [this run]({run_link(uri, experiment_key, run_id)}), " + (
            f"[all runs of `{spec.experiment_name}`]({runs_link(uri, experiment_key)})."
        )
    tracking.retry_locked(lambda: client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()]))
    inputs = tracking_datasets.dataset_inputs(planned.config)
    if inputs:
        tracking.retry_locked(lambda: client.log_inputs(run_id, datasets=inputs))


def log_final_weights(client: MlflowClient, run_id: str, run_dir: Path) -> Path | None:
    """Logs the finished run's weights (weights.py) as artifact `weights/`; a failure is a warning, not
    a failed run (the checkpoint is still in the run directory). Returns the written file."""
    from oner_lab import weights  # torch and the model: only in a training job

    checkpoint = Path(run_dir) / "checkpoints" / "last.pt"
    try:
        path = weights.export(checkpoint, Path(run_dir) / "weights")
        tracking.retry_locked(lambda: client.log_artifact(run_id, str(path), "weights"))
    except Exception as error:  # noqa: BLE001 - the run itself finished; say what is missing
        log.warning(
            "run %s: final weights not logged (%s: %s); %s still holds them",
            run_id,
            type(error).__name__,
            error,
            checkpoint,
        )
        return None
    return path


def analysis_experiment(client: MlflowClient, experiment: str) -> str | None:
    """The id of `<experiment>/analysis` (created, tagged and described on first use), None when the
    training experiment does not exist."""
    training = tracking.retry_locked(lambda: client.get_experiment_by_name(experiment))
    if training is None:
        return None
    name = experiment + ANALYSIS_SUFFIX
    key = tracking.experiment_id(client, name, create=False)
    if key is None:  # artifacts beside the training experiment's, not under the caller's cwd (a notebook's folder)
        location = f"{training.artifact_location.rstrip('/')}-analysis"
        key = tracking.retry_locked(lambda: client.create_experiment(name, artifact_location=location))
    description = (
        f"Tables and figures of the analysis notebooks, regenerated from the runs of experiment `{experiment}`; "
        "kept here so that its runs list holds training runs only."
    )
    mark_experiment(client, key, description)
    return key


__all__ = [
    "ANALYSIS_SUFFIX",
    "MODEL_TRAINING",
    "TAG_EXPERIMENT_KIND",
    "JobOptions",
    "analysis_experiment",
    "describe_run",
    "experiment_link",
    "identity_tags",
    "log_final_weights",
    "mark_experiment",
    "run_link",
    "runs_link",
]
