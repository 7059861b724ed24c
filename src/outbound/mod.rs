//! Outbound mail: agents' replies to customers.
//!
//! - `plan`: pure decisions about a reply (From, recipients, status, owner)
//!   and every reason to refuse one.
//! - `reply`: loads what a reply needs, renders it and stores it with its
//!   outbox row (and any status change or assignment) in one transaction.
//! - `participants`: who default replies go to, as agents decide;
//!   `merge`: an agent merges one ticket into another.
//! - `compose`: the MIME rendering (mail-builder).
//! - `outbox`: the worker that claims, sends, retries and records, and puts
//!   copies in the Sent folder.
//! - `smtp`: pooled lettre connections per relay.
//! - `notify`: notification mail to agents (events → notifications →
//!   outbox), with the automatic-mail rate limit.

pub mod compose;
pub mod merge;
pub mod notify;
pub mod outbox;
pub mod participants;
pub mod plan;
pub mod reply;
pub mod smtp;

pub use crate::store::Actor;
pub use outbox::Outbox;
pub use plan::{ActionError, ReplyRequest};
pub use reply::{queue_reply, Queued};
