"""Cluster profiles (`slurm/<name>.yaml`): what a site's partition offers, and the checks a submission
must pass before anything is queued.

A spec names a profile with `launcher.slurm.cluster` and may narrow it (`nodes`, `gpus_per_node`,
`tasks_per_node`, `time_min`, `max_requeues`); `resolve` merges the two and refuses what cannot
fit the profile, `check_cluster` asks `sinfo` whether the partition exists and can hold the job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator

from oner_lab.launch.scheduler import Partition, SchedulerError, partitions
from oner_lab.spec import SlurmConfig, SpecError
from oner_lab.spec.config import Section
from oner_lab.spec.errors import did_you_mean
from oner_lab.spec.validation import validate
from oner_lab.spec.yaml_io import read_yaml

REPO_PROFILES = Path(__file__).resolve().parents[2] / "slurm"
KEY = "launcher.slurm"

RESERVED_FLAGS = frozenset(
    {
        "partition",
        "account",
        "qos",
        "constraint",
        "nodes",
        "ntasks-per-node",
        "cpus-per-task",
        "gpus-per-node",
        "mem",
        "time",
        "signal",
        "array",
        "output",
        "error",
        "open-mode",
        "job-name",
        "requeue",
    }
)
"""sbatch flags the launcher sets itself from the profile and the spec."""


class LaunchError(RuntimeError):
    """A backend that cannot launch here; raised before anything is submitted."""


class ClusterProfile(Section):
    """One site's partition. docs/slurm.md explains each key and how to write one for another site."""

    partition: str = Field(min_length=1, description="sbatch --partition")
    account: str | None = Field(default=None, description="sbatch --account")
    qos: str | None = Field(default=None, description="sbatch --qos")
    constraint: str | None = Field(default=None, description="sbatch --constraint")
    gpus_per_node: NonNegativeInt = Field(description="GPUs of one node (0: a CPU partition)")
    gpu: str | None = Field(
        default=None,
        description="the card, by its name in the cost table (oner_lab/launch/devices.py), for the cost estimate",
    )
    cpus_per_task: PositiveInt = Field(description="CPU cores per DDP rank")
    mem_gb: PositiveFloat = Field(description="memory per node, GB")
    time_limit_min: PositiveInt = Field(description="sbatch --time, minutes")
    signal_lead_s: PositiveInt = Field(description="USR2 this many seconds before the time limit")
    max_array_parallel: PositiveInt = Field(description="array tasks running at once")
    max_requeues: NonNegativeInt = Field(description="requeues (timeouts, preemptions) before a run is FAILED")
    setup: list[str] = Field(default_factory=list, description="shell lines run before the job (module load ...)")
    extra_sbatch: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="other sbatch flags, name without leading dashes"
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str | None) -> str | None:
        from oner_lab.launch.devices import DEVICES

        if gpu is not None and (gpu not in DEVICES or DEVICES[gpu].peak_flops is None):
            cards = ", ".join(name for name, known in DEVICES.items() if known.peak_flops is not None)
            raise ValueError(
                f"{gpu!r} is not in the cost table; allowed: {cards} (or add it to oner_lab/launch/devices.py)"
            )
        return gpu

    @field_validator("extra_sbatch")
    @classmethod
    def _extra_flags(cls, flags: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for name, value in flags.items():
            flag = name.replace("_", "-")
            if flag in RESERVED_FLAGS:
                raise ValueError(f"{name!r} is set by the launcher from the profile and the spec; use its own key")
            if not re.fullmatch(r"[a-z][a-z0-9-]*", flag):
                raise ValueError(f"{name!r} is not an sbatch flag name (lower case, without leading dashes)")
            if value is False:
                raise ValueError(f"{name}: false; leave the flag out instead (true means a bare `--{flag}`)")
        return flags


@dataclass(frozen=True)
class SlurmResources:
    """What one run's job asks for: the profile, narrowed by the spec's `launcher.slurm`."""

    profile: ClusterProfile
    profile_path: Path
    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    time_min: int
    max_requeues: int

    @property
    def world_size(self) -> int:
        """DDP ranks of one run: one per task."""
        return self.nodes * self.tasks_per_node

    def executor_parameters(self, job_name: str) -> dict[str, object]:
        """`AutoExecutor.update_parameters` arguments for this job shape (one array task per run)."""
        profile = self.profile
        parameters: dict[str, object] = {
            "name": job_name,
            "nodes": self.nodes,
            "tasks_per_node": self.tasks_per_node,
            "cpus_per_task": profile.cpus_per_task,
            "mem_gb": profile.mem_gb,
            "timeout_min": self.time_min,
            "slurm_partition": profile.partition,
            "slurm_signal_delay_s": profile.signal_lead_s,
            "slurm_array_parallelism": profile.max_array_parallel,
            "slurm_additional_parameters": {"requeue": True, **profile.extra_sbatch},
        }
        if self.gpus_per_node:
            parameters["gpus_per_node"] = self.gpus_per_node
        optional = {"slurm_account": profile.account, "slurm_qos": profile.qos, "slurm_constraint": profile.constraint}
        parameters.update({key: value for key, value in optional.items() if value is not None})
        # torch would start one thread per core of the node in every rank; give each rank its own cores
        # SLURM 22.05-23.02's srun does not inherit sbatch's --cpus-per-task: without this every rank
        # is bound to one core. A GPU job also tells its ranks that CPU training would be a failure.
        setup = [
            "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}",
            "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK",
        ]
        if self.gpus_per_node:
            setup.append("export ONER_EXPECT_GPUS=1")
        parameters["slurm_setup"] = [*setup, *profile.setup]
        return parameters


def profile_dirs() -> list[Path]:
    """Where `cluster: <name>` is looked up: `./slurm` (a site's own profiles), then this checkout's `slurm/`."""
    dirs = []
    for directory in (Path.cwd() / "slurm", REPO_PROFILES):
        if directory.resolve() not in [known.resolve() for known in dirs]:
            dirs.append(directory)
    return dirs


def find_profile(cluster: str) -> Path:
    """The YAML file of `cluster`: a name (`a100` -> `slurm/a100.yaml`) or a path ending in .yaml/.yml."""
    if cluster.endswith((".yaml", ".yml")):
        path = Path(cluster)
        if not path.is_file():
            raise LaunchError(
                f"{KEY}.cluster: {cluster!r} is not a file (a cluster profile path, relative to {Path.cwd()})"
            )
        return path
    dirs = profile_dirs()
    for directory in dirs:
        if (directory / f"{cluster}.yaml").is_file():
            return directory / f"{cluster}.yaml"
    names = sorted({path.stem for directory in dirs if directory.is_dir() for path in directory.glob("*.yaml")})
    guess = did_you_mean(cluster, names)
    raise LaunchError(
        f"{KEY}.cluster: no cluster profile {cluster!r} ({cluster}.yaml in {', '.join(str(d) for d in dirs)}); "
        f"allowed: {', '.join(names) or 'none is defined'}"
        + (f". Did you mean {guess!r}?" if guess else "")
        + " (docs/slurm.md shows how to write one)"
    )


def load_profile(cluster: str) -> tuple[ClusterProfile, Path]:
    """Reads and validates a cluster profile; a bad file raises LaunchError naming the file and key."""
    path = find_profile(cluster)
    try:
        return validate(ClusterProfile, read_yaml(path), file=path), path
    except SpecError as error:
        raise LaunchError(f"cluster profile {error}") from None


def resolve(slurm: SlurmConfig) -> SlurmResources:
    """The profile named by `slurm.cluster`, narrowed by the spec; refuses what the profile cannot give."""
    profile, path = load_profile(slurm.cluster)
    source = f"cluster profile {path}"
    gpus = profile.gpus_per_node if slurm.gpus_per_node is None else slurm.gpus_per_node
    if gpus > profile.gpus_per_node:
        raise LaunchError(
            f"{KEY}.gpus_per_node: {gpus} is more than a node has ({source}: gpus_per_node {profile.gpus_per_node}); "
            f"allowed: 0 to {profile.gpus_per_node}, or null for all of them"
        )
    if slurm.tasks_per_node is not None and gpus and slurm.tasks_per_node != gpus:
        raise LaunchError(
            f"{KEY}.tasks_per_node: {slurm.tasks_per_node} does not match the {gpus} GPUs per node; allowed: "
            f"null or {gpus} (one DDP rank per GPU; tasks_per_node is for CPU-only runs)"
        )
    tasks = slurm.tasks_per_node or gpus or 1
    time_min = slurm.time_min or profile.time_limit_min
    origin = f"{KEY}.time_min" if slurm.time_min else f"{source}: time_limit_min"
    if time_min * 60 <= profile.signal_lead_s:
        raise LaunchError(
            f"{origin}: {time_min} min is not longer than the USR2 lead ({source}: signal_lead_s "
            f"{profile.signal_lead_s}); allowed: more than {profile.signal_lead_s / 60:g} min, so the job runs "
            "before it is told to checkpoint"
        )
    requeues = profile.max_requeues if slurm.max_requeues is None else slurm.max_requeues
    return SlurmResources(profile, path, slurm.nodes, gpus, tasks, time_min, requeues)


def check_cluster(resources: SlurmResources) -> Partition:
    """Asks `sinfo` whether the partition exists and can hold this job; LaunchError otherwise."""
    profile, source = resources.profile, f"cluster profile {resources.profile_path}"
    try:
        found = partitions()
    except SchedulerError as error:
        raise LaunchError(f"launcher.backend: 'slurm' needs a SLURM cluster answering here: {error}") from None
    partition = found.get(profile.partition)
    if partition is None:
        guess = did_you_mean(profile.partition, found)
        raise LaunchError(
            f"{source}: partition: {profile.partition!r} is not a partition of this cluster (sinfo); allowed: "
            f"{', '.join(sorted(found)) or 'none'}" + (f". Did you mean {guess!r}?" if guess else "")
        )
    if resources.nodes > partition.nodes:
        raise LaunchError(
            f"{KEY}.nodes: {resources.nodes} is more than partition {partition.name!r} has ({partition.nodes}, sinfo)"
        )
    if resources.gpus_per_node > partition.gpus_per_node:
        allowed = (
            f"0 to {partition.gpus_per_node}"
            if partition.gpus_per_node
            else "0 (a CPU partition: use a CPU cluster profile such as `local`, or a partition with GPUs)"
        )
        raise LaunchError(
            f"{KEY}.gpus_per_node: {resources.gpus_per_node} GPUs per node (when null: {source}'s) but the nodes "
            f"of partition {partition.name!r} have {partition.gpus_per_node} (sinfo GRES); allowed: {allowed}"
        )
    if partition.max_time_min is not None and resources.time_min > partition.max_time_min:
        raise LaunchError(
            f"{KEY}.time_min: {resources.time_min} min is over partition {partition.name!r}'s limit "
            f"({partition.max_time_min} min, sinfo); the job would never start"
        )
    return partition
