#!/usr/bin/env bash
# The one test command (README: Testing). Installs and starts what the tests
# need when it is missing, then runs formatting, lints and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
need_apt_update=1
apt_install() {
  if [ "$need_apt_update" = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    need_apt_update=0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL: the store tests run on it as well as on SQLite.
PG_URL=${MAILROOM_TEST_PG:-postgres://postgres@127.0.0.1:5432/postgres}
pg_ok() { psql "$PG_URL" -Atqc 'select 1' >/dev/null 2>&1; }
if ! pg_ok; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  # Tests connect over loopback without a password, as on the dev machines.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  for _ in $(seq 1 30); do pg_ok && break; sleep 1; done
  pg_ok || { log "PostgreSQL is still not reachable at $PG_URL"; exit 1; }
fi

# Dovecot: the IMAP tests start their own throwaway instances; LMTP lets
# the Postfix tests deliver into one.
if ! command -v dovecot >/dev/null 2>&1 || [ ! -e /usr/share/dovecot/dh.pem ] \
  || [ ! -e /usr/lib/dovecot/lmtp ]; then
  log "installing Dovecot"
  apt_install dovecot-imapd dovecot-lmtpd
fi

# Postfix: the outbound tests send replies to its smtp-sink, and to
# throwaway Postfix instances (STARTTLS, AUTH, delivery into Dovecot) that
# they start themselves. Installing it starts nothing here (no init system).
if [ ! -x /usr/sbin/smtp-sink ] || [ ! -x /usr/sbin/postfix ]; then
  log "installing Postfix (for smtp-sink)"
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  apt_install postfix
fi

# schemathesis: the property-based API fuzzer run against the served
# OpenAPI document (scripts/api-fuzz.sh).
if ! command -v schemathesis >/dev/null 2>&1; then
  log "installing schemathesis (pip)"
  python3 -m pip install -q schemathesis
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
log "cargo test"
cargo test --all-targets 2>&1
log "API fuzzing (schemathesis)"
cargo build --quiet
./scripts/api-fuzz.sh target/debug/mailroom
