//! Taking new mail from the selected folder: the sizes of everything found,
//! then chunks of at most `fetch_batch` messages (and about
//! [`CHUNK_BYTES`]), each fetched, parsed, committed through the pipeline and
//! only then acknowledged (the after-action for exactly its UIDs) before
//! `last_uid` passes it. Three chunks are in flight at once: one commits
//! while the next is parsed and the session acknowledges the previous one
//! and fetches the one after. A crash between a commit and its
//! after-action only means a re-fetch, which is recorded as a duplicate.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_imap::types::Fetch;
use futures::TryStreamExt;
use tokio_util::sync::CancellationToken;

use super::{db, other, Capabilities, Failure, ImapChannel, ImapState, Oversized, Refused};
use crate::config::{After, ImapConfig};
use crate::net::imap::{deadline, ImapError, ImapSession};
use crate::pipeline::{Disposition, OnBadInput, Pipeline, PipelineError, Prepared, RawMessage};
use crate::store::now_ms;

/// Oversized (and passed-over) messages remembered in a mailbox's state.
const MAX_OVERSIZED_REPORTED: usize = 100;

/// Adds to a list the state reports; the log has them all, the state keeps
/// the latest for `mailroom status`.
fn report<T>(list: &mut Vec<T>, item: T) {
    list.push(item);
    let excess = list.len().saturating_sub(MAX_OVERSIZED_REPORTED);
    list.drain(..excess);
}

/// A chunk closes once its messages reach this many bytes (it always holds
/// at least one), so three chunks in flight stay within memory even when
/// every message is large.
const CHUNK_BYTES: u64 = 32 * 1024 * 1024;

/// Sessions that must have refused a message before it is passed over,
/// however long ago the first was (one slow session is not a pattern).
const MIN_REFUSING_SESSIONS: u32 = 3;

/// UIDs per `UID FETCH (RFC822.SIZE)` or `UID SEARCH`: keeps the command
/// line short (well under Dovecot's 64 KiB) even when they are scattered.
const UIDS_PER_COMMAND: usize = 2_000;

