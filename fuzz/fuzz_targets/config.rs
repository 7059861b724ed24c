//! The config loader: any text is a config or a list of named problems.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailroom::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = Config::from_toml(&text) {
        assert!(!e.to_string().is_empty());
    }
});
