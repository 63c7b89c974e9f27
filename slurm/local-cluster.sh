#!/usr/bin/env bash
# A real SLURM cluster (partition "a100") of one or more nodes on this machine, for the tests and CI.
#
# Usage (as root): bash slurm/local-cluster.sh {install|start [--nodes N]|stop|status|start-node K}
#   install  apt-get install slurmctld slurmd slurm-client munge (skipped when already there)
#   start    install if needed, start munged, create the nodes, write slurm.conf, start slurmctld
#            and one slurmd per node, wait until every node is usable; a no-op when a cluster of
#            N nodes (default 1) with this config already answers
#   stop     stop every slurmd, slurmctld and munged, remove the nodes' namespaces, links and
#            the bridge (idempotent: a second stop finds nothing and says so)
#   status   show the daemons and `sinfo`; exit 0 only when the partition answers
#   start-node K   start node K's slurmd again (after it died or was killed: the node comes back
#            from DOWN on its own once it registers, ReturnToService=2); a no-op when it runs
#
# Each node is a network namespace `oner-node<k>` with its own hostname (`node<k>`, through a UTS
# namespace) and address 10.77.0.<10+k> on a veth pair to the bridge `oner-br0` (10.77.0.1), which
# this script creates and removes. slurmctld runs on the host and reaches each slurmd at its
# NodeAddr; the nodes reach slurmctld, each other and services bound to 10.77.0.1 (the MLflow
# server of slurm/local-tracking.sh) over the bridge. No route leads anywhere else. Names resolve
# through /etc/netns/oner-node<k>/hosts, mounted over /etc/hosts in the node's mount namespace. munge's
# socket and every file system are shared, so jobs on any node see the same paths.
#
# The configuration is the one recorded as working on the project's machine image
# (Debian bookworm, Slurm 22.05): no cgroups, no accounting storage (submitit falls back
# to its own status files when `sacct` fails), requeue allowed. Every node claims the machine's
# cores and memory (they share them): it is a test bed for scheduling and networking, not for speed.
set -euo pipefail

readonly PARTITION=a100
readonly SLURM_CONF=/etc/slurm/slurm.conf
readonly MUNGE_KEY=/etc/munge/munge.key
readonly MUNGE_PID=/run/munge/munged.pid
readonly CTLD_PID=/run/slurmctld.pid
readonly LEGACY_SLURMD_PID=/run/slurmd.pid  # the one-node cluster's slurmd before nodes had namespaces
readonly LOG_DIR=/var/log/slurm
readonly STATE_DIR=/var/spool/slurmctld
readonly SPOOL_ROOT=/var/spool/slurmd
readonly READY_TIMEOUT_S=40
readonly OVERSUBSCRIBE=8
readonly BRIDGE=oner-br0
readonly SUBNET_PREFIX=10.77.0
readonly BRIDGE_ADDR=$SUBNET_PREFIX.1
readonly NETNS_PREFIX=oner-node
readonly MAX_NODES=8
# Bumped whenever write_slurm_conf changes, so `start` restarts a cluster running an older config.
readonly CONFIG_VERSION="oner-local-cluster config 4"
readonly PACKAGES=(slurmctld slurmd slurm-client munge)
readonly BINARIES=(slurmctld slurmd sinfo sbatch scontrol munged)

say() { echo "[local-cluster] $*"; }
die() { echo "[local-cluster] ERROR: $*" >&2; exit 1; }

node_name() { echo "node$1"; }
node_addr() { echo "$SUBNET_PREFIX.$((10 + $1))"; }
netns_of() { echo "$NETNS_PREFIX$1"; }
slurmd_pid_file() { echo "/run/slurmd-node$1.pid"; }

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

# A killed daemon whose parent is a PID 1 that does not reap (as in some containers) stays a zombie that
# `kill -0` still finds: only a process that is not a zombie counts as running.
pid_running() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

