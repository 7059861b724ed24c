//! Outbox benchmark (bench/outbox.sh runs it): queues COUNT replies on
//! TICKETS tickets through the same code as the API, then sends them all
//! through the outbox to an SMTP server on 127.0.0.1:PORT, and reports both
//! rates. Usage: outbox_bench DATABASE_URL SMTP_PORT COUNT [POOL_SIZE]

use std::sync::Arc;
use std::time::Instant;

use mailroom::config::Config;
use mailroom::outbound::{queue_reply, Actor, Outbox, ReplyRequest};
use mailroom::pipeline::{OnBadInput, Pipeline, RawMessage};
use mailroom::store::Store;

const TICKETS: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (url, port, count) = (&args[1], &args[2], args[3].parse::<usize>()?);
    let pool = args.get(4).map(String::as_str).unwrap_or("8");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("mailroom.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[database]
url = "{url}"
max_connections = 8
[relays.sink]
host = "127.0.0.1"
port = {port}
tls = "none"
pool_size = {pool}
timeout_secs = 30
[pipelines.support]
statuses = [{{ name = "open", kind = "open" }}, {{ name = "closed", kind = "closed" }}]
[teams.support]
addresses = [{{ address = "support@example.com", name = "Example Support" }}]
[channels.pipe]
kind = "pipe"
team = "support"
pipeline = "support"
"#
        ),
    )?;
    let config = Config::load(&path)?;
    let store = Store::connect(&config.database).await?;
    store.migrate().await?;
    let dir = Arc::new(store.sync_config(&config).await?);
    let pipeline = Pipeline::new(store.clone(), dir.clone(), config.ingest.clone());

    let raws: Vec<RawMessage> = (0..TICKETS)
        .map(|i| RawMessage {
            channel: "pipe".into(),
            source: None,
            data: Arc::new(
                format!(
                    "From: Customer {i} <c{i}@customer.test>\r\nTo: support@example.com\r\n\
                     Subject: Question {i}\r\nMessage-ID: <q{i}@customer.test>\r\n\r\nHello {i}\r\n"
                )
                .into_bytes(),
            ),
        })
        .collect();
    pipeline.process(raws, OnBadInput::Refuse).await?;
    let first: i64 = sqlx::query_scalar::<_, i64>("SELECT MIN(number) FROM tickets")
        .fetch_one(store.pool())
        .await?;

    let started = Instant::now();
    for i in 0..count {
        let request = ReplyRequest {
            body_text: Some(format!(
                "Reply {i}.\n\nThanks for writing in; here is what we found.\n"
            )),
            ..Default::default()
        };
        let number = first + (i % TICKETS) as i64;
        queue_reply(&store, &dir, &config, &Actor::Ops, number, request).await?;
    }
    let queue_secs = started.elapsed().as_secs_f64();

    let outbox = Arc::new(Outbox::new(
        store.clone(),
        dir.clone(),
        Arc::new(config.clone()),
    ));
    let started = Instant::now();
    let handled = outbox.run_until_idle().await;
    let send_secs = started.elapsed().as_secs_f64();
    let counts = store.outbox_counts().await?;
    println!(
        "{{\"replies\":{count},\"queue_seconds\":{queue_secs:.3},\"queued_per_s\":{:.0},\"send_seconds\":{send_secs:.3},\"sent_per_s\":{:.0},\"handled\":{handled},\"sent\":{},\"failed\":{},\"queued\":{}}}",
        count as f64 / queue_secs,
        counts.sent as f64 / send_secs,
        counts.sent,
        counts.failed,
        counts.queued
    );
    store.close().await;
    Ok(())
}
