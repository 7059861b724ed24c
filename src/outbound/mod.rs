//! Outbound mail: agents' replies to customers.
//!
//! - `reply`: checks a reply, renders it and stores it with its outbox row
//!   (and any status change or assignment) in one transaction.
//! - `compose`: the MIME rendering (mail-builder).
//! - `ids`: HMAC-tagged Message-IDs and body markers that tie a customer's
//!   answer back to its ticket.
//! - `outbox`: the worker that claims, sends, retries and records.
//! - `smtp`: pooled lettre transports per relay.

pub mod compose;
pub mod ids;
pub mod outbox;
pub mod reply;
pub mod smtp;

pub use outbox::Outbox;
pub use reply::{queue_reply, Actor, Queued, ReplyError, ReplyRequest};
