//! `mailroom reply NUMBER --body-file F [--html-file H] …`: queues a reply from the command
//! line, with the same checks as the API; the daemon (or `mailroom outbox
//! flush`) sends it.

use std::path::{Path, PathBuf};

use super::open;
use crate::channel::pipe::{EX_CONFIG, EX_DATAERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::outbound::compose::NewAttachment;
use crate::outbound::{queue_reply, ActionError, Actor, ReplyRequest};

#[derive(clap::Args)]
pub struct Args {
    /// Ticket number.
    ticket: i64,
    /// A From address of the ticket's team [default: the team default].
    #[arg(long)]
    from: Option<String>,
    /// The reply's text (`-` for stdin) [default: made from the HTML].
    #[arg(long, required_unless_present = "html_file")]
    body_file: Option<PathBuf>,
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
}

fn read_text(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map(|_| text)
            .map_err(|e| format!("stdin: {e}"))
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The request from the command line's files and flags.
fn request(args: &Args) -> Result<ReplyRequest, String> {
    let mut request = ReplyRequest {
        from: args.from.clone(),
        to: (!args.to.is_empty()).then(|| args.to.clone()),
        cc: args.cc.clone(),
        bcc: args.bcc.clone(),
        in_reply_to: args.in_reply_to,
        status: args.status.clone(),
        body_text: args.body_file.as_deref().map(read_text).transpose()?,
        body_html: args.html_file.as_deref().map(read_text).transpose()?,
        ..Default::default()
    };
    for path in &args.attach {
        let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "attachment".into());
        let content_type = mime_guess::from_path(&filename)
            .first_or_octet_stream()
            .essence_str()
            .to_string();
        request.attachments.push(NewAttachment {
            filename,
            content_type,
            data,
        });
    }
    for pair in &args.set {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--set {pair:?}: expected KEY=VALUE"))?;
        let value = serde_json::Value::String(v.to_string());
        request.properties.insert(k.to_string(), value);
    }
    Ok(request)
}

pub async fn run(config: &Config, args: Args) -> u8 {
    let request = match request(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mailroom reply: {e}");
            return EX_DATAERR;
        }
    };
    let pipeline = match open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let actor = match &args.agent {
        None => Actor::Ops,
        Some(key) => match Actor::agent(pipeline.directory(), key) {
            Some(a) => a,
            None => {
                eprintln!("mailroom reply: --as {key:?} is not a configured agent");
                return EX_CONFIG;
            }
        },
    };
    let (store, dir) = (pipeline.store(), pipeline.directory());
    let result = queue_reply(store, dir, config, &actor, args.ticket, request).await;
    store.close().await;
    match result {
        Ok(queued) if args.json => {
            println!("{}", serde_json::json!(queued));
            0
        }
        Ok(queued) => {
            println!(
                "reply queued on ticket #{} as message {} from {} ({}); status {}",
                queued.ticket, queued.message, queued.from, queued.message_id, queued.status
            );
            0
        }
        Err(ActionError::Store(e)) => {
            eprintln!("mailroom reply: database: {e}");
            EX_TEMPFAIL
        }
        Err(e) => {
            eprintln!("mailroom reply: {e}");
            EX_DATAERR
        }
    }
}
