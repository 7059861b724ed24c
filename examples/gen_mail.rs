//! Generates a realistic, reproducible mail corpus for benchmarks: new
//! threads and replies (In-Reply-To + References), plain and HTML bodies,
//! some attachments, some auto-replies and list mail.
//!
//! cargo run --release --example gen_mail -- COUNT OUT_DIR

use std::fmt::Write as _;
use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "order",
    "invoice",
    "printer",
    "login",
    "password",
    "refund",
    "delivery",
    "account",
    "error",
    "update",
    "please",
    "help",
    "thanks",
    "urgent",
    "broken",
    "since",
    "yesterday",
    "again",
    "customer",
    "ticket",
    "cannot",
    "install",
    "version",
    "server",
    "email",
    "attached",
    "screenshot",
    "Grüße",
    "naïve",
    "café",
];

fn sentence(rng: &mut StdRng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    s
}

fn body(rng: &mut StdRng) -> String {
    let lines = rng.gen_range(3..40);
    let mut out = String::from("Hello,\r\n\r\n");
    for _ in 0..lines {
        let words = rng.gen_range(5..14);
        out.push_str(&sentence(rng, words));
        out.push_str(".\r\n");
    }
    out.push_str("\r\nBest regards\r\n");
    out
}

struct Thread {
    subject: String,
    customer: String,
    ids: Vec<String>,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: gen_mail COUNT OUT_DIR");
    let out = PathBuf::from(args.next().expect("usage: gen_mail COUNT OUT_DIR"));
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = StdRng::seed_from_u64(42);
    let mut threads: Vec<Thread> = Vec::new();
    let attachment: String = {
        let bytes: Vec<u8> = (0..15_000).map(|_| rng.gen()).collect();
        let mut b64 = String::new();
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (i, chunk) in bytes.chunks(3).enumerate() {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (j, &x)| n | (x as u32) << (16 - 8 * j));
            for k in 0..4 {
                b64.push(if k <= chunk.len() {
                    T[(n >> (18 - 6 * k) & 63) as usize] as char
                } else {
                    '='
                });
            }
            if i % 19 == 18 {
                b64.push_str("\r\n");
            }
        }
        b64
    };

    for n in 0..count {
        let new_thread = threads.is_empty() || rng.gen_bool(0.35);
        let (from, subject, headers) = if new_thread {
            let customer = format!(
                "customer{}@company{}.test",
                rng.gen_range(0..3000),
                rng.gen_range(0..400)
            );
            let words = rng.gen_range(2..6);
            let subject = sentence(&mut rng, words);
            let id = format!("{n}.{}@company.test", rng.gen::<u32>());
            threads.push(Thread {
                subject: subject.clone(),
                customer: customer.clone(),
                ids: vec![id.clone()],
            });
            (customer, subject, format!("Message-ID: <{id}>\r\n"))
        } else {
            // Replies favour recent threads, as real traffic does.
            let len = threads.len();
            let index = len - 1 - (rng.gen_range(0..len.min(500)));
            let thread = &mut threads[index];
            let id = format!("{n}.{}@company.test", rng.gen::<u32>());
            let parent = thread.ids.last().unwrap().clone();
            let refs = thread
                .ids
                .iter()
                .map(|i| format!("<{i}>"))
                .collect::<Vec<_>>()
                .join("\r\n ");
            thread.ids.push(id.clone());
            (
                thread.customer.clone(),
                format!("Re: {}", thread.subject),
                format!("Message-ID: <{id}>\r\nIn-Reply-To: <{parent}>\r\nReferences: {refs}\r\n"),
            )
        };
        let mut msg = String::new();
        write!(
            msg,
            "Received: from mx.company.test (mx.company.test [192.0.2.1])\r\n\tby mx.example.com with ESMTPS; Thu, 26 Nov 2026 10:00:00 +0000\r\n\
             From: Customer {n} <{from}>\r\nTo: Support <support@example.com>\r\nSubject: {subject}\r\n\
             Date: Thu, 26 Nov 2026 10:{:02}:{:02} +0000\r\n{headers}MIME-Version: 1.0\r\n",
            (n / 60) % 60,
            n % 60
        )
        .unwrap();
        let roll: f64 = rng.gen();
        if roll < 0.03 {
            msg.push_str("Auto-Submitted: auto-replied\r\n");
        } else if roll < 0.05 {
            msg.push_str("List-Id: <news.company.test>\r\nPrecedence: list\r\n");
        }
        let text = body(&mut rng);
        let kind: f64 = rng.gen();
        if kind < 0.6 {
            msg.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
            msg.push_str(&text);
        } else if kind < 0.95 {
            let html = format!(
                "<html><body><p>{}</p></body></html>",
                text.replace("\r\n", "<br>\r\n")
            );
            write!(
                msg,
                "Content-Type: multipart/alternative; boundary=\"alt{n}\"\r\n\r\n--alt{n}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--alt{n}\r\n\
                 Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--alt{n}--\r\n"
            )
            .unwrap();
        } else {
            write!(
                msg,
                "Content-Type: multipart/mixed; boundary=\"mix{n}\"\r\n\r\n--mix{n}\r\n\
                 Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n--mix{n}\r\n\
                 Content-Type: application/pdf; name=\"report-{n}.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\
                 Content-Disposition: attachment; filename=\"report-{n}.pdf\"\r\n\r\n{attachment}\r\n--mix{n}--\r\n"
            )
            .unwrap();
        }
        std::fs::write(out.join(format!("{n:06}.eml")), msg).unwrap();
    }
    eprintln!(
        "wrote {count} messages ({} threads) to {}",
        threads.len(),
        out.display()
    );
}
