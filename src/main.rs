//! The `mailroom` command: clap → Config → the chosen subcommand.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use mailroom::config::{config_path, Config, ConfigError, LogFormat};
use mailroom::ingest::{self, EX_CONFIG, EX_DATAERR, EX_SOFTWARE, EX_TEMPFAIL};
use mailroom::pipeline::{Disposition, OnBadInput, Pipeline, PipelineError, RawMessage};
use mailroom::store::Store;

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
    Ingest {
        /// Channel to ingest into [default: the only pipe channel].
        #[arg(long)]
        channel: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Files or folders; stdin when none.
        paths: Vec<PathBuf>,
    },
    /// Inspect tickets.
    Ticket {
        #[command(subcommand)]
        command: TicketCommand,
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
        command: QuarantineCommand,
    },
    /// Queue a reply to a ticket's customer; the running daemon sends it
    /// (or `mailroom outbox flush`).
    Reply {
        /// Ticket number.
        ticket: i64,
        /// A From address of the ticket's team [default: the team default].
        #[arg(long)]
        from: Option<String>,
        /// The reply's text (`-` for stdin).
        #[arg(long)]
        body_file: PathBuf,
        /// An HTML version of the reply [default: made from the text].
        #[arg(long)]
        html_file: Option<PathBuf>,
        /// Recipients [default: the ticket's contacts]; repeatable.
        #[arg(long)]
        to: Vec<String>,
        #[arg(long)]
        cc: Vec<String>,
        #[arg(long)]
        bcc: Vec<String>,
        /// Files to attach; repeatable.
        #[arg(long)]
        attach: Vec<PathBuf>,
        /// Set this status in the same step.
        #[arg(long)]
        status: Option<String>,
        /// Ticket properties, KEY=VALUE; repeatable (a status may require some).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// The message (id) answered [default: the latest inbound one].
        #[arg(long)]
        in_reply_to: Option<i64>,
        /// Reply as this agent (key in the config): authorship and assignment.
        #[arg(long = "as")]
        agent: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replies waiting to be sent, sent, or failed.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
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

#[derive(Subcommand)]
enum TicketCommand {
    /// List tickets.
    List {
        /// Only tickets in this status (name or kind: open, waiting, closed).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show a ticket and its messages.
    Show {
        number: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(cli.config.as_deref());

    if let Command::Check = cli.command {
        return ExitCode::from(check(&path));
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
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("can start the tokio runtime");
    let code = runtime.block_on(dispatch(cli.command, config));
    // A runaway parse abandoned on a blocking thread must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::from(code)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILROOM_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Prints every config problem with its key, then tries the database.
fn check(path: &std::path::Path) -> u8 {
    let config = match Config::load_unvalidated(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EX_CONFIG;
        }
    };
    let problems = config.validate();
    for problem in &problems {
        println!("problem: {problem}");
    }
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    if !problems.is_empty() {
        println!("{}: {} problem(s)", path.display(), problems.len());
        return EX_CONFIG;
    }
    let runtime = tokio::runtime::Runtime::new().expect("can start the tokio runtime");
    let reached = runtime.block_on(async {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        store.sync_config(&config).await?;
        anyhow::Ok(())
    });
    let mut code = match reached {
        Ok(()) => {
            println!(
                "ok: {} is valid; database reachable and migrated",
                path.display()
            );
            0
        }
        Err(e) => {
            println!("problem: database.url: {e:#}");
            EX_TEMPFAIL
        }
    };
    for (name, channel) in &config.channels {
        if channel.kind != mailroom::config::ChannelKind::Imap {
            continue;
        }
        let result = runtime.block_on(async {
            let mailbox = mailroom::channel::imap::ImapChannel::new(
                name,
                channel,
                config.ingest.max_message_bytes,
            )
            .map_err(|e| e.to_string())?;
            // The store keeps OAuth refresh tokens that the provider rotates.
            let store = Store::connect(&config.database)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let result = mailbox.probe(&store).await.map_err(|e| e.to_string());
            store.close().await;
            result
        });
        match result {
            Ok(report) => println!("ok: channels.{name}: {report}"),
            Err(e) => {
                println!("problem: channels.{name}: {e}");
                code = EX_TEMPFAIL;
            }
        }
    }
    for (name, relay) in &config.relays {
        let result = runtime.block_on(async {
            // The store keeps rotated OAuth refresh tokens for XOAUTH2 relays.
            let store = Store::connect(&config.database)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let result = mailroom::outbound::smtp::Relay::new(name, relay)
                .probe(&store)
                .await;
            store.close().await;
            result
        });
        match result {
            Ok(report) => println!("ok: relays.{name}: {report}"),
            Err(e) => {
                println!("problem: relays.{name}: {e}");
                code = EX_TEMPFAIL;
            }
        }
    }
    code
}

fn guess_content_type(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("pdf") => "application/pdf",
        Some("txt" | "log") => "text/plain",
        Some("csv") => "text/csv",
        Some("html" | "htm") => "text/html",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("zip") => "application/zip",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

async fn outbox_command(command: OutboxCommand, config: &Config) -> u8 {
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let code = match command {
        OutboxCommand::Flush => {
            let outbox = Arc::new(mailroom::outbound::Outbox::new(
                store.clone(),
                Arc::new(pipeline.directory().clone()),
                Arc::new(config.clone()),
            ));
            let handled = outbox.run_until_idle().await;
            match store.outbox_counts().await {
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
            }
        }
        OutboxCommand::Retry { message } => match store.outbox_retry(message).await {
            Ok(true) => {
                println!("message {message} queued again");
                0
            }
            Ok(false) => {
                eprintln!("mailroom outbox retry: message {message} is not a failed reply");
                EX_DATAERR
            }
            Err(e) => {
                eprintln!("mailroom outbox retry: {e}");
                EX_TEMPFAIL
            }
        },
        OutboxCommand::List { all, json } => match store.outbox_list(all).await {
            Ok(rows) => {
                if json {
                    for row in &rows {
                        println!("{row}");
                    }
                } else {
                    for row in &rows {
                        println!(
                            "message {:<6} ticket #{:<6} {:<7} attempts={} to={} last={}",
                            row["message"],
                            row["ticket"],
                            row["state"].as_str().unwrap_or("?"),
                            row["attempts"],
                            row["rcpt_to"],
                            row["last_answer"].as_str().unwrap_or("-")
                        );
                    }
                    if rows.is_empty() {
                        println!("outbox empty");
                    }
                }
                0
            }
            Err(e) => {
                eprintln!("mailroom outbox list: {e}");
                EX_TEMPFAIL
            }
        },
    };
    store.close().await;
    code
}

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

async fn dispatch(command: Command, config: Config) -> u8 {
    match command {
        Command::Reply {
            ticket,
            from,
            body_file,
            html_file,
            to,
            cc,
            bcc,
            attach,
            status,
            set,
            in_reply_to,
            agent,
            json,
        } => {
            let read = |path: &PathBuf| -> Result<String, String> {
                if path.as_os_str() == "-" {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                        .map(|_| text)
                        .map_err(|e| format!("stdin: {e}"))
                } else {
                    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
                }
            };
            let mut request = mailroom::outbound::ReplyRequest {
                from,
                to: (!to.is_empty()).then_some(to),
                cc,
                bcc,
                in_reply_to,
                status,
                ..Default::default()
            };
            let loaded = (|| -> Result<(), String> {
                request.body_text = Some(read(&body_file)?);
                request.body_html = html_file.as_ref().map(read).transpose()?;
                for path in &attach {
                    let data =
                        std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let filename = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "attachment".into());
                    request
                        .attachments
                        .push(mailroom::outbound::compose::NewAttachment {
                            content_type: guess_content_type(&filename).into(),
                            filename,
                            data,
                        });
                }
                for pair in &set {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
                    request
                        .properties
                        .insert(k.to_string(), serde_json::Value::String(v.to_string()));
                }
                Ok(())
            })();
            if let Err(e) = loaded {
                eprintln!("mailroom reply: {e}");
                return EX_DATAERR;
            }
            let pipeline = match open(&config).await {
                Ok(p) => p,
                Err(code) => return code,
            };
            let actor = match &agent {
                None => mailroom::outbound::Actor::Ops,
                Some(key) => {
                    match mailroom::outbound::Actor::agent(&config, pipeline.directory(), key) {
                        Some(a) => a,
                        None => {
                            eprintln!("mailroom reply: --as {key:?} is not a configured agent");
                            return EX_CONFIG;
                        }
                    }
                }
            };
            let result = mailroom::outbound::queue_reply(
                pipeline.store(),
                pipeline.directory(),
                &config,
                &actor,
                ticket,
                request,
            )
            .await;
            pipeline.store().close().await;
            match result {
                Ok(queued) => {
                    if json {
                        println!("{}", serde_json::json!(queued));
                    } else {
                        println!(
                            "reply queued on ticket #{} as message {} from {} ({}); status {}",
                            queued.ticket,
                            queued.message,
                            queued.from,
                            queued.message_id,
                            queued.status
                        );
                    }
                    0
                }
                Err(mailroom::outbound::ReplyError::Store(e)) => {
                    eprintln!("mailroom reply: database: {e}");
                    EX_TEMPFAIL
                }
                Err(e) => {
                    eprintln!("mailroom reply: {e}");
                    EX_DATAERR
                }
            }
        }
        Command::Outbox { command } => outbox_command(command, &config).await,
        Command::Check => unreachable!("handled before the runtime starts"),
        Command::Run => match mailroom::daemon::run(config).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "mailroom failed.");
                EX_SOFTWARE
            }
        },
        Command::Status { json } => {
            let channels = config.channels.clone();
            readout(&config, |store| async move {
                let mut all = serde_json::Map::new();
                for (name, channel) in &channels {
                    let state: serde_json::Value = store.channel_state(name).await?;
                    let mut entry =
                        serde_json::json!({ "kind": channel.kind.as_str(), "state": state });
                    // Which instance polls the mailbox (several may share the database).
                    if let Some((holder, until)) =
                        store.lease_holder(&format!("imap:{name}")).await?
                    {
                        entry["lease"] = serde_json::json!({ "holder": holder, "expires_at": until });
                    }
                    all.insert(name.clone(), entry);
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                } else {
                    for (name, value) in &all {
                        let state = &value["state"];
                        let field = |k: &str| match &state[k] {
                            serde_json::Value::Null => "-".to_string(),
                            v => v.to_string(),
                        };
                        let holder = match value["lease"]["holder"].as_str() {
                            Some(h) => format!(" held_by={h}"),
                            None => String::new(),
                        };
                        println!(
                        "{name:<16} {:<8} connected={} backlog={} last_success={} last_error={}{holder}",
                        value["kind"].as_str().unwrap_or("?"),
                        field("connected"),
                        field("backlog"),
                        field("last_success"),
                        field("last_error")
                    );
                    }
                    let outbox = store.outbox_counts().await?;
                    println!(
                        "{:<16} {:<8} queued={} sent={} failed={}",
                        "outbox", "smtp", outbox.queued, outbox.sent, outbox.failed
                    );
                }
                Ok(0)
            })
            .await
        }
        Command::Migrate => match open(&config).await {
            Ok(_) => {
                println!("migrations applied");
                0
            }
            Err(code) => code,
        },
        Command::Ingest {
            channel,
            json,
            paths,
        } => {
            let channel = match channel
                .map(Ok)
                .unwrap_or_else(|| config.default_pipe_channel().map(String::from))
            {
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
            let pipeline = match open(&config).await {
                Ok(p) => p,
                Err(code) => return code,
            };
            if paths.is_empty() {
                let code = ingest::ingest_one(&pipeline, &channel, std::io::stdin().lock()).await;
                pipeline.store().close().await;
                return code;
            }
            let started = std::time::Instant::now();
            match ingest::ingest_paths(&pipeline, &channel, paths, config.ingest.batch_size).await {
                Ok(summary) => {
                    let secs = started.elapsed().as_secs_f64();
                    if json {
                        let mut value = serde_json::to_value(&summary).unwrap_or_default();
                        value["seconds"] = serde_json::json!(secs);
                        println!("{value}");
                    } else {
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
                    pipeline.store().close().await;
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
        Command::Ticket { command } => {
            readout(&config, |store| async move {
                match command {
                    TicketCommand::List { status, json } => {
                        let tickets = store.ticket_list(status.as_deref()).await?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&tickets)?);
                        } else {
                            println!(
                                "{:>7}  {:<20} {:<28} {:>4}  SUBJECT",
                                "NUMBER", "STATUS", "CONTACT", "MSGS"
                            );
                            for t in tickets {
                                println!(
                                    "{:>7}  {:<20} {:<28} {:>4}  {}",
                                    t.number,
                                    t.status,
                                    t.contacts.first().map(String::as_str).unwrap_or("-"),
                                    t.message_count,
                                    t.subject
                                );
                            }
                        }
                        Ok(0)
                    }
                    TicketCommand::Show { number, json } => {
                        let Some(ticket) = store.ticket_show(number).await? else {
                            eprintln!("no ticket number {number}");
                            return Ok(1);
                        };
                        if json {
                            println!("{}", serde_json::to_string_pretty(&ticket)?);
                        } else {
                            let t = &ticket.ticket;
                            println!(
                                "#{} {}\nstatus: {}  team: {}  contacts: {}",
                                t.number,
                                t.subject,
                                t.status,
                                t.team,
                                t.contacts.join(", ")
                            );
                            for m in &ticket.messages {
                                let delivery = match (&m.delivery_state, &m.delivery_detail) {
                                    (Some(state), Some(detail)) => format!(" [{state}: {detail}]"),
                                    (Some(state), None) => format!(" [{state}]"),
                                    _ => String::new(),
                                };
                                println!(
                                    "\n--- {} {} <{}> {}{delivery}",
                                    m.direction,
                                    m.from,
                                    m.message_id,
                                    m.flags.join(",")
                                );
                                if !m.attachments.is_empty() {
                                    println!("attachments: {}", m.attachments.join(", "));
                                }
                                println!("{}", m.body_text);
                            }
                        }
                        Ok(0)
                    }
                }
            })
            .await
        }
        Command::Export { jsonl: _ } => {
            readout(&config, |store| async move {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                for ticket in store.export().await? {
                    serde_json::to_writer(&mut out, &ticket)?;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(0)
            })
            .await
        }
        Command::Quarantine { command } => match command {
            QuarantineCommand::Retry { id } => retry(&config, id).await,
            command => {
                readout(&config, |store| async move {
                    match command {
                        QuarantineCommand::List { json } => {
                            let entries = store.quarantine_list().await?;
                            if json {
                                println!("{}", serde_json::to_string_pretty(&entries)?);
                            } else {
                                for e in &entries {
                                    println!(
                                        "#{:<5} {:<10} {:>9} B  tries {}  {}  ({})",
                                        e.id,
                                        e.channel.as_deref().unwrap_or("-"),
                                        e.size,
                                        e.attempts,
                                        e.reason,
                                        e.source.as_deref().unwrap_or("-")
                                    );
                                }
                                println!("{} quarantined", entries.len());
                            }
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
                        QuarantineCommand::Retry { .. } => unreachable!(),
                    }
                })
                .await
            }
        },
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
        Err(e) => {
            eprintln!("mailroom: {e:#}");
            1
        }
    };
    store.close().await;
    code
}

async fn retry(config: &Config, id: i64) -> u8 {
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store().clone();
    let entry = match store.quarantine_get(id).await {
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
    let (entry, data) = entry;
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
        Ok(mut d) => match d.remove(0) {
            Disposition::Applied(outcome) => {
                if let Err(e) = store.quarantine_drop(id).await {
                    eprintln!("applied, but could not remove quarantine entry #{id}: {e}");
                }
                println!(
                    "#{id}: {} (ticket {:?})",
                    outcome.name(),
                    outcome.ticket_id()
                );
                0
            }
            Disposition::Quarantined { reason, .. } => {
                println!("#{id}: still failing: {reason}");
                1
            }
            Disposition::Refused { reason } => {
                println!("#{id}: refused: {reason}");
                1
            }
        },
        Err(e) => {
            eprintln!("mailroom: {e}");
            EX_TEMPFAIL
        }
    };
    store.close().await;
    code
}
