//! Logs on stderr: text for people, JSON for log shippers. Colour only on
//! a terminal unless `log.color` says otherwise, so journald, files and CI
//! logs get plain text.

use std::io::IsTerminal;

use crate::config::{LogColor, LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILROOM_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let color = match config.color {
        LogColor::Auto => std::io::stderr().is_terminal(),
        LogColor::Always => true,
        LogColor::Never => false,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color);
    match config.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