# True when the pid file names a live process.
pid_alive() {
    local pid_file=$1
    [[ -s $pid_file ]] && pid_running "$(cat "$pid_file")"
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
# Every node sees the whole machine, so each claims it (memory, like cores, is shared by the nodes).
real_memory_mb() {
    local free_mb
    free_mb=$(free -m | awk '/^Mem:/ {print $4}')
    echo $((free_mb - 1024))
}

# Nodes recorded in slurm.conf by the last start (0 when there is none).
configured_nodes() {
    local found
    found=$(grep -oE '^# nodes: [0-9]+' "$SLURM_CONF" 2>/dev/null | awk '{print $3}') || true
    echo "${found:-0}"
}

write_slurm_conf() {
    local nodes=$1 host cpus mem k
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(real_memory_mb)
    ((mem > 0)) || die "not enough free memory for a node (free - 1024 MB = $mem MB)"
    mkdir -p /etc/slurm "$LOG_DIR" "$STATE_DIR" "$SPOOL_ROOT"
    say "writing $SLURM_CONF ($nodes node(s), CPUs=$cpus, RealMemory=${mem}MB each, partition $PARTITION)"
    {
        cat <<EOF
# Written by slurm/local-cluster.sh: a test cluster of network namespaces. Edits are overwritten on start.
# $CONFIG_VERSION
# nodes: $nodes
ClusterName=oner-local
SlurmctldHost=$host($BRIDGE_ADDR)
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=cred_expire=10
SlurmUser=root
SlurmctldPidFile=$CTLD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
# One slurmd per node on one machine: each has its own pid file, log and spool (%n = node name).
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmdSpoolDir=$SPOOL_ROOT/%n
StateSaveLocation=$STATE_DIR
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
# A node whose slurmd stops answering is marked DOWN after this many seconds (its jobs are requeued).
SlurmdTimeout=20
EOF
        for ((k = 1; k <= nodes; k++)); do
            echo "NodeName=$(node_name "$k") NodeAddr=$(node_addr "$k") NodeHostname=$(node_name "$k") CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        done
        echo "# Cores are shared by up to $OVERSUBSCRIBE jobs per node (memory is not): a grid's array tasks run side"
        echo "# by side on a machine of a few cores, as they would on nodes with many."
        echo "# LLN: each job goes to the least loaded node(s), so jobs spread over the nodes instead of filling node1 first."
        echo "PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:$OVERSUBSCRIBE LLN=YES"
    } >"$SLURM_CONF"
}

# The bridge and, per node, a namespace with a veth pair to it, an address and a hosts file.
create_network() {
    local nodes=$1 host k ns addr hosts
    host=$(hostname -s)
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        say "creating bridge $BRIDGE ($BRIDGE_ADDR/24)"
        ip link add "$BRIDGE" type bridge
        ip addr add "$BRIDGE_ADDR/24" dev "$BRIDGE"
    fi
    ip link set "$BRIDGE" up
    hosts="127.0.0.1 localhost"$'\n'"$BRIDGE_ADDR $host"
    for ((k = 1; k <= nodes; k++)); do
        hosts+=$'\n'"$(node_addr "$k") $(node_name "$k")"
    done
    for ((k = 1; k <= nodes; k++)); do
        ns=$(netns_of "$k")
        addr=$(node_addr "$k")
        mkdir -p "/etc/netns/$ns"
        echo "$hosts" >"/etc/netns/$ns/hosts"
        if ip netns list | grep -qw "$ns"; then
            continue
        fi
        say "creating node $(node_name "$k"): namespace $ns, $addr on veth oner-v$k -> $BRIDGE"
        ip netns add "$ns"
        ip link add "oner-v$k" type veth peer name "oner-v${k}p"
        ip link set "oner-v${k}p" netns "$ns"
        ip link set "oner-v$k" master "$BRIDGE"
        ip link set "oner-v$k" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip link set "oner-v${k}p" name eth0
        ip netns exec "$ns" ip addr add "$addr/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
    done
}

# Removes the nodes' namespaces numbered above $1 (0: all of them, then every link and the bridge).
remove_network() {
    local keep=${1:-0} ns k pids
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$NETNS_PREFIX[0-9]+$" || true); do
        ((${ns#"$NETNS_PREFIX"} > keep)) || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [[ -n $pids ]]; then  # job steps the cluster started there that outlived their slurmd
            say "killing processes left in $ns: $(echo "$pids" | tr '\n' ' ')"
            # shellcheck disable=SC2086  # one pid per word
            kill -KILL $pids 2>/dev/null || true
        fi
        say "removing namespace $ns"
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
    for k in $(seq $((keep + 1)) $MAX_NODES); do
        if ip link del "oner-v$k" 2>/dev/null; then say "removed link oner-v$k"; fi
    done
    ((keep == 0)) || return 0
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        say "removing bridge $BRIDGE"
        ip link del "$BRIDGE"
    fi
}

start_slurmd() {
    local k=$1 node ns
    node=$(node_name "$k")
    ns=$(netns_of "$k")
    mkdir -p "$SPOOL_ROOT/$node"
    say "starting slurmd -N $node in namespace $ns (hostname $node)"
    # nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup file system slurmd probes.
    # The node's own mount namespace puts its hosts file over /etc/hosts, as `ip netns exec` would.
    nsenter --net="/run/netns/$ns" unshare --mount --uts \
        sh -c "mount --bind /etc/netns/$ns/hosts /etc/hosts && hostname $node && exec slurmd -N $node"
}

# Node states of the a100 partition (one word per node).
node_states() {
    timeout 5 sinfo -h -N -p "$PARTITION" -o '%T' 2>/dev/null
}

# True when the a100 partition has `$1` nodes (default: at least one) ready to take jobs.
cluster_ready() {
    local want=${1:-1} states
    states=$(node_states) || return 1
    (($(grep -cE '^(idle|mixed|allocated|completing)$' <<<"$states") >= want))
}

print_logs() {
    local log
    for log in "$LOG_DIR/slurmctld.log" "$LOG_DIR"/slurmd-node*.log /var/log/munge/munged.log; do
        echo "----- tail $log" >&2
        tail -n 30 "$log" >&2 2>/dev/null || echo "(missing)" >&2
    done
}

all_slurmd_alive() {
    local nodes=$1 k
    for ((k = 1; k <= nodes; k++)); do
        pid_alive "$(slurmd_pid_file "$k")" || return 1
    done
}

start() {
    local nodes=$1 k
    [[ $EUID -eq 0 ]] || die "start needs root"
    [[ $nodes =~ ^[0-9]+$ ]] && ((nodes >= 1 && nodes <= MAX_NODES)) || die "--nodes: '$nodes' is not 1 to $MAX_NODES"
    binaries_present || install
    start_munge
    if pid_alive "$CTLD_PID" && all_slurmd_alive "$nodes" && grep -qF "$CONFIG_VERSION" "$SLURM_CONF" 2>/dev/null \
        && (($(configured_nodes) == nodes)) && cluster_ready "$nodes"; then
        say "cluster already up:"
        sinfo -N -p "$PARTITION"
        return
    fi
    stop_slurm_daemons
    # the bridge stays: services bound to its address (slurm/local-tracking.sh) keep running
    remove_network "$nodes"
    create_network "$nodes"
    write_slurm_conf "$nodes"
    say "starting slurmctld"
    slurmctld
    for ((k = 1; k <= nodes; k++)); do
        start_slurmd "$k"
    done
    say "waiting up to ${READY_TIMEOUT_S}s for $nodes node(s) to be ready"
    local waited=0
    until cluster_ready "$nodes"; do
        if ((waited >= READY_TIMEOUT_S)); then
            sinfo -N -l >&2 || true
            print_logs
            die "nodes not ready after ${READY_TIMEOUT_S}s"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "cluster up after ${waited}s:"
    sinfo -N -p "$PARTITION"
}

# Sends TERM to the process named in a pid file and waits (bounded) for it to exit.
stop_daemon() {
    local name=$1 pid_file=$2 pid waited=0
    if ! pid_alive "$pid_file"; then
        say "$name not running"
        rm -f "$pid_file"
        return
    fi
    pid=$(cat "$pid_file")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid"
    while pid_running "$pid"; do
        if ((waited >= 20)); then
            say "$name (pid $pid) ignored TERM for 10s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$pid_file"
}

stop_slurm_daemons() {
    local pid_file
    for pid_file in /run/slurmd-node*.pid "$LEGACY_SLURMD_PID"; do
        [[ -e $pid_file ]] || continue
        stop_daemon "slurmd $(basename "$pid_file" .pid)" "$pid_file"
    done
    stop_daemon slurmctld "$CTLD_PID"
}

stop() {
    stop_slurm_daemons
    stop_daemon munged "$MUNGE_PID"
    remove_network
}

status() {
    local pid_file
    if pid_alive "$MUNGE_PID"; then say "munged running (pid $(cat "$MUNGE_PID"))"; else say "munged not running"; fi
    if pid_alive "$CTLD_PID"; then say "slurmctld running (pid $(cat "$CTLD_PID"))"; else say "slurmctld not running"; fi
    for pid_file in /run/slurmd-node*.pid; do
        [[ -e $pid_file ]] || continue
        if pid_alive "$pid_file"; then
            say "$(basename "$pid_file" .pid) running (pid $(cat "$pid_file"))"
        else
            say "$(basename "$pid_file" .pid) not running"
        fi
    done
    if cluster_ready; then
        sinfo -N -p "$PARTITION"
    else
        say "partition $PARTITION does not answer"
        return 1
    fi
}

nodes=1
command=${1:-}
shift || true
node_arg=
if [[ $command == start-node ]]; then
    node_arg=${1:-}
    shift || true
fi
while (($#)); do
    case $1 in
        --nodes) [[ $# -ge 2 ]] || die "--nodes needs a number"; nodes=$2; shift 2 ;;
        --nodes=*) nodes=${1#--nodes=}; shift ;;
        *) die "unknown option '$1' (only start takes --nodes N)" ;;
    esac
done

start_node() {
    local k=$1
    [[ $k =~ ^[0-9]+$ ]] && ip netns list | grep -qw "$(netns_of "$k")" || die "start-node: no node '$k' (start the cluster first)"
    if pid_alive "$(slurmd_pid_file "$k")"; then
        say "slurmd of $(node_name "$k") already running"
        return
    fi
    start_slurmd "$k"
}

case $command in
    install) install ;;
    start-node) start_node "$node_arg" ;;
    start) start "$nodes" ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 {install|start [--nodes N]|stop|status|start-node K} (got '$command')" ;;
esac
