//! The `mailroom` binary as ops and MTAs use it: exit codes, backfill, read-outs,
//! quarantine commands and the daemon with its spool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A working directory with the shipped config, its own SQLite file and spool.
struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("config")).unwrap();
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailroom.toml"),
            dir.path().join("config/mailroom.toml"),
        )
        .unwrap();
        Workdir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailroom"));
        cmd.args(args)
            .current_dir(self.path())
            .env_remove("MAILROOM_CONFIG")
            .env_remove("MAILROOM_DATABASE_URL");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn pipe(&self, args: &[&str], envs: &[(&str, &str)], input: &[u8]) -> Output {
        let mut cmd = self.cmd(args);
        cmd.envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `mailroom run` in the background, output discarded.
    fn daemon(&self) -> std::process::Child {
        self.cmd(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

fn sigterm(daemon: &std::process::Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// SIGTERM, and the daemon must drain and exit 0.
fn stop_gracefully(daemon: &mut std::process::Child) {
    sigterm(daemon);
    let status = daemon.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn mta_pipe_exit_codes_tell_the_mta_what_happened() {
    let w = Workdir::new();
    let message = mail("ann@c.test", "pipe1@c.test", "Pipe", "", "hello");

    let first = w.pipe(&["ingest"], &[], &message);
    assert_eq!(
        code(&first),
        0,
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let again = w.pipe(&["ingest"], &[], &message);
    assert_eq!(
        code(&again),
        0,
        "a re-delivery is accepted (and changes nothing)"
    );
    let garbage = w.pipe(&["ingest"], &[], b"this is not an email\n");
    assert_eq!(code(&garbage), 65);
    assert!(String::from_utf8_lossy(&garbage.stderr).contains("unusable message"));

    let down = w.pipe(
        &["ingest"],
        &[
            (
                "MAILROOM_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/nowhere",
            ),
            ("MAILROOM_DATABASE__CONNECT_TIMEOUT_SECS", "1"),
        ],
        &message,
    );
    assert_eq!(
        code(&down),
        75,
        "database down must be a temporary failure: {}",
        String::from_utf8_lossy(&down.stderr)
    );

    let tickets = w.json(&["ticket", "list", "--json"]);
    assert_eq!(tickets.as_array().unwrap().len(), 1);
    assert_eq!(tickets[0]["message_count"], 1);
}

#[tokio::test]
async fn database_url_comes_from_the_environment() {
    let db = TestDb::new(Backend::Postgres).await;
    let w = Workdir::new();
    let url = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let w2 = Workdir { dir: w.dir };
        let out = w2.pipe(
            &["ingest"],
            &[("MAILROOM_DATABASE_URL", &url)],
            &mail("ann@c.test", "env1@c.test", "Env", "", "x"),
        );
        (out, w2)
    })
    .await
    .unwrap();
    assert_eq!(
        code(&out.0),
        0,
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    let store = mailroom::store::Store::connect_url(&db.url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        store.counts().await.unwrap().tickets,
        1,
        "the message went to PostgreSQL"
    );
    assert!(
        !out.1.path().join("data/mailroom.db").exists(),
        "and not to the SQLite default"
    );
    store.close().await;
}

fn write_backfill_sources(root: &Path) -> Vec<PathBuf> {
    let emls = root.join("emls");
    std::fs::create_dir_all(&emls).unwrap();
    for i in 0..3 {
        std::fs::write(
            emls.join(format!("{i}.eml")),
            mail(
                &format!("e{i}@c.test"),
                &format!("eml{i}@c.test"),
                "From eml",
                "",
                "x",
            ),
        )
        .unwrap();
    }
    std::fs::write(emls.join("notes.json"), "{}").unwrap(); // not mail: skipped
    let mut mbox = Vec::new();
    for i in 0..3 {
        mbox.extend_from_slice(format!("From m{i}@c.test Thu Nov 26 10:00:00 2026\n").as_bytes());
        let body = if i == 0 {
            "Hello,\nFrom the start, a body line that mbox escapes\n".to_string()
        } else {
            "y\n".into()
        };
        let irt = if i > 0 {
            "In-Reply-To: <mbox0@c.test>\n".to_string()
        } else {
            String::new()
        };
        mbox.extend_from_slice(
            format!(
                "From: m0@c.test\nSubject: mbox thread\nMessage-ID: <mbox{i}@c.test>\n{irt}\n{}\n",
                body.replace("\nFrom ", "\n>From ")
            )
            .as_bytes(),
        );
    }
    let mbox_path = root.join("archive.mbox");
    std::fs::write(&mbox_path, mbox).unwrap();
    let maildir = root.join("Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(
        maildir.join("cur/1.host:2,S"),
        mail("md@c.test", "md1@c.test", "Maildir", "", "x"),
    )
    .unwrap();
    std::fs::write(
        maildir.join("new/2.host"),
        mail(
            "md@c.test",
            "md2@c.test",
            "Re: Maildir",
            "References: <md1@c.test>\r\n",
            "y",
        ),
    )
    .unwrap();
    vec![emls, mbox_path, maildir]
}

#[test]
fn backfill_from_eml_mbox_and_maildir_reports_a_summary_and_is_idempotent() {
    let w = Workdir::new();
    let sources = write_backfill_sources(w.path());
    let mut args = vec!["ingest", "--json"];
    let paths: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));

    let first = w.run(&args);
    assert_eq!(
        code(&first),
        0,
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["created"], 3 + 1 + 1, "{summary}");
    assert_eq!(summary["appended"], 2 + 1, "{summary}");
    assert_eq!(summary["failed"], 0);

    let second: serde_json::Value = serde_json::from_slice(&w.run(&args).stdout).unwrap();
    assert_eq!(second["duplicate"], 8, "{second}");
    assert_eq!(second["created"], 0);

    // Export: one JSON object per ticket, messages in order.
    let export = w.run(&["export", "--jsonl"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(export.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let mbox_ticket = lines
        .iter()
        .find(|t| t["subject"] == "mbox thread")
        .unwrap();
    let ids: Vec<&str> = mbox_ticket["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mbox0@c.test", "mbox1@c.test", "mbox2@c.test"]);
    assert!(mbox_ticket["messages"][0]["body_text"]
        .as_str()
        .unwrap()
        .contains("From the start"));
    for key in ["id", "number", "status", "team", "contacts"] {
        assert!(mbox_ticket.get(key).is_some(), "export lacks {key}");
    }
    let shown = w.json(&[
        "ticket",
        "show",
        &mbox_ticket["number"].to_string(),
        "--json",
    ]);
    assert_eq!(shown["messages"].as_array().unwrap().len(), 3);
}

#[test]
fn check_lists_every_problem_with_its_key() {
    let w = Workdir::new();
    let path = w.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[database]
url = "mysql://x"
[pipelines.p]
statuses = [{ name = "open", kind = "open" }]
[teams.t]
addresses = [{ address = "nope" }]
[channels.c]
kind = "pipe"
team = "t"
pipeline = "missing"
"#,
    )
    .unwrap();
    let out = w.run(&["--config", path.to_str().unwrap(), "check"]);
    assert_eq!(code(&out), 78);
    let text = String::from_utf8_lossy(&out.stdout);
    for key in [
        "database.url",
        "pipelines.p.statuses",
        "teams.t.addresses[0].address",
        "channels.c.pipeline",
    ] {
        assert!(text.contains(key), "missing {key} in:\n{text}");
    }
    let ok = w.run(&["check"]);
    assert_eq!(code(&ok), 0, "{}", String::from_utf8_lossy(&ok.stdout));
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn drop_into_spool(root: &Path, name: &str, data: &[u8]) {
    // Maildir delivery: write into tmp/, then rename into new/.
    std::fs::create_dir_all(root.join("spool/tmp")).unwrap();
    std::fs::create_dir_all(root.join("spool/new")).unwrap();
    let tmp = root.join("spool/tmp").join(name);
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(tmp, root.join("spool/new").join(name)).unwrap();
}

#[test]
fn daemon_takes_mail_from_the_spool_and_stops_gracefully() {
    let w = Workdir::new();
    let mut daemon = w
        .cmd(&["run"])
        .env("MAILROOM_INGEST__MAX_MESSAGE_BYTES", "2000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop_into_spool(
        w.path(),
        "1.a",
        &mail("ann@c.test", "sp1@c.test", "Spool", "", "first"),
    );
    drop_into_spool(
        w.path(),
        "2.a",
        &mail(
            "ann@c.test",
            "sp2@c.test",
            "Re: Spool",
            "In-Reply-To: <sp1@c.test>\r\n",
            "second",
        ),
    );
    let big = mail("big@c.test", "big@c.test", "Huge", "", &"x".repeat(5000));
    drop_into_spool(w.path(), "3.a", &big);

    let cur = w.path().join("spool/cur");
    wait_for("three files acknowledged into cur/", || {
        std::fs::read_dir(&cur)
            .map(|d| d.count() == 3)
            .unwrap_or(false)
    });
    assert_eq!(
        std::fs::read_dir(w.path().join("spool/new"))
            .unwrap()
            .count(),
        0
    );
    assert!(cur.join("1.a:2,S").exists());

    let tickets = w.json(&["ticket", "list", "--json"]);
    assert_eq!(tickets.as_array().unwrap().len(), 1);
    assert_eq!(tickets[0]["message_count"], 2);

    // The oversized message is kept in the quarantine, not lost.
    let quarantined = w.json(&["quarantine", "list", "--json"]);
    assert_eq!(quarantined.as_array().unwrap().len(), 1);
    assert!(quarantined[0]["reason"]
        .as_str()
        .unwrap()
        .contains("max_message_bytes"));
    let id = quarantined[0]["id"].to_string();
    let raw = w.run(&["quarantine", "show", &id, "--raw"]);
    assert_eq!(raw.stdout, big);

    stop_gracefully(&mut daemon);

    // With the limit raised, a retry applies it and clears the entry.
    let retry = w.run(&["quarantine", "retry", &id]);
    assert_eq!(
        code(&retry),
        0,
        "{}{}",
        String::from_utf8_lossy(&retry.stdout),
        String::from_utf8_lossy(&retry.stderr)
    );
    assert_eq!(
        w.json(&["quarantine", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        w.json(&["ticket", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Appends an SMTP relay on `port` (and quick retries) to the workdir's config.
fn add_relay(w: &Workdir, port: u16) {
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(w.path().join("config/mailroom.toml"))
        .unwrap();
    write!(
        config,
        "\n[relays.local]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout_secs = 3\n\
         \n[outbox]\nretry_base_ms = 100\nretry_max_ms = 200\npoll_interval_ms = 100\nlease_secs = 4\n"
    )
    .unwrap();
}

/// One HTTP request with an optional bearer token and JSON body: the status
/// and the JSON answer, or None when nothing answers.
fn http_call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut response = match (method, body) {
        ("POST", Some(body)) => {
            let mut request = agent.post(url).header("content-type", "application/json");
            if let Some(auth) = &auth {
                request = request.header("authorization", auth.as_str());
            }
            request.send(body.to_string().as_bytes()).ok()?
        }
        _ => agent.get(url).call().ok()?,
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Some((status, serde_json::from_str(&text).unwrap_or_default()))
}

/// Tickets 1–8 from eight customers (`o{i}@customer.test`), and
/// `reply.txt` to answer them with.
fn eight_tickets_and_a_reply_file(w: &Workdir) {
    for i in 0..8 {
        let customer = mail(
            &format!("c{i}@customer.test"),
            &format!("o{i}@customer.test"),
            &format!("Case {i}"),
            "",
            "help",
        );
        assert_eq!(code(&w.pipe(&["ingest"], &[], &customer)), 0);
    }
    std::fs::write(w.path().join("reply.txt"), "An answer.").unwrap();
}

/// The Message-ID of each message the SMTP sink received.
fn received_ids(sink: &crate::smtp::SmtpSink) -> Vec<String> {
    sink.messages()
        .iter()
        .map(|c| {
            let parsed = mail_parser::MessageParser::default()
                .parse(&c.message)
                .unwrap();
            parsed.message_id().unwrap().to_string()
        })
        .collect()
}

fn outbox(w: &Workdir) -> Vec<serde_json::Value> {
    let out = w.run(&["outbox", "list", "--all", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_reply_queued_before_a_crash_is_sent_once_after_restart() {
    let w = Workdir::new();
    // A relay that accepts connections and never answers: the daemon's
    // send hangs with the reply claimed, and the daemon is killed there.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = black_hole.local_addr().unwrap().port();
    black_hole.set_nonblocking(true).unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (accepted, stopped) = (held.clone(), stop.clone());
    let hole = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            match black_hole.accept() {
                Ok((stream, _)) => accepted.lock().unwrap().push(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    add_relay(&w, port);

    let customer = mail(
        "carol@customer.test",
        "c1@customer.test",
        "Help",
        "",
        "Please help",
    );
    assert_eq!(code(&w.pipe(&["ingest"], &[], &customer)), 0);
    std::fs::write(w.path().join("reply.txt"), "Here is your answer.").unwrap();
    // `mailroom reply` commits the reply; it sends nothing itself.
    let queued = w.run(&[
        "reply",
        "1",
        "--body-file",
        "reply.txt",
        "--as",
        "alice",
        "--json",
    ]);
    assert_eq!(
        code(&queued),
        0,
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    let queued: serde_json::Value = serde_json::from_slice(&queued.stdout).unwrap();
    assert_eq!(outbox(&w)[0]["state"], "queued");

    let mut daemon = w.daemon();
    wait_for("the daemon to connect to the relay", || {
        !held.lock().unwrap().is_empty()
    });
    daemon.kill().unwrap(); // SIGKILL: no chance to release the claim
    daemon.wait().unwrap();
    let rows = outbox(&w);
    assert_eq!(rows[0]["state"], "queued");
    assert_eq!(rows[0]["attempts"], 1, "claimed once, never finished");

    // The relay comes back on the same port; the restarted daemon (a new
    // process, so a new claimant) takes the dead one's claim over when its
    // 4 s lease ends, and sends.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hole.join().unwrap();
    held.lock().unwrap().clear();
    let sink = crate::smtp::SmtpSink::start_on(port, &[]);
    let mut daemon = w.daemon();
    wait_for("the reply to be sent", || outbox(&w)[0]["state"] == "sent");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.count(), 1, "sent exactly once");
    let sent = &sink.messages()[0];
    assert_eq!(sent.rcpt_to, vec!["carol@customer.test"]);
    let text = String::from_utf8_lossy(&sent.message);
    assert!(text.contains(queued["message_id"].as_str().unwrap()));
    let shown = w.run(&["ticket", "show", "1"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("--- outbound support@example.com"),
        "{shown}"
    );
    assert!(shown.contains("[sent: 250"), "{shown}");

    stop_gracefully(&mut daemon);
    // After a clean stop and another start, nothing goes out again.
    let mut daemon = w.daemon();
    std::thread::sleep(Duration::from_millis(1500));
    stop_gracefully(&mut daemon);
    assert_eq!(sink.count(), 1);
}

#[test]
fn check_probes_every_relay() {
    let sink = crate::smtp::SmtpSink::start(&[]);
    let w = Workdir::new();
    add_relay(&w, sink.port);
    let out = w.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 0, "{text}");
    assert!(text.contains("ok: relays.local: 127.0.0.1:"), "{text}");
    assert!(
        text.contains("warning: relays.local.tls"),
        "plaintext is flagged: {text}"
    );

    let closed = crate::smtp::free_port();
    let w = Workdir::new();
    add_relay(&w, closed);
    let out = w.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 75, "{text}");
    assert!(
        text.contains("problem: relays.local: connect to 127.0.0.1:"),
        "{text}"
    );
}

#[test]
fn daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let w = Workdir::new();
    let socket_path = w.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = w
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "300000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // WatchdogSec=0.3 s: pinged at half that.
    let n = socket.recv(&mut buf).expect("a watchdog ping");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1"));
    // Ready means ready: the spool is being watched.
    let cur = w.path().join("spool/cur");
    drop_into_spool(
        w.path(),
        "1.a",
        &mail("ann@c.test", "r1@c.test", "Ready?", "", "yes"),
    );
    wait_for("the message acknowledged", || {
        std::fs::read_dir(&cur)
            .map(|d| d.count() == 1)
            .unwrap_or(false)
    });
    sigterm(&daemon);
    // Watchdog pings may come first.
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1");
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            break;
        }
    }
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn metrics_count_messages_and_show_queue_depths() {
    let w = Workdir::new();
    let port = crate::smtp::free_port();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(w.path().join("config/mailroom.toml"))
        .unwrap();
    write!(config, "\n[metrics]\nbind = \"127.0.0.1:{port}\"\n").unwrap();
    let mut daemon = w.daemon();
    drop_into_spool(
        w.path(),
        "1.a",
        &mail("ann@c.test", "m1@c.test", "Metrics", "", "count me"),
    );
    let cur = w.path().join("spool/cur");
    wait_for("the message acknowledged", || {
        std::fs::read_dir(&cur)
            .map(|d| d.count() == 1)
            .unwrap_or(false)
    });
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let text = agent
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    stop_gracefully(&mut daemon);
    assert!(
        text.contains("mailroom_messages_total{outcome=\"created\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mailroom_outbox_replies{state=\"queued\"} 0"),
        "{text}"
    );
    assert!(text.contains("mailroom_quarantine_messages 0"), "{text}");
}

#[test]
fn reply_takes_its_body_from_stdin_and_names_what_is_wrong() {
    let sink = crate::smtp::SmtpSink::start(&[]);
    let w = Workdir::new();
    add_relay(&w, sink.port);
    let customer = mail("carol@customer.test", "s1@customer.test", "Stdin", "", "hi");
    assert_eq!(code(&w.pipe(&["ingest"], &[], &customer)), 0);
    let out = w.pipe(
        &["reply", "1", "--body-file", "-", "--status", "nope"],
        &[],
        b"Hello from stdin",
    );
    assert_eq!(code(&out), 65);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("status: \"nope\" is not a status"), "{err}");
    let out = w.pipe(
        &["reply", "1", "--body-file", "-", "--json"],
        &[],
        b"Hello from stdin",
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let flushed = w.run(&["outbox", "flush"]);
    assert_eq!(code(&flushed), 0);
    assert!(String::from_utf8_lossy(&flushed.stdout).contains("sent 1"));
    let sent = &sink.messages()[0];
    assert!(String::from_utf8_lossy(&sent.message).contains("Hello from stdin"));
}

#[test]
fn recipients_of_replies_and_inbound_mail_read_back_everywhere() {
    // Both writers (inbound mail, replies) store address lists in one form,
    // and every reader understands it: ticket show, export, the outbox.
    let w = Workdir::new();
    add_relay(&w, crate::smtp::free_port());
    let inbound = "From: Carol <carol@customer.test>\r\nTo: support@example.com, Erin <erin@customer.test>\r\n\
                   Cc: frank@customer.test\r\nSubject: Toner\r\nMessage-ID: <rt1@customer.test>\r\n\r\nOut of toner\r\n";
    let ingested = w.pipe(&["ingest"], &[], inbound.as_bytes());
    assert_eq!(
        code(&ingested),
        0,
        "{}",
        String::from_utf8_lossy(&ingested.stderr)
    );
    let reply = w.pipe(
        &[
            "reply",
            "1",
            "--body-file",
            "-",
            "--cc",
            "Dave <dave@customer.test>",
        ],
        &[],
        b"On its way.",
    );
    assert_eq!(
        code(&reply),
        0,
        "{}",
        String::from_utf8_lossy(&reply.stderr)
    );

    let check = |ticket: &serde_json::Value, source: &str| {
        let messages = ticket["messages"].as_array().unwrap();
        let (first, second) = (&messages[0], &messages[1]);
        assert_eq!(first["direction"], "inbound", "{source}");
        assert_eq!(
            first["to"],
            serde_json::json!(["support@example.com", "erin@customer.test"]),
            "{source}"
        );
        assert_eq!(
            first["cc"],
            serde_json::json!(["frank@customer.test"]),
            "{source}"
        );
        assert_eq!(second["direction"], "outbound", "{source}");
        assert_eq!(
            second["to"],
            serde_json::json!(["carol@customer.test"]),
            "{source}"
        );
        assert_eq!(
            second["cc"],
            serde_json::json!(["dave@customer.test"]),
            "{source}"
        );
    };
    check(&w.json(&["ticket", "show", "1", "--json"]), "ticket show");
    let export = w.run(&["export", "--jsonl"]);
    assert!(export.status.success());
    let line = String::from_utf8_lossy(&export.stdout);
    check(
        &serde_json::from_str(line.lines().next().unwrap()).unwrap(),
        "export",
    );
    let queued = outbox(&w);
    assert_eq!(
        queued[0]["rcpt_to"],
        serde_json::json!(["carol@customer.test", "dave@customer.test"])
    );
}

#[test]
fn logs_are_plain_text_unless_colour_is_asked_for() {
    let w = Workdir::new();
    let message = mail("ann@c.test", "log1@c.test", "Logs", "", "hello");
    // stderr is a pipe here, as under journald or in a file.
    let plain = w.pipe(&["ingest"], &[], &message);
    let text = String::from_utf8_lossy(&plain.stderr);
    assert!(text.contains("Message ingested."), "{text}");
    assert!(!text.contains('\u{1b}'), "no colour codes: {text:?}");
    assert!(!text.contains("Some("), "values, not debug forms: {text}");
    let again = mail("ann@c.test", "log2@c.test", "Logs", "", "hello");
    let coloured = w.pipe(&["ingest"], &[("MAILROOM_LOG__COLOR", "always")], &again);
    assert!(String::from_utf8_lossy(&coloured.stderr).contains('\u{1b}'));
}

#[test]
fn a_reply_from_an_html_file_cannot_smuggle_smtp_commands() {
    let w = Workdir::new();
    let recorder = crate::recorder::Recorder::start();
    add_relay(&w, recorder.port);
    let customer = mail("carol@customer.test", "c1@customer.test", "Help", "", "Hi");
    assert_eq!(code(&w.pipe(&["ingest"], &[], &customer)), 0);
    std::fs::write(
        w.path().join("evil.html"),
        "<p>hello</p>\r\n\n.\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\n\r\nboo\r\n.\r\n",
    )
    .unwrap();
    let queued = w.run(&["reply", "1", "--html-file", "evil.html", "--as", "alice"]);
    assert_eq!(
        code(&queued),
        0,
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    let mut daemon = w.daemon();
    wait_for("the reply to be sent", || outbox(&w)[0]["state"] == "sent");
    stop_gracefully(&mut daemon);
    let sent = recorder.transactions();
    let senders: Vec<&str> = sent.iter().map(|t| t.mail_from.as_str()).collect();
    assert_eq!(
        senders,
        vec!["<support@example.com>"],
        "one transaction, ours"
    );
    assert_eq!(crate::recorder::bare_line_end(&sent[0].data), None);
}

#[test]
fn the_pipe_reads_no_more_than_the_size_limit() {
    let w = Workdir::new();
    let limit = 4096;
    let big = mail(
        "carol@customer.test",
        "big@customer.test",
        "Big",
        "",
        &"x".repeat(1 << 20),
    );
    let mut child = w
        .cmd(&["ingest"])
        .env("MAILROOM_INGEST__MAX_MESSAGE_BYTES", limit.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The MTA's side: mailroom stops reading after the limit, so the rest
    // of the write may meet a closed pipe.
    let written = child.stdin.take().unwrap().write_all(&big);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 65, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("larger than ingest.max_message_bytes (4096 bytes)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(written.is_err(), "the whole 1 MiB was read");
    let small = mail(
        "carol@customer.test",
        "s@customer.test",
        "Small",
        "",
        "fits",
    );
    assert_eq!(
        code(&w.pipe(
            &["ingest"],
            &[("MAILROOM_INGEST__MAX_MESSAGE_BYTES", "4096")],
            &small
        )),
        0
    );
}

#[test]
fn backfill_keeps_odd_framing_and_quarantines_what_it_cannot_read() {
    let w = Workdir::new();
    let dir = w.path().join("odd");
    std::fs::create_dir(&dir).unwrap();
    let write = |name: &str, data: &[u8]| std::fs::write(dir.join(name), data).unwrap();
    // A mail server's wrapper line above a normal header block.
    write(
        "wrapped.eml",
        b"---- Original email message ----\r\nFrom: nora@customer.test\r\nTo: support@example.com\r\nSubject: Wrapped\r\nMessage-ID: <w1@n.test>\r\n\r\nHello\r\n",
    );
    // An old Mac mailer: CR-only line ends, in one file and in an mbox.
    write(
        "mac.eml",
        b"From: olga@customer.test\rTo: support@example.com\rSubject: Mac mail\rMessage-ID: <m1@o.test>\r\rHello from 1999\r",
    );
    write(
        "mac.mbox",
        b"From olga@customer.test Mon Jan  1 00:00:00 2001\rFrom: olga@customer.test\rSubject: First\rMessage-ID: <m2@o.test>\r\rone\r\rFrom olga@customer.test Mon Jan  1 00:00:01 2001\rFrom: olga@customer.test\rSubject: Second\rMessage-ID: <m3@o.test>\r\rtwo\r",
    );
    // Not mail at all: kept in the quarantine, not dropped.
    write("notes.txt", b"just some notes\nwith no headers\n");
    let out = w.run(&["ingest", "--json", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &summary["created"],
            &summary["quarantined"],
            &summary["failed"]
        ),
        (
            &serde_json::json!(4),
            &serde_json::json!(1),
            &serde_json::json!(0)
        ),
        "{summary}"
    );
    let tickets = w.json(&["ticket", "list", "--json"]);
    let number_of = |subject: &str| {
        tickets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["subject"] == subject)
            .unwrap_or_else(|| panic!("no ticket {subject:?} in {tickets}"))["number"]
            .to_string()
    };
    for subject in ["Wrapped", "First", "Second"] {
        number_of(subject);
    }
    let mac = number_of("Mac mail");
    let body = &w.json(&["ticket", "show", &mac, "--json"])["messages"][0]["body_text"];
    assert!(body.as_str().unwrap().contains("Hello from 1999"), "{body}");
    let quarantined = w.json(&["quarantine", "list", "--json"]);
    assert_eq!(quarantined.as_array().unwrap().len(), 1, "{quarantined}");
}

#[test]
fn the_pipe_routes_by_the_envelope_recipient_the_mta_passes() {
    let w = Workdir::new();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(w.path().join("config/mailroom.toml"))
        .unwrap();
    write!(
        config,
        "\n[teams.sales]\naddresses = [{{ address = \"sales@example.com\" }}]\n\
         \n[channels.inbox]\nkind = \"pipe\"\nteam = \"support\"\npipeline = \"support\"\nroute = \"recipient\"\n"
    )
    .unwrap();
    let message = mail(
        "pat@customer.test",
        "r1@p.test",
        "Quote please",
        "",
        "How much?",
    );
    let out = w.pipe(
        &[
            "ingest",
            "--channel",
            "inbox",
            "--recipient",
            "sales@example.com",
        ],
        &[],
        &message,
    );
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let ticket = w.json(&["ticket", "show", "1", "--json"]);
    assert_eq!(ticket["team"], "sales", "{ticket}");
}

#[test]
fn ops_work_tickets_contacts_and_blocks_from_the_command_line() {
    let w = Workdir::new();
    let created = w.json(&[
        "ticket",
        "create",
        "Phone call: router down",
        "--team",
        "support",
        "--pipeline",
        "support",
        "--status",
        "open",
        "--contact",
        "Rita <rita@customer.test>",
        "--property",
        "priority=2",
    ]);
    assert_eq!(created["number"], 1);
    assert_eq!(
        created["contacts"],
        serde_json::json!(["rita@customer.test"])
    );
    assert_eq!(created["properties"]["priority"], 2);
    assert_eq!(created["events"][0]["actor"], "ops");
    let bad = w.run(&["ticket", "status", "1", "no such status"]);
    assert_eq!(code(&bad), 65);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a status"));
    let missing = w.run(&["ticket", "assign", "99", "alice"]);
    assert_eq!(code(&missing), 1);
    assert_eq!(
        w.json(&["ticket", "assign", "1", "alice"])["owner"],
        "alice"
    );
    assert_eq!(
        w.json(&["ticket", "assign", "1", "--none"])["owner"],
        serde_json::Value::Null
    );
    assert_eq!(
        w.json(&["ticket", "status", "1", "closed"])["status"],
        "closed"
    );
    assert_eq!(code(&w.run(&["ticket", "delete", "1"])), 0);
    assert_eq!(
        code(&w.run(&["ticket", "show", "1"])),
        1,
        "deleted tickets are not shown"
    );
    assert_eq!(w.json(&["ticket", "restore", "1"])["number"], 1);

    let blocked = w.json(&["block", "add", "@spam.test", "--reason", "phishing"]);
    assert_eq!(
        (blocked["value"].as_str(), blocked["kind"].as_str()),
        (Some("spam.test"), Some("domain"))
    );
    let spam = mail("win@spam.test", "spam1@spam.test", "Prize", "", "click");
    let out = w.pipe(&["ingest"], &[], &spam);
    assert_eq!(
        code(&out),
        0,
        "kept, so the MTA must not retry: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = w.json(&["quarantine", "list", "--json"]);
    assert!(entries[0]["reason"]
        .as_str()
        .unwrap()
        .contains("blocked sender: win@spam.test"));
    let id = entries[0]["id"].as_i64().unwrap().to_string();
    let retried = w.run(&["quarantine", "retry", &id]);
    assert_eq!(code(&retried), 1, "a plain retry stays blocked");
    let released = w.run(&["quarantine", "release", &id]);
    assert_eq!(
        code(&released),
        0,
        "{}",
        String::from_utf8_lossy(&released.stderr)
    );
    assert!(String::from_utf8_lossy(&released.stdout).contains("created"));
    assert_eq!(w.json(&["block", "list"]).as_array().unwrap().len(), 1);
    assert_eq!(code(&w.run(&["block", "remove", "spam.test"])), 0);
    assert_eq!(code(&w.run(&["block", "remove", "spam.test"])), 1);

    let visitors = w.json(&["contact", "list", "--kind", "visitor", "--q", "spam"]);
    let visitor = visitors["contacts"][0]["id"].as_i64().unwrap();
    let rita = w.json(&[
        "contact",
        "create",
        "rita@customer.test",
        "--name",
        "Rita Ruiz",
    ]);
    assert_eq!(rita["kind"], "contact");
    let rita_id = rita["id"].as_i64().unwrap().to_string();
    let merged = w.json(&["contact", "merge", &visitor.to_string(), "--into", &rita_id]);
    assert_eq!(merged["tickets"].as_array().unwrap().len(), 2);
    let company = w.json(&[
        "contact",
        "company",
        "Customer Ltd",
        "--domain",
        "customer.test",
    ]);
    assert_eq!(company["domains"], serde_json::json!(["customer.test"]));
    assert_eq!(
        w.json(&["contact", "show", &rita_id])["company_id"],
        company["id"]
    );
}

#[test]
fn ticket_show_prints_what_the_customer_added_and_full_shows_all() {
    let w = Workdir::new();
    let mail = b"From: carol@customer.test\r\nTo: support@example.com\r\nSubject: Quoting\r\n\
Message-ID: <quoting@customer.test>\r\n\r\nThe new words.\r\n\r\n\
On Mon, 23 Nov 2026 at 09:00, Support <support@example.com> wrote:\r\n> The old words.\r\n> More old words.\r\n";
    let out = w.pipe(&["ingest"], &[], mail);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = w.run(&["ticket", "show", "1"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("The new words."), "{text}");
    assert!(!text.contains("The old words."), "{text}");
    assert!(
        text.contains("4 more lines of quoted text and signature"),
        "{text}"
    );
    let full = w.run(&["ticket", "show", "1", "--full"]);
    assert!(String::from_utf8_lossy(&full.stdout).contains("> The old words."));
    let export = w.run(&["export", "--jsonl"]);
    let line: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(line["messages"][0]["new_text"], "The new words.");
}

#[test]
fn status_shows_held_automatic_mail_and_agents_mail() {
    let w = Workdir::new();
    let out = w.run(&["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("held=0 held_last_24h=0"), "{text}");
    assert!(text.contains("pending=0 unverified=0"), "{text}");
}

#[test]
fn status_json_has_every_section_and_a_closed_pipe_ends_quietly() {
    let w = Workdir::new();
    let status = w.json(&["status", "--json"]);
    for section in ["channels", "outbox", "automatic_mail", "agent_mail"] {
        assert!(status.get(section).is_some(), "{section} in {status}");
    }
    assert_eq!(status["outbox"]["queued"], 0);
    assert!(status["channels"].get("spool").is_some(), "{status}");
    // A reader that goes away (`| head -c 1`): no panic, no error text.
    let mut child = w
        .cmd(&["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_file_still_being_written_into_the_spool_is_taken_only_once_complete() {
    let w = Workdir::new();
    let mut daemon = w
        .cmd(&["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::fs::create_dir_all(w.path().join("spool/new")).unwrap();
    // Straight into new/ (as `cp` does), in pieces with pauses shorter
    // than the settle time (1 s by default).
    let body: String = (0..40)
        .map(|i| format!("line {i} of a long message\r\n"))
        .collect();
    let message = mail("slow@c.test", "slow@c.test", "Slow", "", &body);
    let path = w.path().join("spool/new/slow.eml");
    let mut file = std::fs::File::create(&path).unwrap();
    for piece in message.chunks(message.len() / 8 + 1) {
        file.write_all(piece).unwrap();
        file.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    drop(file);
    let cur = w.path().join("spool/cur");
    wait_for("the file acknowledged into cur/", || {
        std::fs::read_dir(&cur).is_ok_and(|d| d.count() == 1)
    });
    stop_gracefully(&mut daemon);
    let ticket = w.json(&["ticket", "show", "1", "--json"]);
    let stored = ticket["messages"][0]["body_text"].as_str().unwrap();
    assert!(stored.contains("line 39 of a long message"), "{stored}");
    assert_eq!(
        w.json(&["ticket", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        w.json(&["quarantine", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Live reload as an operator does it: a broken file changes nothing
/// (SIGHUP and `mailroom reload` both refuse it), a new team and spool
/// added to the file take mail after `mailroom reload`, and a spool removed
/// by SIGHUP is no longer read while the rest goes on.
#[test]
fn the_config_reloads_live_and_a_broken_one_changes_nothing() {
    let w = Workdir::new();
    let log = w.path().join("daemon.log");
    let mut daemon = w
        .cmd(&["run"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_has = |needle: &'static str| {
        let log = log.clone();
        move || std::fs::read_to_string(&log).map_or(0, |l| l.matches(needle).count())
    };
    let files_in = |dir: &str| std::fs::read_dir(w.path().join(dir)).map_or(0, |d| d.count());
    drop_into_spool(
        w.path(),
        "1.h",
        &mail("h@c.test", "h1@c.test", "Before", "", "one"),
    );
    wait_for("the first file taken", || files_in("spool/cur") == 1);
    let hup = |daemon: &std::process::Child| {
        let sent = Command::new("kill")
            .args(["-HUP", &daemon.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };

    // A broken file: refused by the command (nothing signalled) and by SIGHUP.
    let config = w.path().join("config/mailroom.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{good}\nhtpp = 1\n")).unwrap();
    let refused = w.run(&["reload"]);
    assert_eq!(code(&refused), 78);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("htpp"));
    hup(&daemon);
    let problems = log_has("the config file has problems");
    wait_for("the broken config named in the log", || problems() == 1);
    assert!(daemon.try_wait().unwrap().is_none(), "still running");
    assert!(std::fs::read_to_string(&log).unwrap().contains("htpp"));
    drop_into_spool(
        w.path(),
        "2.h",
        &mail("h@c.test", "h2@c.test", "After", "", "two"),
    );
    wait_for("the second file taken", || files_in("spool/cur") == 2);
    assert_eq!(log_has("Config reloaded")(), 0, "nothing was applied");

    // Added: a team and its spool, applied by `mailroom reload`.
    let sales = r#"
[teams.sales]
addresses = [{ address = "sales@example.com", default = true }]
[channels.sales]
kind = "maildir"
team = "sales"
pipeline = "support"
path = "sales-spool"
poll_interval_ms = 100
"#;
    std::fs::write(&config, format!("{good}\n{sales}")).unwrap();
    let asked = w.run(&["reload"]);
    assert_eq!(
        code(&asked),
        0,
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    assert!(String::from_utf8_lossy(&asked.stdout).contains(&format!("pid {}", daemon.id())));
    let reloaded = log_has("Config reloaded");
    wait_for("the first reload applied", || reloaded() == 1);
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("channels +sales; teams +sales"));
    let sales_spool = w.path().join("sales-spool");
    for sub in ["tmp", "new"] {
        std::fs::create_dir_all(sales_spool.join(sub)).unwrap();
    }
    std::fs::write(
        sales_spool.join("tmp/3.h"),
        mail("s@c.test", "s3@c.test", "For sales", "", "three"),
    )
    .unwrap();
    std::fs::rename(sales_spool.join("tmp/3.h"), sales_spool.join("new/3.h")).unwrap();
    wait_for("the new spool read", || files_in("sales-spool/cur") == 1);

    // Removed: the first spool, by SIGHUP; the other goes on.
    let without_spool = remove_table(&format!("{good}\n{sales}"), "[channels.spool]");
    std::fs::write(&config, without_spool).unwrap();
    hup(&daemon);
    wait_for("the second reload applied", || reloaded() == 2);
    drop_into_spool(
        w.path(),
        "4.h",
        &mail("h@c.test", "h4@c.test", "Unread", "", "four"),
    );
    std::fs::write(
        sales_spool.join("tmp/5.h"),
        mail("s@c.test", "s5@c.test", "Still read", "", "five"),
    )
    .unwrap();
    std::fs::rename(sales_spool.join("tmp/5.h"), sales_spool.join("new/5.h")).unwrap();
    wait_for("the remaining spool still read", || {
        files_in("sales-spool/cur") == 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(files_in("spool/new"), 1, "the removed spool is left alone");
    stop_gracefully(&mut daemon);

    let tickets = w.json(&["ticket", "list", "--json"]);
    let mut seen: Vec<(String, String)> = tickets
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["subject"].as_str().unwrap().into(),
                t["team"].as_str().unwrap().into(),
            )
        })
        .collect();
    seen.sort();
    let expected = [
        ("After", "support"),
        ("Before", "support"),
        ("For sales", "sales"),
        ("Still read", "sales"),
    ]
    .map(|(s, t)| (s.to_string(), t.to_string()));
    assert_eq!(seen, expected);
}

/// The text without the TOML table that starts at `header` (up to the next table).
fn remove_table(text: &str, header: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            skipping = line.trim() == header;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The spool under repeated SIGKILL while mail keeps arriving (seeded,
/// printed; `MAILROOM_CRASH_SEED` repeats a run): threads, byte-identical
/// duplicates under other file names, a poison file and an oversized one.
/// Afterwards every distinct message is stored exactly once, the poison
/// and the oversized one are in the quarantine once each, and every file
/// was acknowledged.
#[test]
fn the_spool_survives_a_sigkill_loop_without_loss_or_doubles() {
    spool_crash_loop(None);
}

/// The same on PostgreSQL.
#[test]
fn the_spool_survives_a_sigkill_loop_on_postgresql() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::new(Backend::Postgres));
    spool_crash_loop(Some(&db.url));
    drop(runtime);
}

fn spool_crash_loop(database_url: Option<&str>) {
    use rand::Rng;
    let (seed, mut rng) = seeded("MAILROOM_CRASH_SEED", "crash loop");
    let w = Workdir::new();
    if let Some(url) = database_url {
        use_database(&w, url);
    }
    let envs = [
        ("MAILROOM_CHANNELS__SPOOL__SETTLE_MS", "0"),
        ("MAILROOM_INGEST__MAX_MESSAGE_BYTES", "20000"),
        ("MAILROOM_INGEST__BATCH_SIZE", "16"),
    ];
    let start = || {
        w.cmd(&["run"])
            .envs(envs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // 240 messages in 40 conversations, each reply threaded to the first.
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut distinct = std::collections::BTreeSet::new();
    for i in 0..240 {
        let thread = i % 40;
        let id = format!("m{i}@crash.test");
        let headers = match i < 40 {
            true => String::new(),
            false => format!("In-Reply-To: <m{thread}@crash.test>\r\n"),
        };
        let subject = format!("Case {thread}");
        let from = format!("c{thread}@crash.test");
        files.push((
            format!("{i:04}.a"),
            mail(&from, &id, &subject, &headers, &format!("text {i}")),
        ));
        distinct.insert(id);
    }
    // Byte-identical copies under other names, a poison file, a huge one.
    for i in (0..240).step_by(17) {
        let copy = files[i].1.clone();
        files.push((format!("{i:04}.copy"), copy));
    }
    files.push(("poison.a".into(), b"\x00\x01 this is no message".to_vec()));
    files.push((
        "huge.a".into(),
        mail(
            "big@crash.test",
            "big@crash.test",
            "Huge",
            "",
            &"x".repeat(30_000),
        ),
    ));
    let total = files.len();
    let mut pending = files.into_iter();
    let mut kills = 0;
    while kills < 12 {
        let mut daemon = start();
        // More mail arrives while it runs.
        for (name, data) in pending.by_ref().take(rng.gen_range(10..40)) {
            drop_into_spool(w.path(), &name, &data);
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        kills += 1;
    }
    for (name, data) in pending {
        drop_into_spool(w.path(), &name, &data);
    }
    // One last message, so the last run is seen working before it stops.
    let mut daemon = start();
    drop_into_spool(
        w.path(),
        "zzzz.last",
        &mail("last@crash.test", "last@crash.test", "Last", "", "last"),
    );
    distinct.insert("last@crash.test".to_string());
    let (new, cur) = (w.path().join("spool/new"), w.path().join("spool/cur"));
    wait_for("every file acknowledged", || {
        std::fs::read_dir(&new).is_ok_and(|d| d.count() == 0)
            && std::fs::read_dir(&cur).is_ok_and(|d| d.count() == total + 1)
    });
    stop_gracefully(&mut daemon);

    // Every distinct message exactly once, nothing else.
    let stored = exported_inbound_ids(&w.run(&["export", "--jsonl"]).stdout);
    assert_each_stored_once(&stored, &distinct, &format!("seed {seed}"));
    let tickets = w.json(&["ticket", "list", "--json"]);
    assert_eq!(
        tickets.as_array().unwrap().len(),
        41,
        "one ticket per conversation"
    );
    let quarantined = w.json(&["quarantine", "list", "--json"]);
    assert_eq!(quarantined.as_array().unwrap().len(), 2, "{quarantined}");
    println!(
        "crash loop: {kills} kills, {total} files, {} stored, 0 lost, 0 doubled",
        stored.len()
    );
}

/// The outbox under repeated SIGKILL while agents keep queueing replies
/// (seeded, printed): every reply reaches the SMTP server, and one reaches
/// it twice only when a kill fell inside the window SMTP cannot close (the
/// relay took DATA, the process died before recording it) — at most the
/// sends in flight per kill (`pool_size`, 4); the count is printed.
#[test]
fn the_outbox_survives_a_sigkill_loop_sending_every_reply() {
    outbox_crash_loop(None);
}

/// The same on PostgreSQL (claims with `FOR UPDATE SKIP LOCKED`).
#[test]
fn the_outbox_survives_a_sigkill_loop_on_postgresql() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::new(Backend::Postgres));
    outbox_crash_loop(Some(&db.url));
    drop(runtime);
}

/// Points a work directory's config at `url` instead of its SQLite file.
fn use_database(w: &Workdir, url: &str) {
    let path = w.path().join("config/mailroom.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let moved = text.replace(
        "url = \"sqlite://data/mailroom.db\"",
        &format!("url = \"{url}\""),
    );
    assert_ne!(moved, text, "the shipped config names its SQLite file");
    std::fs::write(&path, moved).unwrap();
}

fn outbox_crash_loop(database_url: Option<&str>) {
    use rand::Rng;
    let (seed, mut rng) = seeded("MAILROOM_CRASH_SEED", "outbox crash loop");
    let w = Workdir::new();
    if let Some(url) = database_url {
        use_database(&w, url);
    }
    let sink = crate::smtp::SmtpSink::start(&[]);
    add_relay(&w, sink.port);
    eight_tickets_and_a_reply_file(&w);
    let mut queued: Vec<String> = Vec::new();
    let queue = |rng: &mut rand::rngs::StdRng, queued: &mut Vec<String>| {
        let ticket = rng.gen_range(1..=8).to_string();
        let out = w.run(&[
            "reply",
            &ticket,
            "--body-file",
            "reply.txt",
            "--as",
            "alice",
            "--json",
        ]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        queued.push(reply["message_id"].as_str().unwrap().to_string());
    };
    // Half the rounds also queue through the HTTP API while the daemon runs.
    let token = "alice-crash-token-0123456789";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let start = || {
        w.cmd(&["run"])
            .env("MAILROOM_HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("MAILROOM_AGENTS__ALICE__API_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut via_api = 0;
    let kills = 10;
    for _ in 0..kills {
        let mut daemon = start();
        for _ in 0..rng.gen_range(2..6) {
            queue(&mut rng, &mut queued);
        }
        if rng.gen_bool(0.5) {
            wait_for("the API ready", || {
                http_call("GET", &format!("{base}/readyz"), None, None)
                    .is_some_and(|(s, _)| s == 200)
            });
            for _ in 0..rng.gen_range(1..4) {
                let ticket = rng.gen_range(1..=8);
                let url = format!("{base}/api/v1/tickets/{ticket}/replies");
                let body = serde_json::json!({ "body": "An answer through the API." });
                let (status, reply) =
                    http_call("POST", &url, Some(token), Some(&body)).expect("the daemon answers");
                assert_eq!(status, 202, "{reply}");
                queued.push(reply["message_id"].as_str().unwrap().to_string());
                via_api += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..500)));
        daemon.kill().unwrap();
        daemon.wait().unwrap();
    }
    let mut daemon = start();
    queue(&mut rng, &mut queued);
    wait_for("every reply sent", || {
        outbox(&w).iter().all(|r| r["state"] == "sent")
    });
    stop_gracefully(&mut daemon);
    std::thread::sleep(Duration::from_millis(300));
    let received = received_ids(&sink);
    for id in &queued {
        let copies = received.iter().filter(|r| *r == id).count();
        assert!(
            (1..=2).contains(&copies),
            "{id} received {copies} times (seed {seed})"
        );
    }
    let doubled = received.len() - queued.len();
    let in_flight = 4; // relays.*.pool_size, the default
    assert!(
        doubled <= kills * in_flight,
        "{doubled} doubles for {kills} kills (seed {seed})"
    );
    println!(
        "outbox crash loop: {kills} kills, {} replies ({via_api} through the API), {} received, {doubled} inside the SMTP window, 0 lost",
        queued.len(),
        received.len()
    );
}

/// SIGTERM while the spool still holds most of 3,000 files and the outbox
/// 40 replies (the relay answering each DATA after 1 s): the daemon exits 0
/// within its drain deadline; after a restart every file is stored once,
/// and every reply reached the relay exactly once (a clean stop finishes
/// its sends, so nothing falls in the SMTP window).
#[test]
fn sigterm_under_load_exits_cleanly_and_nothing_is_lost_or_doubled() {
    let w = Workdir::new();
    let sink = crate::smtp::SmtpSink::start(&["-w", "1"]);
    add_relay(&w, sink.port);
    eight_tickets_and_a_reply_file(&w);
    let mut queued = Vec::new();
    for i in 0..40 {
        let ticket = (i % 8 + 1).to_string();
        let out = w.run(&[
            "reply",
            &ticket,
            "--body-file",
            "reply.txt",
            "--as",
            "alice",
            "--json",
        ]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        queued.push(reply["message_id"].as_str().unwrap().to_string());
    }
    let total = 3000;
    let mut expected: std::collections::BTreeSet<String> =
        (0..8).map(|i| format!("o{i}@customer.test")).collect();
    for i in 0..total {
        let id = format!("load{i}@load.test");
        let data = mail(&format!("l{}@load.test", i % 50), &id, "Load", "", "text");
        drop_into_spool(w.path(), &format!("{i:05}.load"), &data);
        expected.insert(id);
    }
    let envs = [("MAILROOM_CHANNELS__SPOOL__SETTLE_MS", "0")];
    let start = || {
        w.cmd(&["run"])
            .envs(envs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let files_in = |dir: &str| std::fs::read_dir(w.path().join(dir)).map_or(0, |d| d.count());
    let mut daemon = start();
    wait_for("the ingest under way", || files_in("spool/cur") >= 100);
    wait_for("the first reply sent", || sink.count() >= 1);
    let (taken, sent) = (files_in("spool/cur"), sink.count());
    let asked = Instant::now();
    sigterm(&daemon);
    let status = daemon.wait().unwrap();
    let took = asked.elapsed();
    assert!(status.success(), "daemon exit: {status:?}");
    // The drain deadline: 30 s, or the longest relay timeout plus 10 s.
    assert!(took < Duration::from_secs(40), "the stop took {took:?}");
    let left = files_in("spool/new");
    let unsent = outbox(&w).iter().filter(|r| r["state"] != "sent").count();
    println!(
        "SIGTERM with {taken} of {total} files taken and {sent} of 40 replies sent: stopped in {:.1} s, leaving {left} files and {unsent} replies",
        took.as_secs_f64()
    );
    assert!(left > 0 && unsent > 0, "the stop came while both were busy");

    let mut daemon = start();
    wait_for("every file acknowledged", || {
        files_in("spool/new") == 0 && files_in("spool/cur") == total
    });
    wait_for("every reply sent", || {
        outbox(&w).iter().all(|r| r["state"] == "sent")
    });
    stop_gracefully(&mut daemon);
    let stored = exported_inbound_ids(&w.run(&["export", "--jsonl"]).stdout);
    assert_each_stored_once(&stored, &expected, "after the SIGTERM");
    std::thread::sleep(Duration::from_millis(300));
    let mut received = received_ids(&sink);
    received.sort();
    queued.sort();
    assert_eq!(received, queued, "every reply received exactly once");
}
