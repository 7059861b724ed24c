//! The `mailroom` command: clap → Config → the chosen subcommand, one file
//! per command group. Exit codes follow sysexits.h (an MTA reads them).

mod block;
mod check;
mod contact;
mod ingest;
mod logging;
mod outbox;
mod quarantine;
mod reload;
mod reply;
mod status;
mod ticket;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::channel::pipe::{EX_CONFIG, EX_SOFTWARE, EX_TEMPFAIL};
use crate::config::{config_path, Config, ConfigError};
use crate::pipeline::Pipeline;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "mailroom",
    version,
    about = "The email channel of a help desk."
)]
struct Cli {
    /// Config file [default: $MAILROOM_CONFIG or config/mailroom.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the daemon: every configured channel, until SIGINT/SIGTERM.
    Run,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the config (and reach the database); list every problem.
    Check,
    /// Each channel's state: connected, last success, last error, backlog.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Ingest one message from stdin (MTA pipe), or backfill .eml/mbox/Maildir paths.
    Ingest(ingest::Args),
    /// Inspect tickets.
    Ticket {
        #[command(subcommand)]
        command: ticket::TicketCommand,
    },
    /// Contacts, visitors and companies.
    Contact {
        #[command(subcommand)]
        command: contact::ContactCommand,
    },
    /// Blocked senders: their mail is kept in the quarantine, not ticketed.
    Block {
        #[command(subcommand)]
        command: block::BlockCommand,
    },
    /// Export every ticket with its messages.
    Export {
        /// One JSON object per ticket per line (the only format so far).
        #[arg(long, required = true)]
        jsonl: bool,
    },
    /// Messages that could not be parsed or applied.
    Quarantine {
        #[command(subcommand)]
        command: quarantine::QuarantineCommand,
    },
    /// Queue a reply to a ticket's customer; the running daemon sends it
    /// (or `mailroom outbox flush`).
    Reply(reply::Args),
    /// Replies waiting to be sent, sent, or failed.
    Outbox {
        #[command(subcommand)]
        command: outbox::OutboxCommand,
    },
    /// Check the config, then have the running daemon (`mailroom run` with
    /// this config file on this host) apply it: sends it SIGHUP.
    Reload(reload::Args),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if prints_a_readout(&cli.command) {
        // `mailroom ticket list | head` ends quietly, as other tools do,
        // instead of a panic on the closed pipe. Sockets are not affected
        // (they are written with MSG_NOSIGNAL).
        // SAFETY: restores the default disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let path = config_path(cli.config.as_deref());
    if let Command::Check = cli.command {
        return ExitCode::from(check::run(&path));
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailroom: {e}");
            if matches!(e, ConfigError::Load { .. }) {
                eprintln!("(set --config or MAILROOM_CONFIG to use another file)");
            }
            return ExitCode::from(EX_CONFIG);
        }
    };
    logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mailroom: cannot start the async runtime: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    let code = runtime.block_on(dispatch(cli.command, config, &path));
    // A runaway parse abandoned on a blocking thread must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

/// Commands whose output is read by people and pipes, not the daemon.
fn prints_a_readout(command: &Command) -> bool {
    matches!(
        command,
        Command::Status { .. }
            | Command::Ticket { .. }
            | Command::Contact { .. }
            | Command::Block { .. }
            | Command::Export { .. }
            | Command::Quarantine { .. }
            | Command::Outbox { .. }
    )
}

async fn dispatch(command: Command, config: Config, path: &std::path::Path) -> u8 {
    match command {
        Command::Run => run(config, path).await,
        Command::Migrate => match open(&config).await {
            Ok(_) => {
                println!("migrations applied");
                0
            }
            Err(code) => code,
        },
        Command::Check => check::run(path),
        Command::Status { json } => status::run(&config, json).await,
        Command::Ingest(args) => ingest::run(&config, args).await,
        Command::Ticket { command } => ticket::run(&config, command).await,
        Command::Contact { command } => contact::run(&config, command).await,
        Command::Block { command } => block::run(&config, command).await,
        Command::Export { jsonl: _ } => ticket::export(&config).await,
        Command::Quarantine { command } => quarantine::run(&config, command).await,
        Command::Reply(args) => reply::run(&config, args).await,
        Command::Outbox { command } => outbox::run(&config, command).await,
        Command::Reload(args) => reload::run(path, args),
    }
}

/// `mailroom run`: the daemon, until SIGINT or SIGTERM. SIGHUP reloads
/// the config file; a broken one is refused and never stops the daemon.
async fn run(config: Config, path: &std::path::Path) -> u8 {
    let app = match crate::app::App::build(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "mailroom failed.");
            return EX_SOFTWARE;
        }
    };
    let (reloads, received) = tokio::sync::mpsc::unbounded_channel();
    let hangups = tokio::spawn(reload_on_hangup(path.to_path_buf(), reloads));
    let shutdown = CancellationToken::new();
    let running = app.run_with_reloads(shutdown.clone(), Some(received));
    tokio::pin!(running);
    let result = tokio::select! {
        result = &mut running => result,
        _ = stop_signal() => {
            shutdown.cancel();
            running.await
        }
    };
    hangups.abort();
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "mailroom failed.");
            EX_SOFTWARE
        }
    }
}

