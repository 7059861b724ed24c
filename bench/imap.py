#!/usr/bin/env python3
"""IMAP benchmarks against a throwaway Dovecot on loopback (issue #3).

1. Bulk: N messages (default 1,000 and 10,000) already waiting in the mailbox;
   time from `mailroom run` start until every one is committed and marked
   seen, over implicit TLS verified against the test CA. Next to it, the
   ceiling on the same server and messages: a plain imaplib client's
   connect, login, bulk `FETCH 1:* (BODY.PEEK[])` and one `STORE`, over the
   same TLS; the ratio is mailroom's rate over the ceiling's.
2. IDLE latency: 200 messages appended one at a time while mailroom idles;
   latency = commit time (messages.received_at) - time the APPEND completed.

3. Big: one 49 MiB message (a 36 MiB attachment in base64) over IMAP; the
   peak RSS of `mailroom run` until it is committed (target: under 4x).

Run: bench/imap.py [N ...]   (needs dovecot-imapd; builds the release binary)
     bench/imap.py big        (only the big message)

To compare binaries in one run (same machine, same moment), name them:
  MAILROOM_BENCH_BINS="old=/path/to/old/mailroom,new=target/release/mailroom" \
  MAILROOM_BENCH_ROUNDS=3 bench/imap.py 1000 10000
Each round runs every binary once per size, alternating.
"""
import imaplib
import json
import os
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERTS = os.path.join(ROOT, "tests", "certs")
BIN = os.path.join(ROOT, "target", "release", "mailroom")
GEN = os.path.join(ROOT, "target", "release", "examples", "gen_mail")


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Dovecot:
    def __init__(self, work, users=("alice",), sessions=None):
        """A throwaway Dovecot for `users` (password "secret"). `sessions`:
        room for that many TLS sessions at once (each takes an imap process
        and an imap-login proxy; the default limit of 100 resets the 101st),
        with process titles that say which session is in IDLE."""
        self.dir = os.path.join(work, "dovecot")
        os.makedirs(os.path.join(self.dir, "mail"))
        os.chmod(work, 0o755)
        os.chmod(self.dir, 0o755)
        os.chmod(os.path.join(self.dir, "mail"), 0o777)
        self.imap, self.imaps = free_port(), free_port()
        with open(os.path.join(self.dir, "users"), "w") as f:
            f.writelines(f"{u}:{{PLAIN}}secret\n" for u in users)
        os.chmod(os.path.join(self.dir, "users"), 0o644)
        d = self.dir
        self.instance = f"mr-bench-{os.getpid()}"
        limits = ""
        if sessions:
            procs = max(300, 3 * sessions + 50)
            limits = f"""verbose_proctitle = yes
default_process_limit = {procs}
default_client_limit = {max(1000, 4 * sessions)}
service imap {{
  process_limit = {procs}
}}
"""
        conf = f"""base_dir = {d}/run
state_dir = {d}/state
instance_name = {self.instance}
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = yes
ssl_cert = <{CERTS}/server.pem
ssl_key = <{CERTS}/server.key
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
{limits}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%n
}}
service imap-login {{
  {f"process_limit = {max(300, 3 * sessions + 50)}" if sessions else ""}
  inet_listener imap {{
    port = {self.imap}
  }}
  inet_listener imaps {{
    port = {self.imaps}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.conf], start_new_session=True)
        for _ in range(200):
            try:
                imaplib.IMAP4("127.0.0.1", self.imap).logout()
                return
            except OSError:
                time.sleep(0.02)
        raise SystemExit("dovecot did not start")

    def seed(self, corpus):
        """Drops the corpus straight into the user's Maildir (as delivery would)."""
        maildir = os.path.join(self.dir, "mail", "alice", "Maildir")
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(maildir, sub), exist_ok=True)
        for i, name in enumerate(sorted(os.listdir(corpus))):
            shutil.copy(os.path.join(corpus, name), os.path.join(maildir, "new", f"{1700000000 + i}.{i}.bench"))
        subprocess.run(["chown", "-R", "nobody:nogroup", os.path.join(self.dir, "mail")], check=True)
        # Index once so the measurement is mailroom's, not Dovecot's first scan.
        m = imaplib.IMAP4("127.0.0.1", self.imap)
        m.login("alice", "secret")
        m.select("INBOX")
        m.logout()

    def stop(self):
        os.killpg(self.proc.pid, 9)
        self.proc.wait()


