//! Content-addressed storage for raw originals and attachment contents:
//! each distinct content is stored once, under its SHA-256. Contents over
//! [`PART_BYTES`] go into `blob_parts`, so no statement carries (and no
//! driver copies) more than one part of a large message.

use futures::TryStreamExt;
use sqlx::{AnyConnection, Row};

use super::sql::{add, Insert};
use super::Backend;

/// Contents larger than this are stored in parts of this size.
pub const PART_BYTES: usize = 1024 * 1024;

/// Writes each blob unless a blob with its hash is already stored.
pub async fn put_many(
    conn: &mut AnyConnection,
    backend: Backend,
    blobs: &[(&str, &[u8])],
) -> Result<(), sqlx::Error> {
    let (small, large): (Vec<_>, Vec<_>) = blobs.iter().partition(|(_, d)| d.len() <= PART_BYTES);
    for (sha, data) in large {
        put(conn, sha, data).await?;
    }
    let insert = Insert {
        head: "INSERT INTO blobs (sha256, size, data)",
        tail: "ON CONFLICT (sha256) DO NOTHING",
        width: 3,
    };
    insert
        .run(
            conn,
            backend,
            &small,
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
    let large = data.len() > PART_BYTES;
    let inline = if large { &[][..] } else { data };
    let inserted = sqlx::query(
        "INSERT INTO blobs (sha256, size, data) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha)
    .bind(data.len() as i64)
    .bind(inline.to_vec())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if large && inserted > 0 {
        for (seq, part) in data.chunks(PART_BYTES).enumerate() {
            sqlx::query("INSERT INTO blob_parts (sha256, seq, data) VALUES ($1, $2, $3)")
                .bind(sha)
                .bind(seq as i64)
                .bind(part.to_vec())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// The contents stored under `sha`.
pub async fn get(conn: &mut AnyConnection, sha: &str) -> Result<Vec<u8>, sqlx::Error> {
    let row = sqlx::query("SELECT data, size FROM blobs WHERE sha256 = $1")
        .bind(sha)
        .fetch_one(&mut *conn)
        .await?;
    let (data, size): (Vec<u8>, i64) = (row.try_get(0)?, row.try_get(1)?);
    if data.len() as i64 == size {
        return Ok(data);
    }
    // Stored in parts: read them one at a time into the final buffer.
    let mut whole = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut parts = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT data FROM blob_parts WHERE sha256 = $1 ORDER BY seq",
    )
    .bind(sha)
    .fetch(&mut *conn);
    while let Some(part) = parts.try_next().await? {
        whole.extend_from_slice(&part);
    }
    if whole.len() as i64 != size {
        return Err(sqlx::Error::Protocol(format!(
            "blob {sha}: {} of {size} bytes stored",
            whole.len()
        )));
    }
    Ok(whole)
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
