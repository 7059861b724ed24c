//! The store: one sqlx `Any` pool over SQLite or PostgreSQL, and the only
//! place that runs SQL. One file per aggregate; rows are read into typed
//! structs (`sqlx::FromRow`). The SQL is shared (`$N` placeholders,
//! `ON CONFLICT`, `RETURNING` work on both); only the migrations differ.
//! All timestamps are unix milliseconds.

pub mod agent_mail;
pub mod blobs;
pub mod blocks;
pub mod channels;
pub mod comments;
pub mod contacts;
pub mod directory;
pub mod drafts;
pub mod events;
pub mod inbound;
pub mod leases;
pub mod messages;
pub mod notify;
pub mod oauth;
pub mod outbox;
pub mod quarantine;
pub mod replays;
pub mod replies;
pub mod snippets;
pub mod sql;
pub mod ticket_changes;
pub mod tickets;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Transaction};

use crate::config::DatabaseConfig;

pub use directory::{Actor, Directory};
pub use tickets::Counts;

pub type Tx = Transaction<'static, sqlx::Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite allows one writer at a time; queueing writers here (instead of
    /// in SQLite's busy handler, which sleeps in steps) keeps latency low.
    /// Other processes on the same file are handled by `BEGIN IMMEDIATE`.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
    /// PostgreSQL: the URL, for a LISTEN connection of its own (a secret:
    /// never logged).
    pg_url: Option<Arc<str>>,
}

/// How a database error should be handled by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The database cannot be reached: keep the message at its source and retry later.
    Unavailable,
    /// A lock or a concurrent insert got in the way: retry now.
    Transient,
    /// Retrying will not help (a bug, or data the schema refuses).
    Permanent,
}

