#!/usr/bin/env bash
# Outbox benchmark: queues COUNT replies (default 5,000) and sends them
# through the outbox to Postfix's smtp-sink on loopback, on SQLite and on
# PostgreSQL; reports replies/s for queueing and for sending, and checks the
# sink received every one exactly once. Run: bench/outbox.sh [COUNT] [POOL]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-5000}
pool=${2:-8}
pg_admin=${MAILROOM_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
work=$(mktemp -d)
sink_pid=
cleanup() {
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS mailroom_outbox_bench WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --example outbox_bench
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

run() { # name, database url
  local name=$1 url=$2
  rm -rf "$work/sink"; mkdir -p "$work/sink"
  local user=()
  if [ "$(id -u)" = 0 ]; then chown postfix "$work/sink"; user=(-u postfix); fi
  /usr/sbin/smtp-sink "${user[@]}" -R "$work/sink" -d '%Y%m%d%H%M%S.' "127.0.0.1:$port" 1000 &
  sink_pid=$!
  sleep 0.3
  local out
  out=$(MAILROOM_LOG=warn target/release/examples/outbox_bench "$url" "$port" "$count" "$pool")
  sleep 0.5
  local received
  received=$(find "$work/sink" -type f | wc -l)
  kill "$sink_pid"; wait "$sink_pid" 2>/dev/null || true; sink_pid=
  printf '%-9s pool %-2s %s  sink received %s\n' "$name" "$pool" "$out" "$received"
}

run sqlite "sqlite://$work/bench.db"
psql "$pg_admin" -qc "DROP DATABASE IF EXISTS mailroom_outbox_bench WITH (FORCE)" >/dev/null 2>&1 || true
psql "$pg_admin" -qc "CREATE DATABASE mailroom_outbox_bench" >/dev/null
run postgres "${pg_admin%/*}/mailroom_outbox_bench"