/// On each SIGHUP (`systemctl reload`, `mailroom reload`): the config file
/// is loaded and checked; a valid one goes to the daemon to apply, a
/// broken one is named with its problems and the running config stays.
async fn reload_on_hangup(
    path: std::path::PathBuf,
    reloads: tokio::sync::mpsc::UnboundedSender<crate::app::Reload>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(config) => {
                tracing::info!(config = %path.display(), "SIGHUP: the config file is valid; reloading.");
                let reload = crate::app::Reload {
                    config,
                    outcome: None,
                };
                if reloads.send(reload).is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!(
                config = %path.display(),
                error = %e,
                "SIGHUP: the config file has problems; the running config stays."
            ),
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "Cannot watch for SIGTERM; only SIGINT stops the daemon.");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Connects, migrates and syncs the config; the exit code when that fails.
async fn open(config: &Config) -> Result<Pipeline, u8> {
    let store = match Store::connect(&config.database).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailroom: {e:#}");
            return Err(EX_TEMPFAIL);
        }
    };
    let ready = async {
        store.migrate().await?;
        anyhow::Ok(store.sync_config(config).await?)
    };
    match ready.await {
        Ok(dir) => Ok(Pipeline::new(store, Arc::new(dir), config.ingest.clone())),
        Err(e) => {
            eprintln!("mailroom: {e:#}");
            Err(EX_TEMPFAIL)
        }
    }
}

/// Opens the store and runs a read-out; errors become exit code 1.
async fn readout<F, Fut>(config: &Config, f: F) -> u8
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let code = match f(store.clone()).await {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("mailroom: {e:#}");
            1
        }
    };
    store.close().await;
    code
}

/// Runs a help-desk action as the operator and prints what it returns as
/// JSON. Exit codes: 0 done, 1 not found, 65 refused (the message says
/// what to fix), 75 the database is unavailable.
async fn act<T, F, Fut>(config: &Config, what: &str, f: F) -> u8
where
    F: FnOnce(Pipeline) -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::desk::ActionError>>,
    T: serde::Serialize,
{
    use crate::channel::pipe::EX_DATAERR;
    use crate::desk::ActionError;
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let code = match f(pipeline).await {
        Ok(value) => match serde_json::to_string_pretty(&value) {
            Ok(text) if text != "null" => {
                println!("{text}");
                0
            }
            _ => 0,
        },
        Err(ActionError::Store(e)) => {
            eprintln!("mailroom {what}: database: {e}");
            EX_TEMPFAIL
        }
        Err(e @ ActionError::NotFound(_)) => {
            eprintln!("mailroom {what}: {e}");
            1
        }
        Err(e) => {
            eprintln!("mailroom {what}: {e}");
            EX_DATAERR
        }
    };
    store.close().await;
    code
}

/// `key=value` pairs from the command line as ticket properties (a value
/// that parses as JSON is taken as such: numbers, true, null).
fn parse_properties(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, serde_json::Value>, crate::desk::ActionError> {
    let mut out = std::collections::BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            crate::desk::invalid("property", format!("{pair:?} is not key=value"))
        })?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        out.insert(key.trim().to_string(), value);
    }
    Ok(out)
}

/// `mailroom … | head` closed the pipe: not an error worth a message.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
