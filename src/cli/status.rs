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
            println!("{}", channel_line(name, value));
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

/// One channel's line of `mailroom status`.
fn channel_line(name: &str, value: &Value) -> String {
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
    format!(
        "{name:<16} {:<8} connected={} backlog={} last_success={} last_error={}{holder}{passed_over}",
        value["kind"].as_str().unwrap_or("?"),
        field("connected"),
        field("backlog"),
        field("last_success"),
        field("last_error")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mailbox_line_names_the_messages_it_passed_over() {
        let mut state = serde_json::to_value(crate::store::channels::ImapState {
            backlog: 3,
            ..Default::default()
        })
        .unwrap();
        let value = json!({ "kind": "imap", "state": state.clone() });
        let line = channel_line("inbox", &value);
        assert!(line.contains("backlog=3"), "{line}");
        assert!(!line.contains("passed_over"), "{line}");

        state["passed_over"] = json!([{ "uid": 25, "times": 3, "since": 1, "at": 2 }, { "uid": 31, "times": 4, "since": 3, "at": 4 }]);
        let line = channel_line("inbox", &json!({ "kind": "imap", "state": state }));
        assert!(line.ends_with(" passed_over_uids=25,31"), "{line}");
    }
}