impl ImapChannel {
    /// Takes every message above `last_uid`, in chunks. Returns how many it
    /// dealt with (took, or passed over after the server kept refusing it).
    /// Chunk k commits while chunk k+1 is parsed and the session
    /// acknowledges chunk k-1 and fetches chunk k+2; a chunk is
    /// acknowledged at the server only after its own commit, and
    /// `last_uid` only passes chunks that are acknowledged, in order.
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
        // Stopping, or the lease is gone: start nothing new.
        let go_on = || !shutdown.is_cancelled() && !lease_lost();
        let uids = self.search(session, state).await?;
        state.backlog = uids.len();
        tracing::debug!(mailbox = %self.name, found = uids.len(), "Searched.");
        if !go_on() {
            return Ok(0);
        }
        let mut chunks = self
            .plan(session, pipeline, state, actions, &uids, lease_lost())
            .await?
            .into_iter();
        let uidvalidity = state.uidvalidity.unwrap_or(0);
        let mut taken = 0;
        // A failure while working ahead (fetching or parsing a later chunk)
        // is held: what is already parsed is committed and acknowledged
        // first, so a message the server will not give stops the mailbox
        // just before it, not two chunks earlier.
        let (mut parsed, mut fetched, mut held) = match go_on() {
            true => {
                self.prime(session, pipeline, uidvalidity, &mut chunks)
                    .await?
            }
            false => (None, None, None),
        };
        let mut to_ack: Option<Committed> = None;
        while let Some(current) = parsed.take() {
            let more = go_on();
            let to_parse = fetched.take().filter(|_| more);
            let to_fetch = chunks.next().filter(|_| more && held.is_none());
            let acking = to_ack.take();
            let (committed, next_parsed, (acked, next_fetched)) = tokio::join!(
                self.commit(pipeline, current),
                async {
                    match to_parse {
                        Some(f) => Some(self.prepare(pipeline, f).await),
                        None => None,
                    }
                },
                async {
                    if let Some(done) = &acking {
                        if let Err(e) = self.acknowledge(session, actions, done).await {
                            return (Err(e), None);
                        }
                    }
                    let next = match to_fetch {
                        Some(chunk) => Some(self.fetch(session, uidvalidity, chunk).await),
                        None => None,
                    };
                    (Ok(acking), next)
                }
            );
            if let Some(done) = acked? {
                taken += done.fetched.len();
                self.advance(pipeline, state, &done, lease_lost()).await?;
            }
            to_ack = Some(committed?);
            parsed = next_parsed.transpose().unwrap_or_else(|e| {
                held.get_or_insert(e);
                None
            });
            fetched = ahead(next_fetched, &mut held);
        }
        if let Some(done) = to_ack {
            self.acknowledge(session, actions, &done).await?;
            taken += done.fetched.len();
            self.advance(pipeline, state, &done, lease_lost()).await?;
        }
        if let Some(failure) = held {
            match failure {
                Failure::Refused { uid }
                    if self.refused(pipeline, state, uid, lease_lost()).await? =>
                {
                    // Passed over: the caller syncs again for what follows.
                    return Ok(taken + 1);
                }
                failure => return Err(failure),
            }
        }
        if let (Some(until), false) = (state.unseen_until, shutdown.is_cancelled()) {
            // The unread mail is in; read mail below the mark stays behind.
            state.last_uid = state.last_uid.max(until);
            state.unseen_until = None;
            self.save_state(pipeline, state).await?;
        }
        if taken > 0 {
            tracing::info!(mailbox = %self.name, messages = taken, last_uid = state.last_uid, "Mailbox synced.");
        }
        Ok(taken)
    }

    /// The first chunk fetched and parsed, the second fetched meanwhile,
    /// and a failure of the second (or a refusal in either) held.
    async fn prime(
        &self,
        session: &mut ImapSession,
        pipeline: &Pipeline,
        uidvalidity: u32,
        chunks: &mut impl Iterator<Item = Chunk>,
    ) -> Result<(Option<Parsed>, Option<Fetched>, Option<Failure>), Failure> {
        let Some(first) = chunks.next() else {
            return Ok((None, None, None));
        };
        let mut first = self.fetch(session, uidvalidity, first).await?;
        let mut held = first.refused.take();
        let second = chunks.next().filter(|_| held.is_none());
        let (prepared, next) = tokio::join!(self.prepare(pipeline, first), async {
            match second {
                Some(chunk) => Some(self.fetch(session, uidvalidity, chunk).await),
                None => None,
            }
        });
        let parsed = prepared?;
        let fetched = ahead(next, &mut held);
        Ok((Some(parsed), fetched, held))
    }

    /// The after-action for a committed chunk's UIDs.
    async fn acknowledge(
        &self,
        session: &mut ImapSession,
        actions: &AfterActions,
        done: &Committed,
    ) -> Result<(), Failure> {
        if done.fetched.is_empty() {
            return Ok(());
        }
        let limit = self.client.config().command_timeout();
        actions
            .apply(session, &uid_set(&done.fetched), limit)
            .await?;
        tracing::debug!(mailbox = %self.name, messages = done.fetched.len(), "Acknowledged.");
        Ok(())
    }

    /// Moves `last_uid` past an acknowledged chunk and stores the state,
    /// unless the lease is gone: the new holder writes the state now, and
    /// ours would move it back.
    async fn advance(
        &self,
        pipeline: &Pipeline,
        state: &mut ImapState,
        done: &Committed,
        lease_lost: bool,
    ) -> Result<(), Failure> {
        state.last_uid = state.last_uid.max(done.through);
        if state
            .refusing
            .as_ref()
            .is_some_and(|r| r.uid <= state.last_uid)
        {
            state.refusing = None; // the server gave it after all
        }
        state.last_success = Some(now_ms());
        state.backlog = state.backlog.saturating_sub(done.covers);
        if lease_lost {
            return Ok(());
        }
        self.save_state(pipeline, state).await
    }

    /// Counts a session in which the server would not give `uid` (all
    /// below it is in). Once it has refused it in at least
    /// `MIN_REFUSING_SESSIONS` sessions over `pass_over_refused_after_secs`,
    /// the mailbox passes over it: the message stays on the server, reported
    /// in the state, the log and the metrics. Returns whether it was passed
    /// over.
    async fn refused(
        &self,
        pipeline: &Pipeline,
        state: &mut ImapState,
        uid: u32,
        lease_lost: bool,
    ) -> Result<bool, Failure> {
        let now = now_ms();
        let (times, since) = match &state.refusing {
            Some(r) if r.uid == uid => (r.times.saturating_add(1), r.since),
            _ => (1, now),
        };
        let refused = Refused {
            uid,
            times,
            since,
            at: now,
        };
        let limit_ms = self
            .client
            .config()
            .pass_over_refused_after_secs
            .saturating_mul(1000);
        let pass_over = limit_ms > 0
            && times >= MIN_REFUSING_SESSIONS
            && u64::try_from(now - since).unwrap_or(0) >= limit_ms
            // Only directly above what is in (nothing below it may be
            // skipped), and only by the mailbox's holder.
            && state.last_uid.saturating_add(1) >= uid
            && !lease_lost;
        if pass_over {
            tracing::error!(mailbox = %self.name, uid, times, refused_for_s = (now - since) / 1000,
                "The server kept refusing this message: passed over, it stays on the server \
                 (mailroom status lists it).");
            metrics::counter!("mailroom_mailbox_passed_over_total", "channel" => self.name.clone())
                .increment(1);
            state.last_uid = state.last_uid.max(uid);
            state.refusing = None;
            report(&mut state.passed_over, refused);
        } else {
            state.refusing = Some(refused);
        }
        if !lease_lost {
            self.save_state(pipeline, state).await?;
        }
        Ok(pass_over)
    }

    async fn save_state(&self, pipeline: &Pipeline, state: &ImapState) -> Result<(), Failure> {
        let store = pipeline.store();
        store.set_channel_state(&self.name, state).await.map_err(db)
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

    /// The sizes of everything found, then the chunks to fetch: at most
    /// `fetch_batch` messages and about [`CHUNK_BYTES`] each, in UID order.
    /// Oversized messages are set aside here; they, and UIDs gone since the
    /// search, still count towards the chunk `last_uid` passes with.
    async fn plan(
        &self,
        session: &mut ImapSession,
        pipeline: &Pipeline,
        state: &mut ImapState,
        actions: &AfterActions,
        uids: &[u32],
        lease_lost: bool,
    ) -> Result<Vec<Chunk>, Failure> {
        let limit = self.client.config().command_timeout();
        let mut sizes: HashMap<u32, u32> = HashMap::with_capacity(uids.len());
        for window in uids.chunks(UIDS_PER_COMMAND) {
            let found: Vec<Fetch> = deadline(limit, "UID FETCH (RFC822.SIZE)", async {
                let stream = session
                    .uid_fetch(uid_set(window), "(UID RFC822.SIZE)")
                    .await
                    .map_err(other("UID FETCH"))?;
                stream.try_collect().await.map_err(other("UID FETCH"))
            })
            .await?;
            sizes.extend(found.iter().filter_map(|f| Some((f.uid?, f.size?))));
        }
        // async-imap ends a FETCH quietly on NO: a UID without a size may be
        // gone, or the server may have refused. What is still there is
        // fetched all the same (its size unknown), never passed over.
        let without_size: Vec<u32> = uids
            .iter()
            .copied()
            .filter(|u| !sizes.contains_key(u))
            .collect();
        for uid in self.still_there(session, &without_size).await? {
            sizes.insert(uid, 0);
        }
        let batch = self.client.config().fetch_batch;
        let (chunks, oversized) = chunk(uids, &sizes, batch, CHUNK_BYTES, self.max_message_bytes);
        for (uid, size) in &oversized {
            self.set_aside(session, state, actions, *uid, *size).await?;
        }
        if !oversized.is_empty() && !lease_lost {
            // Moved aside: reported now, whatever happens to the rest.
            self.save_state(pipeline, state).await?;
        }
        Ok(chunks)
    }

    /// Parses a fetched chunk (quarantining what is bad).
    async fn prepare(&self, pipeline: &Pipeline, fetched: Fetched) -> Result<Parsed, Failure> {
        let Fetched {
            chunk, uids, raws, ..
        } = fetched;
        let sources: Vec<Option<String>> = raws.iter().map(|r| r.source.clone()).collect();
        let prepared = match raws.is_empty() {
            true => None,
            false => Some(
                pipeline
                    .prepare(raws, OnBadInput::Quarantine)
                    .await
                    .map_err(pipeline_failure)?,
            ),
        };
        Ok(Parsed {
            done: Committed {
                fetched: uids,
                through: chunk.through,
                covers: chunk.covers,
            },
            sources,
            prepared,
        })
    }

    /// Commits a parsed chunk; what comes back is ready to acknowledge.
    async fn commit(&self, pipeline: &Pipeline, parsed: Parsed) -> Result<Committed, Failure> {
        let Parsed {
            done,
            sources,
            prepared,
        } = parsed;
        let Some(prepared) = prepared else {
            return Ok(done);
        };
        let dispositions = pipeline.commit(prepared).await.map_err(pipeline_failure)?;
        for (source, disposition) in sources.iter().zip(&dispositions) {
            if let Disposition::Quarantined { id, reason } = disposition {
                tracing::warn!(mailbox = %self.name, source = source.as_deref().unwrap_or("-"), quarantine = id, %reason, "Message quarantined.");
            }
        }
        tracing::debug!(mailbox = %self.name, messages = dispositions.len(), "Committed.");
        Ok(done)
    }

    /// Fetches a chunk's bodies; keeps the UIDs that came back and their
    /// messages, in the same order.
    async fn fetch(
        &self,
        session: &mut ImapSession,
        uidvalidity: u32,
        chunk: Chunk,
    ) -> Result<Fetched, Failure> {
        if chunk.wanted.is_empty() {
            return Ok(Fetched {
                chunk,
                uids: Vec::new(),
                raws: Vec::new(),
                refused: None,
            });
        }
        // A big chunk (tens of MB of attachments) gets time in proportion.
        let limit = self.client.config().command_timeout()
            + Duration::from_secs(chunk.bytes / (512 * 1024));
        let mut got = self
            .fetch_bodies(session, uidvalidity, &uid_set(&chunk.wanted), limit)
            .await?;
        tracing::debug!(mailbox = %self.name, fetched = got.len(), "Fetched.");
        // A UID that did not come back and is still there was refused (a NO
        // ends async-imap's FETCH quietly, and ends it for the whole chunk):
        // each is asked for alone, in order, to find the one the server will
        // not give. `last_uid` stops just below that one, and the sync stops
        // once what came before it is in.
        let came: HashSet<u32> = got.iter().map(|(uid, _)| *uid).collect();
        let missing: Vec<u32> = chunk
            .wanted
            .iter()
            .copied()
            .filter(|u| !came.contains(u))
            .collect();
        let mut refused_uid = None;
        let limit = self.client.config().command_timeout();
        for uid in self.still_there(session, &missing).await? {
            let alone = self
                .fetch_bodies(session, uidvalidity, &uid.to_string(), limit)
                .await?;
            if alone.is_empty() {
                refused_uid = Some(uid);
                break;
            }
            got.extend(alone);
        }
        got.sort_by_key(|(uid, _)| *uid);
        let mut chunk = chunk;
        let mut refused = None;
        if let Some(first) = refused_uid {
            chunk.through = first - 1;
            chunk.covers = chunk.wanted.iter().filter(|&&u| u < first).count();
            got.retain(|(uid, _)| *uid < first);
            refused = Some(Failure::Refused { uid: first });
        }
        let (uids, raws) = got.into_iter().unzip();
        Ok(Fetched {
            chunk,
            uids,
            raws,
            refused,
        })
    }

    /// The bodies of the UIDs in `set` that came back, with their UIDs.
    async fn fetch_bodies(
        &self,
        session: &mut ImapSession,
        uidvalidity: u32,
        set: &str,
        limit: Duration,
    ) -> Result<Vec<(u32, RawMessage)>, Failure> {
        let bodies: Vec<Fetch> = deadline(limit, "UID FETCH (BODY.PEEK[])", async {
            let stream = session
                .uid_fetch(set, "(UID BODY.PEEK[])")
                .await
                .map_err(other("UID FETCH"))?;
            stream.try_collect().await.map_err(other("UID FETCH"))
        })
        .await?;
        let name = &self.name;
        Ok(bodies
            .iter()
            .filter_map(|fetch| Some((fetch.uid?, fetch.body()?)))
            .map(|(uid, body)| {
                let raw = RawMessage {
                    channel: name.clone(),
                    source: Some(format!("imap:{name}:{uidvalidity}:{uid}")),
                    data: Arc::new(body.to_vec()),
                };
                (uid, raw)
            })
            .collect())
    }

    /// Which of `uids` the folder still holds.
    async fn still_there(
        &self,
        session: &mut ImapSession,
        uids: &[u32],
    ) -> Result<Vec<u32>, Failure> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let limit = self.client.config().command_timeout();
        let mut found = Vec::new();
        for window in uids.chunks(UIDS_PER_COMMAND) {
            let set = uid_set(window);
            let hits = deadline(limit, "UID SEARCH", async {
                session
                    .uid_search(format!("UID {set}"))
                    .await
                    .map_err(other("UID SEARCH"))
            })
            .await?;
            // `window` is ascending, as the search found them.
            found.extend(hits.into_iter().filter(|u| window.binary_search(u).is_ok()));
        }
        found.sort_unstable();
        Ok(found)
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
            report(
                &mut state.oversized,
                Oversized {
                    uid,
                    size,
                    moved_to,
                },
            );
        }
        Ok(())
    }
}

