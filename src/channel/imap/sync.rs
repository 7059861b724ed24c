//! Taking new mail from the selected folder, in chunks of `fetch_batch`:
//! size check, fetch, commit through the pipeline, after-action for exactly
//! those UIDs, then advance `last_uid`. The next chunk is fetched while the
//! current one commits. A crash between the commit and the after-action
//! only means a re-fetch, which is recorded as a duplicate.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_imap::types::Fetch;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use super::{db, other, Capabilities, Failure, ImapChannel, ImapState, Oversized};
use crate::config::{After, ImapConfig};
use crate::net::imap::{deadline, ImapError, ImapSession};
use crate::pipeline::{Disposition, OnBadInput, Pipeline, PipelineError, RawMessage};
use crate::store::now_ms;

/// Oversized messages remembered in a mailbox's state.
const MAX_OVERSIZED_REPORTED: usize = 100;

impl ImapChannel {
    /// Takes every message above `last_uid`, in chunks. Returns how many it
    /// took. The next chunk is fetched while the current one commits (the
    /// session is idle while the database works); a chunk is acknowledged
    /// at the server only after its own commit.
    pub(super) async fn sync(
        &self,
        session: &mut ImapSession,
        pipeline: &Pipeline,
        state: &mut ImapState,
        actions: &AfterActions,
        shutdown: &CancellationToken,
        lost: Option<&AtomicBool>,
    ) -> Result<usize, Failure> {
        let lease_lost = || lost.is_some_and(|l| l.load(Ordering::SeqCst));
        let store = pipeline.store();
        let uids = self.search(session, state).await?;
        state.backlog = uids.len();
        tracing::debug!(mailbox = %self.name, found = uids.len(), "Searched.");
        let chunks: Vec<&[u32]> = uids.chunks(self.client.config().fetch_batch).collect();
        let mut taken = 0;
        let mut next = match chunks.first() {
            Some(chunk) if !shutdown.is_cancelled() => {
                Some(self.prefetch(session, state, actions, chunk).await?)
            }
            _ => None,
        };
        let mut index = 0;
        while let Some(current) = next.take() {
            let chunk = chunks[index];
            index += 1;
            // Stopping (or the lease is gone): fetch nothing more.
            let more = index < chunks.len() && !shutdown.is_cancelled() && !lease_lost();
            let (committed, prefetched) =
                tokio::join!(self.commit(pipeline, current.raws), async {
                    match more {
                        true => Some(self.prefetch(session, state, actions, chunks[index]).await),
                        false => None,
                    }
                });
            committed?;
            // Committed (or kept in the quarantine): now acknowledge.
            let limit = self.client.config().command_timeout();
            if !current.fetched.is_empty() {
                actions
                    .apply(session, &uid_set(&current.fetched), limit)
                    .await?;
                tracing::debug!(mailbox = %self.name, "Acknowledged.");
            }
            taken += current.fetched.len();
            state.last_uid = chunk.last().copied().unwrap_or(state.last_uid);
            state.last_success = Some(now_ms());
            state.backlog = state.backlog.saturating_sub(chunk.len());
            // The new holder writes the state now; ours would move it back.
            if lease_lost() {
                break;
            }
            store
                .set_channel_state(&self.name, state)
                .await
                .map_err(db)?;
            next = prefetched.transpose()?;
        }
        if let (Some(until), false) = (state.unseen_until, shutdown.is_cancelled()) {
            // The unread mail is in; read mail below the mark stays behind.
            state.last_uid = state.last_uid.max(until);
            state.unseen_until = None;
            store
                .set_channel_state(&self.name, state)
                .await
                .map_err(db)?;
        }
        if taken > 0 {
            tracing::info!(mailbox = %self.name, messages = taken, last_uid = state.last_uid, "Mailbox synced.");
        }
        Ok(taken)
    }

    /// The UIDs to take, ascending: above `last_uid`, and during a
    /// `first_sync = "unseen"` only unread mail up to its mark.
    async fn search(
        &self,
        session: &mut ImapSession,
        state: &ImapState,
    ) -> Result<Vec<u32>, Failure> {
        let limit = self.client.config().command_timeout();
        let mut searches = vec![format!("UID {}:*", state.last_uid.saturating_add(1))];
        if let Some(until) = state.unseen_until {
            searches[0] = format!("UID {}:*", until.saturating_add(1));
            if state.last_uid < until {
                searches.push(format!("UID {}:{until} UNSEEN", state.last_uid + 1));
            }
        }
        let floor = state.unseen_until.unwrap_or(0).max(state.last_uid);
        let mut uids: Vec<u32> = Vec::new();
        for (i, query) in searches.iter().enumerate() {
            let found = deadline(limit, "UID SEARCH", async {
                session.uid_search(query).await.map_err(other("UID SEARCH"))
            })
            .await?;
            // "n:*" always matches the highest UID, even when it is below n.
            let above = if i == 0 { floor } else { state.last_uid };
            uids.extend(found.into_iter().filter(|&u| u > above));
        }
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }

