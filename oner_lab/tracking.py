"""MLflow: the only module that writes to it.

One experiment per spec, one MLflow run per planned run (found again by its config hash, so
a rerun skips or resumes it), and `MlflowRunLogger`, the `RunLogger` that `train.run` logs
through: it batches metrics and drops steps MLflow already holds (a resumed run repeats the
steps since its last checkpoint).

Several local processes write one SQLite file at once; SQLite answers "database is locked"
when a writer waits too long, so every MLflow call here goes through `retry_locked`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from oner_lab.spec.identity import SCHEME
from oner_lab.sqlite_wait import short_lock_wait
from oner_lab.store_outage import DEFAULT_WINDOW_S, Outage, StoreUnavailable

if TYPE_CHECKING:
    from oner_lab.spec import PlannedRun, RunConfig, Spec

T = TypeVar("T")

TAG_VARIANT = "oner.variant"
TAG_SEED = "oner.seed"
TAG_HASH = "oner.config_hash"
TAG_HASH_SCHEME = "oner.config_hash_scheme"
"""The hashing scheme of TAG_HASH (`oner_lab.spec.identity.SCHEME`); runs of scheme 1 lack it until
`python -m oner_lab.migrate` re-tags them."""
TAG_HASH_V1 = "oner.config_hash_v1"
"""A migrated run's scheme-1 hash, kept so its run directory (named by it) is still explained."""
TAG_SPEC = "oner.spec"
TAG_PROFILE = "oner.profile"
TAG_RUN_DIR = "oner.run_dir"
TAG_RUN_DIR_REL = "oner.run_dir_rel"
"""The run directory relative to `launcher.runs_dir`: found again after the project folder moved."""
TAG_GIT_DIRTY = "oner.git_dirty"
TAG_ERROR = "oner.error"
TAG_SLURM_JOB = "oner.slurm.job_id"
TAG_SLURM_REQUEUES = "oner.slurm.requeues"
TAG_SLURM_EVENT = "oner.slurm.last_event"
TAG_SLURM_NODES = "oner.slurm.nodes"
"""SLURM_JOB_NODELIST of the job's latest start (`node[1-2]`); a requeued job may land on other nodes."""
TAG_WORLD_SIZE = "oner.world_size"
"""DDP ranks the run trains with (all tasks of its job, over every node)."""
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_NOTE = "mlflow.note.content"
TAG_PARENT_RUN = "mlflow.parentRunId"
"""MLflow's own nesting tag: a fine-tuning run names the run it started from (the retrieval table reads it),
a sweep's trial run its study's run; the UI shows children under their parent."""
TAG_OWNER = "oner.owner"
"""The invocation that dispatched the run and waits for it: JSON host, pid, process start time."""
TAG_WORKER = "oner.worker"
"""The job process training the run (same form); a rerun leaves a run alone while either lives."""
TAG_HEARTBEAT = "oner.heartbeat"
"""Unix time of the owner's or worker's last write: the lease a process on another host is judged by."""
TAG_RECOVERED = "oner.recovered_from"
"""A run opened for a checkpoint found on disk when the store had no run for its hash (a lost store)."""
TAG_PARENT = "oner.parent"
"""The same, readable: the parent's run name, or the checkpoint path `train.init_from` gave."""

FINISHED, FAILED, KILLED, RUNNING, SCHEDULED = "FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"

LOCK_RETRY_FOR_S = 300.0
"""How long to keep retrying a locked SQLite database before giving up."""
PROBE_TIMEOUT_S = 10
ERROR_TAIL_CHARS = 4000
FLUSH_EVERY_S = float(os.environ.get("ONER_MLFLOW_FLUSH_S", "5"))
"""Seconds between metric writes of a run (env ONER_MLFLOW_FLUSH_S; 0 writes on every call, for
tests and near-live curves). Metrics since the last write are lost if the process is SIGKILLed."""


class TrackingError(RuntimeError):
    """The tracking store cannot be opened or written (the CLI exits 2 on it before anything runs)."""


def _is_locked(error: BaseException) -> bool:
    """True when `error` (or what it wraps) is SQLite's transient "database is locked"."""
    seen: BaseException | None = error
    while seen is not None:
        if "database is locked" in str(seen) or "database table is locked" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_locked(call: Callable[[], T], *, give_up_after_s: float = LOCK_RETRY_FOR_S) -> T:
    """Runs `call`, retrying with jittered exponential backoff while SQLite reports a lock."""
    deadline = time.monotonic() + give_up_after_s
    delay = 0.05
    while True:
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - MLflow wraps SQLAlchemy errors in several types
            if not _is_locked(error) or time.monotonic() > deadline:
                raise
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)


