#!/usr/bin/env bash
# Backfill benchmark: generates COUNT realistic messages (default 10,000) and
# ingests them with `mailroom ingest` into SQLite and into PostgreSQL,
# reporting messages/s and peak RSS. Run: bench/ingest.sh [COUNT]
# To compare binaries in one run, name them (each round runs every binary
# once per backend, alternating):
#   MAILROOM_BENCH_BINS="old=/path/to/old/mailroom new=target/release/mailroom" \
#   MAILROOM_BENCH_ROUNDS=3 bench/ingest.sh 10000
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-10000}
pg_admin=${MAILROOM_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$pg_admin" -qc "DROP DATABASE IF EXISTS mailroom_bench WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

cargo build --release --quiet --example gen_mail
target/release/examples/gen_mail "$count" "$work/corpus"
cp -r config "$work/"
if [ -z "${MAILROOM_BENCH_BINS:-}" ]; then
  cargo build --release --quiet --bin mailroom
  MAILROOM_BENCH_BINS="mailroom=$PWD/target/release/mailroom"
fi

run() { # name, database url (uses $bin)
  local name=$1 url=$2
  (cd "$work" && MAILROOM_DATABASE_URL=$url MAILROOM_LOG=warn \
    /usr/bin/time -f '%M' -o "$work/rss" "$bin" ingest --json corpus >"$work/out")
  local secs rate rss
  secs=$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["seconds"])' "$work/out")
  rate=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.0f" % ((d["created"]+d["appended"]+d["duplicate"])/d["seconds"]))' "$work/out")
  rss=$(( $(cat "$work/rss") / 1024 ))
  printf '%-18s %6s messages  %7s s  %7s msg/s  peak RSS %4s MiB  %s\n' "$name" "$count" "$secs" "$rate" "$rss" "$(cat "$work/out")"
}

for _ in $(seq 1 "${MAILROOM_BENCH_ROUNDS:-1}"); do
  for spec in ${MAILROOM_BENCH_BINS//,/ }; do
    label=${spec%%=*} bin=${spec#*=}
    rm -f "$work/bench.db" "$work/bench.db-wal" "$work/bench.db-shm"
    run "$label/sqlite" "sqlite://$work/bench.db"
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS mailroom_bench WITH (FORCE)" >/dev/null 2>&1 || true
    psql "$pg_admin" -qc "CREATE DATABASE mailroom_bench" >/dev/null
    run "$label/postgres" "${pg_admin%/*}/mailroom_bench"
  done
done
