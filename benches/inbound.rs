//! The CPU of one inbound message, step by step: parse (mail-parser plus
//! our reading of it), classify, the thread keys, and the threading
//! decision against a batch snapshot of 10,000 known tickets.
//! `cargo bench --bench inbound`; `cargo test --all-targets` runs each once.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mailroom::pipeline::classify::classify;
use mailroom::pipeline::parse::parse;
use mailroom::pipeline::thread::{find_ticket, thread_keys};
use mailroom::store::inbound::{Snapshot, TicketState};

const SECRET: &[u8] = b"bench-secret-0123456789";

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(path),
    )
    .unwrap_or_else(|e| panic!("fixtures/{path}: {e}"))
}

/// A plain reply, an HTML newsletter-like mail, and one with an attachment.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("reply", fixture("threads/02-reply-in-reply-to-only.eml")),
        (
            "alternative",
            fixture("mime/01-multipart-alternative-text-html.eml"),
        ),
        (
            "attachment",
            fixture("mime/04-attachment-filename-rfc2231.eml"),
        ),
    ]
}

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    for (name, raw) in samples() {
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(name, |b| b.iter(|| parse(black_box(&raw)).unwrap()));
    }
    group.finish();
}

fn classifying(c: &mut Criterion) {
    let mut group = c.benchmark_group("classify");
    for (name, raw) in samples() {
        let message = mail_parser::MessageParser::default().parse(&raw).unwrap();
        group.bench_function(name, |b| b.iter(|| classify(black_box(&message))));
    }
    group.finish();
}

fn threading(c: &mut Criterion) {
    let reply = parse(&fixture("threads/02-reply-in-reply-to-only.eml")).unwrap();
    c.bench_function("thread_keys", |b| {
        b.iter(|| thread_keys(black_box(&reply), SECRET))
    });
    let keys = thread_keys(&reply, SECRET);
    // 10,000 tickets of team 1 with a message each, and the parent.
    let mut known = Snapshot::default();
    for id in 1..=10_000i64 {
        known.tickets.insert(
            id,
            TicketState {
                id,
                number: id,
                team_id: 1,
                pipeline_id: 1,
                status_id: 1,
                status_changed_at: 0,
                merged_into: None,
                deleted_at: None,
            },
        );
        known
            .messages
            .insert((1, format!("m{id}@bench.test")), (id, "inbound".into()));
    }
    for parent in reply.in_reply_to.iter().chain(&reply.references) {
        known
            .messages
            .insert((1, parent.clone()), (4242, "inbound".into()));
    }
    c.bench_function("find_ticket/10k", |b| {
        b.iter(|| find_ticket(black_box(&known), black_box(&keys), 1))
    });
}

criterion_group!(benches, parsing, classifying, threading);
criterion_main!(benches);
