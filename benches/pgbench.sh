#!/usr/bin/env bash
# pgveil benchmark harness: one run starts a throwaway PostgreSQL cluster,
# PgBouncer (session mode) and pgveil (release build), then runs pgbench
# against each of them in alternating order for several rounds and prints
# TPS, mean latency and the ratios pgveil/direct and pgveil/PgBouncer
# (medians over the rounds).
#
# Usage:  benches/pgbench.sh                 # the default sections
#         SECTIONS="proxy_core" benches/pgbench.sh
#         SECTIONS=soak benches/pgbench.sh   # the soak test (not a default)
#
# Environment knobs (defaults in brackets):
#   SECTIONS   sections to run, in order   [proxy_core encrypted bulk_read]
#   ROUNDS     rounds per workload                              [3]
#   DURATION   seconds per pgbench run                          [15]
#   CLIENTS    pgbench -c                                       [16]
#   THREADS    pgbench -j                                       [2]
#   SCALE      pgbench -i -s                                    [10]
#   PGVEIL_BIN use this binary instead of `cargo build --release`
#   KEEP=1     keep the work directory (logs, configs) afterwards
#   RESULTS    also append the result rows (TSV) to this file
#
# Section `soak` (load: SOAK_CLIENTS pgbench clients run a mixed encrypted
# workload for SOAK_SECONDS through one pgveil, then SOAK_IDLE connections
# stay open idle; reports tps, failures, pgveil's RSS and the memory per idle
# connection, and checks that no plaintext reached the database; fails on
# any error). It is not in the default list: it holds SOAK_CLIENTS +
# SOAK_IDLE connections (max_connections of the cluster is raised to that
# plus 100, and the open-file limit to twice that, only when it is selected)
# and takes a few minutes. Needs Python 3 with asyncpg.
#   SOAK_CLIENTS  pgbench -c of the active phase                [500]
#   SOAK_SECONDS  pgbench -T of the active phase                [60]
#   SOAK_IDLE     idle connections held afterwards              [1000]
#   SOAK_ROWS     preloaded encrypted rows                      [20000]
#   SOAK_HOLD     seconds the idle connections stay idle        [10]
#
# Sections are shell functions named section_<name>; each one calls
# `run_workload` for its pgbench workloads and `report` to print a table. Add
# later sections as more section_* functions: the cluster, PgBouncer and
# pgveil started here, the helpers `psql_su`, `pgbench_run`, `start_pgveil`,
# and the result table are shared.
#
# Runs as root (sessions, CI) or as an ordinary user. As root, PostgreSQL and
# PgBouncer run as the `postgres` OS user (both refuse root).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECTIONS=${SECTIONS:-proxy_core encrypted bulk_read}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-16}
THREADS=${THREADS:-2}
SCALE=${SCALE:-10}
KEEP=${KEEP:-0}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------

find_pg_bin() {
    if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
        echo /usr/lib/postgresql/15/bin
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n "$d" && -x "$d/initdb" ]]; then
        echo "$d"
        return
    fi
    command -v initdb >/dev/null || die "PostgreSQL server binaries (initdb) not found"
    dirname "$(command -v initdb)"
}

PGBIN=$(find_pg_bin)
AS_ROOT=0
[[ $(id -u) -eq 0 ]] && AS_ROOT=1

