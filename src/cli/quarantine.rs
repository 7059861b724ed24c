//! `mailroom quarantine list|show|retry|drop`: messages that could not be
//! parsed or applied, kept whole with the reason.

use std::io::Write;
use std::sync::Arc;

use super::{open, readout};
use crate::channel::pipe::{EX_CONFIG, EX_TEMPFAIL};
use crate::config::Config;
use crate::pipeline::{Disposition, OnBadInput, RawMessage};

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
    /// Delete a quarantined message for good.
    Drop { id: i64 },
}

pub async fn run(config: &Config, command: QuarantineCommand) -> u8 {
    if let QuarantineCommand::Retry { id } = command {
        return retry(config, id).await;
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
            QuarantineCommand::Retry { .. } => Ok(0),
        }
    })
    .await
}

/// Runs the entry through the pipeline again; removes it once it applies.
async fn retry(config: &Config, id: i64) -> u8 {
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let (entry, data) = match store.quarantine_get(id).await {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            eprintln!("no quarantine entry #{id}");
            return 1;
        }
        Err(e) => {
            eprintln!("mailroom: {e}");
            return EX_TEMPFAIL;
        }
    };
    let channel = entry
        .channel
        .filter(|c| pipeline.directory().channel(c).is_some())
        .or_else(|| config.default_pipe_channel().ok().map(String::from));
    let Some(channel) = channel else {
        eprintln!("quarantine #{id}: its channel is no longer configured and there is no single pipe channel to use");
        return EX_CONFIG;
    };
    let raw = RawMessage {
        channel,
        source: entry.source,
        data: Arc::new(data),
    };
    let code = match pipeline.process(vec![raw], OnBadInput::Quarantine).await {
        Ok(dispositions) => match dispositions.into_iter().next() {
            Some(Disposition::Applied(outcome)) => {
                if let Err(e) = store.quarantine_drop(id).await {
                    eprintln!("applied, but could not remove quarantine entry #{id}: {e}");
                }
                let ticket = outcome
                    .ticket_id()
                    .map_or("none".to_string(), |t| t.to_string());
                println!("#{id}: {} (ticket {ticket})", outcome.name());
                0
            }
            Some(Disposition::Quarantined { reason, .. }) => {
                println!("#{id}: still failing: {reason}");
                1
            }
            Some(Disposition::Refused { reason }) => {
                println!("#{id}: refused: {reason}");
                1
            }
            None => 1,
        },
        Err(e) => {
            eprintln!("mailroom: {e}");
            EX_TEMPFAIL
        }
    };
    store.close().await;
    code
}
