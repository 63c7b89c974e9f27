#!/usr/bin/env bash
# A real MLflow tracking server on PostgreSQL, on this machine, for the tests, CI and many-node runs.
#
# Usage (as root): bash slurm/local-tracking.sh {start|stop|status|uri|optuna-uri} [--dir DIR]
#   start       initdb a PostgreSQL cluster in DIR/pgdata (once), start it, create the databases
#               `mlflow` and `optuna`, start `mlflow server` on it with artifacts in DIR/artifacts;
#               print the tracking URI and the Optuna storage URI (a no-op when both already answer)
#   stop        stop the MLflow server and PostgreSQL (by their pid files; idempotent). The data stay
#               in DIR; `rm -rf DIR` removes them
#   status      show both services; exit 0 only when the MLflow server answers
#   uri         print the tracking URI (http://ADDR:5077)
#   optuna-uri  print the Optuna storage URI (postgresql+psycopg://...)
#
# Both listen on the bridge address of slurm/local-cluster.sh (10.77.0.1), which every node of that
# cluster and this host reach, when the bridge exists, and on 127.0.0.1 otherwise (then only this
# host reaches them): start the cluster first. DIR (default /var/lib/oner-tracking, or
# $ONER_TRACKING_DIR) must be on a file system the nodes share if anything reads artifacts from disk;
# clients upload and download artifacts through the server (--serve-artifacts), not from DIR.
#
# A test bed, not a production server: PostgreSQL trusts every connection from 127.0.0.1 and the
# bridge's subnet (no password), and runs as the system user `postgres` (initdb refuses root).
set -euo pipefail

readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly PG_PORT=5433
readonly MLFLOW_PORT=5077
readonly PG_USER=oner
readonly BRIDGE=oner-br0
readonly BRIDGE_ADDR=10.77.0.1
readonly BRIDGE_SUBNET=10.77.0.0/24
readonly READY_TIMEOUT_S=90
readonly MLFLOW_WORKERS=${ONER_MLFLOW_WORKERS:-2}

say() { echo "[local-tracking] $*" >&2; }
die() { echo "[local-tracking] ERROR: $*" >&2; exit 1; }

