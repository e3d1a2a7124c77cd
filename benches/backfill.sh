#!/usr/bin/env bash
# Backfill benchmark: `pgveil encrypt` over a users-like table of ROWS
# plaintext rows with 3 protected columns (email with a blind index, name
# stored as text, phone), release build, against a throwaway PostgreSQL
# cluster. Prints rows/s (target: >= 50,000 rows/s for 1M rows on 2 cores),
# then checks that no plaintext is left.
#
# Usage:  benches/backfill.sh
# Knobs:  ROWS [1000000]  BATCH [2000]  JOBS [2]  RUNS [1]  PGVEIL_BIN (skip cargo build)
#         KEEP=1 keeps the work directory.
#
# Runs as root (PostgreSQL then runs as the `postgres` OS user) or as an
# ordinary user.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROWS=${ROWS:-1000000}
BATCH=${BATCH:-2000}
JOBS=${JOBS:-2}
RUNS=${RUNS:-1}
KEEP=${KEEP:-0}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[[ -x "$PG_BIN/initdb" ]] || PG_BIN=$(dirname "$(command -v initdb || echo /nonexistent/initdb)")
[[ -x "$PG_BIN/initdb" ]] || die "initdb not found (install PostgreSQL server binaries)"

if [[ -z "${PGVEIL_BIN:-}" ]]; then
    log "building pgveil (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin pgveil)
    PGVEIL_BIN="$ROOT/target/release/pgveil"
fi

WORK=$(mktemp -d /tmp/pgveil-backfill-bench.XXXXXX)
AS=()
if [[ $(id -u) == 0 ]]; then
    chown postgres "$WORK"
    AS=(runuser -u postgres --)
fi
PORT=$(( 20000 + RANDOM % 20000 ))

cleanup() {
    "${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    if [[ "$KEEP" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "starting PostgreSQL on port $PORT"
"${AS[@]}" "$PG_BIN/initdb" -D "$WORK/data" -A trust -U postgres >/dev/null
"${AS[@]}" "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgresql.log" -w \
    -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c max_wal_size=4GB -c checkpoint_timeout=30min -c synchronous_commit=on" \
    start >/dev/null

psql_su() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql_su -d postgres -c "CREATE DATABASE app" -c "CREATE DATABASE pgveil_keys"

cat > "$WORK/policy.yaml" <<'EOF'
version: 1
tables:
  public.bench_users:
    columns:
      email:
        type: text
        blind_index: { column: email_bidx, normalize: [trim, lowercase] }
        access: { app: read }
      name:  { type: text, access: { app: read } }
      phone: { type: text, access: { app: read } }
EOF
cat > "$WORK/pgveil.yaml" <<EOF
listen: 127.0.0.1:$(( PORT + 1 ))
upstream:
  host: 127.0.0.1
  port: $PORT
  tls: disable
policy: policy.yaml
keys:
  provider: local
  local:
    master_keys:
      - { id: bench, env: PGVEIL_BENCH_MASTER_KEY }
  blind_index_key: { env: PGVEIL_BENCH_BIDX_KEY }
  keystore:
    database: postgres://postgres@127.0.0.1:$PORT/pgveil_keys
EOF
export PGVEIL_BENCH_MASTER_KEY PGVEIL_BENCH_BIDX_KEY
PGVEIL_BENCH_MASTER_KEY=$("$PGVEIL_BIN" keys generate)
PGVEIL_BENCH_BIDX_KEY=$("$PGVEIL_BIN" keys generate)

results=()
for run in $(seq 1 "$RUNS"); do
    log "run $run/$RUNS: loading $ROWS plaintext rows"
    psql_su -d app <<EOF
DROP TABLE IF EXISTS bench_users;
CREATE TABLE bench_users (
    id         bigserial PRIMARY KEY,
    email      bytea,           -- plaintext as UTF-8 bytes before the backfill
    email_bidx bytea,
    name       text,            -- stored as printable envelope afterwards
    phone      bytea,
    plan       text NOT NULL DEFAULT 'free',
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bench_users (email, name, phone)
SELECT convert_to('user' || i || '@example.com', 'UTF8'),
       'Person Number ' || i,
       convert_to('+1 555 ' || lpad(i::text, 7, '0'), 'UTF8')
FROM generate_series(1, $ROWS) i;
CREATE INDEX bench_users_email_bidx ON bench_users (email_bidx);
VACUUM ANALYZE bench_users;
CHECKPOINT;
EOF
    log "run $run/$RUNS: pgveil encrypt --batch $BATCH --jobs $JOBS"
    start=$(date +%s.%N)
    "$PGVEIL_BIN" encrypt --config "$WORK/pgveil.yaml" \
        --database "postgres://postgres@127.0.0.1:$PORT/app" --batch "$BATCH" --jobs "$JOBS" \
        | tee "$WORK/summary.txt"
    end=$(date +%s.%N)
    left=$(psql_su -d app -c "SELECT count(*) FROM bench_users WHERE substring(email from 1 for 2) <> 'pv'::bytea OR name NOT LIKE 'pgv1:%' OR substring(phone from 1 for 2) <> 'pv'::bytea OR email_bidx IS NULL")
    [[ "$left" == 0 ]] || die "$left rows still hold plaintext or lack a blind index"
    rate=$(awk -v n="$ROWS" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", n / (e - s) }')
    results+=("$rate")
    log "run $run/$RUNS: $ROWS rows in $(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }') s wall clock (process start to exit): $rate rows/s"
done

echo
echo "backfill: $ROWS rows x 3 protected columns + 1 blind index, batch $BATCH, jobs $JOBS, $(nproc) CPUs"
printf '  run %s: %s rows/s\n' $(for i in "${!results[@]}"; do echo "$((i + 1)) ${results[$i]}"; done)
