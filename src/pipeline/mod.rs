//! raw bytes → parse → classify → thread → apply (one transaction).
//!
//! Parsing runs on blocking threads, isolated: a panic or a runaway parse of
//! one message is caught and bounded in time, and that message goes to the
//! quarantine instead of stopping its channel. Applying retries transient
//! database errors; a message that still cannot be applied is quarantined
//! whole, with the reason. Only when the database is unreachable does the
//! pipeline give up and return [`PipelineError::Unavailable`], so the source
//! keeps the message and delivers it again later.

pub mod apply;
pub mod classify;
pub mod forward;
pub mod parse;
pub mod thread;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;

pub use apply::{Inbound, Outcome};
use parse::{ParseError, ParsedMessage};

use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::retry::Backoff;
use crate::store::directory::ChannelInfo;
use crate::store::{classify_error, now_ms, Directory, ErrorClass, Store};

/// A message as a channel hands it over: bytes plus where they came from.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub channel: String,
    /// File path, mbox offset, IMAP UIDVALIDITY/UID …, kept on the receipt.
    pub source: Option<String>,
    pub data: Arc<Vec<u8>>,
}

/// What a channel knows about a message beyond its bytes (web forms).
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// Never thread: always a new ticket (forms, unless configured otherwise).
    pub no_threading: bool,
    /// Ticket properties to set on a new ticket.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Status (by name, in the channel's pipeline) for a new ticket.
    pub status: Option<String>,
    /// Replaces the content fingerprint: a form post retried under the same
    /// Idempotency-Key is then the same message, whatever its bytes.
    pub fingerprint: Option<String>,
    /// The envelope recipient, when the source knows it (an MTA passes it
    /// to `mailroom ingest --recipient`): the first routing key.
    pub envelope_to: Option<String>,
    /// An admin released it from the quarantine: a blocked sender's mail
    /// goes through this once.
    pub release_blocked: bool,
    /// The agent who forwarded the original in (`forward`).
    pub forwarded_by: Option<i64>,
}

/// The team a message of a `route = "recipient"` channel goes to: the first
/// team address among the envelope recipient, Delivered-To, X-Original-To,
/// X-Forwarded-To, To and Cc; the channel's own team when none is one.
pub fn route_team(
    dir: &Directory,
    channel: &ChannelInfo,
    envelope_to: Option<&str>,
    message: &ParsedMessage,
) -> i64 {
    envelope_to
        .map(crate::mail::address::normalize)
        .into_iter()
        .chain(message.delivered_to.iter().map(|m| m.address.clone()))
        .chain(message.to.iter().map(|m| m.address.clone()))
        .chain(message.cc.iter().map(|m| m.address.clone()))
        .find_map(|address| dir.team_addresses.get(&address).copied())
        .unwrap_or(channel.team_id)
}

/// Why a message could not be turned into a [`ParsedMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFailure {
    #[error("{0}")]
    Invalid(#[from] ParseError),
    #[error("message is {size} bytes, over ingest.max_message_bytes ({limit})")]
    TooLarge { size: usize, limit: u64 },
    #[error("parser panicked: {0}")]
    Panicked(String),
    #[error("parsing took longer than ingest.parse_timeout_ms ({0} ms)")]
    TimedOut(u64),
    #[error("{what} ({value}) over ingest.{key} ({limit})")]
    OverLimit {
        key: &'static str,
        what: &'static str,
        value: u64,
        limit: u64,
    },
}

impl ParseFailure {
    /// Input that is not usable mail, as opposed to mail that broke us.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ParseFailure::Invalid(_)
                | ParseFailure::TooLarge { .. }
                | ParseFailure::OverLimit { .. }
        )
    }
}

/// What to do with a message that is not usable mail (empty, not RFC 5322, too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadInput {
    /// Report it to the caller, store nothing (an MTA pipe answers EX_DATAERR).
    Refuse,
    /// Keep it in the quarantine (a spool has no one to answer).
    Quarantine,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Disposition {
    Applied(Outcome),
    Quarantined { id: i64, reason: String },
    Refused { reason: String },
}

