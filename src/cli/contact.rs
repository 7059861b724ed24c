//! `mailroom contact list|show|create|merge` and `mailroom contact company`:
//! contacts, visitors (first seen in mail) and companies, as the operator.

use super::act;
use crate::config::Config;
use crate::desk::contacts;
use crate::store::Actor;

#[derive(clap::Subcommand)]
pub enum ContactCommand {
    /// List contacts and visitors, newest first.
    List {
        /// Text in the address or name.
        #[arg(long)]
        q: Option<String>,
        /// `visitor` or `contact`.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// A contact with their tickets.
    Show { id: i64 },
    /// Make a contact (a visitor with that address becomes one).
    Create {
        email: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Attach contact ID (a visitor, say) to another: their tickets follow.
    Merge {
        id: i64,
        #[arg(long)]
        into: i64,
    },
    /// Create a company with its mail domains.
    Company {
        name: String,
        /// Repeatable.
        #[arg(long = "domain")]
        domains: Vec<String>,
    },
}

pub async fn run(config: &Config, command: ContactCommand) -> u8 {
    let ops = &Actor::Ops;
    match command {
        ContactCommand::List { q, kind, limit } => {
            act(config, "contact list", |p| async move {
                contacts::list(p.store(), q, kind, None, None, Some(limit)).await
            })
            .await
        }
        ContactCommand::Show { id } => {
            act(config, "contact show", |p| async move {
                contacts::show(p.store(), ops, id).await
            })
            .await
        }
        ContactCommand::Create { email, name } => {
            act(config, "contact create", |p| async move {
                let (detail, _) = contacts::create(p.store(), ops, &email, name, None).await?;
                Ok(detail)
            })
            .await
        }
        ContactCommand::Merge { id, into } => {
            act(config, "contact merge", |p| async move {
                contacts::merge(p.store(), ops, id, into).await
            })
            .await
        }
        ContactCommand::Company { name, domains } => {
            act(config, "contact company", |p| async move {
                contacts::save_company(p.store(), None, &name, &domains).await
            })
            .await
        }
    }
}
