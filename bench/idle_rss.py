#!/usr/bin/env python3
"""Memory of one `mailroom run` holding many idle IMAP mailboxes (issue #15).

N mailboxes (default 100) on a throwaway Dovecot 2.3 on loopback: users
u000..u(N-1), password "secret", each INBOX seeded with 5 small messages so
every mailbox does a real first sync before it goes idle. One mailroom
process gets N `kind = "imap"` channels (implicit TLS, verified against the
test CA in tests/certs, IDLE on, the default). Once every channel's state in
the database says connected + IDLE with all 5 messages committed, Dovecot
shows every session in IDLE (verbose_proctitle) and all N*5 messages are
stored, it waits 10 s to settle, then samples /proc/PID/status for 10 s:

  RSS   median of the VmRSS samples (resident now)
  peak  VmHWM (the high-water mark since start, the first sync included)
  anon  median RssAnon: the process's own heap and stacks; the rest of RSS
        is mapped file pages (mostly the binary's code, shared)

It also counts the established TCP connections from the mailroom process to
the imaps port (its socket fds matched against /proc/net/tcp{,6}), and then
proves the sessions are live: one message APPENDed to a random user's INBOX
must be committed within 10 s. The target in issue #15 is under 64 MiB RSS
at 100 mailboxes.

Dovecot runs one imap process per session and, with TLS, one imap-login
proxy per session as well; its default_process_limit of 100 would reset the
101st connection, so the instance here raises the process and client limits.

Run: bench/idle_rss.py [N_MAILBOXES ...]   (needs dovecot-imapd; builds the
     release binary unless MAILROOM_BENCH_BINS is set)

To compare binaries in one run, name them:
  MAILROOM_BENCH_BINS="old=/path/to/old/mailroom,new=target/release/mailroom" \
  bench/idle_rss.py 10 100
MAILROOM_BENCH_ROUNDS=3 repeats every size for every binary, alternating.
"""
import importlib.util
import imaplib
import json
import os
import random
import re
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CERTS = os.path.join(ROOT, "tests", "certs")
BIN = os.path.join(ROOT, "target", "release", "mailroom")
PER_MAILBOX = 5          # messages seeded in each INBOX
READY_TIMEOUT = 180      # s for every mailbox to sync and go idle
SETTLE = 10              # s after that before sampling
SAMPLES = 10             # one per second


def user(i):
    return f"u{i:03d}"


_spec = importlib.util.spec_from_file_location("imap_bench", os.path.join(ROOT, "bench", "imap.py"))
imap_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(imap_bench)


class Dovecot(imap_bench.Dovecot):
    """bench/imap.py's throwaway Dovecot, with one user per mailbox and
    room for them all to idle at once."""

    def __init__(self, work, n):
        super().__init__(work, users=[user(i) for i in range(n)], sessions=n)

    def seed(self, n):
        """PER_MAILBOX small messages in each user's Maildir (as delivery
        would put them), then one login per user so Dovecot has indexed them."""
        for i in range(n):
            maildir = os.path.join(self.dir, "mail", user(i), "Maildir")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(maildir, sub), exist_ok=True)
            for k in range(PER_MAILBOX):
                msg = (f"From: Customer {i}-{k} <c{i}x{k}@customer.test>\r\n"
                       f"To: support@example.com\r\n"
                       f"Subject: question {k} for {user(i)}\r\n"
                       f"Date: Tue, 14 Nov 2023 10:0{k}:00 +0000\r\n"
                       f"Message-ID: <seed-{user(i)}-{k}@customer.test>\r\n"
                       f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
                       f"Hello, this is message {k} in {user(i)}'s mailbox.\r\n")
                with open(os.path.join(maildir, "new", f"{1700000000 + k}.{i}_{k}.bench"), "w") as f:
                    f.write(msg)
        subprocess.run(["chown", "-R", "nobody:nogroup", os.path.join(self.dir, "mail")], check=True)
        for i in range(n):
            m = imaplib.IMAP4("127.0.0.1", self.imap)
            m.login(user(i), "secret")
            m.select("INBOX")
            m.logout()

    def idling(self):
        """This instance's imap processes whose title (verbose_proctitle)
        says IDLE: "dovecot-INSTANCE/imap [u000 127.0.0.1 IDLE]"."""
        prefix = f"dovecot-{self.instance}/imap [".encode()
        count = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().replace(b"\0", b" ")
            except OSError:
                continue
            if title.startswith(prefix) and b" IDLE]" in title:
                count += 1
        return count

    def log_problems(self):
        try:
            with open(os.path.join(self.dir, "dovecot.log"), errors="replace") as f:
                return [l.rstrip() for l in f if re.search(r"(Error|Fatal|Warning|Panic):", l)]
        except OSError:
            return []



