//! The defences of docs/SECURITY.md, each tried the way an attacker or a
//! careless integrator would: SMTP smuggling, unbounded recipient lists,
//! hostile form bodies, replays, half-open connections, unsafe config and
//! thread hijack by Message-ID.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use sqlx::ConnectOptions as _;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::http::{get_json, post};
use crate::outbound::OutApp;
use crate::recorder::{bare_line_end, Recorder};
use crate::smtp::SmtpSink;
use mailroom::http::{auth, HttpState};
use mailroom::outbound::smtp::{Relay, SendOutcome};

const ALICE: &str = "alice-token-0123456789";
const SAM: &str = "sam-token-0123456789";

const SMUGGLE: &str = "MAIL FROM:<x@evil.test>\r\nRCPT TO:<victim@evil.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nboo\r\n.\r\n";

/// The message inside a recorded DATA stream: dot-stuffing undone, the
/// final `.` line dropped.
fn unstuffed(data: &[u8]) -> Vec<u8> {
    let text = &data[..data.len() - 3];
    let mut out = Vec::new();
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_bodies_and_attachments_cannot_smuggle_smtp_commands() {
    let recorder = Recorder::start();
    let app = OutApp::start(Backend::Sqlite, recorder.port).await;
    let n = app
        .customer_mail(&mail(
            "carol@customer.test",
            "c1@customer.test",
            "Invoice",
            "",
            "Hi",
        ))
        .await;
    let html = format!("<p>hello</p>\r\n\n.\r\n{SMUGGLE}");
    let long_text = format!(
        "hello\r.\r{}{}",
        SMUGGLE.replace("\r\n", "\r"),
        "x".repeat(2000)
    );
    let file = format!("a\r.\r{}", SMUGGLE.replace("\r\n", "\r")).into_bytes();
    let bodies = [
        json!({ "body": "plain", "body_html": html }),
        json!({ "body": long_text }),
        json!({ "body": "see file", "attachments": [{
            "filename": "notes.txt", "content_type": "text/plain",
            "content_base64": base64::engine::general_purpose::STANDARD.encode(&file),
        }] }),
    ];
    for body in bodies {
        let (status, queued) = app.reply(n, ALICE, body).await;
        assert_eq!(status, 202, "{queued}");
    }
    app.flush().await;

    let sent = recorder.transactions();
    let senders: Vec<&str> = sent.iter().map(|t| t.mail_from.as_str()).collect();
    assert_eq!(senders.len(), 3, "one transaction per reply: {senders:?}");
    for t in &sent {
        assert_eq!(t.mail_from, "<support@example.com>");
        assert_eq!(t.rcpt_to, vec!["<carol@customer.test>"]);
        assert_eq!(bare_line_end(&t.data), None, "bare CR or LF on the wire");
    }
    // What the customer gets is still what the agent wrote: the file's
    // bytes exactly (base64), the bodies with CRLF line ends.
    // (The outbox sends in parallel: find each reply by its content.)
    let parse = |needle: &str| {
        let t = sent
            .iter()
            .find(|t| String::from_utf8_lossy(&t.data).contains(needle))
            .unwrap_or_else(|| panic!("no message with {needle}"));
        mail_parser::MessageParser::default()
            .parse(&unstuffed(&t.data))
            .unwrap()
            .into_owned()
    };
    let with_file = parse("notes.txt");
    assert_eq!(with_file.attachment(0).unwrap().contents(), &file[..]);
    let html_part = parse("<p>hello</p>").body_html(0).unwrap().into_owned();
    assert!(html_part.contains("MAIL FROM:<x@evil.test>"), "{html_part}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_refuses_bytes_with_bare_line_ends_whoever_stored_them() {
    let recorder = Recorder::start();
    let app = OutApp::start(Backend::Sqlite, recorder.port).await;
    let relay = Relay::new("sink", &app.config.relays["sink"]);
    for raw in [
        &b"Subject: x\r\n\r\nhello\n.\nMAIL FROM:<x@evil.test>\r\n"[..],
        b"Subject: x\r\n\r\nhello\r.\r\n",
        &[b"Subject: ", &[b'x'; 1000][..], b"\r\n\r\nhi\r\n"].concat(),
    ] {
        let outcome = relay
            .send(
                app.store(),
                "support@example.com",
                &["carol@customer.test".into()],
                raw,
            )
            .await;
        match outcome {
            SendOutcome::Permanent(why) => assert!(why.starts_with("not sent ("), "{why}"),
            other => panic!("sent anyway: {other:?}"),
        }
    }
    assert!(recorder.transactions().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_capped_and_checked_when_the_reply_is_queued() {
    let sink = SmtpSink::start(&[]);
    let form = "[channels.web]\nkind = \"form\"\nteam = \"support\"\npipeline = \"support\"\n\
                allowed_origins = [\"https://www.example.com\"]\n[http]\nbind = \"127.0.0.1:0\"\n";
    let app = OutApp::start_with(Backend::Sqlite, sink.port, form).await;
    let n = app
        .customer_mail(&mail(
            "carol@customer.test",
            "c1@customer.test",
            "Invoice",
            "",
            "Hi",
        ))
        .await;

    // 100,000 Cc: refused before any work that grows with the list, while
    // a form post at the same moment is answered as usual.
    let cc: Vec<String> = (0..100_000).map(|i| format!("p{i}@many.test")).collect();
    let form_post = post(
        format!("{}/forms/web", app.base),
        vec![
            ("origin", "https://www.example.com".into()),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        b"email=dan%40customer.test&body=hello".to_vec(),
    );
    let (big, (form_status, form_answer)) = tokio::join!(
        app.reply(n, ALICE, json!({ "body": "hi", "cc": cc })),
        form_post
    );
    assert_eq!(big.0, 422, "{}", big.1);
    assert_eq!(big.1["field"], "to");
    assert!(
        big.1["error"].as_str().unwrap().contains("at most 300"),
        "{}",
        big.1
    );
    assert_eq!(form_status, 201, "{form_answer}");

    // Addresses the relay would refuse are refused now, not after a 202.
    let long_local = format!("{}@customer.test", "a".repeat(100));
    for bad in [
        "john..doe@customer.test",
        ".john@customer.test",
        long_local.as_str(),
        "carol@customer.test.",
        "ü@exämple.test",
        "x@[127.0.0.1]",
    ] {
        let (status, answer) = app
            .reply(n, ALICE, json!({ "body": "hi", "to": [bad] }))
            .await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(answer["field"], "to");
    }
    let (status, answer) = app
        .reply(
            n,
            ALICE,
            json!({ "body": "hi", "to": ["ann@x.test, bob@y.test"] }),
        )
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("several addresses"),
        "{answer}"
    );
    let name = format!("{} <ann@x.test>", "N".repeat(300));
    let (status, _) = app
        .reply(n, ALICE, json!({ "body": "hi", "to": [name] }))
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        app.store().outbox_counts().await.unwrap().queued,
        0,
        "nothing queued"
    );

    // A customer's 100,000-character display name does not make a header
    // line over 998 bytes: names are shortened when written.
    let huge = format!("From: {} <dan@customer.test>\r\n", "D".repeat(100_000));
    let raw = format!(
        "{huge}To: support@example.com\r\nSubject: Long name\r\nMessage-ID: <d1@customer.test>\r\n\r\nHello\r\n"
    );
    let m = app.customer_mail(raw.as_bytes()).await;
    let (status, answer) = app.reply(m, ALICE, json!({ "body": "Hello Dan" })).await;
    assert_eq!(status, 202, "{answer}");
    app.flush().await;
    let sent = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(sent[0].rcpt_to, vec!["dan@customer.test"]);
    let longest = sent[0]
        .message
        .split(|&b| b == b'\n')
        .map(<[u8]>::len)
        .max();
    assert!(longest.unwrap() <= 999, "a line of {longest:?} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_teams_ticket_answers_like_a_missing_one() {
    let app = OutApp::start(Backend::Sqlite, 0).await;
    let n = app
        .customer_mail(&mail(
            "carol@customer.test",
            "c1@customer.test",
            "Invoice",
            "",
            "Hi",
        ))
        .await;
    let (status, other_team) = app.reply(n, SAM, json!({ "body": "hi" })).await;
    assert_eq!(status, 404);
    let (status, missing) = app.reply(9999, SAM, json!({ "body": "hi" })).await;
    assert_eq!(status, 404);
    assert_eq!(
        other_team["error"]
            .as_str()
            .unwrap()
            .replace(&n.to_string(), "N"),
        missing["error"].as_str().unwrap().replace("9999", "N"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_threading_by_message_id_is_kept_but_not_answered() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    let n = app
        .customer_mail(&mail(
            "carol@customer.test",
            "c1@customer.test",
            "Invoice 12345",
            "Cc: dave@customer.test\r\n",
            "Hi",
        ))
        .await;
    // A stranger answers carol's message, and another reuses its ID.
    let hijack = mail(
        "mallory@evil.test",
        "m1@evil.test",
        "Re: Invoice 12345",
        "In-Reply-To: <c1@customer.test>\r\nCc: trent@evil.test\r\n",
        "me too",
    );
    // A newcomer's own Cc names nobody into the conversation.
    let accomplice = mail(
        "trent@evil.test",
        "t1@evil.test",
        "Re: Invoice 12345",
        "In-Reply-To: <m1@evil.test>\r\n",
        "and me",
    );
    let reuse = mail(
        "eve@evil.test",
        "c1@customer.test",
        "Invoice 12345",
        "",
        "hello",
    );
    // Dave was named in carol's Cc: he is in the conversation.
    let dave = mail(
        "dave@customer.test",
        "d1@customer.test",
        "Re: Invoice 12345",
        "In-Reply-To: <c1@customer.test>\r\n",
        "I am carol's colleague",
    );
    for raw in [&hijack, &accomplice, &reuse, &dave] {
        assert_eq!(app.customer_mail(raw).await, n, "kept on the ticket");
    }
    let view = app.store().ticket_show(n).await.unwrap().unwrap();
    let flags: Vec<(String, Vec<String>)> = view
        .messages
        .iter()
        .map(|m| (m.from.clone(), m.flags.clone()))
        .collect();
    let new = |from: &str| (from.to_string(), vec!["new_participant".to_string()]);
    assert_eq!(
        flags,
        vec![
            ("carol@customer.test".into(), vec![]),
            new("mallory@evil.test"),
            new("trent@evil.test"),
            new("eve@evil.test"),
            ("dave@customer.test".into(), vec![]),
        ]
    );
    assert_eq!(
        view.ticket.contacts,
        vec!["carol@customer.test", "dave@customer.test"]
    );

    let (status, answer) = app
        .reply(
            n,
            ALICE,
            json!({ "body": "Your invoice for account 12345" }),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    app.flush().await;
    let sent = sink.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(
        sent[0].rcpt_to,
        vec!["carol@customer.test", "dave@customer.test"]
    );

    // An agent lets mallory in; the next default reply includes her.
    let path = format!("/api/v1/tickets/{n}/participants");
    let body = json!({ "address": "Mallory <mallory@evil.test>" });
    let (status, added) = app.api("POST", &path, ALICE, &[], Some(body.clone())).await;
    assert_eq!((status, &added["added"]), (201, &json!(true)), "{added}");
    let (status, _) = app.api("POST", &path, ALICE, &[], Some(body.clone())).await;
    assert_eq!(status, 200, "already a participant");
    let (status, _) = app.api("POST", &path, SAM, &[], Some(body)).await;
    assert_eq!(status, 404, "not sam's team");
    app.reply(n, ALICE, json!({ "body": "Welcome" })).await;
    app.flush().await;
    let sent = sink.wait_for(2, Duration::from_secs(5)).await;
    let welcome = sent
        .iter()
        .find(|m| String::from_utf8_lossy(&m.message).contains("Welcome"))
        .unwrap();
    assert!(
        welcome.rcpt_to.contains(&"mallory@evil.test".to_string()),
        "{:?}",
        welcome.rcpt_to
    );
}

const SIGNED_FORM: &str = r#"
[channels.partner]
kind = "form"
team = "support"
pipeline = "support"
signing_secret = "form-secret-0123456789"

[channels.partner2]
kind = "form"
team = "support"
pipeline = "support"
signing_secret = "form-secret-0123456789"

[http]
bind = "127.0.0.1:0"
"#;

/// Serves `app` with a replay record on the clock `clock`.
async fn serve_with_clock(app: &TestApp, clock: Arc<AtomicI64>) -> (String, CancellationToken) {
    let mut state = HttpState::new(app.pipeline.clone(), app.config.clone());
    state.replays = auth::ReplayGuard::with_clock(
        app.store().clone(),
        Arc::new(move || clock.load(Ordering::SeqCst)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(mailroom::http::serve_on(
        listener,
        Arc::new(state),
        stop.clone(),
    ));
    (base, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_is_used_once_for_its_whole_window_and_across_restarts() {
    let app = TestApp::with_config(Backend::Postgres, SIGNED_FORM).await;
    let t0 = mailroom::store::now_ms() / 1000;
    let clock = Arc::new(AtomicI64::new(t0));
    let (base, stop) = serve_with_clock(&app, clock.clone()).await;
    let url = format!("{base}/forms/partner");
    let body = br#"{"email":"partner@c.test","body":"Order sync failed"}"#.to_vec();
    // Signed 290 s ahead: inside the window (300 s either way).
    let ts = t0 + 290;
    let headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-mailroom-timestamp", ts.to_string()),
        (
            "x-mailroom-signature",
            auth::sign("form-secret-0123456789", ts, &body),
        ),
    ];
    let send = || post(url.clone(), headers.clone(), body.clone());
    assert_eq!(send().await.0, 201);
    // The signature does not cover the channel: another form with the
    // same secret does not take it again.
    let (status, answer) = post(
        format!("{base}/forms/partner2"),
        headers.clone(),
        body.clone(),
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    // A timestamp at the edge of i64 is refused, not an overflow.
    let mut extreme = headers.clone();
    extreme[1].1 = i64::MIN.to_string();
    assert_eq!(post(url.clone(), extreme, body.clone()).await.0, 401);
    // 302 s later (the old in-memory guard had forgotten it by then), and
    // at the last second the timestamp is accepted: still a replay.
    for at in [t0 + 302, ts + 300] {
        clock.store(at, Ordering::SeqCst);
        let (status, answer) = send().await;
        assert_eq!(status, 401, "at {at}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("already used"),
            "{answer}"
        );
    }
    clock.store(ts + 301, Ordering::SeqCst);
    let (status, answer) = send().await;
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("outside"),
        "{answer}"
    );

    // A restarted listener (or another instance on the same database)
    // knows the signature too.
    stop.cancel();
    let (base, _stop) = serve_with_clock(&app, Arc::new(AtomicI64::new(t0 + 10))).await;
    let (status, answer) = post(format!("{base}/forms/partner"), headers, body).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(app.store().counts().await.unwrap().tickets, 1);
}

/// Serves `app`'s HTTP listener on a free loopback port.
async fn serve(app: &TestApp) -> (u16, CancellationToken) {
    let state = Arc::new(HttpState::new(app.pipeline.clone(), app.config.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(mailroom::http::serve_on(listener, state, stop.clone()));
    (port, stop)
}

/// Opens a connection and sends half a request head.
fn half_open(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"POST /forms/web HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    stream
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

const LISTENER: &str = r#"
[channels.web]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]
rate_limit_per_minute = 1000

[http]
bind = "127.0.0.1:0"
header_timeout_secs = 2
max_connections = 400
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_do_not_starve_the_listener_and_are_closed() {
    let app = TestApp::with_config(Backend::Sqlite, LISTENER).await;
    let (port, stop) = serve(&app).await;

    let mut held =
        tokio::task::spawn_blocking(move || (0..300).map(|_| half_open(port)).collect::<Vec<_>>())
            .await
            .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(get_json(format!("{base}/healthz")).await.0, 200);
    let (status, answer) = post(
        format!("{base}/forms/web"),
        vec![
            ("origin", "https://www.example.com".into()),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        b"email=dan%40customer.test&body=hello".to_vec(),
    )
    .await;
    assert_eq!(status, 201, "{answer}");

    // Each is closed once its head is overdue (2 s here).
    let closed = tokio::task::spawn_blocking(move || {
        held.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(8)))
            .filter(|c| *c)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 300);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_answered_503_and_closed() {
    let capped = LISTENER.replace("max_connections = 400", "max_connections = 20");
    let app = TestApp::with_config(Backend::Sqlite, &capped).await;
    let (port, stop) = serve(&app).await;

    let answer = tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..20).map(|_| half_open(port)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        drop(held);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    // The slots come back once those connections are gone.
    let mut healthy = false;
    for _ in 0..50 {
        if get_json(format!("http://127.0.0.1:{port}/healthz")).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_refuse_too_many_fields_or_files_and_store_nothing() {
    let limits = "[channels.web]\nkind = \"form\"\nteam = \"support\"\npipeline = \"support\"\n\
                  allowed_origins = [\"https://www.example.com\"]\nrate_limit_per_minute = 1000\n\
                  max_fields = 10\nmax_field_bytes = 1024\nmax_files = 2\nmax_file_bytes = 1000\n\
                  [http]\nbind = \"127.0.0.1:0\"\n";
    let app = TestApp::with_config(Backend::Sqlite, limits).await;
    let (port, stop) = serve(&app).await;
    let url = format!("http://127.0.0.1:{port}/forms/web");
    let headers = |content_type: &str| {
        vec![
            ("origin", "https://www.example.com".to_string()),
            ("content-type", content_type.to_string()),
        ]
    };

    let many: String = (0..11).map(|i| format!("f{i}=x&")).collect();
    let urlencoded = format!("{many}email=dan%40customer.test&body=hi");
    let (status, answer) = post(
        url.clone(),
        headers("application/x-www-form-urlencoded"),
        urlencoded.into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_fields"),
        "{answer}"
    );

    let mut object = serde_json::Map::new();
    for i in 0..11 {
        object.insert(format!("f{i}"), json!("x"));
    }
    let (status, _) = post(
        url.clone(),
        headers("application/json"),
        serde_json::to_vec(&object).unwrap(),
    )
    .await;
    assert_eq!(status, 413);

    let multipart = |files: usize, size: usize| {
        let mut body = String::new();
        for (name, value) in [("email", "dan@customer.test"), ("body", "hi")] {
            body.push_str(&format!(
                "--B\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        for i in 0..files {
            body.push_str(&format!(
                "--B\r\nContent-Disposition: form-data; name=\"f{i}\"; filename=\"f{i}.txt\"\r\nContent-Type: text/plain\r\n\r\n{}\r\n",
                "z".repeat(size)
            ));
        }
        body.push_str("--B--\r\n");
        body.into_bytes()
    };
    let content_type = "multipart/form-data; boundary=B";
    let (status, answer) = post(url.clone(), headers(content_type), multipart(3, 10)).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_files"),
        "{answer}"
    );
    let (status, answer) = post(url.clone(), headers(content_type), multipart(2, 600)).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("max_file_bytes"),
        "{answer}"
    );
    let long_name = format!("email=dan%40customer.test&body=hi&{}=x", "n".repeat(300));
    let (status, answer) = post(
        url.clone(),
        headers("application/x-www-form-urlencoded"),
        long_name.into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("field name is longer"),
        "{answer}"
    );
    let long = format!("email=dan%40customer.test&body={}", "y".repeat(2000));
    let (status, answer) = post(
        url.clone(),
        headers("application/x-www-form-urlencoded"),
        long.into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("\"body\" is longer than 1024 bytes"),
        "{answer}"
    );
    let long = json!({ "email": "dan@customer.test", "body": "hi", "list": vec![1; 1000] });
    let (status, answer) = post(
        url.clone(),
        headers("application/json"),
        long.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("\"list\" is longer"),
        "{answer}"
    );

    // A contact address we could not reply to is refused too.
    for email in ["%C3%BC%40ex%C3%A4mple.test", "x%40%5B127.0.0.1%5D"] {
        let body = format!("email={email}&body=hi").into_bytes();
        let (status, answer) = post(
            url.clone(),
            headers("application/x-www-form-urlencoded"),
            body,
        )
        .await;
        assert_eq!(
            (status, &answer["field"]),
            (422, &json!("email")),
            "{email}: {answer}"
        );
    }
    assert_eq!(
        app.store().counts().await.unwrap().tickets,
        0,
        "nothing stored"
    );

    let (status, answer) = post(url, headers(content_type), multipart(2, 400)).await;
    assert_eq!(status, 201, "within the limits: {answer}");
    stop.cancel();
}

/// `mailroom check` on `toml`; its output.
fn check(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailroom.toml");
    std::fs::write(&path, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"))
        .args(["--config", path.to_str().unwrap(), "check"])
        .env_remove("MAILROOM_CONFIG")
        .env_remove("MAILROOM_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "refused: {toml}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const VALID: &str = r#"
[database]
url = "sqlite://mailroom.db"
[pipelines.support]
statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
[teams.support]
addresses = [{ address = "support@example.com" }]
[channels.pipe]
kind = "pipe"
team = "support"
pipeline = "support"
"#;

#[test]
fn check_refuses_unsafe_config_and_names_the_key() {
    let agent = |key: &str, token: &str| {
        format!("[agents.{key}]\nemail = \"{key}@example.com\"\nteams = [\"support\"]\napi_token = \"{token}\"\n")
    };
    let form = "[channels.web]\nkind = \"form\"\nteam = \"support\"\npipeline = \"support\"\nsigning_secret = \"\"\n[http]\nbind = \"127.0.0.1:8025\"\n";
    let cases: Vec<(String, &str)> = vec![
        (form.to_string(), "channels.web.signing_secret: must be at least 16"),
        (agent("ann", ""), "agents.ann.api_token: must be at least 16"),
        (agent("ann", "x"), "agents.ann.api_token: must be at least 16"),
        (
            agent("ann", "same-token-0123456789") + &agent("bob", "same-token-0123456789"),
            "agents.bob.api_token: the same token as agents.ann.api_token",
        ),
        ("[ingest]\nmax_message_bytes = 0\n".into(), "ingest.max_message_bytes: must be between"),
        ("[ingest]\nparse_timeout_ms = 0\n".into(), "ingest.parse_timeout_ms: must be between"),
        ("[http]\nbind = \"not an address\"\n".into(), "http.bind: \"not an address\" is not an address"),
        ("[http]\nmax_connections = 0\n".into(), "http.max_connections: must be between"),
        ("[outbox]\nmax_recipients = 0\n".into(), "outbox.max_recipients: must be between"),
        ("secret = \"short\"\n".into(), "secret: must be at least 16"),
        ("[htpp]\nbind = \"127.0.0.1:8025\"\n".into(), "htpp: unknown key; did you mean `http`?"),
        ("[relay.main]\nhost = \"x\"\n".into(), "relay: unknown key; did you mean `relays`?"),
        ("secrett = \"0123456789abcdef0123\"\n".into(), "secrett: unknown key; did you mean `secret`?"),
        ("[http]\nbindd = \"127.0.0.1:1\"\n".into(), "http.bindd: unknown key; did you mean `bind`?"),
        (
            "[channels.box]\nkind = \"imap\"\nteam = \"support\"\npipeline = \"support\"\nhostt = \"x\"\n".into(),
            "channels.box.hostt: unknown key (for a channel with kind = \"imap\"); did you mean `host`?",
        ),
    ];
    for (extra, expected) in cases {
        // Top-level keys must come before the first table.
        let toml = match extra.starts_with('[') {
            true => format!("{VALID}{extra}"),
            false => format!("{extra}{VALID}"),
        };
        let out = check(&toml);
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_gets_408_and_stores_nothing() {
    let slow = LISTENER.replace("header_timeout_secs = 2", "request_timeout_secs = 1");
    let app = TestApp::with_config(Backend::Sqlite, &slow).await;
    let (port, stop) = serve(&app).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .write_all(
                b"POST /forms/web HTTP/1.1\r\nHost: x\r\nOrigin: https://www.example.com\r\n\
                  Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nemail=a%40b.test&bo",
            )
            .unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = vec![0u8; 512];
        let n = stream.read(&mut answer).unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert_eq!(app.store().counts().await.unwrap().tickets, 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_its_commit_is_not_idle() {
    let quick_idle = LISTENER.replace("header_timeout_secs = 2", "idle_timeout_secs = 1");
    let app = TestApp::with_config(Backend::Sqlite, &quick_idle).await;
    let (port, stop) = serve(&app).await;
    let base = format!("http://127.0.0.1:{port}");
    // Another process holds SQLite's write lock for 2.5 s: the form's commit
    // waits that long without a byte on the connection.
    let path = app.db.url.trim_start_matches("sqlite://").to_string();
    let mut blocker = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let posted = tokio::spawn(post(
        format!("{base}/forms/web"),
        vec![
            ("origin", "https://www.example.com".into()),
            ("content-type", "application/x-www-form-urlencoded".into()),
        ],
        b"email=dan%40customer.test&body=hello".to_vec(),
    ));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    let (status, answer) = posted.await.unwrap();
    assert_eq!(status, 201, "answered after the wait: {answer}");
    assert_eq!(app.store().counts().await.unwrap().tickets, 1);
    stop.cancel();
}
