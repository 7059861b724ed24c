//! Channels: where mail comes from. Each channel hands raw messages to the
//! [`Pipeline`](crate::pipeline::Pipeline) and acknowledges them to its
//! source only after the pipeline has committed them (or quarantined them).

pub mod imap;
pub mod maildir;
pub mod oauth;
