//! Per-channel state, kept as JSON in `channels.state`: what an IMAP
//! mailbox has taken so far and how its sessions go (`mailroom status`,
//! metrics).

use serde::{Deserialize, Serialize};

use super::{now_ms, Store};

/// A message left on the server because it is too large.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Oversized {
    pub uid: u32,
    pub size: u32,
    pub moved_to: Option<String>,
}

/// A message the server would not give: in how many sessions in a row,
/// since when and last when (unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub uid: u32,
    pub times: u32,
    pub since: i64,
    pub at: i64,
}

/// An IMAP mailbox's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImapState {
    pub uidvalidity: Option<u32>,
    /// Highest UID whose message is committed and acknowledged.
    pub last_uid: u32,
    pub connected: bool,
    pub idle: bool,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// Messages waiting on the server at the last look.
    pub backlog: usize,
    #[serde(default)]
    pub oversized: Vec<Oversized>,
    /// The message the server refuses now (the mailbox waits below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusing: Option<Refused>,
    /// Messages passed over after `pass_over_refused_after_secs`: left on
    /// the server, never stored (the latest 100, of this UIDVALIDITY).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<Refused>,
    /// `first_sync = "unseen"` in progress: unread mail up to this UID is
    /// still being taken; mail already read there is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_until: Option<u32>,
}

impl Store {
    /// The channel's state; the default when none is stored yet (or it
    /// cannot be read as `T`).
    pub async fn channel_state<T: for<'de> Deserialize<'de> + Default>(
        &self,
        key: &str,
    ) -> Result<T, sqlx::Error> {
        let text: Option<String> = sqlx::query_scalar("SELECT state FROM channels WHERE key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default())
    }

    pub async fn set_channel_state<T: Serialize>(
        &self,
        key: &str,
        state: &T,
    ) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("UPDATE channels SET state = $1, updated_at = $2 WHERE key = $3")
            .bind(serde_json::to_string(state).unwrap_or_else(|_| "{}".into()))
            .bind(now_ms())
            .bind(key)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}
