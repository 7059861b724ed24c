//! mailroom: the email channel of a help desk.
//!
//! # Layout
//! - [`config`]: typed TOML config with env overrides and whole-file validation.
//! - [`store`]: sqlx over SQLite or PostgreSQL; config sync, read-outs, quarantine.
//! - [`pipeline`]: parse → classify → thread → apply, exactly once per message.
//! - [`channel`]: where mail comes from (Maildir spool; IMAP and HTTP build on it).
//! - [`ingest`]: `mailroom ingest` — MTA pipe and backfill from files.
//! - [`outbound`]: agents' replies: compose, outbox, SMTP relays.
//! - [`http`]: the HTTP listener (health, webhooks, forms, the reply API).
//! - [`net`]: TCP/TLS sockets and the TLS client config, for IMAP and SMTP.
//! - [`metrics`]: Prometheus counters and queue depths on their own listener.
//! - [`daemon`]: `mailroom run` — starts channels, stops them gracefully.

pub mod channel;
pub mod config;
pub mod daemon;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod pipeline;
pub mod store;