def mailroom_config(work, dovecot, db):
    path = os.path.join(work, "mailroom.toml")
    with open(os.path.join(ROOT, "config", "mailroom.toml")) as f:
        text = f.read()
    text = text.replace('url = "sqlite://data/mailroom.db"', f'url = "sqlite://{db}"')
    text = text.replace('path = "spool"', f'path = "{work}/spool"')
    text += f"""
[channels.inbox]
kind = "imap"
team = "support"
pipeline = "support"
host = "localhost"
port = {dovecot.imaps}
tls = "implicit"
ca_file = "{CERTS}/ca.pem"
username = "alice"
password = "secret"
fetch_batch = 500
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def status(config):
    out = subprocess.run([BIN, "--config", config, "status", "--json"], capture_output=True, text=True)
    try:
        data = json.loads(out.stdout)
        # Newer binaries put the channels under "channels".
        return data.get("channels", data)["inbox"]["state"]
    except (ValueError, KeyError):
        return {}


def committed_last_uid(db_path):
    """The mailbox's last acknowledged UID, read from the database itself:
    cheaper than starting `mailroom status` (which would compete for the
    two cores) and fine-grained enough to poll every 10 ms."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        row = db.execute("select state from channels where key = 'inbox'").fetchone()
        db.close()
        return json.loads(row[0]).get("last_uid", 0) if row and row[0] else 0
    except (sqlite3.Error, ValueError):
        return 0


def watch_exists(port, count, announced):
    """Records, for message number N, when '* N EXISTS' reached an idling client."""
    import socket
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
    while not f.readline().startswith(b"b "):
        pass
    s.sendall(b"c IDLE\r\n")
    f.readline()
    s.settimeout(30)
    try:
        while len(announced) < count:
            line = f.readline()
            if not line:
                break
            parts = line.split()
            if len(parts) == 3 and parts[2] == b"EXISTS":
                now = time.time() * 1000
                for n in range(1, int(parts[1]) + 1):
                    announced.setdefault(n, now)
    except OSError:
        pass
    s.close()


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def ceiling(dovecot):
    """A plain client's bulk fetch and flag, timed from connect; the flags
    are put back (untimed) so mailroom then sees the mailbox unchanged."""
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
    start = time.monotonic()
    m = imaplib.IMAP4_SSL("localhost", dovecot.imaps, ssl_context=ctx)
    m.login("alice", "secret")
    m.select("INBOX")
    _, data = m.fetch("1:*", "(BODY.PEEK[])")
    m.store("1:*", "+FLAGS.SILENT", "(\\Seen)")
    elapsed = time.monotonic() - start
    fetched = sum(1 for d in data if isinstance(d, tuple))
    m.store("1:*", "-FLAGS.SILENT", "(\\Seen)")
    m.logout()
    return fetched / elapsed