dir=${ONER_TRACKING_DIR:-/var/lib/oner-tracking}
command=${1:-}
shift || true
while (($#)); do
    case $1 in
        --dir) [[ $# -ge 2 ]] || die "--dir needs a directory"; dir=$2; shift 2 ;;
        --dir=*) dir=${1#--dir=}; shift ;;
        *) die "unknown option '$1' (usage: $0 {start|stop|status|uri|optuna-uri} [--dir DIR])" ;;
    esac
done
readonly PGDATA=$dir/pgdata
readonly ARTIFACTS=$dir/artifacts
readonly MLFLOW_PID=$dir/mlflow.pid
readonly MLFLOW_LOG=$dir/mlflow.log
readonly PG_LOG=$dir/postgres.log

# The address both the nodes and this host reach: the cluster's bridge, or loopback without one.
service_addr() {
    if ip -4 addr show "$BRIDGE" 2>/dev/null | grep -qF "inet $BRIDGE_ADDR/"; then
        echo "$BRIDGE_ADDR"
    else
        echo 127.0.0.1
    fi
}

tracking_uri() { echo "http://$(service_addr):$MLFLOW_PORT"; }
optuna_uri() { echo "postgresql+psycopg://$PG_USER@$(service_addr):$PG_PORT/optuna"; }
backend_uri() { echo "postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/mlflow"; }

# A killed process whose parent is a PID 1 that does not reap (as in some containers) stays a zombie that
# `kill -0` still finds: only a process that is not a zombie counts as running.
pid_running() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

pid_alive() {
    local pid_file=$1
    [[ -s $pid_file ]] && pid_running "$(head -n 1 "$pid_file")"
}

as_postgres() { runuser -u postgres -- "$@"; }

install_postgres() {
    [[ -x $PG_BIN/initdb ]] && return
    say "PostgreSQL 15 not found in $PG_BIN: apt-get install postgresql-15"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15
    [[ -x $PG_BIN/initdb ]] || die "postgresql-15 installed but $PG_BIN/initdb is missing"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER"; }

# The server's health endpoint answers (python, not curl: the only client sure to be there).
mlflow_ready() {
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$(tracking_uri)/health" \
        >/dev/null 2>&1
}

start_postgres() {
    local addr listen
    install_postgres
    mkdir -p "$dir"
    chmod 0755 "$dir"
    if [[ ! -s $PGDATA/PG_VERSION ]]; then
        say "initdb $PGDATA (superuser $PG_USER, trust for 127.0.0.1 and $BRIDGE_SUBNET)"
        mkdir -p "$PGDATA"
        chown postgres:postgres "$PGDATA"
        chmod 0700 "$PGDATA"
        as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_USER" --auth=trust -E UTF8 >/dev/null
        cat >>"$PGDATA/pg_hba.conf" <<EOF
# slurm/local-tracking.sh: the test cluster's nodes reach the databases over the bridge
host    all             all             $BRIDGE_SUBNET            trust
EOF
    fi
    addr=$(service_addr)
    listen=127.0.0.1
    [[ $addr == 127.0.0.1 ]] || listen="127.0.0.1,$addr"
    if pg_ready; then
        say "PostgreSQL already running on port $PG_PORT"
    else
        touch "$PG_LOG"
        chown postgres:postgres "$PG_LOG"
        say "starting PostgreSQL on $listen:$PG_PORT"
        # a few hundred connections: 16 jobs, an Optuna driver and its trials, the server's pool
        as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PG_LOG" -w -t 60 \
            -o "-p $PG_PORT -k /tmp -c listen_addresses='$listen' -c max_connections=300" start >/dev/null \
            || { tail -n 20 "$PG_LOG" >&2; die "PostgreSQL did not start (log: $PG_LOG)"; }
    fi
    local db
    for db in mlflow optuna; do
        if ! as_postgres "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
            say "creating database $db"
            as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db"
        fi
    done
}

start_mlflow() {
    local addr waited=0
    addr=$(service_addr)
    if pid_alive "$MLFLOW_PID" && mlflow_ready; then
        say "MLflow server already running (pid $(head -n 1 "$MLFLOW_PID"))"
        return
    fi
    command -v mlflow >/dev/null || die "mlflow not on PATH: pip install -e . first"
    mkdir -p "$ARTIFACTS"
    say "starting mlflow server on $addr:$MLFLOW_PORT (store $(backend_uri), artifacts $ARTIFACTS)"
    # setsid: the server outlives this script and is stopped by its process group
    setsid mlflow server --backend-store-uri "$(backend_uri)" --artifacts-destination "$ARTIFACTS" --serve-artifacts \
        --host "$addr" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
        --allowed-hosts "$addr:$MLFLOW_PORT,$addr,localhost:$MLFLOW_PORT,127.0.0.1:$MLFLOW_PORT" \
        >"$MLFLOW_LOG" 2>&1 </dev/null &
    echo $! >"$MLFLOW_PID"
    until mlflow_ready; do
        if ! pid_alive "$MLFLOW_PID"; then
            tail -n 30 "$MLFLOW_LOG" >&2
            die "mlflow server exited (log: $MLFLOW_LOG)"
        fi
        if ((waited >= READY_TIMEOUT_S)); then
            tail -n 30 "$MLFLOW_LOG" >&2
            die "mlflow server not answering on $(tracking_uri) after ${READY_TIMEOUT_S}s (log: $MLFLOW_LOG)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    say "MLflow server up after ${waited}s"
}

start() {
    [[ $EUID -eq 0 ]] || die "start needs root (it runs PostgreSQL as user postgres)"
    start_postgres
    start_mlflow
    say "tracking URI: $(tracking_uri)   (--set tracking.uri=$(tracking_uri))"
    say "Optuna storage: $(optuna_uri)   (--set sweep.storage=$(optuna_uri))"
    tracking_uri
}

stop_mlflow() {
    local pid waited=0
    if ! pid_alive "$MLFLOW_PID"; then
        say "MLflow server not running"
        rm -f "$MLFLOW_PID"
        return
    fi
    pid=$(head -n 1 "$MLFLOW_PID")
    say "stopping MLflow server (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    while pid_running "$pid"; do
        if ((waited >= 30)); then
            kill -KILL -- "-$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$MLFLOW_PID"
}

stop_postgres() {
    if [[ -s $PGDATA/postmaster.pid ]] && as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        say "stopping PostgreSQL"
        as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    else
        say "PostgreSQL not running"
    fi
}

stop() {
    stop_mlflow
    stop_postgres
}

status() {
    if pg_ready; then say "PostgreSQL running on port $PG_PORT ($PGDATA)"; else say "PostgreSQL not running"; fi
    if pid_alive "$MLFLOW_PID" && mlflow_ready; then
        say "MLflow server running (pid $(head -n 1 "$MLFLOW_PID")): $(tracking_uri)"
        say "Optuna storage: $(optuna_uri)"
    else
        say "MLflow server not answering on $(tracking_uri)"
        return 1
    fi
}

case $command in
    start) start ;;
    stop) stop ;;
    status) status ;;
    uri) tracking_uri ;;
    optuna-uri) optuna_uri ;;
    *) die "usage: $0 {start|stop|status|uri|optuna-uri} [--dir DIR] (got '$command')" ;;
esac