/// Why a quarantined message could not be retried.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error("its channel is no longer configured and there is no single pipe channel to use")]
    NoChannel,
    #[error("{0}")]
    Pipeline(#[from] PipelineError),
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
}

/// A parsed batch waiting to be committed.
pub struct Prepared {
    results: Vec<Option<Disposition>>,
    to_apply: Vec<Item>,
}

/// A parsed message waiting to be applied: its place in the batch, the raw
/// message, its channel (resolved in `prepare`) and what was parsed.
type Item = (usize, RawMessage, ChannelInfo, Inbound);

/// The parse function; replaceable in tests to inject panics and runaways.
pub type Parser = fn(&[u8]) -> Result<ParsedMessage, ParseError>;

/// Runs messages through the pipeline into the store. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    store: Store,
    dir: Arc<Directory>,
    config: IngestConfig,
    parser: Parser,
}

impl Pipeline {
    pub fn new(store: Store, dir: Arc<Directory>, config: IngestConfig) -> Pipeline {
        Pipeline {
            store,
            dir,
            config,
            parser: parse::parse,
        }
    }

    /// Replaces the parser (fault injection in tests).
    pub fn with_parser(mut self, parser: Parser) -> Pipeline {
        self.parser = parser;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// The largest message accepted (`ingest.max_message_bytes`).
    pub fn max_message_bytes(&self) -> u64 {
        self.config.max_message_bytes
    }

    /// Parses on a blocking thread, catching panics and bounding the time.
    /// A parse that runs past the timeout is abandoned (its thread finishes
    /// on its own); the message is reported as timed out.
    pub async fn parse(&self, data: Arc<Vec<u8>>) -> Result<ParsedMessage, ParseFailure> {
        if data.len() as u64 > self.config.max_message_bytes {
            return Err(ParseFailure::TooLarge {
                size: data.len(),
                limit: self.config.max_message_bytes,
            });
        }
        let parser = self.parser;
        let handle = tokio::task::spawn_blocking(move || parser(&data));
        let limit = self.config.parse_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(limit), handle).await {
            Err(_) => Err(ParseFailure::TimedOut(limit)),
            Ok(Err(join_error)) => {
                let reason = match join_error.try_into_panic() {
                    Ok(payload) => payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into()),
                    Err(e) => e.to_string(),
                };
                Err(ParseFailure::Panicked(reason))
            }
            Ok(Ok(result)) => {
                let message = result.map_err(ParseFailure::Invalid)?;
                self.check_shape(&message.shape)?;
                Ok(message)
            }
        }
    }

    /// The ingest limits on a message's shape, the first one exceeded (the
    /// most specific first: 100,000 recipients are also a huge header).
    fn check_shape(&self, shape: &parse::Shape) -> Result<(), ParseFailure> {
        let c = &self.config;
        let checks: [(&'static str, &'static str, u64, u64); 6] = [
            (
                "max_parts",
                "MIME parts",
                shape.parts as u64,
                c.max_parts as u64,
            ),
            (
                "max_depth",
                "MIME nesting depth",
                shape.depth as u64,
                c.max_depth as u64,
            ),
            (
                "max_addresses",
                "addresses in one header",
                shape.addresses as u64,
                c.max_addresses as u64,
            ),
            (
                "max_header_fields",
                "header fields",
                shape.header_fields as u64,
                c.max_header_fields as u64,
            ),
            (
                "max_header_bytes",
                "header bytes",
                shape.header_bytes as u64,
                c.max_header_bytes as u64,
            ),
            (
                "max_attachment_bytes",
                "decoded attachment bytes",
                shape.attachment_bytes,
                c.max_attachment_bytes,
            ),
        ];
        match checks
            .into_iter()
            .find(|(_, _, value, limit)| value > limit)
        {
            Some((key, what, value, limit)) => Err(ParseFailure::OverLimit {
                key,
                what,
                value,
                limit,
            }),
            None => Ok(()),
        }
    }

    fn channel(&self, key: &str) -> Result<&ChannelInfo, PipelineError> {
        self.dir
            .channel(key)
            .ok_or_else(|| PipelineError::UnknownChannel(key.to_string()))
    }

    /// Runs a batch of messages through the pipeline. Parsing is parallel;
    /// applying commits the whole batch in one transaction when it can, and
    /// falls back to one transaction per message to isolate a bad one.
    /// Dispositions come back in input order. `Err` only when the database
    /// stayed unreachable: then nothing from this batch may be acknowledged.
    pub async fn process(
        &self,
        batch: Vec<RawMessage>,
        on_bad_input: OnBadInput,
    ) -> Result<Vec<Disposition>, PipelineError> {
        let prepared = self.prepare(batch, on_bad_input).await?;
        self.commit(prepared).await
    }

    /// The first half of [`process`](Self::process): parse (in parallel) and
    /// quarantine or refuse what cannot be parsed. A caller may prepare the
    /// next batch while the previous one commits.
    pub async fn prepare(
        &self,
        batch: Vec<RawMessage>,
        on_bad_input: OnBadInput,
    ) -> Result<Prepared, PipelineError> {
        self.prepare_with(
            batch.into_iter().map(|r| (r, Hints::default())).collect(),
            on_bad_input,
        )
        .await
    }

    /// [`prepare`](Self::prepare) for messages that come with [`Hints`].
    pub async fn prepare_with(
        &self,
        batch: Vec<(RawMessage, Hints)>,
        on_bad_input: OnBadInput,
    ) -> Result<Prepared, PipelineError> {
        let started = std::time::Instant::now();
        let channels: Vec<ChannelInfo> = batch
            .iter()
            .map(|(raw, _)| self.channel(&raw.channel).cloned())
            .collect::<Result<_, _>>()?;
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
        let parsed: Vec<(RawMessage, Hints, Result<ParsedMessage, ParseFailure>)> =
            stream::iter(batch)
                .map(|(raw, hints)| async move {
                    let result = self.parse(raw.data.clone()).await;
                    (raw, hints, result)
                })
                .buffered(parallel * 2)
                .collect()
                .await;

        let mut prepared = Prepared {
            results: vec![None; parsed.len()],
            to_apply: Vec::new(),
        };
        let parsed = parsed.into_iter().zip(channels).enumerate();
        for (index, ((raw, mut hints, result), mut channel)) in parsed {
            match result {
                Ok(mut message) => {
                    if channel.route_by_recipient {
                        channel.team_id =
                            route_team(&self.dir, &channel, hints.envelope_to.as_deref(), &message);
                    }
                    if let Some(fingerprint) = &hints.fingerprint {
                        message.fingerprint = fingerprint.clone();
                    }
                    let has_token = apply::reply_tokens(&self.dir, &message).next().is_some();
                    if let Some((original, agent)) = forward::unwrap(&self.dir, &message, has_token)
                    {
                        message = original;
                        hints.forwarded_by = Some(agent);
                    }
                    let inbound = Inbound {
                        parsed: message,
                        raw: raw.data.clone(),
                        source: raw.source.clone(),
                        hints,
                    };
                    prepared.to_apply.push((index, raw, channel, inbound));
                }
                Err(failure) if failure.is_bad_input() && on_bad_input == OnBadInput::Refuse => {
                    prepared.results[index] = Some(Disposition::Refused {
                        reason: failure.to_string(),
                    });
                }
                Err(failure) => {
                    tracing::warn!(channel = %raw.channel, source = raw.source.as_deref().unwrap_or("-"), reason = %failure, "Message quarantined.");
                    let id = self.quarantine(&raw, &failure.to_string()).await?;
                    prepared.results[index] = Some(Disposition::Quarantined {
                        id,
                        reason: failure.to_string(),
                    });
                }
            }
        }
        self.hold_blocked(&mut prepared).await?;
        tracing::debug!(
            messages = prepared.results.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Batch parsed."
        );
        Ok(prepared)
    }

    /// Mail from a blocked address or domain goes to the quarantine with
    /// the reason: no ticket, nothing triggered (one look-up per batch).
    async fn hold_blocked(&self, prepared: &mut Prepared) -> Result<(), PipelineError> {
        let sender = |inbound: &Inbound| -> Option<(String, String)> {
            let from = inbound.parsed.from.as_ref()?;
            let domain = from.address.rsplit_once('@')?.1.to_string();
            (!inbound.hints.release_blocked).then(|| (from.address.clone(), domain))
        };
        let mut values: Vec<String> = Vec::new();
        for (_, _, _, inbound) in &prepared.to_apply {
            if let Some((address, domain)) = sender(inbound) {
                for v in [address, domain] {
                    if !values.contains(&v) {
                        values.push(v);
                    }
                }
            }
        }
        let blocks = self
            .store
            .blocked_among(&values)
            .await
            .map_err(|e| PipelineError::Unavailable(e.to_string()))?;
        if blocks.is_empty() {
            return Ok(());
        }
        for item in std::mem::take(&mut prepared.to_apply) {
            let (index, raw, _, inbound) = &item;
            let hit = sender(inbound).and_then(|(address, domain)| {
                blocks
                    .iter()
                    .find(|b| b.value == address || b.value == domain)
                    .map(|b| (address, b))
            });
            let Some((address, block)) = hit else {
                prepared.to_apply.push(item);
                continue;
            };
            let reason = format!(
                "blocked sender: {address} ({} {} blocked by {})",
                block.kind, block.value, block.actor
            );
            tracing::info!(channel = %raw.channel, source = raw.source.as_deref().unwrap_or("-"), %reason, "Message from a blocked sender quarantined.");
            metrics::counter!("mailroom_messages_blocked_total").increment(1);
            let id = self.quarantine(raw, &reason).await?;
            prepared.results[*index] = Some(Disposition::Quarantined { id, reason });
        }
        Ok(())
    }

    /// Runs quarantine entry `id` through the pipeline again (on its own
    /// channel, else `fallback_channel`) and removes it once it applies.
    /// `release`: an admin lets a blocked sender's message through. None
    /// when there is no such entry.
    pub async fn retry_quarantined(
        &self,
        id: i64,
        release: bool,
        fallback_channel: Option<String>,
    ) -> Result<Option<Disposition>, RetryError> {
        let Some((entry, data)) = self.store.quarantine_get(id).await? else {
            return Ok(None);
        };
        let channel = entry
            .channel
            .filter(|c| self.dir.channel(c).is_some())
            .or(fallback_channel)
            .ok_or(RetryError::NoChannel)?;
        let raw = RawMessage {
            channel,
            source: entry.source,
            data: Arc::new(data),
        };
        let hints = Hints {
            release_blocked: release,
            ..Hints::default()
        };
        let prepared = self
            .prepare_with(vec![(raw, hints)], OnBadInput::Quarantine)
            .await?;
        let disposition = self.commit(prepared).await?.into_iter().next();
        if let Some(Disposition::Applied(_)) = &disposition {
            self.store.quarantine_drop(id).await?;
        }
        Ok(disposition)
    }

    /// The second half of [`process`](Self::process): apply and commit.
    pub async fn commit(&self, prepared: Prepared) -> Result<Vec<Disposition>, PipelineError> {
        let Prepared {
            mut results,
            to_apply,
        } = prepared;
        let started = std::time::Instant::now();
        if !to_apply.is_empty() {
            let applied = match self.apply_all(&to_apply).await {
                Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
                Err(ErrorClass::Unavailable) => {
                    return Err(PipelineError::Unavailable("database unreachable".into()))
                }
                // One of them may be the problem: apply each on its own.
                Err(_) => {
                    let mut each = Vec::with_capacity(to_apply.len());
                    for item in &to_apply {
                        each.push(
                            self.apply_all(std::slice::from_ref(item))
                                .await
                                .map(|mut o| o.remove(0)),
                        );
                    }
                    each
                }
            };
            for ((index, raw, _, _), result) in to_apply.iter().zip(applied) {
                results[*index] = Some(match result {
                    Ok(outcome) => Disposition::Applied(outcome),
                    Err(ErrorClass::Unavailable) => {
                        return Err(PipelineError::Unavailable("database unreachable".into()))
                    }
                    Err(_) => {
                        let reason = self.last_error_text(raw).await;
                        tracing::warn!(channel = %raw.channel, source = raw.source.as_deref().unwrap_or("-"), %reason, "Message quarantined.");
                        let id = self.quarantine(raw, &reason).await?;
                        Disposition::Quarantined { id, reason }
                    }
                });
            }
        }
        tracing::debug!(
            messages = results.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "Batch committed."
        );
        // Parse failures were given a disposition in `prepare`, the rest
        // just above: dispositions must line up with their messages, or a
        // source would acknowledge the wrong one.
        let results: Vec<Disposition> = results
            .into_iter()
            .map(|d| d.expect("every message has a disposition"))
            .collect();
        for d in &results {
            let outcome = match d {
                Disposition::Applied(o) => o.name(),
                Disposition::Quarantined { .. } => "quarantined",
                Disposition::Refused { .. } => "refused",
            };
            metrics::counter!("mailroom_messages_total", "outcome" => outcome).increment(1);
        }
        Ok(results)
    }

    /// Re-runs the failing apply once more to capture its error text for the
    /// quarantine record (the batch path only keeps the error class).
    async fn last_error_text(&self, raw: &RawMessage) -> String {
        let Ok(parsed) = self.parse(raw.data.clone()).await else {
            return "parse failed".into();
        };
        let Ok(channel) = self.channel(&raw.channel) else {
            return "unknown channel".into();
        };
        let inbound = Inbound {
            parsed,
            raw: raw.data.clone(),
            source: raw.source.clone(),
            hints: Hints::default(),
        };
        let result = async {
            let mut w = self.store.begin_write().await?;
            let r = apply::apply_batch(
                &mut w.tx,
                self.store.backend(),
                &self.dir,
                &[(channel, &inbound)],
                now_ms(),
            )
            .await;
            w.tx.rollback().await?;
            r
        }
        .await;
        match result {
            Err(e) => format!("cannot apply: {e}"),
            Ok(_) => "cannot apply: transient errors persisted".into(),
        }
    }

    /// Applies messages in one transaction, retrying transient errors with
    /// backoff. Returns the class of the last error when it gives up.
    async fn apply_all(&self, items: &[Item]) -> Result<Vec<Outcome>, ErrorClass> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result: Result<Vec<Outcome>, sqlx::Error> = async {
                let mut w = self.store.begin_write().await?;
                let batch: Vec<(&ChannelInfo, &Inbound)> = items
                    .iter()
                    .map(|(_, _, channel, inbound)| (channel, inbound))
                    .collect();
                let outcomes = apply::apply_batch(
                    &mut w.tx,
                    self.store.backend(),
                    &self.dir,
                    &batch,
                    now_ms(),
                )
                .await?;
                w.commit().await?;
                Ok(outcomes)
            }
            .await;
            match result {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) => {
                    let class = classify_error(&e);
                    if class == ErrorClass::Permanent || attempt >= self.config.max_attempts {
                        tracing::debug!(error = %e, attempt, "Apply failed.");
                        return Err(class);
                    }
                    tracing::debug!(error = %e, attempt, "Apply failed; retrying.");
                    tokio::time::sleep(Backoff::STORE.delay(attempt)).await;
                }
            }
        }
    }

    /// Keeps a message whole in the quarantine with the reason.
    async fn quarantine(&self, raw: &RawMessage, reason: &str) -> Result<i64, PipelineError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .store
                .quarantine_put(&raw.channel, raw.source.as_deref(), reason, &raw.data)
                .await
            {
                Ok(id) => return Ok(id),
                Err(e)
                    if attempt < self.config.max_attempts
                        && classify_error(&e) != ErrorClass::Permanent =>
                {
                    tokio::time::sleep(Backoff::STORE.delay(attempt)).await;
                }
                Err(e) => {
                    return Err(PipelineError::Unavailable(format!(
                        "cannot write to the quarantine: {e}"
                    )))
                }
            }
        }
    }
}

