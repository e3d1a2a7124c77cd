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
#   SECTIONS   sections to run, in order   [proxy_core pass_through_policy encrypted bulk_read]
#   ROUNDS     rounds per workload                              [3]
#   DURATION   seconds per pgbench run                          [15]
#   CLIENTS    pgbench -c                                       [16]
#   THREADS    pgbench -j                                       [2]
#   SCALE      pgbench -i -s                                    [10]
#   PGVEIL_BIN use this binary instead of `cargo build --release`
#   KEEP=1     keep the work directory (logs, configs) afterwards
#   RESULTS    also append the result rows (TSV) to this file
#   PROFILE    a directory: the first round of every pgveil target is also
#              recorded with `perf record` (DWARF call graphs, 499 Hz) and
#              summarised there as <section>-<workload>-<target>.txt (self
#              time per symbol, and the inclusive time of pgveil's handlers
#              per message family). Use a binary with symbols (the release
#              build keeps them; `--profile profiling` adds line tables).
#
# Every run also records the machine's CPU time split from /proc/stat
# (busy, steal: on a VM, time the host gave to others) and the 1-minute
# load average; the tables print their medians next to the figures. It
# also records the proxy's own CPU time per transaction (PgBouncer's and
# each pgveil's, user + system over all threads, from /proc/PID/stat): the
# tables print its median per target ("proxy CPU us/tx"), the figure that
# says how much work a proxy does per statement whatever the VM's speed.
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
SECTIONS=${SECTIONS:-proxy_core pass_through_policy encrypted bulk_read}
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
declare -A PGVEIL_PID_OF=() # pgveil name -> pid
PROFILE=${PROFILE:-}
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
    PGVEIL_PID_OF[$name]=$!
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
        pgveil_refpol) echo "$PGVEIL_REFPOL_PORT" ;;
        pgveil_1t) echo "$PGVEIL_1T_PORT" ;;
        *) die "unknown target $1" ;;
    esac
}

# The pgveil process behind a target (empty for direct and PgBouncer).
pid_of() {
    case $1 in
        pgveil) echo "${PGVEIL_PID_OF[core]:-}" ;;
        pgveil_enc | enc | plain) echo "${PGVEIL_PID_OF[enc]:-}" ;;
        pgveil_refpol) echo "${PGVEIL_PID_OF[refpol]:-}" ;;
        pgveil_1t) echo "${PGVEIL_PID_OF[1t]:-}" ;;
        *) echo "" ;;
    esac
}

# The proxy process behind a target, PgBouncer included (empty for direct).
proxy_pid_of() {
    if [[ $1 == pgbouncer ]]; then
        cat "$WORK/pgbouncer/pgbouncer.pid" 2>/dev/null || true
    else
        pid_of "$1"
    fi
}

# CPU time (user + system, all threads, in clock ticks) a process has used.
proc_cpu() {
    [[ -n "$1" && -r "/proc/$1/stat" ]] || { echo ""; return; }
    # Fields 14 and 15, counted after the command name's closing parenthesis.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# CPU counters of the whole machine: "busy steal total" in jiffies.
cpu_counters() {
    awk '$1 == "cpu" { busy = $2 + $3 + $4 + $7 + $8; print busy, $9, busy + $5 + $6 + $9 }' /proc/stat
}

# cpu_share BEFORE AFTER: "busy% steal%" between two cpu_counters.
cpu_share() {
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[3] - x[3];
        if (t <= 0) print "nan nan"; else printf "%.1f %.1f\n", 100 * (y[1] - x[1]) / t, 100 * (y[2] - x[2]) / t }'
}