/// A chunk fetched ahead; its failure, or the server's refusal of one of
/// its messages, is held until what came before is in.
fn ahead(fetched: Option<Result<Fetched, Failure>>, held: &mut Option<Failure>) -> Option<Fetched> {
    match fetched.transpose() {
        Ok(Some(mut fetched)) => {
            if let Some(refused) = fetched.refused.take() {
                held.get_or_insert(refused);
            }
            Some(fetched)
        }
        Ok(None) => None,
        Err(e) => {
            held.get_or_insert(e);
            None
        }
    }
}

fn pipeline_failure(e: PipelineError) -> Failure {
    match e {
        PipelineError::Unavailable(e) => Failure::Database(e),
        e => ImapError::Other(e.to_string()).into(),
    }
}

/// Splits the UIDs found (ascending) into chunks of at most `batch`
/// messages, closing one once it reaches `max_bytes`; messages over
/// `max_message` come back apart, to be set aside. A UID without a size
/// (gone since the search) is only covered.
fn chunk(
    uids: &[u32],
    sizes: &HashMap<u32, u32>,
    batch: usize,
    max_bytes: u64,
    max_message: u64,
) -> (Vec<Chunk>, Vec<(u32, u32)>) {
    let mut chunks = Vec::new();
    let mut oversized = Vec::new();
    let mut chunk = Chunk::default();
    for &uid in uids {
        chunk.through = uid;
        chunk.covers += 1;
        match sizes.get(&uid) {
            None => {}
            Some(&size) if u64::from(size) > max_message => oversized.push((uid, size)),
            Some(&size) => {
                chunk.wanted.push(uid);
                chunk.bytes += u64::from(size);
            }
        }
        if chunk.wanted.len() >= batch.max(1) || chunk.bytes >= max_bytes {
            chunks.push(std::mem::take(&mut chunk));
        }
    }
    if chunk.covers > 0 {
        chunks.push(chunk);
    }
    (chunks, oversized)
}