pub fn classify_error(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorClass::Unavailable,
        sqlx::Error::Database(db) => {
            if db.is_unique_violation() {
                // Another writer (instance) committed the same thing first;
                // a retry sees it and turns into a duplicate.
                return ErrorClass::Transient;
            }
            let code = db.code().unwrap_or_default();
            match code.as_ref() {
                // SQLite BUSY, LOCKED and their extended codes.
                c if c == "5" || c == "6" || c == "261" || c == "517" || c == "262" => {
                    ErrorClass::Transient
                }
                // PostgreSQL serialization failure, deadlock.
                "40001" | "40P01" => ErrorClass::Transient,
                // PostgreSQL connection exceptions, shutdown, too many connections.
                c if c.starts_with("08") || c.starts_with("57P") || c == "53300" => {
                    ErrorClass::Unavailable
                }
                _ => ErrorClass::Permanent,
            }
        }
        _ => ErrorClass::Permanent,
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the pool. For SQLite the file (and its folder) is created on
    /// first use, with WAL and `synchronous=FULL` so that a committed message
    /// survives power loss.
    pub async fn connect(config: &DatabaseConfig) -> anyhow::Result<Store> {
        let url = config
            .url
            .resolve()
            .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        Self::connect_url(
            &url,
            config.max_connections,
            Duration::from_secs(config.connect_timeout_secs),
        )
        .await
    }

    pub async fn connect_url(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| anyhow::anyhow!("database.url is not a valid URL: {e}"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlite_pragmas(conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot connect to the database ({}): {e}", redact_url(&url))
            })?;
        Ok(Store {
            pool,
            backend,
            write_lock: (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(()))),
            pg_url: (backend == Backend::Postgres).then(|| Arc::from(url.as_str())),
        })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations for this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let result = match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite").run(&self.pool).await,
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await,
        };
        result.map_err(|e| anyhow::anyhow!("database migration failed: {e}"))?;
        self.normalize_stored_ids()
            .await
            .map_err(|e| anyhow::anyhow!("database migration failed: {e}"))
    }

    /// Once per database: Message-IDs stored before they had one form (a
    /// quoted dot-atom local part, `"abc"@x`) are rewritten to it
    /// (`abc@x`), so mail that names them in either form still threads.
    async fn normalize_stored_ids(&self) -> Result<(), sqlx::Error> {
        const DONE: &str = "message_ids_normalized";
        let done: Option<i64> = sqlx::query_scalar("SELECT value FROM counters WHERE name = $1")
            .bind(DONE)
            .fetch_optional(&self.pool)
            .await?;
        if done.is_some() {
            return Ok(());
        }
        let mut w = self.begin_write().await?;
        let quoted: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, message_id FROM messages WHERE message_id LIKE '\"%'")
                .fetch_all(&mut *w.tx)
                .await?;
        for (id, message_id) in quoted {
            let clean = crate::mail::ids::clean_id(&message_id);
            if clean != message_id {
                sqlx::query("UPDATE messages SET message_id = $1 WHERE id = $2")
                    .bind(clean)
                    .bind(id)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        let referenced: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT referenced FROM message_refs WHERE referenced LIKE '\"%'",
        )
        .fetch_all(&mut *w.tx)
        .await?;
        for old in referenced {
            let clean = crate::mail::ids::clean_id(&old);
            if clean != old {
                sqlx::query("UPDATE message_refs SET referenced = $1 WHERE referenced = $2")
                    .bind(clean)
                    .bind(old)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        sqlx::query(
            "INSERT INTO counters (name, value) VALUES ($1, 1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(DONE)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }

    /// Starts a write transaction. On SQLite it holds the in-process write
    /// lock and takes the file's write lock up front (`BEGIN IMMEDIATE`), so a
    /// transaction never fails half-way on a lock upgrade.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Answers whether the database can be reached (`/readyz`, the watchdog).
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// PostgreSQL: calls `wake` whenever a transaction NOTIFYs `channel`,
    /// reconnecting as needed, until `stop`. SQLite: waits for `stop`. Run it
    /// beside the work it wakes.
    pub async fn listen(
        &self,
        channel: &'static str,
        wake: &tokio::sync::Notify,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let Some(url) = self.pg_url.clone() else {
            return stop.cancelled().await;
        };
        let mut failures = 0;
        while !stop.is_cancelled() {
            let listened = async {
                let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
                listener.listen(channel).await?;
                loop {
                    listener.recv().await?;
                    wake.notify_one();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            let result = tokio::select! {
                result = listened => result,
                _ = stop.cancelled() => return,
            };
            if let Err(e) = result {
                failures += 1;
                tracing::warn!(%channel, error = %e, "LISTEN connection lost; polling until it is back.");
                tokio::select! {
                    _ = tokio::time::sleep(crate::retry::Backoff::STORE.delay(failures)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    /// SQLite: copies the WAL into the database file every second, off the
    /// commit path, until `stop`. Left to `wal_autocheckpoint`, the commit
    /// that crosses the threshold pays for the whole copy, which shows as
    /// latency spikes under load; the autocheckpoint stays as a backstop at
    /// a higher threshold. A PASSIVE checkpoint never blocks writers.
    /// PostgreSQL: waits for `stop`.
    pub async fn checkpoint_until(&self, stop: &tokio_util::sync::CancellationToken) {
        if self.backend != Backend::Sqlite {
            return stop.cancelled().await;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await
            {
                tracing::debug!(error = %e, "WAL checkpoint skipped.");
            }
        }
    }

    /// Tells other instances (PostgreSQL LISTEN) that `channel` has work;
    /// sent when the transaction commits. SQLite: nothing (they poll).
    pub async fn notify(&self, tx: &mut Tx, channel: &str) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(channel)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A write transaction plus, on SQLite, the in-process writer lock it holds.
pub struct WriteTx {
    pub tx: Tx,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

/// Durability and locking settings for every SQLite connection.
async fn sqlite_pragmas(conn: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
         PRAGMA cache_size = -32768; PRAGMA mmap_size = 268435456; \
         PRAGMA wal_autocheckpoint = 16384;",
    )
    .await?;
    Ok(())
}

fn prepare_sqlite_url(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:" && !path.is_empty() {
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create the database folder {}: {e}",
                        parent.display()
                    )
                })?;
            }
        }
    }
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// The URL with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://mr:hunter2@db:5432/x"),
            "postgres://mr:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://data/m.db"), "sqlite://data/m.db");
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/m.db");
        let url = prepare_sqlite_url(&format!("sqlite://{}", path.display())).unwrap();
        assert!(url.ends_with("?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
    }
}