/// How long the commit worker waits for more submissions after the first.
const COMMIT_LINGER: Duration = Duration::from_micros(500);

/// Group commit for callers that arrive one message at a time (HTTP): each
/// caller waits for its own answer, while a single worker commits whatever
/// has queued up meanwhile in one transaction. Under load this turns many
/// fsyncs into one; idle, a lone request is committed at once.
#[derive(Clone)]
pub struct CommitQueue {
    jobs: tokio::sync::mpsc::Sender<Job>,
}

/// The worker behind a [`CommitQueue`]; whoever serves the callers runs it.
pub struct CommitWorker {
    pipeline: Pipeline,
    queue: tokio::sync::mpsc::Receiver<Job>,
    max_batch: usize,
}

struct Job {
    raw: RawMessage,
    hints: Hints,
    reply: tokio::sync::oneshot::Sender<Result<Disposition, PipelineError>>,
}

impl CommitQueue {
    /// A queue and its worker, committing up to `max_batch` at a time.
    pub fn new(pipeline: Pipeline, max_batch: usize) -> (CommitQueue, CommitWorker) {
        let (jobs, queue) = tokio::sync::mpsc::channel::<Job>(max_batch * 4);
        let worker = CommitWorker {
            pipeline,
            queue,
            max_batch,
        };
        (CommitQueue { jobs }, worker)
    }

