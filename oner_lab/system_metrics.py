"""MLflow's system metrics (CPU, memory, disk, network; GPU where NVIDIA's management library is present)
for a training run, sampled by one process per node.

This is MLflow's own `SystemMetricsMonitor` (what `mlflow.start_run(log_system_metrics=True)` starts),
pointed at the lab's run: its metrics are `system/<name>` and fill the run page's System metrics tab.
A job spanning several nodes names each node's metrics `system/node<SLURM_NODEID>/<name>` (MLflow's
`node_id`), so two nodes never write the same key. Writes go through `tracking.retry_locked` like every
other write of the lab (several local processes share one SQLite file). The overhead is measured by
`benchmarks/system_metrics_overhead.py` (docs/tracking.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from oner_lab import tracking
from oner_lab.tracking_ui import JobOptions

log = logging.getLogger(__name__)

WRITE_GIVE_UP_S = 30.0
"""A sample that cannot be written for this long (store locked or gone) is dropped, training goes on."""
FINISH_WAIT_S = 5.0
"""How long a run's end waits for the sample being written (a healthy store takes milliseconds)."""


def leads_node() -> bool:
    """True for the one process per node that samples: local rank 0 (every debug or local job)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))) == 0


def node_name() -> str | None:
    """`node<SLURM_NODEID>` when the job spans several nodes, None otherwise (MLflow's plain names)."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")) or 1)
    return f"node{os.environ.get('SLURM_NODEID', '0')}" if nodes > 1 else None


class NodeMonitor(SystemMetricsMonitor):
    """MLflow's monitor, publishing each aggregated sample in one retried `log_batch`; it times itself
    (`cpu_s`: CPU time of its thread, `spent_s`: wall time in sampling and writing, `samples`) so the
    overhead can be stated."""

    def __init__(self, run_id: str, *, interval_s: float, tracking_uri: str, node_id: str | None) -> None:
        super().__init__(
            run_id, sampling_interval=interval_s, resume_logging=True, node_id=node_id, tracking_uri=tracking_uri
        )
        self.client = tracking.connect(tracking_uri)
        self.spent_s = 0.0
        self.cpu_s = 0.0
        self.samples = 0

    def monitor(self) -> None:
        """Samples every interval and writes each sample; on shutdown, a session that wrote none writes its
        end state. Unlike MLflow's loop it does not read the run back every interval (a server request per
        node per sample) and goes on after a failed read: an outage of the store ends no sampling.
        `cpu_s` adds up the CPU time this thread used (what it takes from training)."""
        started = time.thread_time()
        try:
            while True:
                self.collect_metrics()
                if self._shutdown_event.wait(self.sampling_interval):
                    break
                self.publish_metrics(self.aggregate_metrics())
            if self.samples == 0:
                self.collect_metrics()
                self.publish_metrics(self.aggregate_metrics())
        finally:
            self.cpu_s += time.thread_time() - started

    def collect_metrics(self) -> dict:
        started = time.perf_counter()
        try:
            return super().collect_metrics()
        finally:
            self.spent_s += time.perf_counter() - started

    def publish_metrics(self, metrics: dict) -> None:
        started = time.perf_counter()
        prefix = self._metrics_prefix + (f"{self.node_id}/" if self.node_id else "")
        timestamp = int(time.time() * 1000)
        batch = [Metric(prefix + key, float(value), timestamp, self._logging_step) for key, value in metrics.items()]
        try:
            tracking.retry_locked(
                lambda: self.client.log_batch(self._run_id, metrics=batch, synchronous=True),
                give_up_after_s=WRITE_GIVE_UP_S,
            )
        except Exception as error:  # noqa: BLE001 - a lost sample must never stop training
            log.warning("system metrics: sample %d not written (%s)", self._logging_step, error)
        self._logging_step += 1
        for monitor in self.monitors:
            monitor.clear_metrics()
        self.samples += 1
        self.spent_s += time.perf_counter() - started

    def finish(self) -> None:
        """Stops sampling, waiting at most FINISH_WAIT_S for a sample being written: a store that does not
        answer (a server down, a SQLite file locked) keeps the thread in MLflow's retries for minutes, and
        the run must not wait for them to end (seen: 61 s after training under a 30 s server outage)."""
        if self._process is None:
            return
        self._shutdown_event.set()
        self._process.join(timeout=FINISH_WAIT_S)
        if self._process.is_alive():
            log.warning(
                "system metrics: the last sample of run %s is still waiting on the tracking store %s after %.0f s; "
                "the run ends without it",
                self._run_id,
                self._tracking_uri,
                FINISH_WAIT_S,
            )
        self._process = None


@contextmanager
def node_metrics(tracking_uri: str, run_id: str, options: JobOptions) -> Iterator[NodeMonitor | None]:
    """Samples system metrics into `run_id` while the block runs, on the node-leading process only
    (`tracking.system_metrics: false` turns it off). Never raises for the monitor itself."""
    if not options.system_metrics or not leads_node():
        yield None
        return
    try:
        monitor = NodeMonitor(
            run_id, interval_s=options.system_metrics_interval_s, tracking_uri=tracking_uri, node_id=node_name()
        )
        monitor.start()
    except Exception as error:  # noqa: BLE001 - e.g. psutil missing: train without system metrics
        log.warning("system metrics are not recorded for run %s: %s", run_id, error)
        yield None
        return
    try:
        yield monitor
    finally:
        monitor.finish()


__all__ = ["NodeMonitor", "leads_node", "node_metrics", "node_name"]