def resolve_uri(uri: str) -> str:
    """Makes a relative `sqlite:///file.db` absolute (against cwd) so jobs in other directories find it."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, None for any other store."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]) if uri.startswith(prefix) else None


@contextmanager
def _fail_fast_http() -> Iterator[None]:
    """MLflow retries HTTP requests for minutes; while probing a URI, one short try is enough."""
    names = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT_S)}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(uri: str) -> MlflowClient:
    """A client for `uri`, checked by one read; raises TrackingError if the store cannot be opened.

    A `sqlite:///` file is created (with MLflow's tables) when its directory exists.
    """
    database = sqlite_path(uri)
    if database is not None and not database.parent.is_dir():
        raise TrackingError(f"tracking.uri {uri!r} cannot be opened: directory {str(database.parent)!r} does not exist")
    try:
        # two processes creating one SQLite store race in MLflow's schema migration: one at a time
        with _creation_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            with _fail_fast_http():
                retry_locked(lambda: client.search_experiments(max_results=1))
    except Exception as error:  # noqa: BLE001 - any failure to read the store means it cannot be used
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TrackingError(f"tracking.uri {uri!r} cannot be opened: {reason}") from error
    return client


def store_lock(uri: str, runs_dir: Path, timeout_s: float = LOCK_RETRY_FOR_S) -> FileLock:
    """The lock one invocation holds while it creates the store, plans and claims its runs: beside a
    SQLite file (`mlflow.db.lock`), else in `runs_dir` (`.store.lock`). Released when its process dies."""
    database = sqlite_path(uri)
    path = database.with_name(database.name + ".lock") if database is not None else runs_dir / ".store.lock"
    if database is None:
        path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key not in _LOCKS:  # one object per file: re-entrant within this process (flock is per open file)
        _LOCKS[key] = FileLock(key, timeout=timeout_s)
    return _LOCKS[key]


_LOCKS: dict[str, FileLock] = {}


def _creation_lock(uri: str) -> AbstractContextManager[object]:
    """`store_lock` of a SQLite store while it is opened (and maybe created); nothing for other stores,
    or where no lock file can be made beside it (a read-only folder: nobody creates a store there)."""
    database = sqlite_path(uri)
    if database is None:
        return nullcontext()
    try:
        lock = store_lock(uri, database.parent)
        Path(lock.lock_file).touch(exist_ok=True)
    except OSError:
        return nullcontext()
    return lock


def store_exists(uri: str) -> bool:
    """False for a SQLite file that is not there yet (reading would create it), True otherwise."""
    database = sqlite_path(uri)
    return database is None or database.is_file()


def experiment_id(client: MlflowClient, name: str, *, create: bool = True) -> str | None:
    """The id of experiment `name`, created when missing and `create` (None when missing otherwise)."""
    experiment = retry_locked(lambda: client.get_experiment_by_name(name))
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    return retry_locked(lambda: client.create_experiment(name))


@dataclass(frozen=True)
class TrackedRun:
    """What a rerun needs to know about an MLflow run that already exists for a config hash."""

    run_id: str
    run_name: str
    status: str
    run_dir: str | None
    start_time: int
    slurm_job: str | None = None
    owner: str | None = None
    """Tag TAG_OWNER: the invocation that dispatched it; TAG_WORKER the job training it (launch/owner.py)."""
    worker: str | None = None
    heartbeat: float | None = None
    run_dir_rel: str | None = None
    """Tag TAG_RUN_DIR_REL (runs from before it have only the absolute `run_dir`)."""

    @property
    def finished(self) -> bool:
        return self.status == FINISHED


def hashed_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """Every run of `experiment` with a config hash, oldest first (none when it does not exist)."""
    experiment_key = experiment_id(client, experiment, create=False)
    if experiment_key is None:
        return []
    runs: list[Run] = []
    page_token = None
    while True:
        page = retry_locked(
            lambda: client.search_runs(
                [experiment_key],
                filter_string=f"tags.`{TAG_HASH}` LIKE '%'",
                order_by=["attributes.start_time ASC"],
                page_token=page_token,
            )
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def runs_by_hash(client: MlflowClient, experiment: str) -> dict[str, TrackedRun]:
    """The latest active MLflow run per config hash in `experiment` (empty if it does not exist)."""
    runs = hashed_runs(client, experiment)
    latest: dict[str, TrackedRun] = {}
    for run in runs:  # ascending start time: the last one seen per hash wins
        tags = run.data.tags
        latest[tags[TAG_HASH]] = TrackedRun(
            run_id=run.info.run_id,
            run_name=run.info.run_name,
            status=run.info.status,
            run_dir=tags.get(TAG_RUN_DIR),
            run_dir_rel=tags.get(TAG_RUN_DIR_REL),
            start_time=run.info.start_time,
            slurm_job=tags.get(TAG_SLURM_JOB),
            owner=tags.get(TAG_OWNER),
            worker=tags.get(TAG_WORKER),
            heartbeat=_float_or_none(tags.get(TAG_HEARTBEAT)),
        )
    return latest


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def old_scheme_runs(client: MlflowClient, experiment: str) -> int:
    """How many runs of `experiment` carry a config hash of an earlier scheme (no scheme tag): a rerun
    does not find them until `python -m oner_lab.migrate` re-tags them."""
    experiment_key = experiment_id(client, experiment, create=False)
    if experiment_key is None:
        return 0
    filter_string = f"tags.`{TAG_HASH}` LIKE '%' and tags.`{TAG_HASH_SCHEME}` IS NULL"
    return len(
        retry_locked(lambda: client.search_runs([experiment_key], filter_string=filter_string, max_results=1000))
    )


def fetch_runs(client: MlflowClient, experiment: str, run_ids: list[str]) -> dict[str, Run]:
    """Run id -> MLflow run (params, tags, each metric's latest value), in one query."""
    experiment_key = experiment_id(client, experiment, create=False)
    if experiment_key is None or not run_ids:
        return {}
    quoted = ", ".join(f"'{run_id}'" for run_id in run_ids)
    runs = retry_locked(
        lambda: client.search_runs(
            [experiment_key], filter_string=f"attributes.run_id IN ({quoted})", max_results=len(run_ids)
        )
    )
    return {run.info.run_id: run for run in runs}


def statuses(client: MlflowClient, experiment: str, run_ids: list[str]) -> dict[str, str]:
    """Run id -> MLflow status, in one query (the CLI polls it to show queued and running runs)."""
    return {run_id: run.info.status for run_id, run in fetch_runs(client, experiment, run_ids).items()}


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> MLflow param strings (`train.lr` -> `0.001`); lists and None as JSON."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{dotted}."))
        elif isinstance(value, str):
            flat[dotted] = value
        else:
            flat[dotted] = json.dumps(value)
    return flat


