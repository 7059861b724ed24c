//! `mailroom status`: each channel's state (an IMAP mailbox's connection,
//! backlog, last success and error, and which instance holds it), the
//! outbox's counts, automatic mail held back by the rate limit, and
//! agents' emailed answers pending or unverified; as text or one JSON
//! document (`channels`, `outbox`, `automatic_mail`, `agent_mail`).

use serde_json::{json, Map, Value};

use super::readout;
use crate::config::Config;
use crate::store::Store;

pub async fn run(config: &Config, json: bool) -> u8 {
    readout(config, |store| async move {
        let all = channels(config, &store).await?;
        let outbox = store.outbox_counts().await?;
        let auto = store.automatic_mail_counts(crate::store::now_ms()).await?;
        if json {
            let report = json!({
                "channels": all,
                "outbox": {
                    "queued": outbox.queued,
                    "claimed": outbox.claimed,
                    "sent": outbox.sent,
                    "failed": outbox.failed,
                },
                "automatic_mail": { "held": auto.held, "held_last_24h": auto.held_last_day },
                "agent_mail": {
                    "pending": auto.agent_mail_pending,
                    "unverified": auto.agent_mail_unverified,
                },
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(0);
        }
        for (name, value) in &all {
            print_channel(name, value);
        }
        println!(
            "{:<16} {:<8} queued={} (claimed={}) sent={} failed={}",
            "outbox", "smtp", outbox.queued, outbox.claimed, outbox.sent, outbox.failed
        );
        println!(
            "{:<16} {:<8} held={} held_last_24h={} (over notifications.max_per_address_per_hour)",
            "automatic mail", "notify", auto.held, auto.held_last_day
        );
        println!(
            "{:<16} {:<8} pending={} unverified={} (unverified: kept on the ticket, not relayed)",
            "agents' mail", "inbound", auto.agent_mail_pending, auto.agent_mail_unverified
        );
        Ok(0)
    })
    .await
}

async fn channels(config: &Config, store: &Store) -> anyhow::Result<Map<String, Value>> {
    let mut all = Map::new();
    for (name, channel) in &config.channels {
        let state: Value = store.channel_state(name).await?;
        let mut entry = json!({ "kind": channel.kind().as_str(), "state": state });
        // Which instance polls the mailbox (several may share the database).
        if let Some((holder, until)) = store.lease_holder(&format!("imap:{name}")).await? {
            entry["lease"] = json!({ "holder": holder, "expires_at": until });
        }
        all.insert(name.clone(), entry);
    }
    Ok(all)
}

fn print_channel(name: &str, value: &Value) {
    let state = &value["state"];
    let field = |k: &str| match &state[k] {
        Value::Null => "-".to_string(),
        v => v.to_string(),
    };
    let holder = match value["lease"]["holder"].as_str() {
        Some(h) => format!(" held_by={h}"),
        None => String::new(),
    };
    // Messages the server would not give, left behind on it: ops must know.
    let passed_over: Vec<String> = state["passed_over"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["uid"].as_u64().map(|uid| uid.to_string()))
        .collect();
    let passed_over = match passed_over.is_empty() {
        true => String::new(),
        false => format!(" passed_over_uids={}", passed_over.join(",")),
    };
    println!(
        "{name:<16} {:<8} connected={} backlog={} last_success={} last_error={}{holder}{passed_over}",
        value["kind"].as_str().unwrap_or("?"),
        field("connected"),
        field("backlog"),
        field("last_success"),
        field("last_error")
    );
}
