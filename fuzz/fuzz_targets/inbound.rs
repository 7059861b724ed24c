//! Raw mail as an IMAP server, the pipe or a webhook hands it over:
//! parse (which classifies), the thread keys, and what an agent's answer
//! would be read for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailroom::desk::agent_mail::parse_command;
use mailroom::mail::quote::new_part;
use mailroom::pipeline::parse::parse;
use mailroom::pipeline::thread::thread_keys;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = parse(data) {
        let _ = thread_keys(&message, b"fuzz-secret-0123456789");
        let _ = new_part(&message.body_text);
        let _ = parse_command(&message.body_text);
    }
});