def mailroom_config(work, dovecot, db, n):
    path = os.path.join(work, "mailroom.toml")
    with open(os.path.join(ROOT, "config", "mailroom.toml")) as f:
        text = f.read()
    text = text.replace('url = "sqlite://data/mailroom.db"', f'url = "sqlite://{db}"')
    text = text.replace('path = "spool"', f'path = "{work}/spool"')
    for i in range(n):
        text += f"""
[channels.mb{i:03d}]
kind = "imap"
team = "support"
pipeline = "support"
host = "localhost"
port = {dovecot.imaps}
tls = "implicit"
ca_file = "{CERTS}/ca.pem"
username = "{user(i)}"
password = "secret"
idle = true
"""
    with open(path, "w") as f:
        f.write(text)
    return path


def channel_states(db_path):
    db = sqlite3.connect(db_path, timeout=5)
    try:
        rows = db.execute("select key, state from channels where kind = 'imap'").fetchall()
        stored = db.execute("select count(*) from messages").fetchone()[0]
    finally:
        db.close()
    states = {}
    for key, state in rows:
        try:
            states[key] = json.loads(state)
        except ValueError:
            states[key] = {}
    return states, stored


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.split()[0] if value.split() else ""
    return out


def sessions(pid, port):
    """Established TCP connections from pid to port (its fds vs /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                    if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                        count += 1
        except OSError:
            pass
    return count


def mib(kib):
    return int(kib) / 1024


def run(n, label, binary):
    work = tempfile.mkdtemp(prefix="mailroom-idle-rss-")
    dovecot = daemon = None
    try:
        dovecot = Dovecot(work, n)
        dovecot.seed(n)
        db_path = os.path.join(work, "bench.db")
        config = mailroom_config(work, dovecot, db_path, n)
        subprocess.run([binary, "--config", config, "migrate"], check=True, capture_output=True)
        env = dict(os.environ, MAILROOM_LOG=os.environ.get("BENCH_LOG", "warn"))
        err_path = os.path.join(work, "mailroom.stderr")
        err = open(err_path, "w")
        start = time.monotonic()
        daemon = subprocess.Popen([binary, "--config", config, "run"], env=env,
                                  stdout=err, stderr=subprocess.STDOUT)
        want = n * PER_MAILBOX
        ready = None
        while time.monotonic() - start < READY_TIMEOUT:
            if daemon.poll() is not None:
                break
            try:
                states, stored = channel_states(db_path)
            except sqlite3.Error:
                time.sleep(0.5)
                continue
            up = [k for k, s in states.items()
                  if s.get("connected") and s.get("idle") and s.get("last_uid", 0) >= PER_MAILBOX]
            if len(up) == n and stored >= want and dovecot.idling() >= n:
                ready = time.monotonic() - start
                break
            time.sleep(0.5)
        if ready is None:
            states, stored = channel_states(db_path)
            up = sum(1 for s in states.values() if s.get("connected") and s.get("idle")
                     and s.get("last_uid", 0) >= PER_MAILBOX)
            errors = sorted({s.get("last_error") for s in states.values() if s.get("last_error")})
            print(f"idle_rss {label:>6} {n:4d} mailboxes NOT READY after {time.monotonic() - start:.0f} s: "
                  f"exit code {daemon.poll()}  mailboxes connected+idle+synced {up}/{n}  "
                  f"messages {stored}/{want}  Dovecot IDLE sessions {dovecot.idling()}  "
                  f"last_error {errors[:3]}", flush=True)
            report_logs(err_path, dovecot)
            return None
        time.sleep(SETTLE)
        rss, anon, peak = [], [], 0
        for _ in range(SAMPLES):
            status = proc_status(daemon.pid)
            rss.append(int(status["VmRSS"]))
            anon.append(int(status.get("RssAnon", 0)))
            # The kernel's high-water mark can lag a sample by a page or
            # two (per-CPU counters), so the peak is the larger of both.
            peak = max(peak, int(status["VmHWM"]), rss[-1])
            time.sleep(1)
        status = proc_status(daemon.pid)
        peak = max(peak, int(status["VmHWM"]))
        threads = status.get("Threads", "?")
        held = sessions(daemon.pid, dovecot.imaps)
        idle_now = dovecot.idling()
        _, stored = channel_states(db_path)

        # Liveness: a new message in one random mailbox is committed.
        who = random.randrange(n)
        ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "ca.pem"))
        m = imaplib.IMAP4_SSL("localhost", dovecot.imaps, ssl_context=ctx)
        m.login(user(who), "secret")
        m.append("INBOX", None, None,
                 (f"From: probe@customer.test\r\nTo: support@example.com\r\nSubject: probe\r\n"
                  f"Message-ID: <probe-{user(who)}@customer.test>\r\n\r\nare you awake?\r\n").encode())
        appended = time.monotonic()
        m.logout()
        live = None
        while time.monotonic() - appended < 10:
            db = sqlite3.connect(db_path, timeout=5)
            got = db.execute("select count(*) from messages where message_id like 'probe-%'").fetchone()[0]
            db.close()
            if got:
                live = time.monotonic() - appended
                break
            time.sleep(0.05)
        alive = daemon.poll() is None
        med = statistics.median(rss)
        print(f"idle_rss {label:>6} {n:4d} mailboxes idle  RSS {mib(med):5.1f} MiB "
              f"(median of {len(rss)} samples, {mib(min(rss)):.1f}-{mib(max(rss)):.1f})  "
              f"peak {mib(peak):5.1f} MiB  anon {mib(statistics.median(anon)):5.1f} MiB  sessions {held}  Dovecot IDLE {idle_now}  "
              f"messages {stored}/{want}  threads {threads}  ready in {ready:.1f} s  "
              f"probe {f'{user(who)} stored in {live * 1000:.0f} ms' if live is not None else f'{user(who)} NOT stored in 10 s'}"
              f"{'' if alive else '  MAILROOM EXITED'}", flush=True)
        report_logs(err_path, dovecot)
        return med, peak
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if dovecot is not None:
            dovecot.stop()
        shutil.rmtree(work, ignore_errors=True)


def report_logs(err_path, dovecot):
    """mailroom's stderr (at warn, anything is worth seeing) and Dovecot's problems."""
    with open(err_path, errors="replace") as f:
        lines = [l.rstrip() for l in f if l.strip()]
    for line in lines[:20]:
        print(f"    mailroom: {line}")
    if len(lines) > 20:
        print(f"    mailroom: … {len(lines) - 20} more lines")
    problems = dovecot.log_problems()
    for line in problems[:10]:
        print(f"    dovecot: {line}")
    if len(problems) > 10:
        print(f"    dovecot: … {len(problems) - 10} more lines")


def binaries():
    spec = os.environ.get("MAILROOM_BENCH_BINS")
    if not spec:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mailroom"], cwd=ROOT, check=True)
        return [("mailroom", BIN)]
    return [tuple(item.split("=", 1)) for item in spec.replace(",", " ").split()]


def main():
    bins = binaries()
    rounds = int(os.environ.get("MAILROOM_BENCH_ROUNDS", "1"))
    sizes = [int(a) for a in sys.argv[1:]] or [100]
    results = {}
    for _ in range(rounds):
        for n in sizes:
            for label, path in bins:
                got = run(n, label, path)
                if got:
                    results.setdefault((label, n), []).append(got[0])
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for label, _ in bins:
            if (label, lo) in results and (label, hi) in results:
                a = statistics.median(results[(label, lo)])
                b = statistics.median(results[(label, hi)])
                print(f"idle_rss {label:>6} per mailbox (RSS({hi}) - RSS({lo})) / {hi - lo}: "
                      f"{(b - a) / (hi - lo):.0f} KiB")


if __name__ == "__main__":
    main()
