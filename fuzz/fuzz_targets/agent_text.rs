//! The text parsers of an agent's emailed answer: the quote cut, the
//! first-line `#command` and the reply token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailroom::desk::agent_mail::parse_command;
use mailroom::mail::quote::new_part;
use mailroom::mail::token::Token;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = new_part(&text);
    let _ = parse_command(&text);
    let _ = Token::decode(b"fuzz-secret-0123456789", &text, 0);
});
