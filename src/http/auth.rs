//! Request authentication for webhooks and server-to-server forms.
//!
//! - Bearer: `Authorization: Bearer <auth_token>`.
//! - Signature: `X-Mailroom-Timestamp: <unix seconds>` and
//!   `X-Mailroom-Signature: sha256=<hex HMAC-SHA256(signing_secret, "<timestamp>.<body>")>`.
//!   A timestamp more than 5 minutes off (either way) is refused, and so is
//!   a signature already used: the record of used signatures is in the
//!   database, shared by every instance, and kept until the signature's
//!   timestamp leaves the window, so no replay is accepted inside it,
//!   before or after a restart.
//!
//! Secrets are compared in constant time.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem;
use crate::config::Secret;
pub use crate::crypto::constant_time_eq;
use crate::store::Store;

/// How far a signed request's timestamp may be from now, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// Unix seconds; the daemon's is the system clock, tests move their own.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Signatures already used, in the database.
pub struct ReplayGuard {
    store: Store,
    clock: Clock,
}

impl ReplayGuard {
    pub fn new(store: Store) -> ReplayGuard {
        ReplayGuard::with_clock(store, Arc::new(|| crate::store::now_ms() / 1000))
    }

    pub fn with_clock(store: Store, clock: Clock) -> ReplayGuard {
        ReplayGuard { store, clock }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Records the signature until its timestamp leaves the window; false
    /// if it was already used.
    async fn first_use(&self, digest: &str, timestamp: i64) -> Result<bool, sqlx::Error> {
        let expires_at = (timestamp + WINDOW_SECS + 1) * 1000;
        // Pruned a window late: an instance whose clock runs ahead must not
        // drop a record that another still needs.
        let prune_before = (self.now() - WINDOW_SECS) * 1000;
        self.store
            .first_signature_use(digest, expires_at, prune_before)
            .await
    }

    /// Lets a signed request be sent again after it could not be stored
    /// (the database was unavailable, or building it failed); a bearer
    /// request needs nothing. The database may be down right now, so this
    /// keeps trying in the background, once a second, for as long as the
    /// signature could be accepted.
    pub fn forget(&self, accepted: &Accepted) {
        let Accepted::Signed { digest } = accepted else {
            return;
        };
        let (store, digest) = (self.store.clone(), digest.clone());
        tokio::spawn(async move {
            for _ in 0..=2 * WINDOW_SECS {
                match store.forget_signature(&digest).await {
                    Ok(()) => return,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                }
            }
            tracing::warn!("Could not forget a signature while the database was down; a retry with it is refused as a replay.");
        });
    }
}

/// How a request proved itself.
#[derive(Debug)]
pub enum Accepted {
    Bearer,
    /// The digest of its signature, as recorded against replays.
    Signed {
        digest: String,
    },
}

/// Computes the signature header value for a body (for senders and tests).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let stamp = timestamp.to_string();
    let mac = crate::crypto::hmac_sha256(secret.as_bytes(), &[stamp.as_bytes(), b".", body]);
    format!("sha256={}", hex::encode(mac))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Why a request was refused: 401 with the reason, or 503 when the
/// replay record cannot be read (the sender should retry).
#[derive(Debug)]
pub enum Denied {
    Unauthorized(&'static str),
    Unavailable(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthorized(why) => problem(StatusCode::UNAUTHORIZED, why),
            Denied::Unavailable(e) => {
                super::unavailable(format!("database unavailable, retry later: {e}"))
            }
        }
    }
}

fn unauthorized(message: &'static str) -> Denied {
    Denied::Unauthorized(message)
}

/// How a channel's callers prove who they are (either may be set).
pub struct Credentials<'a> {
    pub bearer: Option<&'a Secret>,
    pub signing_secret: Option<&'a Secret>,
}

/// Accepts the request if it carries a valid bearer token or signature for
/// this channel; otherwise returns the 401 to send.
pub async fn check(
    channel: &Credentials<'_>,
    headers: &HeaderMap,
    body: &[u8],
    replays: &ReplayGuard,
) -> Result<Accepted, Denied> {
    if let Some(token) = channel.bearer {
        let expected = token
            .resolve()
            .map_err(|_| unauthorized("server token unavailable"))?;
        if let Some(given) =
            header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
        {
            if constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
                return Ok(Accepted::Bearer);
            }
            return Err(unauthorized("bearer token does not match"));
        }
    }
    if let Some(secret) = channel.signing_secret {
        let secret = secret
            .resolve()
            .map_err(|_| unauthorized("server secret unavailable"))?;
        let (Some(timestamp), Some(signature)) = (
            header(headers, "x-mailroom-timestamp"),
            header(headers, "x-mailroom-signature"),
        ) else {
            return Err(unauthorized(
                "missing X-Mailroom-Timestamp and X-Mailroom-Signature (or Authorization: Bearer) headers",
            ));
        };
        let timestamp: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| unauthorized("X-Mailroom-Timestamp must be unix seconds"))?;
        if replays.now().abs_diff(timestamp) > WINDOW_SECS as u64 {
            return Err(unauthorized(
                "signature timestamp is outside the 5-minute window",
            ));
        }
        let signature = signature.trim();
        if !constant_time_eq(
            signature.as_bytes(),
            sign(&secret, timestamp, body).as_bytes(),
        ) {
            return Err(unauthorized("signature does not match the body"));
        }
        // The signature alone: it does not cover the channel, so the same
        // request sent to another channel with the same secret is a replay.
        let digest = crate::crypto::sha256_hex(signature.as_bytes());
        return match replays.first_use(&digest, timestamp).await {
            Ok(true) => Ok(Accepted::Signed { digest }),
            Ok(false) => Err(unauthorized("this signature was already used (replay)")),
            Err(e) => Err(Denied::Unavailable(e.to_string())),
        };
    }
    Err(unauthorized("missing Authorization: Bearer header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body() {
        let a = sign("k", 100, b"body");
        assert_ne!(a, sign("k", 101, b"body"));
        assert_ne!(a, sign("k", 100, b"bodx"));
        assert_ne!(a, sign("j", 100, b"body"));
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
    }
}
