//! `mailroom check`: every config problem with its key, then whether the
//! database, each IMAP mailbox and each SMTP relay can be reached.

use std::path::Path;

use crate::channel::imap::ImapChannel;
use crate::channel::pipe::{EX_CONFIG, EX_TEMPFAIL};
use crate::config::Config;
use crate::outbound::smtp::Relay;
use crate::store::Store;

/// Runs the checks; the exit code says whether all passed.
pub fn run(path: &Path) -> u8 {
    let config = match Config::load_unvalidated(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return EX_CONFIG;
        }
    };
    let problems = config.validate();
    for problem in &problems {
        println!("problem: {problem}");
    }
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    if !problems.is_empty() {
        println!("{}: {} problem(s)", path.display(), problems.len());
        return EX_CONFIG;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            println!("problem: cannot start the async runtime: {e}");
            return EX_TEMPFAIL;
        }
    };
    runtime.block_on(reach(path, &config))
}

/// The database (migrated and synced), then every mailbox and relay.
async fn reach(path: &Path, config: &Config) -> u8 {
    let store = async {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        store.sync_config(config).await?;
        anyhow::Ok(store)
    };
    let store = match store.await {
        Ok(store) => {
            let path = path.display();
            println!("ok: {path} is valid; database reachable and migrated");
            store
        }
        Err(e) => {
            println!("problem: database.url: {e:#}");
            return EX_TEMPFAIL;
        }
    };
    let mut code = 0;
    for (name, channel) in &config.channels {
        if channel.imap().is_none() {
            continue;
        }
        // The store keeps OAuth refresh tokens that the provider rotates.
        let result = match ImapChannel::new(name, channel, config.ingest.max_message_bytes) {
            Ok(mailbox) => mailbox.probe(&store).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        code = code.max(report(&format!("channels.{name}"), result));
    }
    for (name, relay) in &config.relays {
        let result = Relay::new(name, relay).probe(&store).await;
        code = code.max(report(&format!("relays.{name}"), result));
    }
    store.close().await;
    code
}

fn report(key: &str, result: Result<String, String>) -> u8 {
    match result {
        Ok(report) => {
            println!("ok: {key}: {report}");
            0
        }
        Err(e) => {
            println!("problem: {key}: {e}");
            EX_TEMPFAIL
        }
    }
}
