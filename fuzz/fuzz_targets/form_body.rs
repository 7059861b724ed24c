//! A web form's body: the first byte picks the content type the listener
//! is told, the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailroom::http::forms::fuzz_form_body;

const TYPES: &[&str] = &[
    "application/x-www-form-urlencoded",
    "application/json",
    "multipart/form-data; boundary=XyZ",
    "multipart/form-data",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[first as usize % TYPES.len()];
    if let Err(status) = fuzz_form_body(content_type, body) {
        assert!((400..500).contains(&status), "refused with {status}");
    }
});
