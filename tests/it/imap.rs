//! The IMAP channel against a real Dovecot: every message ingested exactly
//! once, and nothing acknowledged on the server before it is committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dovecot::{self, Dovecot};
use crate::harness::*;
use mailroom::channel::imap::{ImapChannel, ImapState};

fn channel(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[channels.{name}]
kind = "imap"
team = "support"
pipeline = "support"
host = "127.0.0.1"
port = {port}
tls = "none"
username = "{user}"
password = "{password}"
poll_interval_ms = 100
{extra}
"#,
        user = dovecot::USER,
        password = dovecot::PASSWORD,
    )
}

struct Running {
    token: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

fn start(app: &TestApp, pipeline: mailroom::pipeline::Pipeline, name: &str) -> Running {
    let mailbox = ImapChannel::new(
        name,
        &app.config.channels[name],
        app.config.ingest.max_message_bytes,
    )
    .unwrap();
    let token = CancellationToken::new();
    let handle = tokio::spawn(mailbox.run(pipeline, token.clone()));
    Running { token, handle }
}

impl Running {
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("the mailbox stops promptly")
            .unwrap()
            .unwrap();
    }
}

async fn state(app: &TestApp, name: &str) -> ImapState {
    app.store().channel_state(name).await.unwrap()
}

/// Polls until `done` holds for the store's counts, or fails after 20 s.
async fn wait_for(app: &TestApp, what: &str, done: impl Fn(&mailroom::store::Counts) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = app.store().counts().await.unwrap();
        if done(&counts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_for_state(
    app: &TestApp,
    name: &str,
    what: &str,
    done: impl Fn(&ImapState) -> bool,
) -> ImapState {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = state(app, name).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn thread_of_five() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| {
            let irt = if i == 0 {
                String::new()
            } else {
                format!("In-Reply-To: <imap{}@c.test>\r\n", i - 1)
            };
            mail(
                "ann@c.test",
                &format!("imap{i}@c.test"),
                "Over IMAP",
                &irt,
                &format!("message {i}"),
            )
        })
        .collect()
}

async fn polling_case(backend: Backend) {
    let server = Dovecot::start();
    let app =
        TestApp::with_config(backend, &channel("inbox", server.imap_port, "idle = false")).await;
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()).await;

    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "5 messages", |c| c.messages == 5).await;
    let s = wait_for_state(&app, "inbox", "last_uid 5", |s| s.last_uid == 5).await;
    assert!(s.connected && !s.idle);
    running.stop().await;

    // Exactly once: one ticket, five messages; every one marked seen only now.
    let counts = app.store().counts().await.unwrap();
    assert_eq!((counts.tickets, counts.messages), (1, 5));
    let flags = dovecot::flags(&mut client, "INBOX").await;
    assert_eq!(flags.len(), 5);
    assert!(
        flags
            .iter()
            .all(|(_, f)| f.iter().any(|f| f.contains("Seen"))),
        "{flags:?}"
    );

    // A second run finds nothing new.
    let again = start(&app, app.pipeline.clone(), "inbox");
    tokio::time::sleep(Duration::from_millis(500)).await;
    again.stop().await;
    assert_eq!(app.store().counts().await.unwrap().messages, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_ingests_each_message_once_then_marks_it_seen_sqlite() {
    polling_case(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_ingests_each_message_once_then_marks_it_seen_postgres() {
    polling_case(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_turns_new_mail_into_a_ticket_quickly() {
    let server = Dovecot::start();
    // Polling is set very slow, so only IDLE can explain a fast delivery.
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel("inbox", server.imap_port, "")
            .replace("poll_interval_ms = 100", "poll_interval_ms = 600000"),
    )
    .await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    let s = wait_for_state(&app, "inbox", "connected", |s| s.connected).await;
    assert!(s.idle, "Dovecot offers IDLE");
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut client = server.client().await;
    for (i, m) in thread_of_five().iter().enumerate() {
        dovecot::append(&mut client, "INBOX", std::slice::from_ref(m)).await;
        wait_for(&app, "the appended message", |c| c.messages == i as i64 + 1).await;
    }
    running.stop().await;
    assert_eq!(app.store().counts().await.unwrap().tickets, 1);
}

async fn tls_case(tls: &str, port_of: fn(&Dovecot) -> u16, trust_ca: bool) -> (TestApp, ImapState) {
    let server = Dovecot::start();
    let ca = if trust_ca {
        format!(
            "ca_file = \"{}\"",
            dovecot::certs().join("ca.pem").display()
        )
    } else {
        String::new()
    };
    let extra = format!("tls = \"{tls}\"\nhost = \"localhost\"\n{ca}");
    let text = channel("inbox", port_of(&server), "")
        .replace("tls = \"none\"\n", "")
        .replace("host = \"127.0.0.1\"\n", "");
    let app = TestApp::with_config(Backend::Sqlite, &format!("{text}{extra}")).await;
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..2]).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    let s = if trust_ca {
        wait_for(&app, "2 messages over TLS", |c| c.messages == 2).await;
        wait_for_state(&app, "inbox", "synced", |s| s.last_uid == 2).await
    } else {
        wait_for_state(&app, "inbox", "a TLS error", |s| s.last_error.is_some()).await
    };
    running.stop().await;
    drop(server);
    (app, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_verifies_the_server_against_the_configured_ca() {
    let (_, s) = tls_case("implicit", |d| d.imaps_port, true).await;
    assert_eq!(s.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_verifies_the_server_against_the_configured_ca() {
    let (_, s) = tls_case("starttls", |d| d.imap_port, true).await;
    assert_eq!(s.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_nothing_is_fetched() {
    let (app, s) = tls_case("implicit", |d| d.imaps_port, false).await;
    let error = s.last_error.unwrap();
    assert!(
        error.contains("TLS") && error.to_lowercase().contains("certificate"),
        "{error}"
    );
    assert_eq!(app.store().counts().await.unwrap().messages, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_and_does_not_stop_other_mailboxes() {
    let server = Dovecot::start();
    let good = channel("good", server.imap_port, "");
    let bad = channel("bad", server.imap_port, "").replace(
        &format!("password = \"{}\"", dovecot::PASSWORD),
        "password = \"wrong\"",
    );
    let app = TestApp::with_config(Backend::Sqlite, &format!("{good}{bad}")).await;
    let bad_run = start(&app, app.pipeline.clone(), "bad");
    let good_run = start(&app, app.pipeline.clone(), "good");
    let s = wait_for_state(&app, "bad", "an auth error", |s| s.last_error.is_some()).await;
    assert!(
        s.last_error
            .as_deref()
            .unwrap()
            .contains("authentication failed"),
        "{s:?}"
    );
    assert!(!s.connected);

    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..1]).await;
    wait_for(&app, "the good mailbox to ingest", |c| c.messages == 1).await;
    bad_run.stop().await;
    good_run.stop().await;
}

async fn after_action_case(extra: &str) -> (Dovecot, async_imap::Session<tokio::net::TcpStream>) {
    after_action_case_on(Dovecot::start(), extra).await
}

async fn after_action_case_on(
    server: Dovecot,
    extra: &str,
) -> (Dovecot, async_imap::Session<tokio::net::TcpStream>) {
    let app =
        TestApp::with_config(Backend::Sqlite, &channel("inbox", server.imap_port, extra)).await;
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..3]).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "3 messages", |c| c.messages == 3).await;
    wait_for_state(&app, "inbox", "synced", |s| s.last_uid == 3).await;
    running.stop().await;
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_action_move_puts_committed_mail_in_the_folder() {
    let (_server, mut client) =
        after_action_case("after = \"move\"\nmove_to = \"Processed\"").await;
    assert_eq!(dovecot::count(&mut client, "INBOX").await, 0);
    assert_eq!(dovecot::count(&mut client, "Processed").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_action_move_without_the_move_extension_copies_and_expunges_by_uid() {
    let server = Dovecot::start_without_move();
    let mut probe = server.client().await;
    let capabilities = probe.capabilities().await.unwrap();
    assert!(!capabilities.has_str("MOVE") && capabilities.has_str("UIDPLUS"));
    let (_server, mut client) =
        after_action_case_on(server, "after = \"move\"\nmove_to = \"Processed\"").await;
    assert_eq!(dovecot::count(&mut client, "Processed").await, 3);
    assert_eq!(dovecot::count(&mut client, "INBOX").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_action_delete_removes_only_committed_mail() {
    let (_server, mut client) = after_action_case("after = \"delete\"").await;
    assert_eq!(dovecot::count(&mut client, "INBOX").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_action_keep_leaves_mail_unseen() {
    let (_server, mut client) = after_action_case("after = \"keep\"").await;
    let flags = dovecot::flags(&mut client, "INBOX").await;
    assert_eq!(flags.len(), 3);
    assert!(
        flags
            .iter()
            .all(|(_, f)| !f.iter().any(|f| f.contains("Seen"))),
        "{flags:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_mail_stays_on_the_server_and_is_reported() {
    let server = Dovecot::start();
    let mut app = TestApp::with_config(
        Backend::Sqlite,
        &channel("inbox", server.imap_port, "oversize_folder = \"TooBig\""),
    )
    .await;
    app.config.ingest.max_message_bytes = 4000;
    let mut client = server.client().await;
    let big = mail("big@c.test", "big@c.test", "Huge", "", &"x".repeat(10_000));
    let small = mail("small@c.test", "small@c.test", "Small", "", "ok");
    dovecot::append(&mut client, "INBOX", &[big, small]).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    let s = wait_for_state(&app, "inbox", "synced", |s| s.last_uid == 2).await;
    running.stop().await;
    assert_eq!(app.store().counts().await.unwrap().messages, 1);
    assert_eq!(s.oversized.len(), 1);
    assert_eq!(s.oversized[0].uid, 1);
    assert_eq!(s.oversized[0].moved_to.as_deref(), Some("TooBig"));
    assert_eq!(dovecot::count(&mut client, "TooBig").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uidvalidity_change_rescans_without_duplicates() {
    let server = Dovecot::start();
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel(
            "support",
            server.imap_port,
            "folder = \"Support\"\nafter = \"keep\"\nidle = false",
        ),
    )
    .await;
    let mut client = server.client().await;
    let messages = thread_of_five();
    dovecot::append(&mut client, "Support", &messages[..2]).await;
    let running = start(&app, app.pipeline.clone(), "support");
    let before = wait_for_state(&app, "support", "2 synced", |s| s.last_uid == 2).await;
    running.stop().await;
    // Refusals recorded under the old UIDVALIDITY name other messages after it.
    let mut left = before.clone();
    let refused = mailroom::store::channels::Refused {
        uid: 3,
        times: 2,
        since: 1,
        at: 2,
    };
    left.refusing = Some(refused.clone());
    left.passed_over = vec![refused];
    app.store()
        .set_channel_state("support", &left)
        .await
        .unwrap();

    // Recreating the folder gives it a new UIDVALIDITY; the same two come back, plus one.
    client.delete("Support").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dovecot::append(&mut client, "Support", &messages[..3]).await;
    let running = start(&app, app.pipeline.clone(), "support");
    let after = wait_for_state(&app, "support", "rescanned", |s| {
        s.uidvalidity != before.uidvalidity && s.last_uid == 3
    })
    .await;
    running.stop().await;
    assert_ne!(after.uidvalidity, before.uidvalidity);
    assert_eq!((after.refusing, after.passed_over.len()), (None, 0));
    let counts = app.store().counts().await.unwrap();
    assert_eq!((counts.tickets, counts.messages), (1, 3));
}

fn panics_on_marker(
    raw: &[u8],
) -> Result<mailroom::pipeline::parse::ParsedMessage, mailroom::pipeline::parse::ParseError> {
    if String::from_utf8_lossy(raw).contains("PANIC-ME") {
        panic!("injected parser panic");
    }
    mailroom::pipeline::parse::parse(raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_quarantined_with_its_uid_and_does_not_block_the_mailbox() {
    let server = Dovecot::start();
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel("inbox", server.imap_port, "idle = false"),
    )
    .await;
    let mut client = server.client().await;
    let poison = mail("p@c.test", "poison@c.test", "Poison", "", "PANIC-ME");
    let after = mail("q@c.test", "after@c.test", "After", "", "fine");
    dovecot::append(&mut client, "INBOX", &[poison, after]).await;
    let pipeline = app.pipeline.clone().with_parser(panics_on_marker);
    let running = start(&app, pipeline.clone(), "inbox");
    wait_for_state(&app, "inbox", "synced", |s| s.last_uid == 2).await;
    // Several more polls pass; the poison is not tried again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    let entries = app.store().quarantine_list().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].attempts, 1);
    assert!(
        entries[0].source.as_deref().unwrap().ends_with(":1"),
        "{:?}",
        entries[0].source
    );
    assert_eq!(app.store().counts().await.unwrap().messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_killed_and_restarted_mid_sync_loses_and_doubles_nothing() {
    let mut server = Dovecot::start();
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel(
            "inbox",
            server.imap_port,
            "fetch_batch = 10\nidle = false\ncommand_timeout_secs = 5",
        ),
    )
    .await;
    let mut client = server.client().await;
    let messages: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            mail(
                &format!("u{}@c.test", i % 37),
                &format!("k{i}@c.test"),
                &format!("Subject {i}"),
                "",
                "body",
            )
        })
        .collect();
    dovecot::append(&mut client, "INBOX", &messages).await;
    drop(client);

    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "the sync to be under way", |c| c.messages >= 20).await;
    server.restart();
    let during = app.store().counts().await.unwrap().messages;
    assert!(
        during < 300,
        "the crash should land mid-sync (had {during})"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while app.store().counts().await.unwrap().messages < 300 {
        assert!(
            Instant::now() < deadline,
            "not caught up after the restart: {:?}\n{:?}\n{}",
            app.store().counts().await.unwrap(),
            state(&app, "inbox").await,
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = wait_for_state(&app, "inbox", "caught up", |s| {
        s.last_uid == 300 && s.connected
    })
    .await;
    running.stop().await;

    let counts = app.store().counts().await.unwrap();
    assert_eq!(counts.messages, 300, "nothing doubled");
    assert_eq!(counts.quarantined, 0);
    assert_eq!(s.backlog, 0);
    let mut client = server.client().await;
    let flags = dovecot::flags(&mut client, "INBOX").await;
    assert!(flags
        .iter()
        .all(|(_, f)| f.iter().any(|f| f.contains("Seen"))));
}

/// A TCP proxy in front of Dovecot that cuts its first connection after
/// `cut_after` bytes from the server (mid-FETCH), then passes later ones.
async fn cutting_proxy(target: u16, cut_after: usize) -> (u16, tokio::sync::oneshot::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut cut_tx = Some(cut_tx);
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
            else {
                return;
            };
            match cut_tx.take() {
                None => {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                }
                Some(signal) => {
                    tokio::spawn(async move {
                        let (mut in_read, mut in_write) = inbound.into_split();
                        let (mut out_read, mut out_write) = outbound.into_split();
                        let upstream = tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                        });
                        let mut sent = 0;
                        let mut buf = vec![0u8; 4096];
                        while sent < cut_after {
                            let n = match out_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n.min(cut_after - sent),
                            };
                            if in_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent += n;
                        }
                        upstream.abort();
                        drop(in_write);
                        let _ = signal.send(());
                    });
                }
            }
        }
    });
    (port, cut_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_fetch_acknowledges_nothing_uncommitted_and_recovers() {
    let server = Dovecot::start();
    let mut client = server.client().await;
    let messages: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            mail(
                "cut@c.test",
                &format!("cut{i}@c.test"),
                &format!("Cut {i}"),
                "",
                &"y".repeat(2000),
            )
        })
        .collect();
    dovecot::append(&mut client, "INBOX", &messages).await;
    let (proxy_port, cut) = cutting_proxy(server.imap_port, 40_000).await;
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel(
            "inbox",
            proxy_port,
            "fetch_batch = 25\nidle = false\ncommand_timeout_secs = 5",
        ),
    )
    .await;
    let running = start(&app, app.pipeline.clone(), "inbox");

    cut.await.unwrap();
    // Right after the cut: only committed messages may be flagged seen.
    let committed = app.store().counts().await.unwrap().messages;
    let seen = dovecot::flags(&mut client, "INBOX")
        .await
        .iter()
        .filter(|(_, f)| f.iter().any(|f| f.contains("Seen")))
        .count() as i64;
    assert!(committed < 60, "the cut should land mid-sync");
    assert!(
        seen <= committed,
        "{seen} seen but only {committed} committed"
    );

    wait_for(&app, "all 60 after reconnecting", |c| c.messages == 60).await;
    let s = wait_for_state(&app, "inbox", "caught up", |s| s.last_uid == 60).await;
    running.stop().await;
    assert_eq!(app.store().counts().await.unwrap().messages, 60);
    assert_eq!(s.last_error, None, "the reconnect cleared the error");
}

/// Passes sessions through to `target`, counting them.
async fn counting_proxy(target: u16) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
            else {
                return;
            };
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (port, count)
}

/// Fault injection: passes the session through, but answers a body FETCH
/// with NO itself (the server never sees it) when `refuse(n, uids)` says so:
/// `n` counts the connection's body FETCHes, `uids` is the command's set.
async fn refusing_proxy(
    target: u16,
    refuse: impl Fn(usize, &str) -> bool + Send + Sync + 'static,
) -> u16 {
    let refuse = Arc::new(refuse);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            let refuse = refuse.clone();
            let (in_read, in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            let to_client = Arc::new(tokio::sync::Mutex::new(in_write));
            let writer = to_client.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    use tokio::io::AsyncReadExt;
                    let n = match out_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if writer.lock().await.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(in_read);
                let mut fetches = 0;
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match lines.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if line.windows(11).any(|w| w == b"BODY.PEEK[]") {
                        fetches += 1;
                        let text = String::from_utf8_lossy(&line).to_string();
                        let set = text.split(' ').nth(3).unwrap_or_default().to_string();
                        if refuse(fetches, &set) {
                            let tag = line.split(|&b| b == b' ').next().unwrap_or(b"*").to_vec();
                            let mut answer = tag;
                            answer.extend_from_slice(b" NO [UNAVAILABLE] injected refusal\r\n");
                            let _ = to_client.lock().await.write_all(&answer).await;
                            continue;
                        }
                    }
                    if out_write.write_all(&line).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// 60 messages in a Dovecot INBOX, read through [`refusing_proxy`] in
/// chunks of 10 by a running mailbox.
async fn sixty_behind_refusals(
    extra: &str,
    refuse: impl Fn(usize, &str) -> bool + Send + Sync + 'static,
) -> (
    Dovecot,
    async_imap::Session<tokio::net::TcpStream>,
    TestApp,
    Running,
) {
    let server = Dovecot::start();
    let mut client = server.client().await;
    let messages: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            mail(
                "r@c.test",
                &format!("r{i}@c.test"),
                &format!("R {i}"),
                "",
                "z",
            )
        })
        .collect();
    dovecot::append(&mut client, "INBOX", &messages).await;
    let proxy_port = refusing_proxy(server.imap_port, refuse).await;
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel(
            "inbox",
            proxy_port,
            &format!("fetch_batch = 10\nidle = false\n{extra}"),
        ),
    )
    .await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    (server, client, app, running)
}

/// The UIDs flagged \Seen in the INBOX.
async fn seen_uids(client: &mut async_imap::Session<tokio::net::TcpStream>) -> Vec<u32> {
    dovecot::flags(client, "INBOX")
        .await
        .iter()
        .filter(|(_, f)| f.iter().any(|f| f.contains("Seen")))
        .map(|(uid, _)| *uid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_refused_ahead_still_commits_and_acknowledges_what_came_before_it() {
    // Every session's third chunk is refused whole while its first two are
    // in flight: those two land, and the refused one is asked for UID by UID.
    let (_server, mut client, app, running) = sixty_behind_refusals("", |n, _| n == 3).await;
    let s = wait_for_state(&app, "inbox", "all 60 taken", |s| s.last_uid == 60).await;
    running.stop().await;
    assert_eq!(app.store().counts().await.unwrap().messages, 60);
    assert_eq!(seen_uids(&mut client).await.len(), 60);
    assert!(s.last_success.is_some());
}

/// Whether UID set `set` (`a:b,c`) holds `uid`.
fn set_holds(set: &str, uid: u32) -> bool {
    set.split(',').any(|part| match part.split_once(':') {
        Some((a, b)) => {
            let (a, b) = (a.parse().unwrap_or(u32::MAX), b.parse().unwrap_or(0));
            (a.min(b)..=a.max(b)).contains(&uid)
        }
        None => part.parse() == Ok(uid),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_server_never_gives_stops_the_mailbox_exactly_below_it() {
    // Any FETCH that asks for UID 25 is refused whole: the chunk 21..30 is
    // asked for UID by UID, so 21..24 still come in.
    let (_server, mut client, app, running) =
        sixty_behind_refusals("pass_over_refused_after_secs = 0", |_, set| {
            set_holds(set, 25)
        })
        .await;
    let s = wait_for_state(&app, "inbox", "stopped below UID 25", |s| {
        s.last_uid == 24
            && s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("UID 25"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.stop().await;
    assert!(s
        .last_error
        .unwrap()
        .contains("did not give message UID 25"));
    assert_eq!(state(&app, "inbox").await.last_uid, 24, "never past it");
    assert_eq!(app.store().counts().await.unwrap().messages, 24);
    assert_eq!(
        seen_uids(&mut client).await,
        (1..=24).collect::<Vec<u32>>(),
        "only what is stored is seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_refused_session_after_session_is_passed_over_and_reported() {
    // UID 25 is never given; once three sessions over two seconds have
    // refused it, the mailbox takes the rest and lists 25 as left behind.
    mailroom::metrics::install();
    let (_server, mut client, app, running) =
        sixty_behind_refusals("pass_over_refused_after_secs = 2", |_, set| {
            set_holds(set, 25)
        })
        .await;
    let s = wait_for_state(&app, "inbox", "past UID 25", |s| s.last_uid == 60).await;
    running.stop().await;
    assert_eq!(s.passed_over.len(), 1, "{:?}", s.passed_over);
    let passed = &s.passed_over[0];
    assert_eq!(passed.uid, 25);
    assert!(passed.times >= 3, "{passed:?}");
    assert!(passed.at - passed.since >= 2000, "{passed:?}");
    assert_eq!(s.refusing, None);
    assert_eq!(app.store().counts().await.unwrap().messages, 59);
    let seen = seen_uids(&mut client).await;
    let expected: Vec<u32> = (1..=60).filter(|&u| u != 25).collect();
    assert_eq!(seen, expected, "25 is left unread on the server");

    // Alertable: counted in the metrics.
    let text = mailroom::metrics::install().render();
    assert!(
        text.contains("mailroom_mailbox_passed_over_total{channel=\"inbox\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_what_works_for_each_mailbox() {
    let server = Dovecot::start();
    let dir = tempfile::tempdir().unwrap();
    let good = channel("good", server.imaps_port, "")
        .replace("tls = \"none\"\n", "tls = \"implicit\"\n")
        .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
        + &format!(
            "ca_file = \"{}\"\n",
            dovecot::certs().join("ca.pem").display()
        );
    let bad = channel("bad", server.imap_port, "").replace(
        &format!("password = \"{}\"", dovecot::PASSWORD),
        "password = \"nope\"",
    );
    let missing = channel("missing", server.imap_port, "folder = \"NoSuchFolder\"");
    let path = dir.path().join("mailroom.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n{good}{bad}{missing}",
            std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailroom.toml")
            )
            .unwrap()
            .replace(
                "sqlite://data/mailroom.db",
                &format!("sqlite://{}/m.db", dir.path().display())
            )
            .replace(
                "path = \"spool\"",
                &format!("path = \"{}/spool\"", dir.path().display())
            )
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"))
            .args(["--config", path.to_str().unwrap(), "check"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(75), "{text}");
    assert!(
        text.contains("ok: channels.good: TLS verified, login ok, folder \"INBOX\""),
        "{text}"
    );
    assert!(text.contains("IDLE supported"), "{text}");
    assert!(
        text.contains("problem: channels.bad: authentication failed"),
        "{text}"
    );
    assert!(
        text.contains("problem: channels.missing: folder \"NoSuchFolder\""),
        "{text}"
    );
    drop(server);
}

/// A provider stand-in: `/token` rotates refresh tokens (the old one dies),
/// `/introspect` tells Dovecot whether an access token is live.
#[derive(Default)]
pub struct FakeProvider {
    live_refresh: String,
    issued: Vec<String>,
    refresh_calls: Vec<String>,
}

pub async fn fake_oauth(
    first_refresh: &str,
) -> (String, std::sync::Arc<std::sync::Mutex<FakeProvider>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(std::sync::Mutex::new(FakeProvider {
        live_refresh: first_refresh.to_string(),
        issued: vec!["static-token".into()],
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let shared = provider.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let provider = shared.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let (head_end, length) = loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&request[..head_end]).to_string();
                let body = String::from_utf8_lossy(&request[head_end..]).to_string();
                let field = |name: &str| {
                    body.split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                        .unwrap_or_default()
                        .to_string()
                };
                let (status, json) = {
                    let mut p = provider.lock().unwrap();
                    if head.starts_with("POST /token") {
                        let presented = field("refresh_token");
                        p.refresh_calls.push(presented.clone());
                        if presented == p.live_refresh {
                            let n = p.refresh_calls.len();
                            let (access, refresh) = (format!("access-{n}"), format!("refresh-{n}"));
                            p.issued.push(access.clone());
                            p.live_refresh = refresh.clone();
                            (
                                "200 OK",
                                format!(
                                    r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":3600,"refresh_token":"{refresh}"}}"#
                                ),
                            )
                        } else {
                            ("400 Bad Request", r#"{"error":"invalid_grant","error_description":"refresh token revoked"}"#.to_string())
                        }
                    } else {
                        let token = field("token");
                        let active = p.issued.contains(&token);
                        (
                            "200 OK",
                            format!(r#"{{"active":"{active}","username":"{}"}}"#, dovecot::USER),
                        )
                    }
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, provider)
}

fn oauth_channel(port: u16, oauth: &str) -> String {
    format!(
        "{}auth = \"xoauth2\"\n[channels.inbox.oauth]\n{oauth}\n",
        channel("inbox", port, "idle = false")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_refreshes_the_token_and_keeps_the_rotated_refresh_token() {
    let (url, provider) = fake_oauth("refresh-0").await;
    let server = Dovecot::start_with_oauth(&format!("{url}/introspect"));
    let oauth = format!(
        "token_url = \"{url}/token\"\nclient_id = \"mailroom\"\nrefresh_token = \"refresh-0\""
    );
    let app = TestApp::with_config(Backend::Sqlite, &oauth_channel(server.imap_port, &oauth)).await;
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..2]).await;

    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "2 messages over XOAUTH2", |c| c.messages == 2).await;
    running.stop().await;
    assert_eq!(
        app.store()
            .oauth_refresh_token("inbox")
            .await
            .unwrap()
            .as_deref(),
        Some("refresh-1")
    );

    // The configured refresh-0 is dead now; a restart must use the stored one.
    dovecot::append(&mut client, "INBOX", &thread_of_five()[2..3]).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "the third message after a restart", |c| {
        c.messages == 3
    })
    .await;
    running.stop().await;
    assert_eq!(
        provider.lock().unwrap().refresh_calls,
        vec!["refresh-0", "refresh-1"]
    );
    assert_eq!(state(&app, "inbox").await.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_with_a_token_command_and_a_refused_token() {
    let (url, _provider) = fake_oauth("unused").await;
    let server = Dovecot::start_with_oauth(&format!("{url}/introspect"));
    let good = oauth_channel(server.imap_port, "token_command = \"echo static-token\"");
    let app = TestApp::with_config(Backend::Sqlite, &good).await;
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..1]).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for(&app, "a message via token_command", |c| c.messages == 1).await;
    running.stop().await;

    let bad = oauth_channel(server.imap_port, "token_command = \"echo revoked-token\"");
    let app = TestApp::with_config(Backend::Sqlite, &bad).await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    let s = wait_for_state(&app, "inbox", "an auth error", |s| s.last_error.is_some()).await;
    running.stop().await;
    assert!(s.last_error.unwrap().contains("authentication failed"));
    assert_eq!(app.store().counts().await.unwrap().messages, 0);
}

crate::both_backends!(
    a_mailbox_is_polled_by_one_instance_at_a_time_and_taken_over_when_its_holder_dies,
    |backend| async move {
        let server = Dovecot::start();
        let app = TestApp::with_config(backend, &channel("inbox", server.imap_port, "")).await;
        let instance = |name: &str| {
            ImapChannel::new(
                "inbox",
                &app.config.channels["inbox"],
                app.config.ingest.max_message_bytes,
            )
            .unwrap()
            .with_lease(name.to_string(), Duration::from_secs(3))
        };
        let lease = || async {
            app.store()
                .lease_holder("imap:inbox")
                .await
                .unwrap()
                .map(|h| h.0)
        };
        let a_stop = CancellationToken::new();
        let a = tokio::spawn(instance("a").run(app.pipeline.clone(), a_stop.clone()));
        wait_for_state(&app, "inbox", "instance a connected", |s| s.connected).await;
        // A second instance on the same database stands by.
        let other = TestApp::pipeline_for(&app.config).await;
        let b_stop = CancellationToken::new();
        let b = tokio::spawn(instance("b").run(other, b_stop.clone()));
        let mut client = server.client().await;
        dovecot::append(&mut client, "INBOX", &thread_of_five()[..2]).await;
        wait_for(&app, "2 messages", |c| c.messages == 2).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            lease().await.as_deref(),
            Some("a"),
            "a keeps renewing its lease"
        );

        // a dies without a word: its lease runs out and b takes the mailbox.
        a.abort();
        let deadline = Instant::now() + Duration::from_secs(15);
        while lease().await.as_deref() != Some("b") {
            assert!(Instant::now() < deadline, "b never took over");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dovecot::append(&mut client, "INBOX", &thread_of_five()[2..3]).await;
        wait_for(&app, "the third message, fetched by b", |c| c.messages == 3).await;
        let counts = app.store().counts().await.unwrap();
        assert_eq!(counts.receipts, 3, "nothing taken twice");

        // A clean stop gives the lease up at once.
        b_stop.cancel();
        b.await.unwrap().unwrap();
        assert_eq!(lease().await, None);
        a_stop.cancel();
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_unseen_takes_unread_mail_and_new_mail_only() {
    use futures::TryStreamExt;
    let server = Dovecot::start();
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..4]).await;
    client.select("INBOX").await.unwrap();
    let _: Vec<_> = client
        .uid_store("1:2", "+FLAGS (\\Seen)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel(
            "inbox",
            server.imap_port,
            "first_sync = \"unseen\"\nafter = \"keep\"",
        ),
    )
    .await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for_state(&app, "inbox", "the first sync", |s| {
        s.connected && s.last_uid == 4
    })
    .await;
    assert_eq!(
        app.store().counts().await.unwrap().messages,
        2,
        "the two unread ones"
    );
    dovecot::append(&mut client, "INBOX", &thread_of_five()[4..]).await;
    wait_for(&app, "the new message", |c| c.messages == 3).await;
    running.stop().await;
    // A restart does not go back to the mail that was already read.
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for_state(&app, "inbox", "reconnected", |s| s.connected).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop().await;
    assert_eq!(app.store().counts().await.unwrap().messages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_new_leaves_existing_mail_alone() {
    let server = Dovecot::start();
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..3]).await;
    let app = TestApp::with_config(
        Backend::Sqlite,
        &channel("inbox", server.imap_port, "first_sync = \"new\""),
    )
    .await;
    let running = start(&app, app.pipeline.clone(), "inbox");
    wait_for_state(&app, "inbox", "connected", |s| {
        s.connected && s.last_uid == 3
    })
    .await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[3..4]).await;
    wait_for(&app, "the new message", |c| c.messages == 1).await;
    running.stop().await;
    let flags = dovecot::flags(&mut client, "INBOX").await;
    assert!(flags[0].1.is_empty(), "old mail untouched: {flags:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_reach_the_mailbox_hands_it_to_one_that_can() {
    let server = Dovecot::start();
    let app = TestApp::with_config(Backend::Sqlite, &channel("inbox", server.imap_port, "")).await;
    let reachable = app.config.channels["inbox"].clone();
    let mut unreachable = reachable.clone();
    if let mailroom::config::ChannelSettings::Imap(imap) = &mut unreachable.settings {
        imap.port = Some(crate::smtp::free_port()); // nothing listens there
    }
    let ttl = Duration::from_secs(3);
    let lease = || async {
        app.store()
            .lease_holder("imap:inbox")
            .await
            .unwrap()
            .map(|h| h.0)
    };
    let stop = CancellationToken::new();
    let cut_off = ImapChannel::new("inbox", &unreachable, app.config.ingest.max_message_bytes)
        .unwrap()
        .with_lease("cut-off".into(), ttl);
    let a = tokio::spawn(cut_off.run(app.pipeline.clone(), stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease().await.as_deref() != Some("cut-off") {
        assert!(
            Instant::now() < deadline,
            "the first instance never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthy = ImapChannel::new("inbox", &reachable, app.config.ingest.max_message_bytes)
        .unwrap()
        .with_lease("healthy".into(), ttl);
    let other = TestApp::pipeline_for(&app.config).await;
    let b = tokio::spawn(healthy.run(other, stop.clone()));
    let mut client = server.client().await;
    dovecot::append(&mut client, "INBOX", &thread_of_five()[..1]).await;
    // Three failed sessions later the first gives the lease up.
    wait_for(&app, "the message, through the healthy instance", |c| {
        c.messages == 1
    })
    .await;
    assert_eq!(lease().await.as_deref(), Some("healthy"));
    stop.cancel();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();
}

/// Message-IDs of the messages in `folder`, with whether each is \Seen.
async fn seen_by_id(
    session: &mut async_imap::Session<tokio::net::TcpStream>,
    folder: &str,
) -> Vec<(String, bool)> {
    use futures::TryStreamExt;
    let mailbox = session.select(folder).await.unwrap();
    if mailbox.exists == 0 {
        return Vec::new();
    }
    let fetches: Vec<_> = session
        .uid_fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    fetches
        .iter()
        .map(|f| {
            let header = String::from_utf8_lossy(f.header().unwrap_or_default()).to_string();
            let id = header
                .trim()
                .trim_start_matches("Message-ID:")
                .trim()
                .trim_matches(|c| c == '<' || c == '>')
                .to_string();
            let seen = f
                .flags()
                .any(|fl| matches!(fl, async_imap::types::Flag::Seen));
            (id, seen)
        })
        .collect()
}

/// Message-IDs stored, as `mailroom export --jsonl` shows them.
fn stored_ids(mut export: std::process::Command) -> Vec<String> {
    let out = export.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exported_inbound_ids(&out.stdout)
}

/// `mailroom run` on an IMAP mailbox, SIGKILLed again and again (seeded,
/// printed; `MAILROOM_CRASH_SEED` repeats it) while mail keeps arriving:
/// threads, byte-identical copies, a poison message and one over the size
/// limit. A third of the kills are at a random moment, a third the moment
/// the run holds the mailbox (logging in, searching, fetching the first
/// chunk, before any commit), a third the moment a batch's commit is
/// visible, before its \Seen is stored. After every kill, each message flagged \Seen is
/// stored (acknowledged only after its commit); at the end every message
/// is stored exactly once and flagged \Seen, the poison one is in the
/// quarantine once, and the oversized one was moved aside, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_survives_a_sigkill_loop_acknowledging_only_what_is_committed() {
    mailbox_crash_loop(Backend::Sqlite).await;
}

/// The same on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_survives_a_sigkill_loop_on_postgresql() {
    mailbox_crash_loop(Backend::Postgres).await;
}

async fn mailbox_crash_loop(backend: Backend) {
    use rand::Rng;
    let (seed, mut rng) = seeded("MAILROOM_CRASH_SEED", "imap crash loop");
    let server = Dovecot::start();
    let dir = tempfile::tempdir().unwrap();
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDb::new(Backend::Postgres).await),
    };
    let db_url = db.as_ref().map_or_else(
        || format!("sqlite://{}/data/mailroom.db", dir.path().display()),
        |db| db.url.clone(),
    );
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailroom.toml"),
    )
    .unwrap();
    let config = format!(
        "{shipped}\n{}",
        channel(
            "inbox",
            server.imap_port,
            "fetch_batch = 20\noversize_folder = \"Oversized\"\n"
        )
    );
    std::fs::write(dir.path().join("config/mailroom.toml"), config).unwrap();
    let command = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("MAILROOM_DATABASE_URL", &db_url)
            // A killed holder's lease runs out in 3 s; then the next run syncs.
            .env("MAILROOM_INSTANCE__MAILBOX_LEASE_SECS", "3")
            .env("MAILROOM_INGEST__MAX_MESSAGE_BYTES", "20000");
        command
    };
    let start = || {
        command(&["run"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    assert!(command(&["migrate"]).status().unwrap().success());
    let watcher = mailroom::store::Store::connect_url(&db_url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    let committed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM messages")
            .fetch_one(watcher.pool())
            .await
            .unwrap_or(0)
    };
    let holder = || async {
        sqlx::query_scalar::<_, String>("SELECT holder FROM leases WHERE name = 'imap:inbox'")
            .fetch_optional(watcher.pool())
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let mut client = server.client().await;
    let mut expected = std::collections::BTreeSet::new();
    let mut message = |i: usize| {
        let headers = match i < 30 {
            true => String::new(),
            false => format!("In-Reply-To: <k{}@crash.test>\r\n", i % 30),
        };
        expected.insert(format!("k{i}@crash.test"));
        mail(
            &format!("c{}@crash.test", i % 30),
            &format!("k{i}@crash.test"),
            &format!("Case {}", i % 30),
            &headers,
            &format!("text {i}"),
        )
    };
    let mut sent = 0;
    let mut batch: Vec<Vec<u8>> = (0..100).map(&mut message).collect();
    batch.push(b"this is not an email\r\n".to_vec());
    batch.push(mail(
        "big@crash.test",
        "big@crash.test",
        "Huge",
        "",
        &"x".repeat(30_000),
    ));
    dovecot::append(&mut client, "INBOX", &batch).await;
    let mut appended = batch.len();
    let kills = 12;
    let (mut after_commit, mut before_commit) = (0, 0);
    for _ in 0..kills {
        let mut daemon = start();
        let count = rng.gen_range(20..60);
        let mut more: Vec<Vec<u8>> = (sent + 100..sent + 100 + count).map(&mut message).collect();
        sent += count;
        // A byte-identical copy of one of them: stored once.
        more.push(more[rng.gen_range(0..more.len())].clone());
        dovecot::append(&mut client, "INBOX", &more).await;
        appended += more.len();
        match rng.gen_range(0..3) {
            0 => {
                // The moment a batch is committed: its \Seen may not be stored yet.
                let before = committed().await;
                let deadline = Instant::now() + Duration::from_secs(10);
                while committed().await <= before && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                after_commit += usize::from(committed().await > before);
            }
            1 => {
                // The moment it holds the mailbox: logging in, searching,
                // fetching the first chunk.
                let before = committed().await;
                let mine = format!("/{}/", daemon.id());
                let deadline = Instant::now() + Duration::from_secs(10);
                while !holder().await.contains(&mine) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
                before_commit += usize::from(committed().await == before);
            }
            _ => {
                // Before, during or after the lease is taken and the sync runs.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(2500..4200))).await;
            }
        }
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        // Acknowledged only after commit: every \Seen message is stored.
        let stored = stored_ids(command(&["export", "--jsonl"]));
        for (id, seen) in seen_by_id(&mut client, "INBOX").await {
            assert!(
                !seen || id.is_empty() || id == "big@crash.test" || stored.contains(&id),
                "{id} is \\Seen but not stored (seed {seed})"
            );
        }
    }
    let log = dir.path().join("last-run.log");
    let mut daemon = command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // One more message, so this run is seen working before it stops.
    dovecot::append(&mut client, "INBOX", &[message(sent + 100)]).await;
    appended += 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = seen_by_id(&mut client, "INBOX").await;
        // All but the oversized one, moved aside.
        if all.len() == appended - 1 && all.iter().all(|(_, seen)| *seen) {
            break;
        }
        let unseen: Vec<&String> = all
            .iter()
            .filter(|(_, seen)| !seen)
            .map(|(id, _)| id)
            .collect();
        assert!(
            Instant::now() < deadline,
            "not every message taken (seed {seed}): {} of {appended} there, unseen {unseen:?}: {}",
            all.len(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = daemon.wait().unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let stored = stored_ids(command(&["export", "--jsonl"]));
    assert_each_stored_once(&stored, &expected, &format!("seed {seed}"));
    let quarantined = command(&["quarantine", "list", "--json"]).output().unwrap();
    let quarantined: serde_json::Value = serde_json::from_slice(&quarantined.stdout).unwrap();
    assert_eq!(
        quarantined.as_array().unwrap().len(),
        1,
        "the poison: {quarantined}"
    );
    let aside = seen_by_id(&mut client, "Oversized").await;
    assert_eq!(
        aside,
        [("big@crash.test".to_string(), false)],
        "moved aside once"
    );
    watcher.close().await;
    println!(
        "imap crash loop ({backend:?}): {kills} kills ({before_commit} with the mailbox held before its first commit, {after_commit} right after a commit), {appended} messages appended, {} stored once each, the poison quarantined once, the oversized one moved aside once, 0 acknowledged before commit",
        stored.len()
    );
}

/// Two instances on PostgreSQL share three mailboxes. Whichever holds the
/// most is SIGKILLed, round after round (seeded, printed), while mail keeps
/// arriving and the killed one is started again: each time the survivor
/// holds every mailbox soon after the lease runs out (3 s, plus its
/// standby poll of a third of that), nothing \Seen is unstored, and at the
/// end every message is stored exactly once and \Seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_take_over_each_others_mailboxes_through_repeated_kills() {
    use rand::Rng;
    let (seed, mut rng) = seeded("MAILROOM_CRASH_SEED", "two-instance crash loop");
    let server = Dovecot::start();
    let db = TestDb::new(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mailroom.toml"),
    )
    .unwrap();
    let folders = ["INBOX", "Box1", "Box2"];
    let mut client = server.client().await;
    let mut config = shipped;
    for (i, folder) in folders.iter().enumerate() {
        if *folder != "INBOX" {
            client.create(folder).await.unwrap();
        }
        let extra = format!("folder = \"{folder}\"\nfetch_batch = 10\n");
        config.push_str(&channel(&format!("box{i}"), server.imap_port, &extra));
    }
    std::fs::write(dir.path().join("config/mailroom.toml"), config).unwrap();
    let lease = Duration::from_secs(3);
    let command = |args: &[&str], name: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mailroom"));
        command
            .args(args)
            .current_dir(dir.path())
            .env("MAILROOM_DATABASE_URL", &db.url)
            .env("MAILROOM_INSTANCE__NAME", name)
            .env(
                "MAILROOM_INSTANCE__MAILBOX_LEASE_SECS",
                lease.as_secs().to_string(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    assert!(command(&["migrate"], "a").status().unwrap().success());
    let watcher = mailroom::store::Store::connect_url(&db.url, 1, Duration::from_secs(5))
        .await
        .unwrap();
    // pid of each mailbox's live holder ("name/pid/tag").
    let holders = || async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT holder, expires_at FROM leases WHERE name LIKE 'imap:%' ORDER BY name",
        )
        .fetch_all(watcher.pool())
        .await
        .unwrap();
        rows.into_iter()
            .filter(|(_, expires)| *expires > now)
            .filter_map(|(holder, _)| holder.split('/').nth(1)?.parse::<u32>().ok())
            .collect::<Vec<u32>>()
    };
    let mut expected = std::collections::BTreeSet::new();
    let mut next = 0;
    let mut more_mail = |rng: &mut rand::rngs::StdRng| {
        let mut by_folder: Vec<Vec<Vec<u8>>> = vec![Vec::new(); folders.len()];
        for _ in 0..rng.gen_range(10..30) {
            let id = format!("t{next}@two.test");
            let folder = rng.gen_range(0..folders.len());
            by_folder[folder].push(mail(
                &format!("c{}@two.test", next % 7),
                &id,
                "Two",
                "",
                "text",
            ));
            expected.insert(id);
            next += 1;
        }
        by_folder
    };
    let mut instances = [
        command(&["run"], "a").spawn().unwrap(),
        command(&["run"], "b").spawn().unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while holders().await.len() < folders.len() {
        assert!(Instant::now() < deadline, "the mailboxes were never taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rounds = 8;
    let mut takeovers = Vec::new();
    for _ in 0..rounds {
        for (folder, messages) in folders.iter().zip(more_mail(&mut rng)) {
            if !messages.is_empty() {
                dovecot::append(&mut client, folder, &messages).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..1500))).await;
        let held = holders().await;
        let count = |i: usize| held.iter().filter(|&&pid| pid == instances[i].id()).count();
        let victim = if count(0) >= count(1) { 0 } else { 1 };
        let survivor = instances[1 - victim].id();
        instances[victim].kill().unwrap();
        instances[victim].wait().unwrap();
        let killed = Instant::now();
        loop {
            let held = holders().await;
            if held.len() == folders.len() && held.iter().all(|&pid| pid == survivor) {
                break;
            }
            assert!(
                killed.elapsed() < lease * 2 + Duration::from_secs(2),
                "the survivor did not take the mailboxes over (seed {seed}): {held:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        takeovers.push(killed.elapsed());
        let name = if victim == 0 { "a" } else { "b" };
        instances[victim] = command(&["run"], name).spawn().unwrap();
    }
    for (folder, messages) in folders.iter().zip(more_mail(&mut rng)) {
        if !messages.is_empty() {
            dovecot::append(&mut client, folder, &messages).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    'waiting: loop {
        assert!(
            Instant::now() < deadline,
            "not every message taken (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut total = 0;
        for folder in folders {
            let all = seen_by_id(&mut client, folder).await;
            if !all.iter().all(|(_, seen)| *seen) {
                continue 'waiting;
            }
            total += all.len();
        }
        if total == expected.len() {
            break;
        }
    }
    for instance in &mut instances {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &instance.id().to_string()])
            .status();
        assert!(instance.wait().unwrap().success());
    }
    let mut export = command(&["export", "--jsonl"], "a");
    export.stdout(std::process::Stdio::piped());
    let stored = stored_ids(export);
    assert_each_stored_once(&stored, &expected, &format!("seed {seed}"));
    watcher.close().await;
    let slowest = takeovers.iter().max().unwrap();
    println!(
        "two-instance crash loop: {rounds} kills, {} messages in {} mailboxes, stored once each; takeover after the kill at most {:.2} s (lease {} s)",
        stored.len(),
        folders.len(),
        slowest.as_secs_f64(),
        lease.as_secs()
    );
}

/// Live reload with mailboxes (the daemon in-process): a mailbox added
/// takes its mail; a reload that cannot be prepared (its listener's
/// address is in use) is refused and the mailboxes run on; a mailbox
/// removed ends its session and gives up its lease, and its new mail
/// stays on the server, unread, while the other goes on; the HTTP socket
/// bound at the start still answers at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_mailboxes_while_the_rest_runs() {
    use mailroom::app::{App, Reload};
    let server = Dovecot::start();
    let db = TestDb::new(Backend::Sqlite).await;
    let mut client = server.client().await;
    client.create("Box1").await.unwrap();
    // `first` goes through a proxy that counts its connections.
    let (first_port, first_sessions) = counting_proxy(server.imap_port).await;
    let mailbox = |name: &str, port: u16, folder: &str| {
        channel(name, port, &format!("folder = \"{folder}\"\n"))
    };
    let first = mailbox("first", first_port, "INBOX");
    let second = mailbox("second", server.imap_port, "Box1");
    // The listener's socket is bound once and served again after each reload.
    let http = "[http]\nbind = \"127.0.0.1:0\"\n";
    let app = App::build(test_config(&db.url, &format!("{http}{first}")))
        .await
        .unwrap();
    let readyz = format!("http://{}/readyz", app.http_address().unwrap());
    let store = app.store().clone();
    let (reloads, received) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_with_reloads(shutdown.clone(), Some(received)));
    let reload = |extra: String| {
        let (outcome, answer) = tokio::sync::oneshot::channel();
        let config = test_config(&db.url, &extra);
        reloads
            .send(Reload {
                config,
                outcome: Some(outcome),
            })
            .unwrap();
        answer
    };
    let messages = || async { store.counts().await.unwrap().messages };
    let until = |want: i64| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while messages().await != want {
            assert!(Instant::now() < deadline, "never {want} messages stored");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    let one = |id: &str| vec![mail("r@c.test", id, "Reload", "", "text")];
    dovecot::append(&mut client, "INBOX", &one("a1@reload.test")).await;
    until(1).await;

    let added = reload(format!("{http}{first}{second}")).await.unwrap();
    assert_eq!(added.as_deref(), Ok("channels +second"));
    dovecot::append(&mut client, "Box1", &one("b1@reload.test")).await;
    until(2).await;
    dovecot::append(&mut client, "INBOX", &one("a1b@reload.test")).await;
    until(3).await;
    assert_eq!(
        first_sessions.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the unchanged mailbox kept its session through the reload"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let refused = reload(format!("[http]\nbind = \"{address}\"\n{second}"))
        .await
        .unwrap();
    let reason = refused.unwrap_err();
    assert!(
        reason.contains("http.bind") && reason.contains(&address.to_string()),
        "{reason}"
    );
    dovecot::append(&mut client, "INBOX", &one("a2@reload.test")).await;
    until(4).await;

    let removed = reload(format!("{http}{second}")).await.unwrap();
    assert_eq!(removed.as_deref(), Ok("channels -first"));
    assert_eq!(
        store.lease_holder("imap:first").await.unwrap(),
        None,
        "its lease is given up"
    );
    dovecot::append(&mut client, "INBOX", &one("a3@reload.test")).await;
    dovecot::append(&mut client, "Box1", &one("b2@reload.test")).await;
    until(5).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(messages().await, 5, "the removed mailbox is not read");
    let inbox = seen_by_id(&mut client, "INBOX").await;
    assert!(
        inbox.contains(&("a3@reload.test".to_string(), false)),
        "{inbox:?}"
    );

    let (status, _) = crate::http::get_json(readyz).await;
    assert_eq!(status, 200, "the same socket answers after three reloads");

    shutdown.cancel();
    running.await.unwrap().unwrap();
}