# profile_summary DATA OUT: what `perf report` says of one recording (one
# pass over the samples: DWARF unwinding makes each pass slow).
profile_summary() {
    local data=$1 out=$2 full
    full=$(mktemp)
    perf report -i "$data" --children --sort dso,symbol --percent-limit 0.2 --stdio -g none \
        >"$full" 2>/dev/null || true
    {
        echo "# self time per symbol (column 2), top 60"
        grep -v '^#' "$full" | grep -v '^$' | sort -k2 -g -r | head -n 60 || true
        echo
        echo "# inclusive time (column 1) of pgveil's code, the runtime and the syscalls"
        grep -E 'pgveil::|tokio::|__libc|sys_(read|write|sendto|recvfrom)|epoll|aws_lc' "$full" | head -n 100 || true
    } >"$out"
    rm -f "$full"
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
            local out tps lat before after share load perf_pid="" pid ppid pcpu0 pcpu1 txs us
            pid=$(pid_of "$target")
            ppid=$(proxy_pid_of "$target")
            if [[ -n "$PROFILE" && -n "$pid" && $round -eq 1 ]]; then
                mkdir -p "$PROFILE"
                perf record -q -F 499 --call-graph dwarf,8192 -p "$pid" \
                    -o "$WORK/perf-$section-$workload-$target.data" >/dev/null 2>&1 &
                perf_pid=$!
            fi
            before=$(cpu_counters)
            pcpu0=$(proc_cpu "$ppid")
            out=$(pgbench_run "$(port_of "$target")" "$BENCH_USER" "${@//@T@/$target}")
            pcpu1=$(proc_cpu "$ppid")
            after=$(cpu_counters)
            share=$(cpu_share "$before" "$after")
            load=$(cut -d' ' -f1 /proc/loadavg)
            if [[ -n "$perf_pid" ]]; then
                kill -INT "$perf_pid" 2>/dev/null
                wait "$perf_pid" 2>/dev/null || true
                profile_summary "$WORK/perf-$section-$workload-$target.data" \
                    "$PROFILE/$section-$workload-$target.txt"
                rm -f "$WORK/perf-$section-$workload-$target.data"
            fi
            tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
            lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n1)
            [[ -n "$tps" && -n "$lat" ]] || { echo "$out" >&2; die "cannot parse pgbench output"; }
            # Column 10: the proxy's own CPU time (user + system, every
            # thread) per transaction, in microseconds ("nan" for direct):
            # what the proxy costs, less moved by the VM's speed than tps.
            txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
            us=$(awk -v a="$pcpu0" -v b="$pcpu1" -v n="${txs:-0}" -v hz="$(getconf CLK_TCK)" \
                'BEGIN { if (a == "" || b == "" || n + 0 == 0) print "nan"; else printf "%.1f", (b - a) * 1e6 / hz / n }')
            # Columns 7-9: the machine's busy and steal share (percent of
            # all CPU time) and its load average, during this run.
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$workload" "$target" "$round" "$tps" "$lat" \
                ${share% *} ${share#* } "$load" "$us" >>"$RESULTS_TSV"
            log "$section/$workload round $round: $target $tps tps, $lat ms, proxy CPU $us us/tx (machine busy ${share% *}%, steal ${share#* }%, load $load)"
        done
    done
}