def bulk(n, label="mailroom", BIN=BIN):
    work = tempfile.mkdtemp(prefix="mailroom-bench-")
    try:
        dovecot = Dovecot(work)
        subprocess.run([GEN, str(n), os.path.join(work, "corpus")], check=True, stderr=subprocess.DEVNULL)
        dovecot.seed(os.path.join(work, "corpus"))
        plain = ceiling(dovecot)
        config = mailroom_config(work, dovecot, os.path.join(work, "bench.db"))
        subprocess.run([BIN, "--config", config, "migrate"], check=True, capture_output=True)
        env = dict(os.environ, MAILROOM_LOG="warn")
        start = time.monotonic()
        daemon = subprocess.Popen([BIN, "--config", config, "run"], env=env)
        while committed_last_uid(os.path.join(work, "bench.db")) < n:
            time.sleep(0.01)
            if daemon.poll() is not None:
                raise SystemExit("mailroom exited")
        elapsed = time.monotonic() - start
        rss = peak_rss_mib(daemon.pid)
        daemon.terminate()
        daemon.wait()
        db = sqlite3.connect(os.path.join(work, "bench.db"))
        stored = db.execute("select count(*) from messages").fetchone()[0]
        rate = n / elapsed
        print(f"bulk {label:>8} {n:6d} messages over TLS  {elapsed:6.2f} s  {rate:7.0f} msg/s  "
              f"ceiling (imaplib) {plain:7.0f} msg/s  ratio {rate / plain:4.2f}  "
              f"peak RSS {rss} MiB  stored {stored}", flush=True)
        dovecot.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def idle_latency(count=200, label="mailroom", BIN=BIN):
    work = tempfile.mkdtemp(prefix="mailroom-bench-")
    try:
        dovecot = Dovecot(work)
        config = mailroom_config(work, dovecot, os.path.join(work, "bench.db"))
        # mailroom's own log says when its IDLE woke and when the batch it
        # then took was committed: its own share, whatever the server's.
        env = dict(os.environ, MAILROOM_LOG="warn,mailroom::channel::imap=debug", NO_COLOR="1")
        log_path = os.path.join(work, "mailroom.log")
        daemon = subprocess.Popen([BIN, "--config", config, "run"], env=env, stderr=open(log_path, "w"))
        while not status(config).get("connected"):
            time.sleep(0.05)
        time.sleep(0.3)
        # A bare IDLE client beside mailroom records when Dovecot announces
        # each message, separating the server's notify delay from ours.
        announced = {}
        watcher = threading.Thread(target=watch_exists, args=(dovecot.imap, count, announced), daemon=True)
        watcher.start()
        time.sleep(0.3)
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
        m = imaplib.IMAP4_SSL("localhost", dovecot.imaps, ssl_context=ctx)
        m.login("alice", "secret")
        appended = {}
        for i in range(count):
            msg = (f"From: idle{i % 20}@c.test\r\nTo: support@example.com\r\nSubject: idle {i}\r\n"
                   f"Message-ID: <idle{i}@c.test>\r\n\r\nlatency probe {i}\r\n").encode()
            m.append("INBOX", None, None, msg)
            appended[f"idle{i}@c.test"] = time.time() * 1000
            time.sleep(0.05)
        m.logout()
        db_path = os.path.join(work, "bench.db")
        deadline = time.time() + 30
        while time.time() < deadline:
            db = sqlite3.connect(db_path)
            rows = db.execute("select message_id, received_at from messages where message_id like 'idle%'").fetchall()
            db.close()
            if len(rows) == count:
                break
            time.sleep(0.1)
        daemon.terminate()
        daemon.wait()
        watcher.join(timeout=5)
        def pct(values):
            values = sorted(values)
            return statistics.median(values), values[max(0, int(len(values) * 0.99) - 1)], values[-1]
        p50, p99, worst = pct([received - appended[mid] for mid, received in rows])
        print(f"idle {label:>8} {len(rows)} appends  append→ticket   p50 {p50:.0f} ms  p99 {p99:.0f} ms  max {worst:.0f} ms")
        index = {f"idle{i}@c.test": i + 1 for i in range(count)}
        server = [announced[index[mid]] - appended[mid] for mid, _ in rows if index[mid] in announced]
        ours = [received - announced[index[mid]] for mid, received in rows if index[mid] in announced]
        if server:
            p50, p99, worst = pct(server)
            print(f"          Dovecot append→EXISTS (bare IDLE client) p50 {p50:.0f} ms  p99 {p99:.0f} ms  max {worst:.0f} ms")
            p50, p99, worst = pct(ours)
            print(f"          mailroom EXISTS→committed ticket          p50 {p50:.0f} ms  p99 {p99:.0f} ms  max {worst:.0f} ms")
        own = own_share(log_path)
        if own:
            p50, p99, worst = pct(own)
            print(f"          mailroom's own IDLE woke→committed ({len(own)} wakes) p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {worst:.1f} ms")
        dovecot.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def own_share(log_path):
    """For each wake-up that led to a commit: ms from mailroom's `IDLE woke.`
    (its session saw the EXISTS) to the batch's `Committed.`."""
    import re
    from datetime import datetime
    stamp = re.compile(r"^\x1b?\[?[0-9;]*m?(\d{4}-\d\d-\d\dT[\d:.]+)Z")
    woke, shares = None, []
    with open(log_path, errors="replace") as f:
        for line in f:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            m = stamp.match(line)
            if not m:
                continue
            at = datetime.fromisoformat(m.group(1)[:26]).timestamp() * 1000
            if "IDLE woke." in line:
                woke = at
            elif "Committed." in line and woke is not None:
                shares.append(at - woke)
                woke = None
    return shares


