//! Integration tests: one binary (see README: Testing). Store tests run on
//! SQLite and on the real PostgreSQL server.

mod agents;
mod app;
mod classify;
mod cli;
mod desk;
mod dovecot;
mod fixtures;
mod fuzz;
mod harness;
mod http;
mod imap;
mod layers;
mod outbound;
mod postfix;
mod quarantine;
mod recorder;
mod security;
mod smtp;
mod threading;
