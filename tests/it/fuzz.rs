//! A little fuzzing on every run: the fixture mail, mutated at random
//! (seeded; the seed is printed), through the inbound entry points that
//! meet hostile bytes: parse and classify, the thread keys, quote
//! stripping, the first-line command and the reply token. The property is
//! that none of them panics, and that parsing answers Ok or a reason.
//!
//! `MAILROOM_FUZZ_SEED` repeats a run; `MAILROOM_FUZZ_ITERATIONS` makes it
//! longer (the default keeps the suite quick). A failing input is written
//! to the temp dir and named in the panic, to become a fixture.

use std::path::Path;

use rand::rngs::StdRng;
use rand::Rng;

use crate::harness::seeded;

use mailroom::desk::agent_mail::parse_command;
use mailroom::mail::quote::new_part;
use mailroom::mail::token::Token;
use mailroom::pipeline::parse::parse;
use mailroom::pipeline::thread::thread_keys;

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut files = Vec::new();
    for dir in ["mime", "threads", "quotes", "fuzz"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("eml" | "txt")
            ) {
                files.push(std::fs::read(&path).unwrap());
            }
        }
    }
    assert!(files.len() > 20, "the fixtures are there");
    files
}

/// Pieces that make parsers take unusual paths.
const SPICE: &[&[u8]] = &[
    b"\r\n",
    b"\n\n",
    b"\r",
    b"=?UTF-8?B?",
    b"=?ISO-2022-JP?Q?=1B$B?=",
    b"?=",
    b"Content-Type: multipart/mixed; boundary=\"x\"\r\n",
    b"\r\n--x\r\n",
    b"\r\n--x--\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Type: message/rfc822\r\n\r\n",
    b"Message-ID: <",
    b"In-Reply-To: <a@b> <",
    b"From: \"\\\" <@>,,,\r\n",
    b"> > > ",
    b"-- \r\n",
    b"---------- Forwarded message ---------\r\n",
    b"#status ",
    b"\0",
    b"\xff\xfe",
    b"On Mon, 1 Jan 2026 at 10:00, X <x@y> wrote:\r\n",
];

fn mutate(rng: &mut StdRng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let at = if out.is_empty() {
            0
        } else {
            rng.gen_range(0..=out.len())
        };
        match rng.gen_range(0..6) {
            0 if !out.is_empty() => {
                let i = rng.gen_range(0..out.len());
                out[i] = rng.gen();
            }
            1 => {
                let spice = SPICE[rng.gen_range(0..SPICE.len())];
                out.splice(at..at, spice.iter().copied());
            }
            2 if at < out.len() => {
                let end = (at + rng.gen_range(1..64)).min(out.len());
                out.drain(at..end);
            }
            3 if at < out.len() => {
                // Repeat a slice many times (deep nesting, long headers).
                let end = (at + rng.gen_range(1..32)).min(out.len());
                let piece = out[at..end].to_vec();
                for _ in 0..rng.gen_range(2..200) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                // Splice in part of another message.
                let other = &corpus[rng.gen_range(0..corpus.len())];
                if !other.is_empty() {
                    let from = rng.gen_range(0..other.len());
                    let to = (from + rng.gen_range(1..512)).min(other.len());
                    out.splice(at..at, other[from..to].iter().copied());
                }
            }
            _ => out.truncate(at),
        }
    }
    out
}

#[test]
fn mutated_mail_never_panics_the_inbound_path() {
    let iterations: usize = std::env::var("MAILROOM_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let (seed, mut rng) = seeded("MAILROOM_FUZZ_SEED", &format!("fuzz ({iterations} inputs)"));
    let corpus = corpus();
    // The corpus itself first, unmutated (fixtures/fuzz/ keeps past finds).
    for base in &corpus {
        let _ = parse(base);
    }
    let secret = b"fuzz-secret-0123456789";
    let (mut parsed, mut refused) = (0usize, 0usize);
    for i in 0..iterations {
        let base = &corpus[rng.gen_range(0..corpus.len())];
        let input = mutate(&mut rng, base, &corpus);
        let outcome = std::panic::catch_unwind(|| {
            let text = String::from_utf8_lossy(&input);
            let _ = new_part(&text);
            let _ = parse_command(&text);
            let _ = Token::decode(secret, &text, 0);
            match parse(&input) {
                Ok(message) => {
                    let _ = thread_keys(&message, secret);
                    let _ = new_part(&message.body_text);
                    let _ = parse_command(&message.body_text);
                    true
                }
                Err(reason) => {
                    assert!(!reason.to_string().is_empty());
                    false
                }
            }
        });
        match outcome {
            Ok(true) => parsed += 1,
            Ok(false) => refused += 1,
            Err(_) => {
                let path = std::env::temp_dir().join(format!("mailroom-fuzz-{seed}-{i}.eml"));
                std::fs::write(&path, &input).unwrap();
                panic!(
                    "input {i} of seed {seed} panicked; kept in {}",
                    path.display()
                );
            }
        }
    }
    println!("fuzz: {parsed} parsed, {refused} refused with a reason, 0 panics");
    // Mutated mail must still mostly reach the deeper entry points.
    assert!(
        parsed > iterations / 4,
        "only {parsed} of {iterations} parsed"
    );
}

/// Form bodies the listener parses (urlencoded, JSON, multipart) and the
/// config loader, fed mutated copies of real inputs: no panic, and each
/// refusal is an HTTP status or a named problem.
#[test]
fn mutated_form_bodies_and_configs_never_panic() {
    use mailroom::config::Config;
    use mailroom::http::forms::fuzz_form_body;
    let (_, mut rng) = seeded("MAILROOM_FUZZ_SEED", "form/config fuzz");
    let boundary = "multipart/form-data; boundary=XyZ";
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        (
            "application/x-www-form-urlencoded",
            b"name=Ann+Example&email=ann%40c.test&message=Hello%0D%0Athere&x=%FF%".to_vec(),
        ),
        (
            "application/json",
            br#"{"name":"Ann","email":"ann@c.test","message":"Hi \u00e9\ud83d\ude00","n":[1,{"a":null}],"e":null}"#.to_vec(),
        ),
        (
            boundary,
            b"--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nann@c.test\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nattached\r\n--XyZ--\r\n".to_vec(),
        ),
    ];
    let as_corpus: Vec<Vec<u8>> = bodies.iter().map(|(_, b)| b.clone()).collect();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..3000 {
        let (content_type, base) = &bodies[rng.gen_range(0..bodies.len())];
        let body = mutate(&mut rng, base, &as_corpus);
        match fuzz_form_body(content_type, &body) {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert!((400..500).contains(&status), "refused with {status}");
                refused += 1;
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut configs = vec![std::fs::read(root.join("config/mailroom.toml")).unwrap()];
    for entry in std::fs::read_dir(root.join("examples")).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            configs.push(std::fs::read(entry.path()).unwrap());
        }
    }
    let shipped = String::from_utf8(configs[0].clone()).unwrap();
    assert!(
        Config::from_toml(&shipped).is_ok(),
        "the shipped config loads"
    );
    let (mut loaded, mut problems) = (0, 0);
    for _ in 0..500 {
        let base = &configs[rng.gen_range(0..configs.len())];
        let text = String::from_utf8_lossy(&mutate(&mut rng, base, &configs)).into_owned();
        match Config::from_toml(&text) {
            Ok(_) => loaded += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                problems += 1;
            }
        }
    }
    println!("fuzz: forms {accepted} parsed, {refused} refused; configs {loaded} loaded, {problems} refused with their problems; 0 panics");
    assert!(accepted > 300 && refused > 300, "both paths reached");
}
