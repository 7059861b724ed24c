#!/usr/bin/env bash
# Form submissions per second against `mailroom run` on loopback (issue #5).
# Every request is a new ticket, committed before its 201. Uses wrk (apt
# package `wrk`). Run: bench/forms.sh [SECONDS] [CONNECTIONS]
# To compare binaries in one run: MAILROOM_BENCH_BINS="old=/path/a new=/path/b"
# (each runs once per round, alternating; MAILROOM_BENCH_ROUNDS, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-32}
command -v wrk >/dev/null || { echo "install wrk (apt-get install wrk)"; exit 1; }
if [ -z "${MAILROOM_BENCH_BINS:-}" ]; then
  cargo build --release --quiet --bin mailroom
  MAILROOM_BENCH_BINS="mailroom=$PWD/target/release/mailroom"
fi
pid=
trap 'kill $pid 2>/dev/null || true' EXIT

one_run() { # label, binary
local label=$1 bin=$2
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
sed -e "s#sqlite://data/mailroom.db#sqlite://$work/bench.db#" -e "s#path = \"spool\"#path = \"$work/spool\"#" \
  config/mailroom.toml > "$work/mailroom.toml"
cat >> "$work/mailroom.toml" <<TOML

[http]
bind = "127.0.0.1:$port"

[channels.contact]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]
honeypot = "website"
rate_limit_per_minute = 100000000
TOML
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Origin"] = "https://www.example.com"
local n = 0
request = function()
  n = n + 1
  local body = "name=Bench+User&email=user" .. (n % 500) .. "%40bench.test&subject=Cannot+log+in+" .. n ..
    "&body=Hello%2C+I+cannot+log+in+since+this+morning.+Order+A-" .. n .. "&order=A-" .. n .. "&website="
  return wrk.format(nil, "/forms/contact", nil, body)
end
LUA
MAILROOM_LOG=${BENCH_LOG:-warn} "$bin" --config "$work/mailroom.toml" run 2>"$work/../forms-bench.log" &
pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
echo "== $label"
wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$work/post.lua" "http://127.0.0.1:$port" | tee "$work/wrk.out"
rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
tickets=$(MAILROOM_LOG=warn "$bin" --config "$work/mailroom.toml" ticket list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
echo "$label: tickets stored: $tickets   peak RSS: ${rss} MiB"
rm -rf "$work"
}

for _ in $(seq 1 "${MAILROOM_BENCH_ROUNDS:-1}"); do
  for spec in ${MAILROOM_BENCH_BINS//,/ }; do
    one_run "${spec%%=*}" "${spec#*=}"
  done
done
