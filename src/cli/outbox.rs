//! `mailroom outbox list|flush|retry`: replies waiting, sent or failed.

use std::io::Write;
use std::sync::Arc;

use super::{open, readout};
use crate::channel::pipe::{EX_DATAERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::outbound::Outbox;
use crate::store::outbox::OutboxEntry;

#[derive(clap::Subcommand)]
pub enum OutboxCommand {
    /// Queued and failed replies, with their last SMTP answer.
    List {
        /// Include sent replies.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send every reply that is due now, then exit (no daemon needed).
    Flush,
    /// Queue a failed reply (by message id) again, after fixing the cause.
    Retry { message: i64 },
}

pub async fn run(config: &Config, command: OutboxCommand) -> u8 {
    match command {
        OutboxCommand::Flush => flush(config).await,
        OutboxCommand::Retry { message } => {
            readout(config, |store| async move {
                if store.outbox_retry(message).await? {
                    println!("message {message} queued again");
                    Ok(0)
                } else {
                    eprintln!("mailroom outbox retry: message {message} is not a failed reply");
                    Ok(EX_DATAERR)
                }
            })
            .await
        }
        OutboxCommand::List { all, json } => {
            readout(config, |store| async move {
                let rows = store.outbox_list(all).await?;
                print_list(&rows, json)?;
                Ok(0)
            })
            .await
        }
    }
}

fn print_list(rows: &[OutboxEntry], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        for row in rows {
            writeln!(out, "{}", serde_json::to_string(row)?)?;
        }
        return Ok(());
    }
    for row in rows {
        writeln!(
            out,
            "message {:<6} ticket #{:<6} {:<7} attempts={} to={} last={}",
            row.message,
            row.ticket,
            row.state,
            row.attempts,
            serde_json::to_string(&row.rcpt_to)?,
            row.last_answer.as_deref().unwrap_or("-")
        )?;
    }
    if rows.is_empty() {
        writeln!(out, "outbox empty")?;
    }
    Ok(())
}

async fn flush(config: &Config) -> u8 {
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let outbox = Arc::new(Outbox::new(
        store.clone(),
        Arc::new(pipeline.directory().clone()),
        Arc::new(config.clone()),
    ));
    let handled = outbox.run_until_idle().await;
    let code = match store.outbox_counts().await {
        Ok(c) => {
            println!(
                "handled {handled}; queued {} (waiting for a retry), sent {}, failed {}",
                c.queued, c.sent, c.failed
            );
            0
        }
        Err(e) => {
            eprintln!("mailroom outbox: {e}");
            EX_TEMPFAIL
        }
    };
    store.close().await;
    code
}
