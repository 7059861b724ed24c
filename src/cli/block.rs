//! `mailroom block add|remove|list`: blocked senders, as the operator.
//! Mail from a blocked address or domain is kept in the quarantine
//! (`mailroom quarantine release ID` lets one through).

use super::act;
use crate::config::Config;
use crate::desk::blocks;
use crate::store::Actor;

#[derive(clap::Subcommand)]
pub enum BlockCommand {
    /// Block an address, or a domain (`example.com` or `@example.com`).
    Add {
        value: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Unblock an address or domain.
    Remove { value: String },
    /// List blocked addresses and domains.
    List,
}

pub async fn run(config: &Config, command: BlockCommand) -> u8 {
    let ops = &Actor::Ops;
    match command {
        BlockCommand::Add { value, reason } => {
            act(config, "block add", |p| async move {
                let (view, _) = blocks::block(p.store(), ops, &value, reason.as_deref()).await?;
                Ok(view)
            })
            .await
        }
        BlockCommand::Remove { value } => {
            act(config, "block remove", |p| async move {
                blocks::unblock(p.store(), ops, &value).await
            })
            .await
        }
        BlockCommand::List => {
            act(config, "block list", |p| async move {
                blocks::list(p.store(), ops).await
            })
            .await
        }
    }
}
