#!/usr/bin/env python3
"""Is threading flat with the size of the store? (issue #15)

For each backend, two stores are filled straight through SQL by a
generator: SMALL and LARGE messages (default 10,000 and 1,000,000), two per
ticket (an original and a reply), with their contacts, receipts and
reference rows, as mailroom itself would have written them. Then, round
after round and alternating between the two, `mailroom ingest` takes 1,000
new replies to random existing tickets of each store (each must thread onto
its ticket: the run checks that all 1,000 were appended, none created).
Printed: milliseconds per message of each run, the medians, and the ratio
LARGE/SMALL (the target: under 2).

Run: bench/thread_scale.py [SMALL [LARGE]]
  MAILROOM_BIN (default target/release/mailroom, built by the caller), or
  MAILROOM_BENCH_BINS="old=/path/to/old/mailroom,new=target/release/mailroom"
  to compare binaries in one run (oldest first: the first one fills the
  stores): each gets its own copy of both stores
  (a newer binary migrates its copy), and the runs alternate,
  MAILROOM_BENCH_ROUNDS (default 3), MAILROOM_BENCH_BACKENDS
  (default "sqlite postgres"), MAILROOM_TEST_PG (the admin URL).
"""

import hashlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MAILROOM_BIN", os.path.join(ROOT, "target/release/mailroom"))
ROUNDS = int(os.environ.get("MAILROOM_BENCH_ROUNDS", "3"))
BACKENDS = os.environ.get("MAILROOM_BENCH_BACKENDS", "sqlite postgres").split()
PG_ADMIN = os.environ.get("MAILROOM_TEST_PG", "postgres://postgres@127.0.0.1:5432/postgres")
PER_RUN = 1000


def mail(message_id, sender, subject, in_reply_to="", references=""):
    head = f"From: {sender}\r\nTo: support@example.com\r\nSubject: {subject}\r\n"
    head += f"Message-ID: <{message_id}>\r\nDate: Thu, 26 Nov 2026 10:00:00 +0000\r\n"
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\nReferences: {references}\r\n"
    return (head + "\r\nThank you, that helps.\r\n").encode()


def ingest(work, url, directory, binary=BIN):
    env = dict(os.environ, MAILROOM_DATABASE_URL=url, MAILROOM_LOG="warn")
    out = subprocess.run(
        [binary, "ingest", "--json", directory], cwd=work, env=env, capture_output=True, check=True
    )
    return json.loads(out.stdout)


# The texts hashed into each generated message's fingerprint and blob key.
FP_O, FP_R = "'f' || s.i || 'o'", "'f' || s.i || 'r'"
BLOB_O, BLOB_R, BLOB_OF_KIND = "'b' || s.i || 'o'", "'b' || s.i || 'r'", "'b' || s.i || k.kind"


