#!/usr/bin/env bash
# A real one-node SLURM cluster (partition "a100") on this machine, for the tests and CI.
#
# Usage (as root): bash slurm/local-cluster.sh {install|start|stop|status}
#   install  apt-get install slurmctld slurmd slurm-client munge (skipped when already there)
#   start    install if needed, start munged, write slurm.conf, start slurmctld and slurmd,
#            wait until the node is usable; a no-op when the cluster already answers
#   stop     stop slurmd, slurmctld and munged (by their pid files)
#   status   show the daemons and `sinfo`; exit 0 only when the cluster answers
#
# The configuration is the one recorded as working on the project's machine image
# (Debian bookworm, Slurm 22.05): no cgroups, no accounting storage (submitit falls back
# to its own status files when `sacct` fails), requeue allowed.
set -euo pipefail

readonly PARTITION=a100
readonly SLURM_CONF=/etc/slurm/slurm.conf
readonly MUNGE_KEY=/etc/munge/munge.key
readonly MUNGE_PID=/run/munge/munged.pid
readonly CTLD_PID=/run/slurmctld.pid
readonly SLURMD_PID=/run/slurmd.pid
readonly LOG_DIR=/var/log/slurm
readonly STATE_DIR=/var/spool/slurmctld
readonly SPOOL_DIR=/var/spool/slurmd
readonly READY_TIMEOUT_S=30
readonly OVERSUBSCRIBE=8
# Bumped whenever write_slurm_conf changes, so `start` restarts a cluster running an older config.
readonly CONFIG_VERSION="oner-local-cluster config 2"
readonly PACKAGES=(slurmctld slurmd slurm-client munge)
readonly BINARIES=(slurmctld slurmd sinfo sbatch scontrol munged)

say() { echo "[local-cluster] $*"; }
die() { echo "[local-cluster] ERROR: $*" >&2; exit 1; }

binaries_present() {
    local bin
    for bin in "${BINARIES[@]}"; do
        PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null || return 1
    done
}

slurm_version() {
    dpkg-query -W -f='slurmctld ${Version}' slurmctld 2>/dev/null || echo "slurm (version unknown)"
}

install() {
    if binaries_present; then
        say "slurm and munge already installed: $(slurm_version)"
        return
    fi
    [[ $EUID -eq 0 ]] || die "install needs root (apt-get)"
    say "apt-get update"
    apt-get update -q
    say "apt-get install -y ${PACKAGES[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${PACKAGES[@]}"
    binaries_present || die "packages installed but binaries missing: ${BINARIES[*]}"
    say "installed $(slurm_version)"
}

# True when the pid file names a live process.
pid_alive() {
    local pid_file=$1
    [[ -s $pid_file ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s $MUNGE_KEY ]]; then
        say "creating munge key $MUNGE_KEY"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
    chown munge:munge "$MUNGE_KEY" /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0400 "$MUNGE_KEY"
    chmod 0700 /etc/munge
    chmod 0755 /run/munge
    if pid_alive "$MUNGE_PID"; then
        say "munged already running (pid $(cat "$MUNGE_PID"))"
        return
    fi
    say "starting munged as user munge"
    runuser -u munge -- /usr/sbin/munged
    for _ in 1 2 3 4 5; do
        if munge -n | unmunge >/dev/null 2>&1; then
            return
        fi
        sleep 1
    done
    die "munged started but a credential does not round-trip (see /var/log/munge/munged.log)"
}

# RealMemory must not exceed what slurmd sees, or the node is drained: free MB minus a margin.
real_memory_mb() {
    local free_mb
    free_mb=$(free -m | awk '/^Mem:/ {print $4}')
    echo $((free_mb - 1024))
}

write_slurm_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(real_memory_mb)
    ((mem > 0)) || die "not enough free memory for a node (free - 1024 MB = $mem MB)"
    mkdir -p /etc/slurm "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR"
    say "writing $SLURM_CONF (node $host, CPUs=$cpus, RealMemory=${mem}MB, partition $PARTITION)"
    cat >"$SLURM_CONF" <<EOF
# Written by slurm/local-cluster.sh: a one-node test cluster. Edits are overwritten on start.
# $CONFIG_VERSION
ClusterName=oner-local
SlurmctldHost=$host
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
SlurmUser=root
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
# A requeued job becomes eligible on a timer, not an event: only the periodic pass starts it.
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=1
ReturnToService=2
MinJobAge=300
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
# Cores are shared by up to $OVERSUBSCRIBE jobs (memory is not): a grid's array tasks run side by
# side on a machine of a few cores, as they would on a node with many.
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUBSCRIBE
EOF
}

# True when the a100 partition has a node ready to take jobs.
cluster_ready() {
    local states
    states=$(timeout 5 sinfo -h -p "$PARTITION" -o '%T' 2>/dev/null) || return 1
    grep -qE '^(idle|mixed|allocated|completing)$' <<<"$states"
}

print_logs() {
    local log
    for log in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        echo "----- tail $log" >&2
        tail -n 30 "$log" >&2 2>/dev/null || echo "(missing)" >&2
    done
}

start() {
    [[ $EUID -eq 0 ]] || die "start needs root"
    binaries_present || install
    start_munge
    if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID" && cluster_ready && grep -qF "$CONFIG_VERSION" "$SLURM_CONF"; then
        say "cluster already up:"
        sinfo -p "$PARTITION"
        return
    fi
    stop_slurm_daemons
    write_slurm_conf
    say "starting slurmctld"
    slurmctld
    say "starting slurmd"
    slurmd
    say "waiting up to ${READY_TIMEOUT_S}s for node $(hostname -s) to be ready"
    local waited=0
    until cluster_ready; do
        if ((waited >= READY_TIMEOUT_S)); then
            sinfo -N -l >&2 || true
            print_logs
            die "node not ready after ${READY_TIMEOUT_S}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "cluster up after ${waited}s:"
    sinfo -p "$PARTITION"
}

# Sends TERM to the process named in a pid file and waits (bounded) for it to exit.
stop_daemon() {
    local name=$1 pid_file=$2 pid waited=0
    if ! pid_alive "$pid_file"; then
        say "$name not running"
        return
    fi
    pid=$(cat "$pid_file")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 20)); then
            say "$name (pid $pid) ignored TERM for 10s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
}

stop_slurm_daemons() {
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
}

stop() {
    stop_slurm_daemons
    stop_daemon munged "$MUNGE_PID"
}

status() {
    local name pid_file
    for name in munged slurmctld slurmd; do
        case $name in
            munged) pid_file=$MUNGE_PID ;;
            slurmctld) pid_file=$CTLD_PID ;;
            slurmd) pid_file=$SLURMD_PID ;;
        esac
        if pid_alive "$pid_file"; then
            say "$name running (pid $(cat "$pid_file"))"
        else
            say "$name not running"
        fi
    done
    if cluster_ready; then
        sinfo -p "$PARTITION"
    else
        say "partition $PARTITION does not answer"
        return 1
    fi
}

case ${1:-} in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 {install|start|stop|status} (got '${1:-}')" ;;
esac