/// UIDs to fetch together, and how far `last_uid` may go once they are in.
#[derive(Default)]
struct Chunk {
    wanted: Vec<u32>,
    bytes: u64,
    /// The highest UID found that this chunk covers (fetched, set aside or
    /// gone), and how many found UIDs it covers.
    through: u32,
    covers: usize,
}

/// A chunk fetched: the UIDs that came back and their messages, in order,
/// and why the sync stops after it when the server refused one.
struct Fetched {
    chunk: Chunk,
    uids: Vec<u32>,
    raws: Vec<RawMessage>,
    refused: Option<Failure>,
}

/// A chunk parsed and waiting for its commit.
struct Parsed {
    done: Committed,
    sources: Vec<Option<String>>,
    prepared: Option<Prepared>,
}

/// A chunk committed (or quarantined), waiting for its after-action.
struct Committed {
    fetched: Vec<u32>,
    through: u32,
    covers: usize,
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
    fn chunks_close_at_the_count_or_the_bytes_and_cover_every_uid() {
        let uids: Vec<u32> = (1..=10).collect();
        // 4 is oversized, 7 vanished since the search; the rest 100 bytes.
        let sizes: HashMap<u32, u32> = uids
            .iter()
            .filter(|&&u| u != 7)
            .map(|&u| (u, if u == 4 { 5_000 } else { 100 }))
            .collect();
        // By count: 2 messages a chunk (the bytes never reach their bound).
        let (chunks, oversized) = chunk(&uids, &sizes, 2, 10_000, 1_000);
        let wanted: Vec<&[u32]> = chunks.iter().map(|c| c.wanted.as_slice()).collect();
        assert_eq!(wanted, [&[1, 2][..], &[3, 5], &[6, 8], &[9, 10]]);
        assert_eq!(oversized, [(4, 5_000)]);
        let through: Vec<u32> = chunks.iter().map(|c| c.through).collect();
        assert_eq!(through, [2, 5, 8, 10]);
        assert_eq!(chunks.iter().map(|c| c.covers).sum::<usize>(), 10);
        // By bytes: 250 close a chunk at its third message of 100.
        let (chunks, _) = chunk(&uids, &sizes, 500, 250, 1_000);
        let wanted: Vec<&[u32]> = chunks.iter().map(|c| c.wanted.as_slice()).collect();
        assert_eq!(wanted, [&[1, 2, 3][..], &[5, 6, 8], &[9, 10]]);
        // A single message over the byte bound is a chunk of its own.
        let (chunks, _) = chunk(
            &[1, 2],
            &HashMap::from([(1, 900), (2, 900)]),
            500,
            250,
            1_000,
        );
        assert_eq!(chunks.len(), 2);
        // Nothing fetchable still moves last_uid past what was found.
        let (chunks, oversized) = chunk(&[5], &HashMap::from([(5, 9_999)]), 500, 250, 1_000);
        assert_eq!(
            (chunks[0].wanted.len(), chunks[0].through, oversized.len()),
            (0, 5, 1)
        );
    }

    #[test]
    fn uid_sets_are_compact() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 10]), "1:3,5,9:10");
        assert_eq!(uid_set(&[7]), "7");
    }
}
