//! Integration tests: one binary (see README: Testing). Store tests run on
//! SQLite and on the real PostgreSQL server.

mod cli;
mod fixtures;
mod harness;
mod quarantine;
mod threading;
