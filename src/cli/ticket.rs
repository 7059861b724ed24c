//! `mailroom ticket list|show|create|assign|status|merge|delete|restore`
//! and `mailroom export --jsonl`. Changes are made as the operator (`ops`
//! on the ticket's timeline), with the API's rules.

use std::io::Write;

use super::{act, parse_properties, readout};
use crate::config::Config;
use crate::desk::tickets::{self, NewTicketRequest};
use crate::outbound::merge::merge_tickets;
use crate::outbound::Actor;
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
        /// Each message whole, quoted history and signature included.
        #[arg(long)]
        full: bool,
    },
    /// Merge a ticket into another of its team; it lives on there.
    Merge {
        number: i64,
        #[arg(long)]
        into: i64,
    },
    /// Open a ticket by hand.
    Create {
        subject: String,
        #[arg(long)]
        team: String,
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        status: String,
        /// `addr` or `Name <addr>`; repeatable, the first is the requester.
        #[arg(long = "contact")]
        contacts: Vec<String>,
        /// `key=value`; repeatable.
        #[arg(long = "property")]
        properties: Vec<String>,
        /// An agent key.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Assign a ticket to an agent of its team (`--none` unassigns).
    Assign {
        number: i64,
        /// An agent key.
        #[arg(required_unless_present = "none")]
        agent: Option<String>,
        #[arg(long, conflicts_with = "agent")]
        none: bool,
    },
    /// Move a ticket to a status of its pipeline.
    Status {
        number: i64,
        status: String,
        /// `key=value` properties to set with it; repeatable.
        #[arg(long = "property")]
        properties: Vec<String>,
    },
    /// Delete a ticket (restorable), or `--purge` it for good.
    Delete {
        number: i64,
        #[arg(long)]
        purge: bool,
    },
    /// Bring a deleted ticket back.
    Restore { number: i64 },
}

pub async fn run(config: &Config, command: TicketCommand) -> u8 {
    let command = match change(config, command).await {
        Ok(code) => return code,
        Err(readout) => readout,
    };
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
            TicketCommand::Show { number, json, full } => {
                let Some(ticket) = store.ticket_show(number).await? else {
                    eprintln!("no ticket number {number}");
                    return Ok(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&ticket)?);
                } else {
                    print_ticket(&ticket, full)?;
                }
                Ok(0)
            }
            _ => unreachable!("changes are handled above"),
        }
    })
    .await
}

/// Runs a change (the exit code), or hands a read-out back.
async fn change(config: &Config, command: TicketCommand) -> Result<u8, TicketCommand> {
    let ops = &Actor::Ops;
    Ok(match command {
        TicketCommand::Merge { number, into } => {
            act(config, "ticket merge", |p| async move {
                merge_tickets(p.store(), ops, number, into).await
            })
            .await
        }
        TicketCommand::Create {
            subject,
            team,
            pipeline,
            status,
            contacts,
            properties,
            owner,
        } => {
            act(config, "ticket create", |p| async move {
                let request = NewTicketRequest {
                    subject,
                    team: Some(team),
                    pipeline,
                    status,
                    contacts,
                    company: None,
                    properties: parse_properties(&properties)?,
                    owner,
                };
                tickets::create(p.store(), p.directory(), ops, request).await
            })
            .await
        }
        TicketCommand::Assign { number, agent, .. } => {
            act(config, "ticket assign", |p| async move {
                tickets::assign(p.store(), p.directory(), ops, number, agent).await
            })
            .await
        }
        TicketCommand::Status {
            number,
            status,
            properties,
        } => {
            act(config, "ticket status", |p| async move {
                let properties = parse_properties(&properties)?;
                tickets::set_status(p.store(), p.directory(), ops, number, status, properties).await
            })
            .await
        }
        TicketCommand::Delete { number, purge } => {
            act(config, "ticket delete", |p| async move {
                match purge {
                    true => tickets::purge(p.store(), ops, number).await,
                    false => tickets::delete(p.store(), ops, number).await,
                }
            })
            .await
        }
        TicketCommand::Restore { number } => {
            act(config, "ticket restore", |p| async move {
                tickets::restore(p.store(), ops, number).await
            })
            .await
        }
        readout => return Err(readout),
    })
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

fn print_ticket(ticket: &TicketView, full: bool) -> std::io::Result<()> {
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
        if full || m.new_text == m.body_text {
            writeln!(out, "{}", m.body_text)?;
        } else {
            let hidden = m
                .body_text
                .lines()
                .count()
                .saturating_sub(m.new_text.lines().count());
            writeln!(out, "{}", m.new_text)?;
            writeln!(
                out,
                "[{hidden} more lines of quoted text and signature; --full shows them]"
            )?;
        }
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
