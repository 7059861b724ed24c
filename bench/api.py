#!/usr/bin/env python3
"""Help-desk API latency (issue #12) on a store of 100,000 tickets, on
SQLite and on PostgreSQL: a filtered list of 50 tickets, the next page by
cursor, one ticket, and a draft autosave (PUT). Requests are sequential on
one keep-alive connection; each figure is p50/p99 over the rounds. For
SQLite, the same list query run straight on the file with Python's sqlite3
gives the floor the API adds to (the ratio in one run).

The store is seeded in SQL (one recursive CTE that both backends run):
tickets across 3 statuses and 2 teams, one message and one contact each,
every 10th owned by alice.

Run: bench/api.py [TICKETS=100000] [ROUNDS=500]   (env: MAILROOM_BIN,
MAILROOM_BENCH_PG=postgres://postgres@127.0.0.1:5432/postgres)
"""
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICKETS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 500
PG = os.environ.get("MAILROOM_BENCH_PG", "postgres://postgres@127.0.0.1:5432/postgres")
TOKEN = "bench-token-0123456789"

SEED = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO tickets (number, subject, team_id, pipeline_id, status_id, owner_agent_id, properties,
                     reply_token, created_at, updated_at, status_changed_at)
SELECT i, CASE WHEN i % 7 = 0 THEN 'Printer jam ' || i ELSE 'Question ' || i END,
       CASE WHEN i % 2 = 0 THEN {team_a} ELSE {team_b} END, {pipeline},
       CASE WHEN i % 3 = 0 THEN {open} WHEN i % 3 = 1 THEN {waiting} ELSE {closed} END,
       CASE WHEN i % 10 = 0 THEN {alice} ELSE NULL END, '{{}}', 'tok' || i,
       1700000000000 + i * 1000, 1700000000000 + i * 1000, 1700000000000 + i * 1000
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
INSERT INTO contacts (email, name, created_at) SELECT 'c' || i || '@customer.test', 'C ' || i, 0 FROM n;
INSERT INTO ticket_contacts (ticket_id, contact_id, role)
SELECT t.id, c.id, 'requester' FROM tickets t JOIN contacts c ON c.email = 'c' || t.number || '@customer.test';
INSERT INTO messages (ticket_id, team_id, direction, message_id, from_addr, subject, body_text, fingerprint, received_at)
SELECT id, team_id, 'inbound', 'm' || number || '@customer.test', 'c' || number || '@customer.test', subject, 'Hello',
       'fp' || number, created_at FROM tickets;
UPDATE counters SET value = {count} WHERE name = 'ticket_number';
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def config(path, url, port):
    with open(path, "w") as f:
        f.write(f"""
[database]
url = "{url}"
[http]
bind = "127.0.0.1:{port}"
[pipelines.support]
statuses = [{{ name = "open", kind = "open" }}, {{ name = "waiting", kind = "waiting" }}, {{ name = "closed", kind = "closed" }}]
[teams.support]
addresses = [{{ address = "support@example.com" }}]
[teams.billing]
addresses = [{{ address = "billing@example.com" }}]
[agents.alice]
email = "alice@example.com"
teams = ["support", "billing"]
api_token = "{TOKEN}"
[channels.pipe]
kind = "pipe"
team = "support"
pipeline = "support"
""")


def run_sql(backend, url, sql, db_file=None):
    if backend == "sqlite":
        con = sqlite3.connect(db_file)
        con.executescript(sql)
        con.commit()
        con.close()
    else:
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                       stdout=subprocess.DEVNULL)


def ids(backend, url, db_file):
    query = ("SELECT (SELECT id FROM teams WHERE key='support'), (SELECT id FROM teams WHERE key='billing'),"
             " (SELECT id FROM pipelines WHERE key='support'),"
             " (SELECT id FROM statuses WHERE name='open'), (SELECT id FROM statuses WHERE name='waiting'),"
             " (SELECT id FROM statuses WHERE name='closed'), (SELECT id FROM agents WHERE key='alice')")
    if backend == "sqlite":
        row = sqlite3.connect(db_file).execute(query).fetchone()
    else:
        out = subprocess.run(["psql", "-Atq", url, "-c", query], check=True, capture_output=True, text=True)
        row = [int(x) for x in out.stdout.strip().split("|")]
    keys = ["team_a", "team_b", "pipeline", "open", "waiting", "closed", "alice"]
    return dict(zip(keys, row))


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def timed(conn, method, path, body=None):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    assert response.status < 300, (method, path, response.status, data[:200])
    return elapsed, data


def measure(conn, label, method, path, body_of=None):
    samples = []
    for i in range(ROUNDS):
        body = body_of(i) if body_of else None
        ms, _ = timed(conn, method, path, body)
        samples.append(ms)
    print(f"  {label:<44} p50 {pct(samples, 0.5):6.2f} ms   p99 {pct(samples, 0.99):6.2f} ms")
    return samples