def _cut(value: str, limit: int) -> str:
    """Keeps the start of an over-long value (MLflow rejects it otherwise) and says it was cut."""
    return value if len(value) <= limit else value[: limit - 15] + "...[truncated]"


def config_yaml(config: RunConfig) -> str:
    """The resolved config as YAML, as logged next to each run (`config.yaml`)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def git_state(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding oner_lab; (None, None) when it is not a git checkout."""
    repo = repo or Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != repo.resolve():
            return None, None  # an installed copy inside some other repository
        return git("rev-parse", "HEAD"), bool(git("status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return None, None


def create_run(
    client: MlflowClient,
    experiment: str,
    planned: PlannedRun,
    spec: Spec,
    run_dir: Path,
    extra_tags: Mapping[str, str] | None = None,
) -> str:
    """Creates the MLflow run of one planned run (params, tags, config.yaml), SCHEDULED; returns its id."""
    profile = spec.profile or "default"
    commit, dirty = git_state()
    tags = {
        TAG_VARIANT: planned.variant,
        TAG_SEED: str(planned.seed),
        TAG_HASH: planned.config_hash,
        TAG_HASH_SCHEME: str(SCHEME),
        TAG_SPEC: str(spec.source_file),
        TAG_PROFILE: profile,
        TAG_RUN_DIR: str(run_dir),
        TAG_NOTE: (
            f"Run `{planned.run_name}` of spec `{spec.name}` ({spec.source_file}, profile `{profile}`), "
            f"config hash `{planned.config_hash}`. Relaunch: `python -m oner_lab.run {spec.source_file}"
            + (f" --profile {spec.profile}" if spec.profile else "")
            + "`."
        ),
    }
    runs_dir = Path(spec.launcher.runs_dir).resolve()
    if run_dir.resolve().is_relative_to(runs_dir):
        tags[TAG_RUN_DIR_REL] = str(run_dir.resolve().relative_to(runs_dir))
    if commit is not None:
        tags[TAG_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(dirty).lower()
    tags.update(extra_tags or {})
    experiment_key = experiment_id(client, experiment)
    run = retry_locked(lambda: client.create_run(experiment_key, run_name=planned.run_name))
    run_id = run.info.run_id
    params = [
        Param(key, _cut(value, MAX_PARAM_VAL_LENGTH))
        for key, value in flatten(planned.config.model_dump(mode="json")).items()
    ]
    run_tags = [RunTag(key, _cut(value, MAX_TAG_VAL_LENGTH)) for key, value in tags.items()]
    entities: list[Param | RunTag] = [*params, *run_tags]
    for start in range(0, len(entities), MAX_PARAMS_TAGS_PER_BATCH):
        chunk = entities[start : start + MAX_PARAMS_TAGS_PER_BATCH]
        retry_locked(
            lambda: client.log_batch(
                run_id,
                params=[item for item in chunk if isinstance(item, Param)],
                tags=[item for item in chunk if isinstance(item, RunTag)],
            )
        )
    retry_locked(lambda: client.log_text(run_id, config_yaml(planned.config), "config.yaml"))
    from oner_lab import tracking_ui  # user, source, datasets, experiment kind (what the UI shows)

    tracking_ui.describe_run(client, run_id, spec, planned)
    set_status(client, run_id, SCHEDULED)
    return run_id


def set_status(client: MlflowClient, run_id: str, status: str) -> None:
    """SCHEDULED (dispatched, waiting) or RUNNING (training); a resumed run also drops its old error tag."""
    retry_locked(lambda: client.update_run(run_id, status=status))
    if status == RUNNING and TAG_ERROR in retry_locked(lambda: client.get_run(run_id)).data.tags:
        retry_locked(lambda: client.delete_tag(run_id, TAG_ERROR))


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Sets several tags in one write (SLURM job id, requeue count, last preemption event)."""
    run_tags = [RunTag(key, _cut(value, MAX_TAG_VAL_LENGTH)) for key, value in tags.items()]
    retry_locked(lambda: client.log_batch(run_id, tags=run_tags))


def end_run(client: MlflowClient, run_id: str, status: str, error: BaseException | str | None = None) -> None:
    """Marks FINISHED, FAILED or KILLED; `error` (an exception or text) becomes tag `oner.error`."""
    if error is not None:
        if isinstance(error, BaseException):
            detail = "".join(traceback.format_exception(error))[-ERROR_TAIL_CHARS:]
            error = f"{type(error).__name__}: {error}\n\n{detail}"
        retry_locked(lambda: client.set_tag(run_id, TAG_ERROR, _cut(error, MAX_TAG_VAL_LENGTH)))
    retry_locked(lambda: client.set_terminated(run_id, status=status))


def logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The highest step MLflow holds for each metric of a run (read once when a run resumes)."""
    keys = retry_locked(lambda: client.get_run(run_id)).data.metrics
    return {
        key: max(metric.step for metric in retry_locked(lambda key=key: client.get_metric_history(run_id, key)))
        for key in keys
    }


class MlflowRunLogger:
    """The `RunLogger` of one MLflow run: buffered metrics, one `log_batch` per flush.

    A flush happens when `flush_every_s` has passed since the last one (checked on each
    `log_metrics`), when `max_buffered` values are waiting, and on `flush()`/`close()`.
    A (key, step) at or below the highest step already logged for that key is dropped: a
    resumed run repeats the steps since its last checkpoint.

    A store that stops answering (store_outage.py) does not stop training: metrics and artifacts
    stay buffered and are tried again with backoff. Past `outage_window_s`, `lost` holds the error
    and `should_stop()` says True (the job checkpoints and ends), and the buffer goes to `spill`
    (`<run_dir>/unlogged_metrics.jsonl`), which the next logger of the run logs first.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        *,
        flush_every_s: float = FLUSH_EVERY_S,
        max_buffered: int = MAX_METRICS_PER_BATCH,
        clock: Callable[[], float] = time.monotonic,
        outage_window_s: float = DEFAULT_WINDOW_S,
        spill: Path | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self.max_buffered = max_buffered
        self._clock = clock
        self.uri = client._tracking_client.tracking_uri
        self.outage = Outage(self.uri, outage_window_s, clock)
        self.spill = spill
        self._store_file = _file_identity(sqlite_path(self.uri))
        self._last_step = logged_steps(client, run_id)
        self._buffer: list[Metric] = []
        self._artifacts: list[tuple[Path, str | None]] = []
        self._last_flush = clock()
        self._owner_tags: dict[str, str] = {}
        self._relog_spill()

    @property
    def lost(self) -> StoreUnavailable | None:
        """The store's failure once it has lasted longer than the window; None while it answers."""
        return self.outage.error() if self.outage.expired else None

    def should_stop(self) -> bool:
        """True once the store has failed for longer than the window: stop at the next checkpoint."""
        return self.outage.expired

    def beat(self, tags: Mapping[str, str]) -> None:
        """Tags written with every flush (the owner's heartbeat: docs/reliability.md)."""
        self._owner_tags = dict(tags)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if step <= self._last_step.get(key, -1):
                continue
            self._last_step[key] = step
            self._buffer.append(Metric(key, float(value), timestamp, step))
        if len(self._buffer) >= self.max_buffered or self._clock() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_params(self, params: Mapping[str, str]) -> None:
        """Params the training loop adds (parameter count, FLOPs per step); the same value again is a no-op."""
        batch = [Param(key, _cut(str(value), MAX_PARAM_VAL_LENGTH)) for key, value in params.items()]
        retry_locked(lambda: self.client.log_batch(self.run_id, params=batch))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._artifacts.append((Path(path), artifact_path))
        self.flush()

    def flush(self) -> None:
        """Writes every buffered metric (in chunks MLflow accepts) and waiting artifact; while the store
        fails, keeps them and returns (tried again after a backoff)."""
        self._last_flush = self._clock()
        if self.outage.due():
            self.outage.attempt(self._write)
        if self.outage.expired:
            self._write_spill()

    def _write(self) -> None:
        """One try at writing everything held. A SQLite lock fails it within a quarter second
        (sqlite_wait.py); a server gets one HTTP try without MLflow's retries (PROBE_TIMEOUT_S at most)."""
        self._check_store_file()
        with short_lock_wait(), _fail_fast_http():
            while self._buffer:
                chunk = self._buffer[:MAX_METRICS_PER_BATCH]
                beat = {**self._owner_tags, TAG_HEARTBEAT: f"{time.time():.0f}"} if self._owner_tags else {}
                tags = [RunTag(key, value) for key, value in beat.items()]
                self.client.log_batch(self.run_id, metrics=chunk, tags=tags, synchronous=True)
                del self._buffer[: len(chunk)]
            while self._artifacts:
                path, artifact_path = self._artifacts[0]
                if path.is_dir():
                    self.client.log_artifacts(self.run_id, str(path), artifact_path)
                else:
                    self.client.log_artifact(self.run_id, str(path), artifact_path)
                del self._artifacts[0]
        if self.spill is not None and self.spill.exists():
            self.spill.unlink()

    def _check_store_file(self) -> None:
        """A deleted SQLite file stays writable through open connections, so writes would vanish."""
        path = sqlite_path(self.uri)
        if path is not None and _file_identity(path) != self._store_file:
            raise TrackingError(f"the store file {path} was deleted or replaced while the run was writing to it")

    def _write_spill(self) -> None:
        """Keeps what MLflow did not take in the run directory (rewritten whole, so repeats do no harm)."""
        if self.spill is None:
            return
        rows = [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self._buffer]
        self.spill.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.spill.with_name(self.spill.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, self.spill)

    def _relog_spill(self) -> None:
        """Metrics an earlier attempt kept on disk during an outage go first (steps MLflow holds are dropped)."""
        if self.spill is None or not self.spill.exists():
            return
        for line in self.spill.read_text().splitlines():
            row = json.loads(line)
            if row["step"] > self._last_step.get(row["key"], -1):
                self._buffer.append(Metric(row["key"], float(row["value"]), int(row["timestamp"]), int(row["step"])))
        for metric in self._buffer:
            self._last_step[metric.key] = max(metric.step, self._last_step.get(metric.key, -1))
        self._buffer.sort(key=lambda metric: metric.step)

    def close(self) -> None:
        """Writes what is left, waiting out an outage up to the window; then raises StoreUnavailable."""
        try:
            self.outage.insist(self._write)
        except StoreUnavailable:
            self._write_spill()
            raise

    def __enter__(self) -> MlflowRunLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _file_identity(path: Path | None) -> tuple[int, int] | None:
    """(device, inode) of a file, None when there is none."""
    if path is None:
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


TAG_STUDY = "oner.sweep.study"
TAG_TRIAL = "oner.sweep.trial"
"""A trial run's Optuna trial number; the study's own (parent) run has TAG_STUDY and no TAG_TRIAL."""
TAG_TRIAL_STATE = "oner.sweep.state"
"""COMPLETE, PRUNED or FAIL as Optuna ended the trial; a pruned trial's run ends KILLED with this PRUNED."""
TAG_TRIAL_PARAMS = "oner.sweep.params"
TAG_BEST = "oner.sweep.best"
"""Prefix of the study run's tags naming its best trial: `.trial`, `.value`, `.<param>`."""


def study_run(client: MlflowClient, experiment: str, study: str, note: str) -> str:
    """The parent MLflow run of an Optuna study (found by TAG_STUDY, created on first use), set RUNNING."""
    experiment_key = experiment_id(client, experiment)
    found = retry_locked(
        lambda: client.search_runs(
            [experiment_key],
            filter_string=f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_TRIAL}` IS NULL",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {TAG_STUDY: study, TAG_NOTE: note}
        run_id = retry_locked(
            lambda: client.create_run(experiment_key, run_name=f"study/{study}", tags=tags)
        ).info.run_id
    set_status(client, run_id, RUNNING)
    return run_id


def create_trial_run(
    client: MlflowClient,
    spec: Spec,
    planned: PlannedRun,
    run_dir: Path,
    parent_run_id: str,
    number: int,
    params: Mapping[str, Any],
) -> str:
    """A trial's MLflow run (`create_run`, SCHEDULED), nested under its study's run and tagged with the
    study, the trial number and the sampled parameters."""
    run_id = create_run(client, spec.experiment_name, planned, spec, run_dir)
    study = retry_locked(lambda: client.get_run(parent_run_id)).data.tags[TAG_STUDY]
    tags = {
        TAG_PARENT_RUN: parent_run_id,
        TAG_STUDY: study,
        TAG_TRIAL: str(number),
        TAG_TRIAL_PARAMS: json.dumps(dict(params)),
    }
    set_tags(client, run_id, tags)
    return run_id


def log_best_trial(
    client: MlflowClient, run_id: str, number: int, value: float, params: Mapping[str, Any], finished: int
) -> None:
    """The study run's view of its best trial so far: tags `oner.sweep.best.*`, metric `sweep/best_value`
    at step = finished trials (tags, not params: MLflow params cannot change once logged)."""
    tags = {f"{TAG_BEST}.trial": str(number), f"{TAG_BEST}.value": repr(value)}
    tags.update({f"{TAG_BEST}.{key}": json.dumps(param) for key, param in params.items()})
    set_tags(client, run_id, tags)
    metric = Metric("sweep/best_value", float(value), int(time.time() * 1000), finished)
    retry_locked(lambda: client.log_batch(run_id, metrics=[metric], synchronous=True))


TAG_ANALYSIS = "oner.analysis"
"""Marks the run holding an analysis notebook's outputs; it has no config hash, so no table or
rerun ever counts it as a training run."""


def log_analysis_outputs(
    uri: str, experiment: str, name: str, paths: Iterable[Path], artifact_path: str = "analysis"
) -> str | None:
    """Logs files an analysis made (figures, tables) as artifacts of the run `analysis/<name>` of the
    companion experiment `<experiment>/analysis` (tracking_ui.analysis_experiment), created on first use
    and reused after (a file logged again replaces the old one): the training experiment's runs list
    holds training runs only.

    Returns the run id, or None when the training experiment does not exist (nothing is created).
    """
    from oner_lab import tracking_ui

    client = connect(uri)
    experiment_key = tracking_ui.analysis_experiment(client, experiment)
    if experiment_key is None:
        return None
    found = retry_locked(
        lambda: client.search_runs([experiment_key], filter_string=f"tags.`{TAG_ANALYSIS}` = '{name}'", max_results=1)
    )
    if found:
        run_id = found[0].info.run_id
    else:
        note = f"Figures and tables of `analysis/{name}.ipynb`, regenerated from the runs of experiment `{experiment}`."
        run = retry_locked(
            lambda: client.create_run(
                experiment_key, run_name=f"analysis/{name}", tags={TAG_ANALYSIS: name, TAG_NOTE: note}
            )
        )
        run_id = run.info.run_id
    for path in paths:
        retry_locked(lambda path=path: client.log_artifact(run_id, str(path), artifact_path))
    retry_locked(lambda: client.set_terminated(run_id, status=FINISHED))
    return run_id
