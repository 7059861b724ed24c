//! Mail vocabulary every layer shares, with no I/O: addresses (one type, one
//! validation, one stored form) and the identifiers we put on our own mail.

pub mod address;
pub mod ids;
pub mod wire;

pub use address::Mailbox;
