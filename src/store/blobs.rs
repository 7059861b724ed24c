//! Content-addressed storage for raw originals and attachment contents:
//! each distinct content is stored once, under its SHA-256.

use sqlx::AnyConnection;

use super::sql::{add, Insert};
use super::Backend;

/// Writes each blob unless a blob with its hash is already stored.
pub async fn put_many(
    conn: &mut AnyConnection,
    backend: Backend,
    blobs: &[(&str, &[u8])],
) -> Result<(), sqlx::Error> {
    let insert = Insert {
        head: "INSERT INTO blobs (sha256, size, data)",
        tail: "ON CONFLICT (sha256) DO NOTHING",
        width: 3,
    };
    insert
        .run(
            conn,
            backend,
            blobs,
            |(_, data)| data.len(),
            |args, (sha, data)| {
                add(args, sha.to_string());
                add(args, data.len() as i64);
                add(args, data.to_vec());
            },
        )
        .await
}

/// Writes one blob unless one with its hash is already stored.
pub async fn put(conn: &mut AnyConnection, sha: &str, data: &[u8]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha)
    .bind(data.len() as i64)
    .bind(data.to_vec())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The contents stored under `sha`.
pub async fn get(conn: &mut AnyConnection, sha: &str) -> Result<Vec<u8>, sqlx::Error> {
    sqlx::query_scalar("SELECT data FROM blobs WHERE sha256 = $1")
        .bind(sha)
        .fetch_one(&mut *conn)
        .await
}

/// Removes the blob unless a message, an attachment or a quarantine entry
/// still refers to it.
pub async fn drop_unused(conn: &mut AnyConnection, sha: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM blobs WHERE sha256 = $1
           AND NOT EXISTS (SELECT 1 FROM messages WHERE raw_sha256 = $1)
           AND NOT EXISTS (SELECT 1 FROM attachments WHERE sha256 = $1)
           AND NOT EXISTS (SELECT 1 FROM quarantine WHERE raw_sha256 = $1)",
    )
    .bind(sha)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
