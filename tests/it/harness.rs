//! Test harness: a fresh database per test (a SQLite file in a temp dir, or a
//! new database on the real PostgreSQL server), and a pipeline over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailroom::config::Config;
use mailroom::pipeline::{Disposition, OnBadInput, Outcome, Pipeline, RawMessage};
use mailroom::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Admin URL of the PostgreSQL server tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("MAILROOM_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test and is dropped after it.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}/mailroom.db", dir.path().display());
                TestDb {
                    url,
                    backend,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let name = format!("mr_test_{}", hex::encode(rand::random::<[u8; 6]>()));
                let admin = Store::connect_url(&pg_admin_url(), 1, Duration::from_secs(10))
                    .await
                    .expect("PostgreSQL must be running for the tests (see README: Testing)");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(admin.pool())
                    .await
                    .unwrap();
                admin.close().await;
                let base = pg_admin_url();
                let url = match base.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => unreachable!(),
                };
                TestDb {
                    url,
                    backend,
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs outside async; a short-lived runtime on its own thread does it.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(admin) =
                        Store::connect_url(&pg_admin_url(), 1, Duration::from_secs(10)).await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(admin.pool())
                                .await;
                        admin.close().await;
                    }
                });
            })
            .join()
            .ok();
        }
    }
}

/// The config used by most tests: two teams (support, sales), a pipe channel
/// for each, a second support channel, and a chat channel that does not
/// create tickets. `extra` is appended to the TOML.
pub fn test_config(db_url: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 4

[ingest]
parse_timeout_ms = 500
max_attempts = 3

[pipelines.support]
statuses = [
  {{ name = "open", kind = "open" }},
  {{ name = "waiting on contact", kind = "waiting" }},
  {{ name = "closed", kind = "closed" }},
]

[teams.support]
addresses = [{{ address = "support@example.com", default = true }}]
[teams.sales]
addresses = [{{ address = "sales@example.com" }}]

[channels.pipe]
kind = "pipe"
team = "support"
pipeline = "support"
[channels.pipe2]
kind = "pipe"
team = "support"
pipeline = "support"
[channels.sales]
kind = "pipe"
team = "sales"
pipeline = "support"
[channels.chat]
kind = "pipe"
team = "support"
pipeline = "support"
create_tickets = false
{extra}
"#
    );
    config_from_toml(&text)
}

/// A seeded random source for a randomized test: the seed from `var` when
/// set (to repeat a run), else a fresh one; printed with `what` either way.
pub fn seeded(var: &str, what: &str) -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{what} seed {seed} ({var}={seed} repeats it)");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// The Message-IDs of the inbound messages in `mailroom export --jsonl` output.
pub fn exported_inbound_ids(jsonl: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    for line in String::from_utf8_lossy(jsonl).lines() {
        let ticket: serde_json::Value = serde_json::from_str(line).unwrap();
        for m in ticket["messages"].as_array().unwrap() {
            if m["direction"] == "inbound" {
                ids.push(m["message_id"].as_str().unwrap().to_string());
            }
        }
    }
    ids
}

/// Every expected message stored, each exactly once, and nothing else;
/// `run` names the run in a failure (its seed).
pub fn assert_each_stored_once(
    stored: &[String],
    expected: &std::collections::BTreeSet<String>,
    run: &str,
) {
    let unique: std::collections::BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "a message stored twice ({run})");
    assert_eq!(&unique, expected, "lost or unexpected messages ({run})");
}

/// Loads (and validates) a config from TOML text, as `mailroom` would.
pub fn config_from_toml(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailroom.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A migrated store with the test config synced, and a pipeline over it.
pub struct TestApp {
    pub db: TestDb,
    pub config: Config,
    pub pipeline: Pipeline,
}

impl TestApp {
    pub async fn new(backend: Backend) -> TestApp {
        Self::with_config(backend, "").await
    }

    pub async fn with_config(backend: Backend, extra: &str) -> TestApp {
        let db = TestDb::new(backend).await;
        let config = test_config(&db.url, extra);
        let pipeline = Self::pipeline_for(&config).await;
        TestApp {
            db,
            config,
            pipeline,
        }
    }

    /// A second, independent pipeline on the same database (another instance).
    pub async fn pipeline_for(config: &Config) -> Pipeline {
        let store = Store::connect(&config.database).await.unwrap();
        store.migrate().await.unwrap();
        let dir = store.sync_config(config).await.unwrap();
        Pipeline::new(store, Arc::new(dir), config.ingest.clone())
    }

    pub fn store(&self) -> &Store {
        self.pipeline.store()
    }

    pub async fn feed(&self, channel: &str, data: &[u8]) -> Disposition {
        feed_with(&self.pipeline, channel, data).await
    }

    /// Feeds a message and returns what applying it did (panics if quarantined).
    pub async fn apply(&self, channel: &str, data: &[u8]) -> Outcome {
        match self.feed(channel, data).await {
            Disposition::Applied(outcome) => outcome,
            other => panic!("expected the message to be applied, got {other:?}"),
        }
    }

    pub async fn apply_file(&self, path: impl AsRef<Path>) -> Outcome {
        let data = std::fs::read(fixture(path)).unwrap();
        self.apply("pipe", &data).await
    }
}

/// Runs one message through `pipeline` on `channel`.
pub async fn feed_with(pipeline: &Pipeline, channel: &str, raw: &[u8]) -> Disposition {
    pipeline
        .process(
            vec![RawMessage {
                channel: channel.into(),
                source: None,
                data: Arc::new(raw.to_vec()),
            }],
            OnBadInput::Quarantine,
        )
        .await
        .unwrap()
        .remove(0)
}

/// Runs one message through `pipeline` on `channel` and returns what
/// applying it did (panics if it was not applied).
pub async fn apply_with(pipeline: &Pipeline, channel: &str, raw: &[u8]) -> Outcome {
    match feed_with(pipeline, channel, raw).await {
        Disposition::Applied(outcome) => outcome,
        other => panic!("expected the message to be applied, got {other:?}"),
    }
}

pub fn fixture(path: impl AsRef<Path>) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(path)
}

pub fn ticket_of(outcome: &Outcome) -> i64 {
    outcome.ticket_id().expect("outcome has a ticket")
}

/// A simple message for tests that build their own.
pub fn mail(from: &str, message_id: &str, subject: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@example.com\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n{headers}\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Declares a test that runs once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::harness::Backend::Postgres).await
            }
        }
    };
}
