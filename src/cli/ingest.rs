//! `mailroom ingest`: one message on stdin (an MTA pipe; the exit code is
//! the MTA's answer), or a backfill of files, mbox files and Maildirs.

use std::path::PathBuf;

use super::open;
use crate::channel::backfill::{self, Summary};
use crate::channel::pipe::{self, EX_CONFIG, EX_DATAERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::pipeline::PipelineError;

#[derive(clap::Args)]
pub struct Args {
    /// Channel to ingest into [default: the only pipe channel].
    #[arg(long)]
    channel: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// The envelope recipient, as the MTA passes it (Postfix: `${recipient}`);
    /// a channel with `route = "recipient"` routes by it first.
    #[arg(long)]
    recipient: Option<String>,
    /// Files or folders; stdin when none.
    paths: Vec<PathBuf>,
}

pub async fn run(config: &Config, args: Args) -> u8 {
    let chosen = args
        .channel
        .map(Ok)
        .unwrap_or_else(|| config.default_pipe_channel().map(String::from));
    let channel = match chosen {
        Ok(c) if config.channels.contains_key(&c) => c,
        Ok(c) => {
            eprintln!(
                "mailroom ingest: unknown channel {c:?} (configured: {})",
                config.channel_names()
            );
            return EX_CONFIG;
        }
        Err(e) => {
            eprintln!("mailroom ingest: {e}");
            return EX_CONFIG;
        }
    };
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    if args.paths.is_empty() {
        let stdin = std::io::stdin().lock();
        let code = pipe::ingest_one(&pipeline, &channel, args.recipient.as_deref(), stdin).await;
        pipeline.store().close().await;
        return code;
    }
    let started = std::time::Instant::now();
    let batch_size = config.ingest.batch_size;
    let result = backfill::ingest_paths(&pipeline, &channel, args.paths, batch_size).await;
    // The rate is the ingest's: closing the pool (SQLite checkpoints the WAL
    // then) comes after.
    let secs = started.elapsed().as_secs_f64();
    pipeline.store().close().await;
    match result {
        Ok(summary) => {
            print_summary(&summary, secs, args.json);
            if summary.failed > 0 {
                EX_DATAERR
            } else {
                0
            }
        }
        Err(PipelineError::Unavailable(e)) => {
            eprintln!("mailroom ingest: database unavailable: {e}; batches committed so far are kept, re-run to continue");
            EX_TEMPFAIL
        }
        Err(e) => {
            eprintln!("mailroom ingest: {e}");
            EX_CONFIG
        }
    }
}

fn print_summary(summary: &Summary, secs: f64, json: bool) {
    if json {
        let mut value = serde_json::to_value(summary).unwrap_or_default();
        value["seconds"] = serde_json::json!(secs);
        println!("{value}");
        return;
    }
    println!(
        "created {}, appended {}, duplicate {}, recorded {}, quarantined {}, failed {} \
         ({} messages in {:.2} s, {:.0}/s)",
        summary.created,
        summary.appended,
        summary.duplicate,
        summary.recorded,
        summary.quarantined,
        summary.failed,
        summary.total(),
        secs,
        summary.total() as f64 / secs.max(1e-9)
    );
}
