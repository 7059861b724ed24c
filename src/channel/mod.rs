//! Channels: where mail comes from. Each channel hands raw messages to the
//! [`Pipeline`](crate::pipeline::Pipeline) and acknowledges them to its
//! source only after the pipeline has committed them (or quarantined them).
//!
//! - `imap`: one task per mailbox (IDLE or polling), under a lease.
//! - `maildir`: a watched spool folder.
//! - `pipe`: one message from an MTA on stdin.
//! - `backfill`: files, mbox files and Maildir folders in batches.

pub mod backfill;
pub mod imap;
pub mod lease;
pub mod maildir;
pub mod pipe;
