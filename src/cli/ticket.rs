//! `mailroom ticket list|show|merge` and `mailroom export --jsonl`.

use std::io::Write;

use super::readout;
use crate::channel::pipe::{EX_DATAERR, EX_TEMPFAIL};
use crate::config::Config;
use crate::outbound::{ActionError, Actor};
use crate::store::tickets::{TicketSummary, TicketView};

#[derive(clap::Subcommand)]
pub enum TicketCommand {
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
    /// Merge a ticket into another of its team; it lives on there.
    Merge {
        number: i64,
        #[arg(long)]
        into: i64,
    },
}

pub async fn run(config: &Config, command: TicketCommand) -> u8 {
    if let TicketCommand::Merge { number, into } = command {
        return merge(config, number, into).await;
    }
    readout(config, |store| async move {
        match command {
            TicketCommand::List { status, json } => {
                let tickets = store.ticket_list(status.as_deref()).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tickets)?);
                } else {
                    print_list(&tickets)?;
                }
                Ok(0)
            }
            TicketCommand::Merge { .. } => unreachable!("handled above"),
            TicketCommand::Show { number, json } => {
                let Some(ticket) = store.ticket_show(number).await? else {
                    eprintln!("no ticket number {number}");
                    return Ok(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&ticket)?);
                } else {
                    print_ticket(&ticket)?;
                }
                Ok(0)
            }
        }
    })
    .await
}

async fn merge(config: &Config, number: i64, into: i64) -> u8 {
    let pipeline = match super::open(config).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let store = pipeline.store();
    let result = crate::outbound::merge::merge_tickets(store, &Actor::Ops, number, into).await;
    store.close().await;
    match result {
        Ok(_) => {
            println!("ticket #{number} merged into #{into}");
            0
        }
        Err(ActionError::Store(e)) => {
            eprintln!("mailroom ticket merge: database: {e}");
            EX_TEMPFAIL
        }
        Err(e) => {
            eprintln!("mailroom ticket merge: {e}");
            EX_DATAERR
        }
    }
}

fn print_list(tickets: &[TicketSummary]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>7}  {:<20} {:<28} {:>4}  SUBJECT",
        "NUMBER", "STATUS", "CONTACT", "MSGS"
    )?;
    for t in tickets {
        writeln!(
            out,
            "{:>7}  {:<20} {:<28} {:>4}  {}",
            t.number,
            t.status,
            t.contacts.first().map(String::as_str).unwrap_or("-"),
            t.message_count,
            t.subject
        )?;
    }
    Ok(())
}

fn print_ticket(ticket: &TicketView) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let t = &ticket.ticket;
    writeln!(
        out,
        "#{} {}\nstatus: {}  team: {}  contacts: {}",
        t.number,
        t.subject,
        t.status,
        t.team,
        t.contacts.join(", ")
    )?;
    if let Some(into) = ticket.merged_into {
        writeln!(out, "merged into #{into}")?;
    }
    for r in &ticket.related {
        writeln!(
            out,
            "related: #{} ({}; merge with `mailroom ticket merge {} --into {}` or the API)",
            r.ticket,
            r.reason.replace('_', " "),
            t.number.max(r.ticket),
            t.number.min(r.ticket)
        )?;
    }
    for m in &ticket.messages {
        let delivery = match (&m.delivery_state, &m.delivery_detail) {
            (Some(state), Some(detail)) => format!(" [{state}: {detail}]"),
            (Some(state), None) => format!(" [{state}]"),
            _ => String::new(),
        };
        writeln!(
            out,
            "\n--- {} {} <{}> {}{delivery}",
            m.direction,
            m.from,
            m.message_id,
            m.flags.join(",")
        )?;
        if !m.attachments.is_empty() {
            writeln!(out, "attachments: {}", m.attachments.join(", "))?;
        }
        writeln!(out, "{}", m.body_text)?;
    }
    Ok(())
}

/// Every ticket with its messages, one JSON object per line.
pub async fn export(config: &Config) -> u8 {
    readout(config, |store| async move {
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