    /// One chunk's sizes and bodies; oversized ones are set aside.
    async fn prefetch(
        &self,
        session: &mut ImapSession,
        state: &mut ImapState,
        actions: &AfterActions,
        chunk: &[u32],
    ) -> Result<Fetched, Failure> {
        let limit = self.client.config().command_timeout();
        let sizes: Vec<Fetch> = deadline(limit, "UID FETCH (RFC822.SIZE)", async {
            let stream = session
                .uid_fetch(uid_set(chunk), "(UID RFC822.SIZE)")
                .await
                .map_err(other("UID FETCH"))?;
            stream.try_collect().await.map_err(other("UID FETCH"))
        })
        .await?;
        let mut wanted = Vec::new();
        let mut total: u64 = 0;
        for fetch in &sizes {
            let (Some(uid), Some(size)) = (fetch.uid, fetch.size) else {
                continue;
            };
            if u64::from(size) > self.max_message_bytes {
                self.set_aside(session, state, actions, uid, size).await?;
            } else {
                wanted.push(uid);
                total += u64::from(size);
            }
        }
        if wanted.is_empty() {
            return Ok(Fetched::default());
        }
        let (fetched, raws) = self.fetch(session, state, &wanted, total).await?;
        tracing::debug!(mailbox = %self.name, fetched = raws.len(), "Fetched.");
        Ok(Fetched { fetched, raws })
    }

    /// Commits one chunk through the pipeline (or quarantines what is bad).
    async fn commit(&self, pipeline: &Pipeline, raws: Vec<RawMessage>) -> Result<(), Failure> {
        if raws.is_empty() {
            return Ok(());
        }
        let sources: Vec<Option<String>> = raws.iter().map(|r| r.source.clone()).collect();
        let dispositions = match pipeline.process(raws, OnBadInput::Quarantine).await {
            Ok(d) => d,
            Err(PipelineError::Unavailable(e)) => return Err(Failure::Database(e)),
            Err(e) => return Err(ImapError::Other(e.to_string()).into()),
        };
        for (source, disposition) in sources.iter().zip(&dispositions) {
            if let Disposition::Quarantined { id, reason } = disposition {
                tracing::warn!(mailbox = %self.name, source = source.as_deref().unwrap_or("-"), quarantine = id, %reason, "Message quarantined.");
            }
        }
        tracing::debug!(mailbox = %self.name, "Committed.");
        Ok(())
    }

    /// Fetches the bodies of `wanted` (about `total` bytes); returns the
    /// UIDs that came back and their messages, in the same order.
    async fn fetch(
        &self,
        session: &mut ImapSession,
        state: &ImapState,
        wanted: &[u32],
        total: u64,
    ) -> Result<(Vec<u32>, Vec<RawMessage>), Failure> {
        // A big chunk (tens of MB of attachments) gets time in proportion.
        let limit =
            self.client.config().command_timeout() + Duration::from_secs(total / (512 * 1024));
        let bodies: Vec<Fetch> = deadline(limit, "UID FETCH (BODY.PEEK[])", async {
            let stream = session
                .uid_fetch(uid_set(wanted), "(UID BODY.PEEK[])")
                .await
                .map_err(other("UID FETCH"))?;
            stream.try_collect().await.map_err(other("UID FETCH"))
        })
        .await?;
        let mut fetched = Vec::with_capacity(bodies.len());
        let mut raws = Vec::with_capacity(bodies.len());
        for fetch in &bodies {
            let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) else {
                continue;
            };
            fetched.push(uid);
            raws.push(RawMessage {
                channel: self.name.clone(),
                source: Some(format!(
                    "imap:{}:{}:{uid}",
                    self.name,
                    state.uidvalidity.unwrap_or(0)
                )),
                data: Arc::new(body.to_vec()),
            });
        }
        Ok((fetched, raws))
    }

    /// An oversized message stays on the server (moved aside if configured)
    /// and is reported; it is never silently dropped.
    async fn set_aside(
        &self,
        session: &mut ImapSession,
        state: &mut ImapState,
        actions: &AfterActions,
        uid: u32,
        size: u32,
    ) -> Result<(), Failure> {
        let config = self.client.config();
        let moved_to = config.oversize_folder.clone();
        if let Some(folder) = &moved_to {
            actions
                .move_to(session, &uid.to_string(), folder, config.command_timeout())
                .await?;
        }
        tracing::warn!(mailbox = %self.name, uid, size, limit = self.max_message_bytes,
            moved_to = moved_to.as_deref().unwrap_or("-"),
            "Message over ingest.max_message_bytes left on the server.");
        if !state.oversized.iter().any(|o| o.uid == uid) {
            state.oversized.push(Oversized {
                uid,
                size,
                moved_to,
            });
            // The log has them all; the state keeps the latest for `mailroom status`.
            let excess = state.oversized.len().saturating_sub(MAX_OVERSIZED_REPORTED);
            state.oversized.drain(..excess);
        }
        Ok(())
    }
}

