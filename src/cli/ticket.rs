//! `mailroom ticket list|show` and `mailroom export --jsonl`.

use std::io::Write;

use super::readout;
use crate::config::Config;
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
}

pub async fn run(config: &Config, command: TicketCommand) -> u8 {
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
