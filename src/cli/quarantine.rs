//! `mailroom quarantine list|show|retry|release|drop`: messages that could
//! not be parsed or applied, or came from a blocked sender, kept whole
//! with the reason.

use std::io::Write;

use super::{open, readout};
use crate::channel::pipe::{EX_CONFIG, EX_TEMPFAIL};
use crate::config::Config;
use crate::pipeline::{Disposition, RetryError};

#[derive(clap::Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined messages.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one entry; --raw prints the original message.
    Show {
        id: i64,
        #[arg(long)]
        raw: bool,
    },
    /// Run a quarantined message through the pipeline again (after fixing the cause).
    Retry { id: i64 },
    /// Let a blocked sender's quarantined message through into a ticket.
    Release { id: i64 },
    /// Delete a quarantined message for good.
    Drop { id: i64 },
}

pub async fn run(config: &Config, command: QuarantineCommand) -> u8 {
    match command {
        QuarantineCommand::Retry { id } => return retry(config, id, false).await,
        QuarantineCommand::Release { id } => return retry(config, id, true).await,
        _ => {}
    }
    readout(config, |store| async move {
        match command {
            QuarantineCommand::List { json } => {
                let entries = store.quarantine_list().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&entries)?);
                    return Ok(0);
                }
                let mut out = std::io::stdout().lock();
                for e in &entries {
                    writeln!(
                        out,
                        "#{:<5} {:<10} {:>9} B  tries {}  {}  ({})",
                        e.id,
                        e.channel.as_deref().unwrap_or("-"),
                        e.size,
                        e.attempts,
                        e.reason,
                        e.source.as_deref().unwrap_or("-")
                    )?;
                }
                writeln!(out, "{} quarantined", entries.len())?;
                Ok(0)
            }
            QuarantineCommand::Show { id, raw } => {
                let Some((entry, data)) = store.quarantine_get(id).await? else {
                    eprintln!("no quarantine entry #{id}");
                    return Ok(1);
                };
                if raw {
                    std::io::stdout().write_all(&data)?;
                } else {
                    println!("{}", serde_json::to_string_pretty(&entry)?);
                }
                Ok(0)
            }
            QuarantineCommand::Drop { id } => {
                if store.quarantine_drop(id).await? {
                    println!("dropped #{id}");
                    Ok(0)
                } else {
                    eprintln!("no quarantine entry #{id}");
                    Ok(1)
                }
            }
            QuarantineCommand::Retry { .. } | QuarantineCommand::Release { .. } => Ok(0),
        }
    })
    .await
}

/// Runs the entry through the pipeline again (`release`: past a sender
/// block); removes it once it applies.
async fn retry(config: &Config, id: i64, release: bool) -> u8 {
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let fallback = config.default_pipe_channel().ok().map(String::from);
    let code = match pipeline.retry_quarantined(id, release, fallback).await {
        Ok(None) => {
            eprintln!("no quarantine entry #{id}");
            1
        }
        Ok(Some(Disposition::Applied(outcome))) => {
            let ticket = outcome
                .ticket_id()
                .map_or("none".to_string(), |t| t.to_string());
            println!("#{id}: {} (ticket {ticket})", outcome.name());
            0
        }
        Ok(Some(Disposition::Quarantined { reason, .. })) => {
            println!("#{id}: still failing: {reason}");
            1
        }
        Ok(Some(Disposition::Refused { reason })) => {
            println!("#{id}: refused: {reason}");
            1
        }
        Err(RetryError::NoChannel) => {
            eprintln!("quarantine #{id}: {}", RetryError::NoChannel);
            EX_CONFIG
        }
        Err(e) => {
            eprintln!("mailroom: {e}");
            EX_TEMPFAIL
        }
    };
    pipeline.store().close().await;
    code
}
