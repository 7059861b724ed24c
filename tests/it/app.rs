//! The real daemon booted in-process (`App::build` + `run_until_stopped`):
//! it takes mail from its spool and its webhook, sends a reply, reports
//! itself ready, and stops in order — a send in flight is finished and
//! recorded before the pool closes.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::http::{bearer, get_json, post};
use crate::smtp::SmtpSink;
use mailroom::app::App;

fn daemon_config(
    db_url: &str,
    spool: &std::path::Path,
    smtp_port: u16,
) -> mailroom::config::Config {
    config_from_toml(&format!(
        r#"
[database]
url = "{db_url}"
[http]
bind = "127.0.0.1:0"
[pipelines.support]
statuses = [{{ name = "open", kind = "open" }}, {{ name = "closed", kind = "closed" }}]
[teams.support]
addresses = [{{ address = "support@example.com" }}]
[agents.alice]
email = "alice@example.com"
teams = ["support"]
api_token = "alice-token-0123456789"
[channels.spool]
kind = "maildir"
team = "support"
pipeline = "support"
path = "{spool}"
poll_interval_ms = 50
[channels.hook]
kind = "webhook"
team = "support"
pipeline = "support"
auth_token = "hook-token-0123456789"
[relays.sink]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
timeout_secs = 20
[outbox]
poll_interval_ms = 100
lease_secs = 30
"#,
        spool = spool.display()
    ))
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_boots_in_process_and_finishes_a_send_in_flight_before_it_stops() {
    // Arrange: a relay that takes 2 s to answer DATA.
    let sink = SmtpSink::start(&["-w", "2"]);
    let db = TestDb::new(Backend::Sqlite).await;
    let spool = tempfile::tempdir().unwrap();
    let config = daemon_config(&db.url, spool.path(), sink.port);
    let app = App::build(config).await.unwrap();
    let base = format!("http://{}", app.http_address().unwrap());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    // Ready means ready: the spool is watched and the webhook answers.
    let (status, ready) = get_json(format!("{base}/readyz")).await;
    assert_eq!(
        (status, &ready["channels_started"]),
        (200, &serde_json::json!(true))
    );
    let file = spool.path().join("new/1.spool");
    std::fs::write(&file, mail("ann@c.test", "s1@c.test", "Spooled", "", "hi")).unwrap();
    until("the spooled file acknowledged", || {
        std::fs::read_dir(spool.path().join("cur")).is_ok_and(|d| d.count() == 1)
    })
    .await;
    let webhook = mail("bob@c.test", "w1@c.test", "Hooked", "", "hello");
    let (status, created) = post(
        format!("{base}/inbound/hook"),
        bearer("hook-token-0123456789"),
        webhook,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let number = created["number"].as_i64().unwrap();

    // Act: a reply goes out; stop while the relay still holds DATA.
    let reply = serde_json::json!({ "body": "On it." })
        .to_string()
        .into_bytes();
    let url = format!("{base}/api/v1/tickets/{number}/replies");
    let mut headers = bearer("alice-token-0123456789");
    headers.push(("content-type", "application/json".into()));
    let (status, queued) = post(url, headers, reply).await;
    assert_eq!(status, 202, "{queued}");
    let watcher = TestApp::pipeline_for(&daemon_config(&db.url, spool.path(), sink.port)).await;
    let claimed = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT claimed_by FROM outbox")
            .fetch_one(watcher.store().pool())
            .await
            .unwrap()
            .is_some()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !claimed().await {
        assert!(Instant::now() < deadline, "the reply was never claimed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the daemon stops within its deadlines")
        .unwrap()
        .expect("a clean stop");

    // Assert: the send in flight was finished and recorded before the
    // pool closed, and the listener is gone.
    let state: Option<String> =
        sqlx::query_scalar("SELECT delivery_state FROM messages WHERE direction = 'outbound'")
            .fetch_one(watcher.store().pool())
            .await
            .unwrap();
    assert_eq!(state.as_deref(), Some("sent"));
    assert_eq!(sink.count(), 1);
    let refused = std::net::TcpStream::connect(base.trim_start_matches("http://"));
    assert!(refused.is_err(), "the HTTP port is closed after the stop");
}