def fill_sql(backend, messages, team, pipeline, status, outcome, now):
    """The generator's statements: `messages` messages, two per ticket."""
    tickets = messages // 2
    contacts = max(1, tickets // 5)

    def series(count):
        if backend == "sqlite":
            return (
                f"(WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
                "SELECT i FROM n) AS s"
            )
        return f"generate_series(1, {count}) AS s(i)"

    def digest(text):
        """A SHA-256 in hex, as mailroom's fingerprints and blob keys are:
        new ones then land at random places in their indexes."""
        if backend == "sqlite":
            return f"sha256_hex({text})"  # registered by `fill`
        return f"encode(sha256(({text})::bytea), 'hex')"

    blob = "zeroblob(512)" if backend == "sqlite" else "decode(repeat('00', 512), 'hex')"
    contact_of = f"'c' || (s.i % {contacts}) || '@gen.test'"
    return [
        f"INSERT INTO contacts (email, name, created_at) SELECT 'c' || (s.i - 1) || '@gen.test', "
        f"'Customer ' || s.i, {now} FROM {series(contacts)}",
        "INSERT INTO tickets (id, number, subject, team_id, pipeline_id, status_id, reply_token, "
        "created_at, updated_at, status_changed_at) "
        f"SELECT s.i + 1, s.i + 1, 'Case ' || s.i, {team}, {pipeline}, {status}, 'gen' || s.i, "
        f"{now}, {now}, {now} FROM {series(tickets)}",
        "INSERT INTO ticket_contacts (ticket_id, contact_id, role) "
        f"SELECT s.i + 1, c.id, 'requester' FROM {series(tickets)} JOIN contacts c ON c.email = {contact_of}",
        # Each message's raw original (512 bytes here, for the file's size).
        f"INSERT INTO blobs (sha256, size, data) SELECT {digest(BLOB_OF_KIND)}, 512, {blob} "
        f"FROM {series(tickets)}, (SELECT 'o' AS kind UNION ALL SELECT 'r') AS k",
        "INSERT INTO messages (ticket_id, team_id, direction, author_contact_id, message_id, "
        "in_reply_to, refs, from_addr, subject, body_text, fingerprint, raw_sha256, received_at) "
        f"SELECT s.i + 1, {team}, 'inbound', c.id, 'g' || s.i || 'o@gen.test', '[]', '[]', c.email, "
        f"'Case ' || s.i, 'A question.', {digest(FP_O)}, "
        f"{digest(BLOB_O)}, {now} "
        f"FROM {series(tickets)} JOIN contacts c ON c.email = {contact_of}",
        "INSERT INTO messages (ticket_id, team_id, direction, author_contact_id, message_id, "
        "in_reply_to, refs, from_addr, subject, body_text, fingerprint, raw_sha256, received_at) "
        f"SELECT s.i + 1, {team}, 'inbound', c.id, 'g' || s.i || 'r@gen.test', "
        "'[\"g' || s.i || 'o@gen.test\"]', '[\"g' || s.i || 'o@gen.test\"]', c.email, "
        f"'Re: Case ' || s.i, 'More detail.', {digest(FP_R)}, "
        f"{digest(BLOB_R)}, {now} "
        f"FROM {series(tickets)} JOIN contacts c ON c.email = {contact_of}",
        "INSERT INTO message_refs (referenced, team_id, ticket_id, message_id) "
        "SELECT 'g' || (m.ticket_id - 1) || 'o@gen.test', m.team_id, m.ticket_id, m.id "
        "FROM messages m WHERE m.message_id LIKE 'g%r@gen.test'",
        "INSERT INTO receipts (team_id, fingerprint, outcome, ticket_id, message_id, created_at) "
        f"SELECT team_id, fingerprint, '{outcome}', ticket_id, id, {now} FROM messages "
        "WHERE message_id LIKE 'g%@gen.test'",
    ]


class Store:
    """One store of `size` messages on `backend`."""

    def __init__(self, backend, size, work, label="seed", template=None):
        self.backend, self.size = backend, size
        if backend == "sqlite":
            self.path = os.path.join(work, f"scale-{size}-{label}.db")
            self.url = f"sqlite://{self.path}"
            if template:
                with sqlite3.connect(template.path) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                shutil.copyfile(template.path, self.path)
        else:
            self.name = f"mailroom_scale_{size}_{label}"
            self.psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            copy = f" TEMPLATE {template.name}" if template else ""
            self.psql(PG_ADMIN, f"CREATE DATABASE {self.name}{copy}")
            self.url = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.name

    @staticmethod
    def psql(url, sql):
        return subprocess.run(
            ["psql", url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()

    def query(self, sql):
        if self.backend == "sqlite":
            with sqlite3.connect(self.path) as db:
                return db.execute(sql).fetchone()
        return tuple(self.psql(self.url, sql).split("|"))

    def fill(self, work, binary=BIN):
        seed = os.path.join(work, "seed")
        os.makedirs(seed, exist_ok=True)
        with open(os.path.join(seed, "seed.eml"), "wb") as f:
            f.write(mail("seed@gen.test", "seed@gen.test", "Seed"))
        ingest(work, self.url, seed, binary)  # migrates and syncs the config
        team, pipeline, status = self.query("SELECT team_id, pipeline_id, status_id FROM tickets")
        (outcome,) = self.query("SELECT outcome FROM receipts")
        statements = fill_sql(self.backend, self.size, team, pipeline, status, outcome,
                              int(time.time() * 1000))
        started = time.time()
        if self.backend == "sqlite":
            db = sqlite3.connect(self.path)
            db.create_function("sha256_hex", 1, lambda text: hashlib.sha256(text.encode()).hexdigest(),
                               deterministic=True)
            for sql in statements:
                db.execute(sql)
            db.commit()
            db.close()
        else:
            statements.append(
                "SELECT setval(pg_get_serial_sequence('tickets', 'id'), (SELECT max(id) FROM tickets))"
            )
            statements.append("ANALYZE")  # as autovacuum would have by this size
            self.psql(self.url, ";\n".join(statements))
        (count,) = self.query("SELECT count(*) FROM messages")
        print(f"  {self.backend} store of {int(count):,} messages filled in {time.time() - started:.0f} s",
              flush=True)

    def drop(self):
        if self.backend == "sqlite":
            os.remove(self.path)
        else:
            self.psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def replies(directory, store, round_no):
    """PER_RUN replies to random tickets of `store`, each from its requester."""
    tickets = store.size // 2
    contacts = max(1, tickets // 5)
    if os.path.exists(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    rng = random.Random(f"{store.size}-{round_no}")
    for j in range(PER_RUN):
        i = rng.randrange(1, tickets + 1)
        parent = f"g{i}r@gen.test"
        data = mail(
            f"new{round_no}.{j}.{store.size}@customer.test",
            f"c{i % contacts}@gen.test",
            f"Re: Case {i}",
            parent,
            f"<g{i}o@gen.test> <{parent}>",
        )
        with open(os.path.join(directory, f"{j:04}.eml"), "wb") as f:
            f.write(data)


def binaries():
    spec = os.environ.get("MAILROOM_BENCH_BINS")
    if not spec:
        return [("mailroom", BIN)]
    return [tuple(item.split("=", 1)) for item in spec.replace(",", " ").split()]


def main():
    small = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    large = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    bins = binaries()
    work = tempfile.mkdtemp()
    shutil.copytree(os.path.join(ROOT, "config"), os.path.join(work, "config"))
    try:
        for backend in BACKENDS:
            # Filled once (by the first binary), then copied for each binary.
            seeds = [Store(backend, size, work) for size in (small, large)]
            for seed in seeds:
                seed.fill(work, bins[0][1])
            stores = {(label, seed.size): Store(backend, seed.size, work, label, seed)
                      for label, _ in bins for seed in seeds}
            for seed in seeds:
                seed.drop()
            per_message = {key: [] for key in stores}
            directory = os.path.join(work, "replies")
            for round_no in range(ROUNDS):
                for label, binary in bins:
                    for size in (small, large):
                        store = stores[(label, size)]
                        replies(directory, store, round_no)
                        result = ingest(work, store.url, directory, binary)
                        threaded = result.get("appended", 0)
                        assert threaded == PER_RUN and result.get("created", 0) == 0, result
                        per_message[(label, size)].append(result["seconds"] * 1000 / PER_RUN)
            medians = {key: statistics.median(runs) for key, runs in per_message.items()}
            for (label, size), runs in per_message.items():
                shown = " / ".join(f"{ms:.3f}" for ms in runs)
                print(f"{backend:8} {label:8} {size:>9,} messages: {shown} ms per message "
                      f"(median {medians[(label, size)]:.3f})")
            for label, _ in bins:
                ratio = medians[(label, large)] / medians[(label, small)]
                print(f"{backend:8} {label:8} ratio {large:,} / {small:,}: {ratio:.2f}", flush=True)
            for store in stores.values():
                store.drop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
