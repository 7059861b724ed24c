#!/usr/bin/env bash
# Peak memory (max RSS, from GNU time) for hostile and large inputs: a
# 25 MiB urlencoded form of 2.5 M fields (refused at the field cap), a
# 25 MiB JSON form whose one field is a long array, a multipart form with
# a 19 MiB file (accepted), and 2 GiB on the MTA pipe (refused at
# ingest.max_message_bytes) next to two 49 MiB messages that fit: one
# plain-text body, and one 36 MiB attachment in base64. Each case
# runs in its own process, so each peak is that case's alone.
#
# MAILROOM_BENCH_BINS="old=/path/a new=/path/b" compares binaries in one
# run (default: new=target/release/mailroom, built here).
# Run: bench/rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "install GNU time (apt-get install time)"; exit 1; }
if [ -z "${MAILROOM_BENCH_BINS:-}" ]; then
  cargo build --release --quiet --bin mailroom
  MAILROOM_BENCH_BINS="new=$PWD/target/release/mailroom"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mib() { echo $(( $1 / 1024 )); }  # GNU time reports KiB

# Inputs, made once.
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
mib = 1024 * 1024
with open(f"{work}/fields.txt", "wb") as f:  # 2.5 M fields, ~25 MiB
    f.write(b"email=a%40b.test&body=hi&" + b"&".join(b"f%d=x" % i for i in range(2_500_000))[: 25 * mib - 64])
with open(f"{work}/array.json", "w") as f:  # one field holding a 25 MiB array
    f.write('{"email":"a@b.test","body":"hi","list":[' + ",".join(["1"] * (12 * mib)) + "]}")
with open(f"{work}/upload.bin", "wb") as f:
    f.write(b"--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.test\r\n")
    f.write(b"--B\r\nContent-Disposition: form-data; name=\"body\"\r\n\r\nhi\r\n")
    f.write(b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n")
    f.write(b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * (19 * mib // 256) + b"\r\n--B--\r\n")
with open(f"{work}/fits.eml", "wb") as f:
    f.write(b"From: a@b.test\r\nTo: support@example.com\r\nSubject: big\r\nMessage-ID: <big@b.test>\r\n\r\n")
    f.write((b"x" * 76 + b"\r\n") * (49 * mib // 78))
import base64, random
with open(f"{work}/attach.eml", "wb") as f:  # 36 MiB file, base64: 49 MiB on the wire
    f.write(b"From: a@b.test\r\nTo: support@example.com\r\nSubject: report\r\nMessage-ID: <attach@b.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
            b"Content-Type: text/plain\r\n\r\nThe report is attached.\r\n--B\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=report.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n")
    f.write(base64.encodebytes(random.Random(7).randbytes(36 * mib)).replace(b"\n", b"\r\n"))
    f.write(b"--B--\r\n")
PY

config() {  # $1: directory for this run's database
  local port=$2
  sed -e "s#sqlite://data/mailroom.db#sqlite://$1/bench.db#" -e "s#path = \"spool\"#path = \"$1/spool\"#" \
    config/mailroom.toml > "$1/mailroom.toml"
  cat >> "$1/mailroom.toml" <<TOML

[http]
bind = "127.0.0.1:$port"

[channels.contact]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]
rate_limit_per_minute = 1000
TOML
}

# Peak RSS of a daemon that answers one POST of $3 (content type $4).
daemon_peak() {
  local bin=$1 name=$2 file=$3 type=$4
  local dir="$work/$name.$RANDOM"; mkdir -p "$dir"
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  config "$dir" "$port"
  /usr/bin/time -f %M -o "$dir/rss" "$bin" --config "$dir/mailroom.toml" run >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  local status
  status=$(curl -s -o "$dir/answer" -w '%{http_code}' -H "Origin: https://www.example.com" \
    -H "Content-Type: $type" --data-binary "@$file" "http://127.0.0.1:$port/forms/contact")
  pkill -TERM -P "$pid" mailroom 2>/dev/null || kill -TERM "$pid"
  wait "$pid" || true
  printf '%-4s %-34s %4s %6s MiB\n' "$name" "$(basename "$file") ($(mib $(( $(stat -c %s "$file") / 1024 ))) MiB)" "$status" "$(mib "$(tail -n 1 "$dir/rss")")"
}

pipe_peak() {
  local bin=$1 name=$2 what=$3
  local dir="$work/$name.$RANDOM"; mkdir -p "$dir"
  config "$dir" 0
  sed -i '/^\[http\]/,/^bind/d' "$dir/mailroom.toml"
  sed -i '/^\[channels.contact\]/,$d' "$dir/mailroom.toml"
  local code
  set +e +o pipefail
  case $what in
    2GiB) head -c $((2 * 1024 * 1024 * 1024)) /dev/zero \
            | /usr/bin/time -f %M -o "$dir/rss" "$bin" --config "$dir/mailroom.toml" ingest >/dev/null 2>&1
          code=${PIPESTATUS[1]} ;;
    fits|attach) /usr/bin/time -f %M -o "$dir/rss" "$bin" --config "$dir/mailroom.toml" ingest < "$work/$what.eml" >/dev/null 2>&1
          code=$? ;;
  esac
  set -e -o pipefail
  printf '%-4s %-34s %4s %6s MiB\n' "$name" "pipe: $what" "$code" "$(mib "$(tail -n 1 "$dir/rss")")"
}

printf '%-4s %-34s %4s %10s\n' bin input answer "peak RSS"
for entry in $MAILROOM_BENCH_BINS; do
  name=${entry%%=*}; bin=${entry#*=}
  daemon_peak "$bin" "$name" "$work/fields.txt" application/x-www-form-urlencoded
  daemon_peak "$bin" "$name" "$work/array.json" application/json
  daemon_peak "$bin" "$name" "$work/upload.bin" "multipart/form-data; boundary=B"
  pipe_peak "$bin" "$name" 2GiB
  pipe_peak "$bin" "$name" fits
  pipe_peak "$bin" "$name" attach
done