# Run a server-side command as the postgres OS user when we are root.
as_pg() {
    if [[ $AS_ROOT -eq 1 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_pgbouncer() {
    if ! command -v pgbouncer >/dev/null; then
        [[ $AS_ROOT -eq 1 ]] || die "pgbouncer is not installed (apt-get install pgbouncer)"
        log "installing pgbouncer"
        DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >/dev/null
    fi
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port, seconds, what
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$3 did not listen on port $1 within $2 s"
}

# ---------------------------------------------------------------------------
# Processes: cluster, PgBouncer, pgveil
# ---------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/pgveil-bench-XXXXXX)
chmod 755 "$WORK"
[[ $AS_ROOT -eq 1 ]] && chown postgres: "$WORK"
PGDATA_DIR="$WORK/data"
PG_PORT=""
PGB_PORT=""
PGB_PID=""
PGVEIL_PIDS=()
DB=bench
BENCH_USER=postgres

cleanup() {
    set +e
    local pid
    for pid in "${PGVEIL_PIDS[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    # Stop PgBouncer itself (by its pidfile: runuser does not pass SIGTERM
    # on), then its runuser parent.
    if [[ -s "$WORK/pgbouncer/pgbouncer.pid" ]]; then
        kill "$(cat "$WORK/pgbouncer/pgbouncer.pid")" 2>/dev/null
    fi
    [[ -n "$PGB_PID" ]] && { kill "$PGB_PID" 2>/dev/null; wait "$PGB_PID" 2>/dev/null; }
    [[ -n "$PG_PORT" ]] && as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w >/dev/null 2>&1
    if [[ "$KEEP" == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_cluster() {
    log "initdb in $PGDATA_DIR"
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" --auth=trust -U postgres --encoding UTF8 \
        --locale C --no-sync >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; die "initdb failed"; }
    mkdir -p "$WORK/sock"
    [[ $AS_ROOT -eq 1 ]] && chown postgres: "$WORK/sock"
    PG_PORT=$(free_port)
    # The soak section holds SOAK_CLIENTS + SOAK_IDLE connections at once;
    # without it the cluster keeps the 200 the other figures were taken with.
    local max_conn=200
    if [[ " $SECTIONS " == *" soak "* ]] && ((SOAK_CLIENTS + SOAK_IDLE + 100 > max_conn)); then
        max_conn=$((SOAK_CLIENTS + SOAK_IDLE + 100))
    fi
    cat >>"$PGDATA_DIR/postgresql.conf" <<EOF
# pgveil benchmark
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/sock'
max_connections = $max_conn
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
EOF
    as_pg "$PGBIN/pg_ctl" start -w -D "$PGDATA_DIR" -l "$WORK/postgresql.log" >/dev/null \
        || { tail -20 "$WORK/postgresql.log"; die "pg_ctl start failed"; }
    psql_su postgres -c "CREATE DATABASE $DB" >/dev/null
    log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on port $PG_PORT"
}

start_pgbouncer() {
    ensure_pgbouncer
    PGB_PORT=$(free_port)
    local dir="$WORK/pgbouncer"
    mkdir -p "$dir"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 1000
default_pool_size = 100
max_db_connections = 150
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
EOF
    echo "\"$BENCH_USER\" \"\"" >"$dir/userlist.txt"
    [[ $AS_ROOT -eq 1 ]] && chown -R postgres: "$dir"
    as_pg pgbouncer "$dir/pgbouncer.ini" >"$dir/stdout.log" 2>&1 &
    PGB_PID=$!
    wait_port "$PGB_PORT" 20 pgbouncer
    log "PgBouncer $(pgbouncer --version | head -n1 | awk '{print $2}') (session mode) on port $PGB_PORT"
}

pgveil_binary() {
    if [[ -n "${PGVEIL_BIN:-}" ]]; then
        echo "$PGVEIL_BIN"
        return
    fi
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet --bin pgveil) >&2 || die "cargo build failed"
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/pgveil"
}

# start_pgveil NAME [extra yaml]: start a pgveil in front of the cluster;
# sets PGVEIL_PORT. Its config and log live in $WORK/pgveil-NAME/.
start_pgveil() {
    local name=$1 extra=${2:-}
    local dir="$WORK/pgveil-$name"
    mkdir -p "$dir"
    PGVEIL_PORT=$(free_port)
    cat >"$dir/pgveil.yaml" <<EOF
listen: 127.0.0.1:$PGVEIL_PORT
upstream:
  host: 127.0.0.1
  port: $PG_PORT
  tls: disable
client_tls:
  mode: disable
$extra
EOF
    RUST_LOG=${PGVEIL_LOG:-warn} "$PGVEIL" serve --config "$dir/pgveil.yaml" >"$dir/pgveil.log" 2>&1 &
    PGVEIL_PIDS+=($!)
    wait_port "$PGVEIL_PORT" 20 "pgveil ($name)" || { cat "$dir/pgveil.log"; exit 1; }
    log "pgveil ($name) on port $PGVEIL_PORT"
}

# ---------------------------------------------------------------------------
# Running pgbench and collecting results
# ---------------------------------------------------------------------------

RESULTS_TSV="$WORK/results.tsv"
: >"$RESULTS_TSV"

psql_su() { # db, psql args...
    local db=$1
    shift
    PGSSLMODE=disable "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
        -U postgres -d "$db" "$@"
}

port_of() {
    case $1 in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
        pgveil) echo "$PGVEIL_CORE_PORT" ;;
        pgveil_enc | enc | plain) echo "$PGVEIL_ENC_PORT" ;;
        *) die "unknown target $1" ;;
    esac
}

# pgbench_run PORT USER args...: prints pgbench's report; fails on any
# failed transaction.
pgbench_run() {
    local port=$1 user=$2
    shift 2
    local out
    out=$(PGSSLMODE=disable PGCONNECT_TIMEOUT=20 "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" \
        -U "$user" "$@" "$DB" 2>&1) || { echo "$out" >&2; die "pgbench $* failed on port $port"; }
    local failed
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out")
    if [[ -n "$failed" && "$failed" != 0 ]]; then
        echo "$out" >&2
        die "pgbench $* on port $port: $failed failed transactions"
    fi
    echo "$out"
}

# run_workload SECTION WORKLOAD "TARGETS" pgbench-args...: ROUNDS rounds,
# targets rotated each round so none always runs first; appends
# section/workload/target/round/tps/latency rows to the results.
run_workload() {
    local section=$1 workload=$2
    local -a targets
    read -r -a targets <<<"$3"
    shift 3
    local round i n=${#targets[@]}
    for ((round = 1; round <= ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do
            local target=${targets[$(((i + round - 1) % n))]}
            local out tps lat
            out=$(pgbench_run "$(port_of "$target")" "$BENCH_USER" "${@//@T@/$target}")
            tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
            lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n1)
            [[ -n "$tps" && -n "$lat" ]] || { echo "$out" >&2; die "cannot parse pgbench output"; }
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$workload" "$target" "$round" "$tps" "$lat" \
                >>"$RESULTS_TSV"
            log "$section/$workload round $round: $target $tps tps, $lat ms"
        done
    done
}

# median SECTION WORKLOAD TARGET COLUMN(5=tps, 6=latency)
median() {
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" -v c="$4" \
        '$1 == s && $2 == w && $3 == t { print $c }' "$RESULTS_TSV" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }

# report SECTION "WORKLOADS": median TPS/latency per target and the ratios.
report() {
    local section=$1 w
    printf '\n== %s: medians over %s rounds of %s s (-c %s -j %s, scale %s) ==\n' \
        "$section" "$ROUNDS" "$DURATION" "$CLIENTS" "$THREADS" "$SCALE"
    printf '%-22s %12s %12s %12s %10s %10s %10s %14s %16s\n' workload "direct tps" "pgbouncer" "pgveil" \
        "direct ms" "pgb ms" "pgveil ms" "pgveil/direct" "pgveil/pgbouncer"
    for w in $2; do
        local d b v dl bl vl
        d=$(median "$section" "$w" direct 5)
        b=$(median "$section" "$w" pgbouncer 5)
        v=$(median "$section" "$w" pgveil 5)
        dl=$(median "$section" "$w" direct 6)
        bl=$(median "$section" "$w" pgbouncer 6)
        vl=$(median "$section" "$w" pgveil 6)
        printf '%-22s %12.0f %12.0f %12.0f %10.3f %10.3f %10.3f %14s %16s\n' "$w" "$d" "$b" "$v" \
            "$dl" "$bl" "$vl" "$(ratio "$v" "$d")" "$(ratio "$v" "$b")"
    done
}

# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------

# pgbench's own tables, once per run.
pgbench_init() {
    [[ -z "${PGBENCH_INITIALIZED:-}" ]] || return 0
    log "pgbench -i -s $SCALE"
    PGSSLMODE=disable "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB" \
        >"$WORK/pgbench-init.log" 2>&1 || { cat "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
    PGBENCH_INITIALIZED=1
}

# Issue 2: the proxy core without a policy, against direct and PgBouncer.
section_proxy_core() {
    pgbench_init
    local common=(-c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M extended)
    # Select-only first (no table growth), then TPC-B-like (vacuum before
    # each run via pgbench's default, so rounds start from the same state).
    run_workload proxy_core select-only "direct pgbouncer pgveil" -S -n "${common[@]}"
    run_workload proxy_core tpcb-like "direct pgbouncer pgveil" "${common[@]}"
    report proxy_core "select-only tpcb-like"
}

# Issue 4: encrypted workloads. A 100k-row users table with 3 protected
# columns (one blind-indexed) and a plaintext copy, both through the same
# pgveil (with a policy): point lookup by email and insert, encrypted vs
# plaintext; select-only on pgbench's unprotected tables through that pgveil
# vs the policy-less one (the proxy-core figure). Then a bulk read of ROWS_BULK
# rows x 3 protected columns by a read role vs the same plaintext SELECT
# direct, with pgveil's peak RSS.
ROWS_USERS=${ROWS_USERS:-100000}
ROWS_BULK=${ROWS_BULK:-1000000}

start_pgveil_policy() { # name [policy file] [extra yaml]
    local name=$1 policy=${2:-$ROOT/benches/bench-policy.yaml} extra=${3:-}
    mkdir -p "$WORK/pgveil-$name"
    cp "$policy" "$WORK/pgveil-$name/policy.yaml"
    # Throwaway keys for this run only.
    export PGVEIL_BENCH_MASTER_KEY=${PGVEIL_BENCH_MASTER_KEY:-$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
    export PGVEIL_BENCH_BIDX_KEY=${PGVEIL_BENCH_BIDX_KEY:-$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
    start_pgveil "$name" "policy: policy.yaml
keys:
  provider: local
  local:
    master_keys:
      - { id: bench, env: PGVEIL_BENCH_MASTER_KEY }
  blind_index_key: { env: PGVEIL_BENCH_BIDX_KEY }
  keystore:
    database: postgres://postgres@127.0.0.1:$PG_PORT/pgveil_keys
$extra"
}

section_encrypted() {
    pgbench_init
    psql_su postgres -c "CREATE DATABASE pgveil_keys" 2>/dev/null || true
    psql_su "$DB" -c "DROP ROLE IF EXISTS bench" -c "CREATE ROLE bench LOGIN SUPERUSER" >/dev/null
    psql_su "$DB" <<SQL
DROP TABLE IF EXISTS users_enc, users_plain;
CREATE TABLE users_enc (id bigserial PRIMARY KEY, email bytea, email_bidx bytea, name bytea, phone bytea);
CREATE INDEX ON users_enc (email_bidx);
CREATE TABLE users_plain (id bigserial PRIMARY KEY, email text, name text, phone text);
CREATE INDEX ON users_plain (email);
INSERT INTO users_plain (email, name, phone)
  SELECT i::text, 'name ' || i, '+1555' || i FROM generate_series(1, $ROWS_USERS) i;
SQL
    [[ -n "${PGVEIL_ENC_PORT:-}" ]] || { start_pgveil_policy enc; PGVEIL_ENC_PORT=$PGVEIL_PORT; }
    log "loading $ROWS_USERS encrypted rows through pgveil (COPY)"
    psql_su "$DB" -At -c "COPY (SELECT email, name, phone FROM users_plain ORDER BY id) TO STDOUT" \
        >"$WORK/users.tsv"
    PGSSLMODE=disable "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGVEIL_ENC_PORT" -U bench -d "$DB" \
        -c "\\copy users_enc (email, name, phone) FROM '$WORK/users.tsv'"
    cat >"$WORK/lookup_enc.sql" <<SQL
\\set i random(1, $ROWS_USERS)
SELECT name, phone FROM users_enc WHERE email = :i;
SQL
    sed 's/users_enc/users_plain/' "$WORK/lookup_enc.sql" >"$WORK/lookup_plain.sql"
    cat >"$WORK/insert_enc.sql" <<SQL
\\set i random(1000000000, 2000000000)
INSERT INTO users_enc (email, name, phone) VALUES (:i, :i, :i);
SQL
    sed 's/users_enc/users_plain/' "$WORK/insert_enc.sql" >"$WORK/insert_plain.sql"
    local common=(-n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M extended)
    local saved=$BENCH_USER
    BENCH_USER=bench
    run_workload encrypted lookup "enc plain" -f "$WORK/lookup_@T@.sql" "${common[@]}"
    run_workload encrypted insert "enc plain" -f "$WORK/insert_@T@.sql" "${common[@]}"
    run_workload encrypted unprotected-select "pgveil pgveil_enc" -S "${common[@]}"
    BENCH_USER=$saved
    printf '\n== encrypted: medians over %s rounds of %s s (-c %s -j %s, -M extended) ==\n' \
        "$ROUNDS" "$DURATION" "$CLIENTS" "$THREADS"
    local w e p
    for w in lookup insert; do
        e=$(median encrypted "$w" enc 5)
        p=$(median encrypted "$w" plain 5)
        printf '%-20s encrypted %10.0f tps   plaintext %10.0f tps   ratio %s\n' "$w" "$e" "$p" "$(ratio "$e" "$p")"
    done
    e=$(median encrypted unprotected-select pgveil_enc 5)
    p=$(median encrypted unprotected-select pgveil 5)
    printf '%-20s with policy %8.0f tps   no policy %10.0f tps   ratio %s\n' "pgbench -S" "$e" "$p" "$(ratio "$e" "$p")"
}

section_bulk_read() {
    psql_su postgres -c "CREATE DATABASE pgveil_keys" 2>/dev/null || true
    psql_su "$DB" -c "DROP ROLE IF EXISTS bench" -c "CREATE ROLE bench LOGIN SUPERUSER" >/dev/null
    # Two storages of the same ciphertext: bytea (PostgreSQL sends it as hex
    # text to a simple-protocol client such as psql) and text (`pgv1:` +
    # base64, sent as it is stored).
    psql_su "$DB" <<SQL
DROP TABLE IF EXISTS bulk_enc, bulk_enc_text, bulk_plain;
CREATE TABLE bulk_enc (id bigserial PRIMARY KEY, email bytea, name bytea, phone bytea);
CREATE TABLE bulk_enc_text (id bigserial PRIMARY KEY, email text, name text, phone text);
CREATE TABLE bulk_plain (id bigserial PRIMARY KEY, email text, name text, phone text);
INSERT INTO bulk_plain (email, name, phone)
  SELECT 'user' || i || '@example.com', 'name ' || i, '+1555' || i FROM generate_series(1, $ROWS_BULK) i;
SQL
    start_pgveil_policy bulk
    local port=$PGVEIL_PORT pid=${PGVEIL_PIDS[-1]}
    log "loading $ROWS_BULK encrypted rows through pgveil (COPY), twice"
    psql_su "$DB" -At -c "COPY (SELECT email, name, phone FROM bulk_plain ORDER BY id) TO STDOUT" >"$WORK/bulk.tsv"
    local t0 t1 table
    for table in bulk_enc bulk_enc_text; do
        t0=$(date +%s.%N)
        PGSSLMODE=disable "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d "$DB" \
            -c "\\copy $table (email, name, phone) FROM '$WORK/bulk.tsv'"
        t1=$(date +%s.%N)
        log "COPY into $table through pgveil: $(awk -v a="$t0" -v b="$t1" -v n="$ROWS_BULK" 'BEGIN { printf "%.0f rows/s", n / (b - a) }')"
    done
    psql_su "$DB" -c "VACUUM ANALYZE bulk_enc" -c "VACUUM ANALYZE bulk_enc_text" -c "VACUUM ANALYZE bulk_plain"
    local rss0 r target
    rss0=$(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")
    # One timed read: psql, simple protocol, text format, output discarded.
    timed_read() { # target port user table
        t0=$(date +%s.%N)
        PGSSLMODE=disable "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$2" -U "$3" -d "$DB" \
            -c "SELECT email, name, phone FROM $4" >/dev/null
        t1=$(date +%s.%N)
        printf 'bulk\tread\t%s\t%s\t%s\t0\n' "$1" "$r" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" >>"$RESULTS_TSV"
    }
    for r in $(seq 1 "$ROUNDS"); do
        timed_read direct "$PG_PORT" postgres bulk_plain
        timed_read pgveil "$port" bench bulk_enc
        timed_read pgveil_text "$port" bench bulk_enc_text
        timed_read direct_ciphertext "$PG_PORT" postgres bulk_enc
    done
    local direct_s
    direct_s=$(median bulk read direct 5)
    printf '\n== bulk read: %s rows x 3 protected columns (psql, text format), median of %s ==\n' "$ROWS_BULK" "$ROUNDS"
    printf 'plaintext direct                        %6.2f s\n' "$direct_s"
    for target in pgveil pgveil_text direct_ciphertext; do
        local v label
        v=$(median bulk read "$target" 5)
        case $target in
            pgveil) label="decrypted through pgveil, bytea storage" ;;
            pgveil_text) label="decrypted through pgveil, text storage " ;;
            direct_ciphertext) label="bytea ciphertext read direct (no pgveil)" ;;
        esac
        printf '%s %6.2f s   ratio %s\n' "$label" "$v" "$(ratio "$v" "$direct_s")"
    done
    printf 'pgveil RSS before %s KiB, peak (VmHWM) %s KiB\n' "$rss0" "$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")"
}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

main() {
    log "work directory $WORK; $(nproc) CPUs; sections: $SECTIONS"
    PGVEIL=$(pgveil_binary)
    [[ -x "$PGVEIL" ]] || die "no pgveil binary at $PGVEIL"
    start_cluster
    start_pgbouncer
    start_pgveil core
    PGVEIL_CORE_PORT=$PGVEIL_PORT
    local s
    for s in $SECTIONS; do
        declare -F "section_$s" >/dev/null || die "unknown section $s"
        "section_$s"
    done
    if [[ -n "${RESULTS:-}" ]]; then
        cat "$RESULTS_TSV" >>"$RESULTS"
    fi
    printf '\nraw results (section workload target round tps latency_ms):\n'
    cat "$RESULTS_TSV"
}

main "$@"