    /// Queues one message (refusing unusable input) and waits until it is
    /// committed, quarantined or refused.
    pub async fn submit(
        &self,
        raw: RawMessage,
        hints: Hints,
    ) -> Result<Disposition, PipelineError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || PipelineError::Unavailable("the commit worker stopped".into());
        self.jobs
            .send(Job { raw, hints, reply })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

impl CommitWorker {
    /// Commits what is queued until `stop`; then takes no more and commits
    /// what is already waiting, so no caller is left without an answer.
    pub async fn run(mut self, stop: &CancellationToken) {
        loop {
            let first = tokio::select! {
                job = self.queue.recv() => job,
                _ = stop.cancelled() => {
                    self.queue.close();
                    self.queue.recv().await
                }
            };
            let Some(first) = first else {
                return;
            };
            let batch = self.gather(first).await;
            self.commit(batch).await;
        }
    }

    /// Lingers briefly for company: each transaction costs a fixed number
    /// of statements and an fsync, shared by its batch.
    async fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(COMMIT_LINGER);
        tokio::pin!(linger);
        while batch.len() < self.max_batch {
            tokio::select! {
                job = self.queue.recv() => match job {
                    Some(job) => batch.push(job),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        batch
    }

    async fn commit(&self, batch: Vec<Job>) {
        let (items, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|j| ((j.raw, j.hints), j.reply))
            .unzip();
        let pipeline = &self.pipeline;
        let result = match pipeline.prepare_with(items, OnBadInput::Refuse).await {
            Ok(prepared) => pipeline.commit(prepared).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(dispositions) => {
                for (reply, disposition) in replies.into_iter().zip(dispositions) {
                    let _ = reply.send(Ok(disposition));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
