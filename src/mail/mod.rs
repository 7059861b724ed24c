//! Mail vocabulary every layer shares, with no I/O: addresses (one type, one
//! validation, one stored form) the identifiers we put on our own mail,
//! the reply tokens of agents' notifications, and the quote stripper.

pub mod address;
pub mod ids;
pub mod quote;
pub mod token;
pub mod wire;

pub use address::Mailbox;

/// Put on all automatic mail mailroom sends (notifications, answers to
/// agents' commands); mail that carries it is ours coming back, recorded
/// and never answered, so two help desks cannot keep each other busy.
pub const LOOP_HEADER: &str = "X-Mailroom-Loop";
