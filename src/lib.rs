//! mailroom: the email channel of a help desk.
//!
//! # Layout
//! Layers point down, never up (`tests/it/layers.rs` enforces the table in
//! `docs/ARCHITECTURE.md`):
//!
//! - [`cli`], [`app`]: the command line, and the daemon's supervision.
//! - [`channel`], [`http`], [`metrics`]: where work comes from — IMAP
//!   mailboxes, spools, the MTA pipe and backfill; web forms, webhooks and
//!   the agent API; Prometheus.
//! - [`outbound`]: agents' replies — plan, compose, outbox, SMTP relays.
//! - [`pipeline`]: parse → classify → thread (pure) → apply, exactly once.
//! - [`store`]: the only place with SQL; SQLite or PostgreSQL.
//! - Leaves: [`config`], [`net`] (sockets, TLS, OAuth tokens, the IMAP
//!   client), [`mail`] (addresses, our identifiers), [`crypto`], [`retry`].

pub mod app;
pub mod channel;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod desk;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod pipeline;
pub mod retry;
pub mod store;