/// A chunk fetched and not yet committed: the UIDs that came back and
/// their messages, in the same order.
#[derive(Default)]
struct Fetched {
    fetched: Vec<u32>,
    raws: Vec<RawMessage>,
}

/// What is done at the server with a committed message.
pub(super) struct AfterActions {
    after: After,
    move_to: Option<String>,
    can_move: bool,
    can_uidplus: bool,
}

impl AfterActions {
    pub(super) fn new(config: &ImapConfig, capabilities: &Capabilities) -> AfterActions {
        AfterActions {
            after: config.after,
            move_to: config.move_to.clone(),
            can_move: capabilities.r#move,
            can_uidplus: capabilities.uidplus,
        }
    }

    async fn apply(
        &self,
        session: &mut ImapSession,
        set: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        match (self.after, &self.move_to) {
            (After::Keep, _) => Ok(()),
            (After::MarkSeen, _) => store_flag(session, set, "\\Seen", limit).await,
            (After::Move, Some(folder)) => self.move_to(session, set, folder, limit).await,
            // Validation refuses "move" without a folder; should it get
            // here anyway, the message stays where it is.
            (After::Move, None) => Ok(()),
            (After::Delete, _) => {
                store_flag(session, set, "\\Deleted", limit).await?;
                self.expunge(session, set, limit).await
            }
        }
    }

    async fn move_to(
        &self,
        session: &mut ImapSession,
        set: &str,
        folder: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        if self.can_move {
            return deadline(limit, "UID MOVE", async {
                session.uid_mv(set, folder).await.map_err(other("UID MOVE"))
            })
            .await;
        }
        deadline(limit, "UID COPY", async {
            session
                .uid_copy(set, folder)
                .await
                .map_err(other("UID COPY"))
        })
        .await?;
        store_flag(session, set, "\\Deleted", limit).await?;
        self.expunge(session, set, limit).await
    }

    /// Expunges only our UIDs: a plain EXPUNGE would also remove what other
    /// clients had marked deleted. Without UIDPLUS the messages stay flagged.
    async fn expunge(
        &self,
        session: &mut ImapSession,
        set: &str,
        limit: Duration,
    ) -> Result<(), Failure> {
        if !self.can_uidplus {
            tracing::warn!(
                "Server lacks UIDPLUS: messages are flagged \\Deleted but not expunged."
            );
            return Ok(());
        }
        deadline(limit, "UID EXPUNGE", async {
            let stream = session
                .uid_expunge(set)
                .await
                .map_err(other("UID EXPUNGE"))?;
            let _: Vec<u32> = stream.try_collect().await.map_err(other("UID EXPUNGE"))?;
            Ok(())
        })
        .await
    }
}

async fn store_flag(
    session: &mut ImapSession,
    set: &str,
    flag: &str,
    limit: Duration,
) -> Result<(), Failure> {
    deadline(limit, "UID STORE", async {
        let stream = session
            .uid_store(set, format!("+FLAGS.SILENT ({flag})"))
            .await
            .map_err(other("UID STORE"))?;
        let _: Vec<Fetch> = stream.try_collect().await.map_err(other("UID STORE"))?;
        Ok(())
    })
    .await
}

/// A compact UID set: runs of consecutive UIDs become `a:b`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted: Vec<u32> = uids
        .iter()
        .copied()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    sorted.sort_unstable();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10]), "1:3,5,9:10");
        assert_eq!(uid_set(&[7]), "7");
    }
}