def binaries():
    spec = os.environ.get("MAILROOM_BENCH_BINS")
    if not spec:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mailroom", "--example", "gen_mail"],
                       cwd=ROOT, check=True)
        return [("mailroom", BIN)]
    return [tuple(item.split("=", 1)) for item in spec.replace(",", " ").split()]


def big_message(label="mailroom", BIN=BIN):
    import base64
    import random
    work = tempfile.mkdtemp(prefix="mailroom-bench-")
    try:
        dovecot = Dovecot(work)
        corpus = os.path.join(work, "corpus")
        os.makedirs(corpus)
        mib = 1024 * 1024
        with open(os.path.join(corpus, "big.eml"), "wb") as f:
            f.write(b"From: a@b.test\r\nTo: support@example.com\r\nSubject: report\r\n"
                    b"Message-ID: <big@b.test>\r\nMIME-Version: 1.0\r\n"
                    b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                    b"Content-Type: text/plain\r\n\r\nThe report is attached.\r\n--B\r\n"
                    b"Content-Type: application/octet-stream\r\n"
                    b"Content-Disposition: attachment; filename=report.bin\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n")
            f.write(base64.encodebytes(random.Random(7).randbytes(36 * mib)).replace(b"\n", b"\r\n"))
            f.write(b"--B--\r\n")
        size = os.path.getsize(os.path.join(corpus, "big.eml")) / mib
        dovecot.seed(corpus)
        db = os.path.join(work, "bench.db")
        config = mailroom_config(work, dovecot, db)
        subprocess.run([BIN, "--config", config, "migrate"], check=True, capture_output=True)
        daemon = subprocess.Popen([BIN, "--config", config, "run"], env=dict(os.environ, MAILROOM_LOG="warn"))
        deadline = time.time() + 120
        while committed_last_uid(db) < 1 and time.time() < deadline:
            time.sleep(0.05)
        rss = peak_rss_mib(daemon.pid)
        daemon.terminate()
        daemon.wait()
        print(f"big  {label:>8} one {size:.1f} MiB message over TLS  committed {committed_last_uid(db) >= 1}  "
              f"peak RSS {rss} MiB ({rss / size:.1f}x)", flush=True)
        dovecot.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    bins = binaries()
    if sys.argv[1:] == ["big"]:
        for label, path in bins:
            big_message(label, path)
        return
    rounds = int(os.environ.get("MAILROOM_BENCH_ROUNDS", "1"))
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    for _ in range(rounds):
        for n in sizes:
            for label, path in bins:
                bulk(n, label, path)
    for label, path in bins:
        idle_latency(label=label, BIN=path)


if __name__ == "__main__":
    main()