# median SECTION WORKLOAD TARGET COLUMN(5=tps, 6=latency)
median() {
    awk -F'\t' -v s="$1" -v w="$2" -v t="$3" -v c="$4" \
        '$1 == s && $2 == w && $3 == t { print $c }' "$RESULTS_TSV" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# paired_ratio SECTION WORKLOAD A B: "median (min-max)" over the rounds of
# tps(A)/tps(B) in the same round. The targets of one round run back to
# back, so this cancels slow drifts of the VM's speed that a ratio of
# medians keeps.
paired_ratio() {
    awk -F'\t' -v s="$1" -v w="$2" -v a="$3" -v b="$4" '
        $1 == s && $2 == w && $3 == a { A[$4] = $5 }
        $1 == s && $2 == w && $3 == b { B[$4] = $5 }
        END { n = 0; for (r in A) if ((r in B) && B[r] > 0) v[++n] = A[r] / B[r];
              if (n == 0) { print "n/a"; exit }
              for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
              m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
              printf "%.3f (%.3f-%.3f)\n", m, v[1], v[n] }' "$RESULTS_TSV"
}

# machine SECTION: median busy and steal share and load over its runs.
machine() {
    awk -F'\t' -v s="$1" '
        function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        $1 == s && NF >= 9 { n++; b[n] = $7; st[n] = $8; l[n] = $9 }
        END { if (n == 0) { print "machine: n/a"; exit }
              printf "machine during the section (medians over %d runs): busy %.1f%%, steal %.1f%%, load average %.2f\n", n, med(b, n), med(st, n), med(l, n) }' "$RESULTS_TSV"
}

# proxy_cpu_line SECTION WORKLOAD TARGET...: the median proxy CPU time per
# transaction (column 10) of each target, and each one's share of the first.
proxy_cpu_line() {
    local section=$1 workload=$2 first="" t u line
    shift 2
    line=$(printf '%-22s proxy CPU us/tx:' "")
    for t in "$@"; do
        u=$(median "$section" "$workload" "$t" 10)
        line+=" $t $u"
        if [[ -z "$first" ]]; then first=$u; else line+=" ($(ratio "$u" "$first")x)"; fi
    done
    echo "$line"
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
        printf '%-22s per-round pgveil/pgbouncer %s, pgveil/direct %s\n' "" \
            "$(paired_ratio "$section" "$w" pgveil pgbouncer)" "$(paired_ratio "$section" "$w" pgveil direct)"
        proxy_cpu_line "$section" "$w" pgbouncer pgveil
    done
    machine "$section"
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
        printf '%-20s encrypted %10.0f tps   plaintext %10.0f tps   ratio %s   per-round %s\n' "$w" "$e" "$p" \
            "$(ratio "$e" "$p")" "$(paired_ratio encrypted "$w" enc plain)"
        proxy_cpu_line encrypted "$w" plain enc
    done
    e=$(median encrypted unprotected-select pgveil_enc 5)
    p=$(median encrypted unprotected-select pgveil 5)
    printf '%-20s with policy %8.0f tps   no policy %10.0f tps   ratio %s   per-round %s\n' "pgbench -S" "$e" "$p" \
        "$(ratio "$e" "$p")" "$(paired_ratio encrypted unprotected-select pgveil_enc pgveil)"
    proxy_cpu_line encrypted unprotected-select pgveil pgveil_enc
    machine encrypted
}

# Issue 18: pass-through with a production-like setup: the reference policy
# (policies/calmony.yaml, its schema loaded beside pgbench's tables), SCRAM
# terminated by pgveil (auth.file with the user's verifier; pgveil logs in
# upstream with the client's ClientKey), the audit log on, user postgres.
# pgbench -S touches no protected table: this is the cost of a loaded policy
# on the hot path, against PgBouncer (session mode) and direct.
section_pass_through_policy() {
    pgbench_init
    psql_su postgres -c "CREATE DATABASE pgveil_keys" 2>/dev/null || true
    psql_su "$DB" -c "DROP SCHEMA IF EXISTS phi CASCADE" \
        -c "DROP TABLE IF EXISTS users, pay_customers, pay_payment_methods, pay_webhook_endpoints CASCADE" >/dev/null
    psql_su "$DB" -f "$ROOT/policies/calmony.sql" >/dev/null
    local pw=pgveil-bench-password verifier dir="$WORK/pgveil-refpol"
    psql_su postgres -c "SET password_encryption = 'scram-sha-256'" \
        -c "ALTER ROLE postgres PASSWORD '$pw'" >/dev/null
    verifier=$(psql_su postgres -At -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
    mkdir -p "$dir"
    echo "\"postgres\" \"$verifier\"" >"$dir/userlist.txt"
    [[ -n "${PGVEIL_REFPOL_PORT:-}" ]] || {
        start_pgveil_policy refpol "$ROOT/policies/calmony.yaml" "auth:
  file: $dir/userlist.txt
audit:
  path: $dir/audit.jsonl"
        PGVEIL_REFPOL_PORT=$PGVEIL_PORT
    }
    local common=(-n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M extended)
    PGPASSWORD=$pw run_workload pass_through_policy select-only "direct pgbouncer pgveil_refpol" -S "${common[@]}"
    printf '\n== pass_through_policy: reference policy, SCRAM terminated by pgveil, audit on; medians over %s rounds of %s s (-c %s -j %s, -M extended) ==\n' \
        "$ROUNDS" "$DURATION" "$CLIENTS" "$THREADS"
    local d b v
    d=$(median pass_through_policy select-only direct 5)
    b=$(median pass_through_policy select-only pgbouncer 5)
    v=$(median pass_through_policy select-only pgveil_refpol 5)
    printf 'pgbench -S   direct %8.0f tps   pgbouncer %8.0f tps   pgveil %8.0f tps   pgveil/direct %s   pgveil/pgbouncer %s\n' \
        "$d" "$b" "$v" "$(ratio "$v" "$d")" "$(ratio "$v" "$b")"
    printf 'per-round pgveil/pgbouncer %s, pgveil/direct %s\n' \
        "$(paired_ratio pass_through_policy select-only pgveil_refpol pgbouncer)" \
        "$(paired_ratio pass_through_policy select-only pgveil_refpol direct)"
    proxy_cpu_line pass_through_policy select-only pgbouncer pgveil_refpol
    machine pass_through_policy
}

# The runtime's thread count: the policy-less pgveil with one tokio worker
# (TOKIO_WORKER_THREADS=1) against the default (one per CPU), PgBouncer
# (one thread) beside them. Not a default section.
section_threads() {
    pgbench_init
    [[ -n "${PGVEIL_1T_PORT:-}" ]] || {
        TOKIO_WORKER_THREADS=1 start_pgveil 1t
        PGVEIL_1T_PORT=$PGVEIL_PORT
    }
    local common=(-c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M extended)
    run_workload threads select-only "pgbouncer pgveil pgveil_1t" -S -n "${common[@]}"
    printf '\n== threads: medians over %s rounds of %s s ==\n' "$ROUNDS" "$DURATION"
    local w=select-only
    printf 'pgbench -S   pgbouncer %8.0f   pgveil (%s workers) %8.0f   pgveil (1 worker) %8.0f\n' \
        "$(median threads $w pgbouncer 5)" "$(nproc)" "$(median threads $w pgveil 5)" "$(median threads $w pgveil_1t 5)"
    printf 'per-round: default/pgbouncer %s   1 worker/pgbouncer %s   1 worker/default %s\n' \
        "$(paired_ratio threads $w pgveil pgbouncer)" "$(paired_ratio threads $w pgveil_1t pgbouncer)" \
        "$(paired_ratio threads $w pgveil_1t pgveil)"
    proxy_cpu_line threads $w pgbouncer pgveil pgveil_1t
    machine threads
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
    # With a fifth argument N, psql reads through a cursor (FETCH_COUNT:
    # DECLARE … CURSOR, then FETCH FORWARD N until done).
    timed_read() { # target port user table [fetch_count]
        t0=$(date +%s.%N)
        PGSSLMODE=disable "$PGBIN/psql" -X -q -At -h 127.0.0.1 -p "$2" -U "$3" -d "$DB" \
            ${5:+-v FETCH_COUNT=$5} -c "SELECT email, name, phone FROM $4" >/dev/null
        t1=$(date +%s.%N)
        printf 'bulk\tread\t%s\t%s\t%s\t0\n' "$1" "$r" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" >>"$RESULTS_TSV"
    }
    for r in $(seq 1 "$ROUNDS"); do
        timed_read direct "$PG_PORT" postgres bulk_plain
        timed_read pgveil "$port" bench bulk_enc
        timed_read pgveil_text "$port" bench bulk_enc_text
        timed_read direct_ciphertext "$PG_PORT" postgres bulk_enc
        timed_read pgveil_cursor "$port" bench bulk_enc 1000
        timed_read direct_ciphertext_cursor "$PG_PORT" postgres bulk_enc 1000
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
    local cur sel
    cur=$(median bulk read pgveil_cursor 5)
    sel=$(median bulk read pgveil 5)
    local dcur dsel
    dcur=$(median bulk read direct_ciphertext_cursor 5)
    dsel=$(median bulk read direct_ciphertext 5)
    printf 'decrypted through pgveil, cursor FETCH 1000 %6.2f s   vs the plain SELECT through pgveil %s\n' "$cur" "$(ratio "$cur" "$sel")"
    printf 'ciphertext direct, cursor FETCH 1000        %6.2f s   vs the plain SELECT direct %s (the cursor'"'"'s own cost)\n' "$dcur" "$(ratio "$dcur" "$dsel")"
    printf 'pgveil RSS before %s KiB, peak (VmHWM) %s KiB\n' "$rss0" "$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")"
}

# Load: a bounded soak. SOAK_CLIENTS pgbench clients run a mixed encrypted
# workload for SOAK_SECONDS through a fresh pgveil with a policy
# (benches/soak-policy.yaml): point lookup by the blind-indexed email (40),
# insert of sentinel-bearing values into all three protected columns (20),
# update of a protected column found by its blind index (20), and a 20-row
# range read that decrypts 60 values (20). Then SOAK_IDLE connections are
# opened by benches/soak-idle.py, each runs one lookup, and they stay idle
# for SOAK_HOLD seconds (then answer once more and close): once in that
# pgveil, once in a fresh one. pgveil's VmRSS and VmHWM (/proc/PID/status)
# are taken at each step; the idle cost per connection is (RSS with the idle
# connections - RSS before) / SOAK_IDLE, and the target is judged on the
# larger of the two figures.
# Afterwards pg_dump of the database and every file of the data directory
# are searched for the sentinel prefix (as text and as bytea hex). Any
# failed transaction, aborted client, idle-connection error, lost insert or
# sentinel found makes the run fail. Not in the default SECTIONS (it holds
# SOAK_CLIENTS + SOAK_IDLE connections and takes a few minutes).
SOAK_CLIENTS=${SOAK_CLIENTS:-500}
SOAK_SECONDS=${SOAK_SECONDS:-60}
SOAK_IDLE=${SOAK_IDLE:-1000}
SOAK_ROWS=${SOAK_ROWS:-20000}
SOAK_HOLD=${SOAK_HOLD:-10}
SOAK_SENTINEL=soak-sentinel-

# vm_kib PID FIELD: VmRSS, VmHWM, ... of a process in KiB.
vm_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# Reset a process's VmHWM to its current RSS (Linux clear_refs), so each
# phase reports its own peak. Returns non-zero where the kernel refuses.
reset_hwm() { { echo 5 >"/proc/$1/clear_refs"; } 2>/dev/null; }

# raise_nofile N: make the soft open-file limit at least N (and the hard
# one, when we may), for pgveil (2 descriptors per client), pgbench and the
# idle-connection client started after this.
raise_nofile() {
    local need=$1 soft hard
    soft=$(ulimit -Sn)
    [[ $soft == unlimited ]] && return 0
    ((soft >= need)) && return 0
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        ulimit -Hn "$need" 2>/dev/null ||
            die "open-file limit: $need needed, hard limit is $hard (raise it, e.g. as root: ulimit -Hn $need)"
    fi
    ulimit -Sn "$need" || die "cannot raise the open-file limit to $need"
    log "open-file limit raised from $soft to $need"
}

# Wait until no session of ROLE is left in PostgreSQL (pgveil closes the
# upstream connection when its client goes away).
wait_sessions_gone() { # role, seconds
    local i n
    for ((i = 0; i < $2 * 5; i++)); do
        n=$(psql_su "$DB" -At -c "SELECT count(*) FROM pg_stat_activity WHERE usename = '$1'")
        [[ $n == 0 ]] && return 0
        sleep 0.2
    done
    die "soak: $n sessions of $1 still open $2 s after their clients closed"
}

veil_psql() { # port, psql args...
    local port=$1
    shift
    PGSSLMODE=disable "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U bench -d "$DB" "$@"
}

# soak_warm PORT: one session through pgveil, so that the catalog and the
# data keys (loaded once per process, not per connection) are in memory
# before a baseline is taken; it must see the decrypted preloaded name.
soak_warm() {
    veil_psql "$1" -At -c "SELECT name FROM soak_enc WHERE email = '1'" | grep -qx "${SOAK_SENTINEL}n1" ||
        die "soak: the warm-up lookup through pgveil did not return the decrypted name"
    wait_sessions_gone bench 30
}

# soak_idle_phase PORT PID LABEL: SOAK_IDLE connections through the pgveil
# at PORT (process PID), each runs one lookup; RSS before, with them open
# (and VmHWM), after SOAK_HOLD idle seconds and after they closed. Sets
# IDLE_BEFORE IDLE_OPEN IDLE_HWM IDLE_HOLD IDLE_CLOSED (KiB), IDLE_PER_CONN,
# IDLE_BACKENDS (PostgreSQL sessions seen) and IDLE_SECONDS (to open them).
soak_idle_phase() {
    local port=$1 pid=$2 label=$3 i
    local ready="$WORK/idle-$label.ready" release="$WORK/idle-$label.release" ilog="$WORK/soak-idle-$label.log"
    log "soak: opening $SOAK_IDLE idle connections ($label pgveil)"
    reset_hwm "$pid" || true
    IDLE_BEFORE=$(vm_kib "$pid" VmRSS)
    rm -f "$ready" "$release"
    python3 "$ROOT/benches/soak-idle.py" --port "$port" --user bench --database "$DB" \
        --count "$SOAK_IDLE" --rows "$SOAK_ROWS" --ready "$ready" --release "$release" 2>"$ilog" &
    local idle_pid=$!
    for ((i = 0; i < 6000; i++)); do
        [[ -e "$ready" ]] && break
        if ! kill -0 "$idle_pid" 2>/dev/null; then
            wait "$idle_pid" || true
            cat "$ilog" >&2
            die "soak: the idle-connection client failed ($label pgveil; output above)"
        fi
        sleep 0.1
    done
    [[ -e "$ready" ]] || { kill "$idle_pid"; die "soak: $SOAK_IDLE idle connections not open after 600 s ($label)"; }
    IDLE_OPEN=$(vm_kib "$pid" VmRSS)
    IDLE_HWM=$(vm_kib "$pid" VmHWM)
    IDLE_SECONDS=$(awk '{ print $2 }' "$ready")
    IDLE_BACKENDS=$(psql_su "$DB" -At -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'bench'")
    ((IDLE_BACKENDS == SOAK_IDLE)) ||
        die "soak: $IDLE_BACKENDS PostgreSQL sessions of bench for $SOAK_IDLE idle clients ($label)"
    log "soak: $SOAK_IDLE idle connections open in $IDLE_SECONDS s (each ran one lookup); holding $SOAK_HOLD s"
    sleep "$SOAK_HOLD"
    IDLE_HOLD=$(vm_kib "$pid" VmRSS)
    touch "$release"
    if ! wait "$idle_pid"; then
        cat "$ilog" >&2
        die "soak: the idle connections did not all answer after idling ($label pgveil; output above)"
    fi
    wait_sessions_gone bench 60
    IDLE_CLOSED=$(vm_kib "$pid" VmRSS)
    IDLE_PER_CONN=$(awk -v a="$IDLE_OPEN" -v b="$IDLE_BEFORE" -v n="$SOAK_IDLE" 'BEGIN { printf "%.1f", (a - b) / n }')
}

section_soak() {
    local total=$((SOAK_CLIENTS + SOAK_IDLE))
    ((SOAK_ROWS >= 20)) || die "SOAK_ROWS must be at least 20"
    raise_nofile $((2 * total + 256))
    python3 -c 'import asyncpg' 2>/dev/null || die "soak needs the Python asyncpg package (pip install asyncpg)"
    psql_su postgres -c "CREATE DATABASE pgveil_keys" 2>/dev/null || true
    psql_su "$DB" -c "DROP ROLE IF EXISTS bench" -c "CREATE ROLE bench LOGIN SUPERUSER" >/dev/null
    psql_su "$DB" <<SQL
DROP TABLE IF EXISTS soak_enc;
CREATE TABLE soak_enc (id bigserial PRIMARY KEY, email bytea, email_bidx bytea, name bytea, phone bytea);
CREATE INDEX ON soak_enc (email_bidx);
SQL
    # Preload through a pgveil of its own, stopped afterwards, so that the
    # measured one starts without COPY buffers behind it.
    local policy="$ROOT/benches/soak-policy.yaml"
    start_pgveil_policy soak_load "$policy"
    local load_pid=${PGVEIL_PIDS[-1]}
    log "soak: loading $SOAK_ROWS encrypted rows through pgveil (COPY)"
    psql_su "$DB" -At -c "COPY (SELECT i, '${SOAK_SENTINEL}n' || i, '${SOAK_SENTINEL}p' || i
        FROM generate_series(1, $SOAK_ROWS) i) TO STDOUT" >"$WORK/soak.tsv"
    veil_psql "$PGVEIL_PORT" -c "\\copy soak_enc (email, name, phone) FROM '$WORK/soak.tsv'"
    rm -f "$WORK/soak.tsv"
    kill "$load_pid"
    wait "$load_pid" 2>/dev/null || true
    psql_su "$DB" -c "VACUUM ANALYZE soak_enc"

    start_pgveil_policy soak "$policy" "limits:
  max_connections: $((total + 100))"
    local port=$PGVEIL_PORT pid=${PGVEIL_PIDS[-1]}
    soak_warm "$port"
    local hwm_scope="phase peak"
    reset_hwm "$pid" || hwm_scope="peak since start"
    local rss_base hwm_base
    rss_base=$(vm_kib "$pid" VmRSS)
    hwm_base=$(vm_kib "$pid" VmHWM)

    # --- Active phase -------------------------------------------------------
    cat >"$WORK/soak_lookup.sql" <<SQL
\\set i random(1, $SOAK_ROWS)
SELECT name, phone FROM soak_enc WHERE email = :i;
SQL
    cat >"$WORK/soak_insert.sql" <<SQL
\\set r random(1000000000, 2000000000)
SELECT '$SOAK_SENTINEL' || CAST(:r AS text) AS s \\gset
INSERT INTO soak_enc (email, name, phone) VALUES (:s, :s, :s);
SQL
    cat >"$WORK/soak_update.sql" <<SQL
\\set i random(1, $SOAK_ROWS)
\\set r random(1000000000, 2000000000)
SELECT '$SOAK_SENTINEL' || CAST(:r AS text) AS s \\gset
UPDATE soak_enc SET phone = :s WHERE email = :i;
SQL
    cat >"$WORK/soak_read.sql" <<SQL
\\set i random(1, $((SOAK_ROWS - 19)))
\\set j :i + 19
SELECT id, email, name, phone FROM soak_enc WHERE id BETWEEN :i AND :j;
SQL
    log "soak: $SOAK_CLIENTS clients x $SOAK_SECONDS s, mixed encrypted workload"
    local out
    out=$(pgbench_run "$port" bench -n -c "$SOAK_CLIENTS" -j "$THREADS" -T "$SOAK_SECONDS" -M extended \
        -f "$WORK/soak_lookup.sql@40" -f "$WORK/soak_insert.sql@20" \
        -f "$WORK/soak_update.sql@20" -f "$WORK/soak_read.sql@20") ||
        die "soak: pgbench failed (output above)"
    printf '%s\n' "$out" >"$WORK/soak-pgbench.log"
    if grep -qE '^client [0-9]+ aborted|Run was aborted' <<<"$out"; then
        echo "$out" >&2
        die "soak: a pgbench client aborted"
    fi
    local tps lat conn_ms processed failed
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
    lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n1)
    conn_ms=$(sed -n 's/^initial connection time = \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -n1)
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
    [[ -n "$tps" && -n "$lat" && -n "$processed" ]] || { echo "$out" >&2; die "soak: cannot parse pgbench output"; }
    # Per script: name, transactions, tps, failed, latency.
    local per_script
    per_script=$(awk '
        /^SQL script [0-9]+:/ { if (name != "") print name, n, t, f, l; name = $4; sub(/.*soak_/, "", name); sub(/\.sql$/, "", name); n = t = l = "-"; f = 0 }
        name != "" && /^ - [0-9]+ transactions/ { n = $2; t = $0; sub(/.*tps = /, "", t); sub(/\).*/, "", t) }
        name != "" && /^ - number of failed transactions:/ { f = $6 }
        name != "" && /^ - latency average = / { l = $5 }
        END { if (name != "") print name, n, t, f, l }' <<<"$out")
    printf 'soak\tmixed\tpgveil\t1\t%s\t%s\n' "$tps" "$lat" >>"$RESULTS_TSV"
    local sname sn st sf sl inserted=""
    while read -r sname sn st sf sl; do
        printf 'soak\t%s\tpgveil\t1\t%s\t%s\n' "$sname" "$st" "${sl/-/0}" >>"$RESULTS_TSV"
        [[ $sname == insert ]] && inserted=$sn
    done <<<"$per_script"
    [[ -n "$inserted" ]] || { echo "$out" >&2; die "soak: no per-script figures for the insert script"; }
    log "soak: $tps tps, $lat ms, $processed transactions, ${failed:-0} failed"

    local rss_active_peak rss_active_end rss_active_drained
    rss_active_peak=$(vm_kib "$pid" VmHWM)
    rss_active_end=$(vm_kib "$pid" VmRSS)
    wait_sessions_gone bench 60
    rss_active_drained=$(vm_kib "$pid" VmRSS)

    # --- Idle phase ---------------------------------------------------------
    # Once in this pgveil, after the load, and once in a fresh one: the
    # allocator keeps what the active phase freed and hands it to the idle
    # sessions, so the first figure alone can understate what a connection
    # costs.
    soak_idle_phase "$port" "$pid" after-load
    local a_before=$IDLE_BEFORE a_open=$IDLE_OPEN a_hwm=$IDLE_HWM a_hold=$IDLE_HOLD a_closed=$IDLE_CLOSED
    local a_per=$IDLE_PER_CONN a_backends=$IDLE_BACKENDS
    start_pgveil_policy soak_fresh "$policy" "limits:
  max_connections: $((total + 100))"
    local fresh_port=$PGVEIL_PORT fresh_pid=${PGVEIL_PIDS[-1]}
    soak_warm "$fresh_port"
    reset_hwm "$fresh_pid" || true
    local f_base
    f_base=$(vm_kib "$fresh_pid" VmRSS)
    soak_idle_phase "$fresh_port" "$fresh_pid" fresh
    local mem_rows=(
        "baseline:$rss_base"
        "after-active-phase:$rss_active_end"
        "active-peak:$rss_active_peak"
        "active-drained:$rss_active_drained"
        "idle-before:$a_before"
        "idle-open:$a_open"
        "idle-peak:$a_hwm"
        "idle-after-hold:$a_hold"
        "idle-closed:$a_closed"
        "fresh-baseline:$f_base"
        "fresh-idle-open:$IDLE_OPEN"
        "fresh-idle-peak:$IDLE_HWM"
        "fresh-idle-closed:$IDLE_CLOSED"
    )
    local row
    for row in "${mem_rows[@]}"; do
        printf 'soak\trss-%s-kib\tpgveil\t1\t%s\t0\n' "${row%%:*}" "${row#*:}" >>"$RESULTS_TSV"
    done
    printf 'soak\tidle-per-conn-kib\tpgveil\t1\t%s\t0\n' "$a_per" >>"$RESULTS_TSV"
    printf 'soak\tfresh-idle-per-conn-kib\tpgveil\t1\t%s\t0\n' "$IDLE_PER_CONN" >>"$RESULTS_TSV"

    # --- No plaintext -------------------------------------------------------
    local hex rows visible dump_hits disk_hits
    hex=$(printf '%s' "$SOAK_SENTINEL" | od -An -tx1 | tr -d ' \n')
    rows=$(psql_su "$DB" -At -c "SELECT count(*) FROM soak_enc")
    # Every counted insert must be there; at most one per client may have
    # committed without being counted when -T ran out.
    ((rows >= SOAK_ROWS + inserted && rows <= SOAK_ROWS + inserted + SOAK_CLIENTS)) ||
        die "soak: $rows rows in soak_enc, expected $SOAK_ROWS preloaded + $inserted inserted"
    # Through pgveil every row carries the sentinel in name (decrypted)...
    visible=$(veil_psql "$port" -At -c "SELECT name FROM soak_enc" | grep -c "^$SOAK_SENTINEL" || true)
    ((visible == rows)) || die "soak: $visible of $rows names decrypt to the sentinel through pgveil"
    wait_sessions_gone bench 30
    # ...and directly nothing does: not in pg_dump (text or bytea hex), not in
    # any file of the data directory (heap, indexes, WAL) after a checkpoint.
    psql_su "$DB" -c CHECKPOINT
    PGSSLMODE=disable "$PGBIN/pg_dump" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB" >"$WORK/soak-dump.sql" ||
        die "soak: pg_dump failed"
    grep -q "^COPY public.soak_enc " "$WORK/soak-dump.sql" || die "soak: pg_dump has no data for soak_enc"
    dump_hits=$(grep -c -i -F -e "$SOAK_SENTINEL" -e "$hex" "$WORK/soak-dump.sql" || true)
    rm -f "$WORK/soak-dump.sql"
    local rc=0
    grep -r -l -a -F -e "$SOAK_SENTINEL" "$PGDATA_DIR" >"$WORK/soak-disk-hits.txt" || rc=$?
    ((rc <= 1)) || die "soak: cannot search the data directory"
    disk_hits=$(wc -l <"$WORK/soak-disk-hits.txt")
    # The soak pgveils' own logs (level warn) should be empty.
    local log_lines
    log_lines=$(cat "$WORK"/pgveil-soak*/pgveil.log | grep -c . || true)

    # --- Report -------------------------------------------------------------
    printf '\n== soak: %s clients x %s s mixed encrypted workload (-j %s, -M extended), then %s idle connections ==\n' \
        "$SOAK_CLIENTS" "$SOAK_SECONDS" "$THREADS" "$SOAK_IDLE"
    printf '%-10s %8s %14s %12s %12s %8s\n' script weight transactions tps "latency ms" failed
    local weights="lookup:40 insert:20 update:20 read:20" w
    while read -r sname sn st sf sl; do
        w=$(tr ' ' '\n' <<<"$weights" | sed -n "s/^$sname://p")
        printf '%-10s %8s %14s %12s %12s %8s\n' "$sname" "$w" "$sn" "$st" "$sl" "$sf"
    done <<<"$per_script"
    printf '%-10s %8s %14s %12s %12s %8s\n' all 100 "$processed" "$tps" "$lat" "${failed:-0}"
    printf 'initial connection time %s ms\n' "${conn_ms:-?}"
    printf '\n%-44s %12s %12s\n' "pgveil memory" "VmRSS KiB" "VmHWM KiB"
    printf '%-44s %12s %12s\n' "baseline (warm, no clients)" "$rss_base" "$hwm_base" \
        "end of active phase ($hwm_scope)" "$rss_active_end" "$rss_active_peak" \
        "active clients gone" "$rss_active_drained" "" \
        "$SOAK_IDLE idle: before" "$a_before" "" \
        "$SOAK_IDLE idle: open, 1 query each ($hwm_scope)" "$a_open" "$a_hwm" \
        "$SOAK_IDLE idle: after $SOAK_HOLD s" "$a_hold" "" \
        "$SOAK_IDLE idle: closed" "$a_closed" "" \
        "fresh pgveil: baseline (warm)" "$f_base" "" \
        "fresh pgveil: $SOAK_IDLE idle open ($hwm_scope)" "$IDLE_OPEN" "$IDLE_HWM" \
        "fresh pgveil: after $SOAK_HOLD s" "$IDLE_HOLD" "" \
        "fresh pgveil: closed" "$IDLE_CLOSED" ""
    local worst
    worst=$(awk -v a="$a_per" -v b="$IDLE_PER_CONN" 'BEGIN { print (a > b) ? a : b }')
    printf 'idle cost per connection: after the load (%s - %s) / %s = %s KiB; fresh pgveil (%s - %s) / %s = %s KiB\n' \
        "$a_open" "$a_before" "$SOAK_IDLE" "$a_per" "$IDLE_OPEN" "$IDLE_BEFORE" "$SOAK_IDLE" "$IDLE_PER_CONN"
    printf 'target <= 100 KiB per idle connection: %s (larger figure %s KiB)\n' \
        "$(awk -v p="$worst" 'BEGIN { print (p <= 100) ? "met" : "NOT met" }')" "$worst"
    printf 'errors: pgbench failed transactions %s, aborted clients 0, idle-connection errors 0;\n' "${failed:-0}"
    printf '        PostgreSQL sessions while idle %s and %s (of %s each)\n' "$a_backends" "$IDLE_BACKENDS" "$SOAK_IDLE"
    printf 'plaintext: %s rows (%s preloaded + %s inserted), %s decrypt to "%s..." through pgveil;\n' \
        "$rows" "$SOAK_ROWS" "$inserted" "$visible" "$SOAK_SENTINEL"
    printf '           pg_dump lines with it (text or hex): %s; data-directory files with it: %s\n' \
        "$dump_hits" "$disk_hits"
    printf 'pgveil log lines (warnings and errors): %s\n' "$log_lines"
    if ((dump_hits != 0 || disk_hits != 0)); then
        cat "$WORK/soak-disk-hits.txt" >&2
        die "soak: PLAINTEXT FOUND in the database"
    fi
    if ((log_lines != 0)); then
        head -n 20 "$WORK"/pgveil-soak*/pgveil.log >&2
        die "soak: pgveil logged warnings or errors under load (first lines above)"
    fi
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
