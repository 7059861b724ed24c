//! `mailroom ingest` fed by an MTA: one message on stdin, and an exit code
//! that tells the MTA what happened (sysexits.h), given only after commit.

use std::io::Read;
use std::sync::Arc;

use crate::pipeline::{Disposition, Hints, OnBadInput, Pipeline, PipelineError, RawMessage};

/// sysexits.h codes that MTAs understand.
pub const EX_OK: u8 = 0;
pub const EX_DATAERR: u8 = 65;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// Reads one message from `input` and commits it. The exit code is the MTA's
/// answer: 0 only after commit (or after the message was kept in the
/// quarantine), 75 when the database is unreachable so the MTA retries, 65
/// when the input is not usable mail.
///
/// At most `ingest.max_message_bytes` + 1 bytes are read: a larger message
/// is refused (65, so the MTA bounces it to its sender) without holding it
/// in memory.
pub async fn ingest_one(
    pipeline: &Pipeline,
    channel: &str,
    recipient: Option<&str>,
    input: impl Read,
) -> u8 {
    let limit = pipeline.max_message_bytes();
    let mut data = Vec::new();
    if let Err(e) = input.take(limit.saturating_add(1)).read_to_end(&mut data) {
        eprintln!("mailroom ingest: cannot read the message: {e}");
        return EX_TEMPFAIL;
    }
    if data.len() as u64 > limit {
        eprintln!(
            "mailroom ingest: the message is larger than ingest.max_message_bytes ({limit} bytes); refused"
        );
        return EX_DATAERR;
    }
    let raw = RawMessage {
        channel: channel.to_string(),
        source: Some("stdin".into()),
        data: Arc::new(data),
    };
    let hints = Hints {
        envelope_to: recipient.map(str::to_string),
        ..Hints::default()
    };
    let prepared = pipeline
        .prepare_with(vec![(raw, hints)], OnBadInput::Refuse)
        .await;
    let done = match prepared {
        Ok(prepared) => pipeline.commit(prepared).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(mut dispositions) => match dispositions.remove(0) {
            Disposition::Applied(outcome) => {
                tracing::info!(
                    channel,
                    outcome = outcome.name(),
                    ticket = outcome.ticket_id(),
                    "Message ingested."
                );
                EX_OK
            }
            Disposition::Quarantined { id, reason } => {
                eprintln!("mailroom ingest: message kept in quarantine #{id}: {reason}");
                EX_OK
            }
            Disposition::Refused { reason } => {
                eprintln!("mailroom ingest: unusable message: {reason}");
                EX_DATAERR
            }
        },
        Err(PipelineError::Unavailable(e)) => {
            eprintln!("mailroom ingest: database unavailable, try again later: {e}");
            EX_TEMPFAIL
        }
        Err(e @ PipelineError::UnknownChannel(_)) => {
            eprintln!("mailroom ingest: {e}");
            EX_CONFIG
        }
    }
}
