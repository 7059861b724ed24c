//! The ticket timeline: one `ticket_events` row per change, with who made it.

use sqlx::AnyConnection;

use super::sql::{add, Insert};
use super::Backend;

/// Adds one event to a ticket's timeline.
pub async fn insert(
    conn: &mut AnyConnection,
    ticket: i64,
    kind: &str,
    data: &serde_json::Value,
    actor: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(ticket)
    .bind(kind)
    .bind(data.to_string())
    .bind(actor)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Adds events (ticket, kind, JSON data) by one actor, in one statement per chunk.
pub async fn insert_many(
    conn: &mut AnyConnection,
    backend: Backend,
    events: &[(i64, &'static str, String)],
    actor: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    let insert = Insert {
        head: "INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at)",
        tail: "",
        width: 5,
    };
    insert
        .run(
            conn,
            backend,
            events,
            |(_, _, data)| data.len(),
            |args, (t, kind, data)| {
                add(args, *t);
                add(args, *kind);
                add(args, data.clone());
                add(args, actor.to_string());
                add(args, now);
            },
        )
        .await
}
