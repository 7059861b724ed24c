//! Request authentication for webhooks (and, later, server-to-server forms).
//!
//! - Bearer: `Authorization: Bearer <auth_token>`.
//! - Signature: `X-Mailroom-Timestamp: <unix seconds>` and
//!   `X-Mailroom-Signature: sha256=<hex HMAC-SHA256(signing_secret, "<timestamp>.<body>")>`.
//!   A timestamp more than 5 minutes off is refused, and so is a signature
//!   already seen inside that window, which stops replays.
//!
//! Secrets are compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem;
use crate::config::Secret;
pub use crate::crypto::constant_time_eq;

/// How far a signed request's timestamp may be from now, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// Signatures accepted within the window, so each is accepted once.
#[derive(Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    /// Records the signature; false if it was already used.
    fn first_use(&self, signature: &str, now: i64) -> bool {
        // A poisoned lock only means another request panicked mid-update;
        // the map is still usable.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| now - *at <= WINDOW_SECS);
        seen.insert(signature.to_string(), now).is_none()
    }
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

/// Why a request was refused; answered as 401 with the reason.
#[derive(Debug)]
pub struct Denied(pub &'static str);

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        problem(StatusCode::UNAUTHORIZED, self.0)
    }
}

fn unauthorized(message: &'static str) -> Denied {
    Denied(message)
}

/// How a channel's callers prove who they are (either may be set).
pub struct Credentials<'a> {
    pub bearer: Option<&'a Secret>,
    pub signing_secret: Option<&'a Secret>,
}

/// Accepts the request if it carries a valid bearer token or signature for
/// this channel; otherwise returns the 401 to send.
pub fn check(
    channel: &Credentials<'_>,
    headers: &HeaderMap,
    body: &[u8],
    replays: &ReplayGuard,
) -> Result<(), Denied> {
    if let Some(token) = channel.bearer {
        let expected = token
            .resolve()
            .map_err(|_| unauthorized("server token unavailable"))?;
        if let Some(given) =
            header(headers, "authorization").and_then(|v| v.strip_prefix("Bearer "))
        {
            if constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
                return Ok(());
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
        let now = crate::store::now_ms() / 1000;
        if (now - timestamp).abs() > WINDOW_SECS {
            return Err(unauthorized(
                "signature timestamp is outside the 5-minute window",
            ));
        }
        if !constant_time_eq(
            signature.trim().as_bytes(),
            sign(&secret, timestamp, body).as_bytes(),
        ) {
            return Err(unauthorized("signature does not match the body"));
        }
        if !replays.first_use(signature.trim(), now) {
            return Err(unauthorized("this signature was already used (replay)"));
        }
        return Ok(());
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

    #[test]
    fn a_signature_is_accepted_once_per_window() {
        let guard = ReplayGuard::default();
        assert!(guard.first_use("s", 1000));
        assert!(!guard.first_use("s", 1100));
        assert!(guard.first_use("s", 1000 + WINDOW_SECS + 200));
    }
}