def bench(backend, binary):
    work = tempfile.mkdtemp()
    port = free_port()
    db_file = os.path.join(work, "bench.db")
    if backend == "sqlite":
        url = f"sqlite://{db_file}"
    else:
        name = f"mailroom_bench_{os.getpid()}"
        subprocess.run(["psql", "-q", PG, "-c", f"DROP DATABASE IF EXISTS {name}"], check=True)
        subprocess.run(["psql", "-q", PG, "-c", f"CREATE DATABASE {name}"], check=True)
        url = PG.rsplit("/", 1)[0] + "/" + name
    cfg = os.path.join(work, "mailroom.toml")
    config(cfg, url, port)
    subprocess.run([binary, "--config", cfg, "migrate"], check=True, stdout=subprocess.DEVNULL)
    # The first start syncs teams, agents and statuses; the seed needs their ids.
    daemon = subprocess.Popen([binary, "--config", cfg, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(port)
    daemon.terminate()
    daemon.wait()
    started = time.time()
    run_sql(backend, url, SEED.format(count=TICKETS, **ids(backend, url, db_file)), db_file)
    if backend == "postgres":
        run_sql(backend, url, "ANALYZE")
    print(f"{backend}: {TICKETS} tickets seeded in {time.time() - started:.1f} s")
    daemon = subprocess.Popen([binary, "--config", cfg, "run"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        for _ in range(20):  # warm the caches
            timed(conn, "GET", "/api/v1/tickets?status=open&limit=50")
        results = {}
        results["list"] = measure(conn, "GET /tickets?status=open&limit=50", "GET", "/api/v1/tickets?status=open&limit=50")
        _, page = timed(conn, "GET", "/api/v1/tickets?status=waiting&team=billing&limit=50")
        cursor = json.loads(page)["next_cursor"]
        measure(conn, "GET /tickets?status=waiting&team=billing (page 2)", "GET",
                f"/api/v1/tickets?status=waiting&team=billing&limit=50&cursor={cursor}")
        measure(conn, "GET /tickets?owner=alice&limit=50", "GET", "/api/v1/tickets?owner=alice&limit=50")
        measure(conn, "GET /tickets?q=printer&limit=50 (text)", "GET", "/api/v1/tickets?q=printer&limit=50")
        measure(conn, "GET /tickets/{n}", "GET", f"/api/v1/tickets/{TICKETS // 2}")
        results["draft"] = measure(conn, "PUT /tickets/{n}/draft (autosave)", "PUT", f"/api/v1/tickets/{TICKETS // 3}/draft",
                                   lambda i: json.dumps({"body": f"Dear customer, draft {i} " + "x" * 500}))
        if backend == "sqlite":
            floor(db_file)
        return results
    finally:
        daemon.terminate()
        daemon.wait()
        if backend == "postgres":
            subprocess.run(["psql", "-q", PG, "-c", f"DROP DATABASE IF EXISTS {name}"], check=False)


def floor(db_file):
    """The list's own SQL (the page, its message counts, its contacts) on the file directly."""
    con = sqlite3.connect(db_file)
    sql = ("SELECT t.id, t.number, t.subject, s.name, s.kind, tm.key, p.key, ag.key, t.company_id, t.follow_up_of,"
           " t.created_at, t.updated_at, t.deleted_at"
           " FROM tickets t JOIN statuses s ON s.id = t.status_id JOIN teams tm ON tm.id = t.team_id"
           " JOIN pipelines p ON p.id = t.pipeline_id LEFT JOIN agents ag ON ag.id = t.owner_agent_id"
           " WHERE t.deleted_at IS NULL AND +t.team_id IN (1, 2) AND t.merged_into IS NULL"
           " AND (s.name = 'open' OR s.kind = 'open') ORDER BY t.updated_at DESC, t.id DESC LIMIT 51")
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        rows = con.execute(sql).fetchall()
        marks = ",".join("?" * len(rows))
        page = [r[0] for r in rows]
        con.execute(f"SELECT tc.ticket_id, c.email FROM ticket_contacts tc JOIN contacts c ON c.id = tc.contact_id"
                    f" WHERE tc.ticket_id IN ({marks})", page).fetchall()
        con.execute(f"SELECT ticket_id, COUNT(*) FROM messages WHERE ticket_id IN ({marks}) GROUP BY ticket_id",
                    page).fetchall()
        samples.append((time.perf_counter() - start) * 1000)
    print(f"  {'same list SQL straight on the file (floor)':<44} p50 {pct(samples, 0.5):6.2f} ms   p99 {pct(samples, 0.99):6.2f} ms")


def wait_ready(port):
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the daemon did not become ready")


def main():
    binary = os.environ.get("MAILROOM_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mailroom"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/mailroom")
    print(f"{TICKETS} tickets, {ROUNDS} sequential requests per line, one keep-alive connection")
    for backend in ["sqlite", "postgres"]:
        bench(backend, binary)


if __name__ == "__main__":
    main()
