#!/usr/bin/env bash
# Agent replies through the HTTP API under load (issue #4): wrk posts
# replies to 100 tickets of a running `mailroom run`; the daemon's outbox
# sends them to Postfix's smtp-sink. Reports the API's requests/s and
# latency (each 202 is after the reply is committed), then how long the
# outbox took to drain, and checks the sink got every reply exactly once.
# Run: bench/replies.sh [SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-16}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
cargo build --release --quiet --bin mailroom
work=$(mktemp -d)
pid=; sink=
trap 'kill $pid $sink 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); smtp=$(free_port)
mkdir -p "$work/sink"
user=()
if [ "$(id -u)" = 0 ]; then chown postfix "$work/sink"; user=(-u postfix); fi
/usr/sbin/smtp-sink "${user[@]}" -R "$work/sink" -d '%Y%m%d%H%M%S.' "127.0.0.1:$smtp" 1000 &
sink=$!
sed -e "s#sqlite://data/mailroom.db#${BENCH_DB:-sqlite://$work/bench.db}#" -e "s#path = \"spool\"#path = \"$work/spool\"#" \
  -e 's#^teams = \["support"\]#teams = ["support"]\napi_token = "bench-token"#' \
  config/mailroom.toml > "$work/mailroom.toml"
cat >> "$work/mailroom.toml" <<TOML

[http]
bind = "127.0.0.1:$port"

[relays.sink]
host = "127.0.0.1"
port = $smtp
tls = "none"
pool_size = 8
TOML
bin=target/release/mailroom
mkdir -p "$work/mail"
for i in $(seq 1 100); do
  printf 'From: Customer %s <c%s@customer.test>\r\nTo: support@example.com\r\nSubject: Question %s\r\nMessage-ID: <q%s@customer.test>\r\n\r\nHello %s\r\n' \
    "$i" "$i" "$i" "$i" "$i" > "$work/mail/$i.eml"
done
MAILROOM_LOG=warn "$bin" --config "$work/mailroom.toml" ingest "$work/mail" >/dev/null
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
local n = 0
request = function()
  n = n + 1
  local body = '{"body":"Thanks for writing in. Reply ' .. n .. ': we have reset your password; please try again."}'
  return wrk.format(nil, "/api/v1/tickets/" .. (n % 100 + 1) .. "/replies", nil, body)
end
LUA
MAILROOM_LOG=${BENCH_LOG:-warn} "$bin" --config "$work/mailroom.toml" run 2>"$work/daemon.log" &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" | tee "$work/wrk.out"
started=$(date +%s.%N)
outbox() { MAILROOM_LOG=warn "$bin" --config "$work/mailroom.toml" status | awk '/^outbox/ {print $0}'; }
queued() { outbox | sed -E 's/.*queued=([0-9]+).*/\1/'; }
while [ "$(queued)" != 0 ]; do sleep 0.2; done
drained=$(python3 -c "import time; print('%.1f' % (time.time() - $started))")
kill -TERM $pid; wait $pid || true; pid=
replies=$(find "$work/sink" -type f | wc -l)
echo "$(outbox)   received by the sink: $replies   outbox drained ${drained} s after the load stopped"
