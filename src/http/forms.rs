//! Web forms: `POST /forms/{name}` with a urlencoded, multipart or JSON body
//! becomes a ticket with its contact. The form's fields map to the ticket
//! (subject, body, email, name); other fields become ticket properties, and
//! file fields become attachments. The submission goes through the same
//! pipeline as mail, as a message built with mail-builder.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{auth, problem, HttpState};
use crate::config::{ChannelConfig, ChannelKind};
use crate::pipeline::parse::SYNTHETIC_DOMAIN;
use crate::pipeline::{Disposition, Hints, Outcome, RawMessage};

/// Default per-IP limit for browser forms without a configured one.
const DEFAULT_RATE_PER_MINUTE: u32 = 10;

/// Fixed one-minute windows per (form, client IP).
#[derive(Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(String, IpAddr), (i64, u32)>>,
}

impl RateLimiter {
    fn allow(&self, form: &str, ip: IpAddr, per_minute: u32, now_secs: i64) -> bool {
        let minute = now_secs / 60;
        let mut windows = self.windows.lock().expect("rate limiter lock");
        if windows.len() > 100_000 {
            windows.retain(|_, (m, _)| *m == minute);
        }
        let entry = windows.entry((form.to_string(), ip)).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
        entry.1 <= per_minute
    }
}

struct File {
    filename: String,
    content_type: String,
    data: Vec<u8>,
}

/// Form values by field name, plus uploaded files.
#[derive(Default)]
struct Submission {
    values: BTreeMap<String, String>,
    files: Vec<File>,
}

async fn parse_body(headers: &HeaderMap, body: Bytes) -> Result<Submission, Response> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let mut submission = Submission::default();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&body).map_err(|e| {
                    problem(StatusCode::BAD_REQUEST, format!("malformed form body: {e}"))
                })?;
            submission.values.extend(pairs);
        }
        "application/json" => {
            let value: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))?;
            let object = value.as_object().ok_or_else(|| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "the JSON body must be an object of fields",
                )
            })?;
            for (key, value) in object {
                let text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => continue,
                    other => other.to_string(),
                };
                submission.values.insert(key.clone(), text);
            }
        }
        "multipart/form-data" => {
            let boundary = multer::parse_boundary(&content_type)
                .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("multipart body: {e}")))?;
            let stream =
                futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
            let mut multipart = multer::Multipart::new(stream, boundary);
            while let Some(field) = multipart
                .next_field()
                .await
                .map_err(|e| problem(StatusCode::BAD_REQUEST, format!("multipart body: {e}")))?
            {
                let name = field.name().unwrap_or_default().to_string();
                let filename = field.file_name().map(str::to_string);
                let content_type = field
                    .content_type()
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "application/octet-stream".into());
                let data = field.bytes().await.map_err(|e| {
                    problem(
                        StatusCode::BAD_REQUEST,
                        format!("multipart field {name}: {e}"),
                    )
                })?;
                match filename {
                    Some(filename) if !filename.is_empty() => submission.files.push(File {
                        filename,
                        content_type,
                        data: data.to_vec(),
                    }),
                    _ => {
                        submission
                            .values
                            .insert(name, String::from_utf8_lossy(&data).into_owned());
                    }
                }
            }
        }
        _ => {
            return Err(problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/x-www-form-urlencoded, multipart/form-data or application/json",
            ))
        }
    }
    Ok(submission)
}

fn valid_email(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && address.matches('@').count() == 1
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
        }
        None => false,
    }
}

/// Header values must not carry line breaks or NUL (header injection).
fn has_control(value: &str) -> bool {
    value.contains(['\r', '\n', '\0'])
}

fn origin_allowed(config: &ChannelConfig, headers: &HeaderMap) -> bool {
    let origin = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    config
        .allowed_origins
        .iter()
        .any(|allowed| allowed == origin)
}

pub async fn submit(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(config) = state
        .config
        .channels
        .get(&name)
        .filter(|c| c.kind == ChannelKind::Form)
    else {
        return problem(StatusCode::NOT_FOUND, format!("no form named {name:?}"));
    };
    let now = crate::store::now_ms() / 1000;
    if config.signing_secret.is_some() {
        if let Err(denied) = auth::check(config, &headers, &body, &state.replays) {
            return denied.into_response();
        }
    } else if !origin_allowed(config, &headers) {
        return problem(
            StatusCode::FORBIDDEN,
            "this Origin may not post to this form",
        );
    }
    let per_minute = config.rate_limit_per_minute.or_else(|| {
        // Browser forms are rate limited by default; signed server posts are not.
        config
            .signing_secret
            .is_none()
            .then_some(DEFAULT_RATE_PER_MINUTE)
    });
    if let Some(limit) = per_minute {
        if !state.rate_limiter.allow(&name, peer.ip(), limit, now) {
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "too many submissions; try again in a minute",
            );
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("60"));
            return response;
        }
    }
    let submission = match parse_body(&headers, body).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    if let Some(honeypot) = &config.honeypot {
        if submission
            .values
            .get(honeypot)
            .is_some_and(|v| !v.trim().is_empty())
        {
            tracing::info!(form = %name, ip = %peer.ip(), "Honeypot filled; submission dropped.");
            // Looks like success to the bot; nothing is stored.
            return (StatusCode::OK, Json(json!({ "outcome": "accepted" }))).into_response();
        }
    }

    let fields = &config.fields;
    let required = config
        .required
        .clone()
        .unwrap_or_else(|| vec![fields.email.clone(), fields.body.clone()]);
    let missing: Vec<&String> = required
        .iter()
        .filter(|f| {
            submission
                .values
                .get(*f)
                .is_none_or(|v| v.trim().is_empty())
        })
        .collect();
    if !missing.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "required fields are missing", "missing": missing })),
        )
            .into_response();
    }
    let value = |field: &str| {
        submission
            .values
            .get(field)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let email = value(&fields.email).to_lowercase();
    if !valid_email(&email) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "not a valid email address", "field": fields.email })),
        )
            .into_response();
    }
    let contact_name = value(&fields.name);
    let subject = value(&fields.subject);
    for (field, text) in [(&fields.name, &contact_name), (&fields.subject, &subject)] {
        if has_control(text) {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(
                    json!({ "error": "line breaks are not allowed in this field", "field": field }),
                ),
            )
                .into_response();
        }
    }
    let text = submission
        .values
        .get(&fields.body)
        .cloned()
        .unwrap_or_default();
    let mapped = [&fields.subject, &fields.body, &fields.email, &fields.name];
    let properties: BTreeMap<String, String> = submission
        .values
        .iter()
        .filter(|(k, _)| !mapped.contains(k) && Some(*k) != config.honeypot.as_ref())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    // An Idempotency-Key makes a retried post the same message: same
    // Message-ID and fingerprint, so the receipt answers with the first ticket.
    let idempotency = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|key| hex::encode(Sha256::digest(format!("form\0{name}\0{key}"))));
    let message_id = match &idempotency {
        Some(hash) => format!("form-{}{SYNTHETIC_DOMAIN}", &hash[..32]),
        None => format!(
            "form-{}{SYNTHETIC_DOMAIN}",
            hex::encode(rand::random::<[u8; 16]>())
        ),
    };
    let team_address = state
        .config
        .teams
        .get(&config.team)
        .and_then(|t| {
            t.addresses
                .iter()
                .find(|a| a.default)
                .or(t.addresses.first())
        })
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "support@localhost".into());
    let subject_line = if subject.is_empty() {
        format!("Form submission: {name}")
    } else {
        subject
    };
    let from: mail_builder::headers::address::Address<'_> = if contact_name.is_empty() {
        email.as_str().into()
    } else {
        (contact_name.as_str(), email.as_str()).into()
    };
    let mut builder = mail_builder::MessageBuilder::new()
        .from(from)
        .to(team_address.as_str())
        .subject(subject_line.as_str())
        .message_id(message_id.as_str())
        .header(
            "X-Mailroom-Form",
            mail_builder::headers::text::Text::new(name.as_str()),
        )
        .text_body(text.as_str());
    for file in &submission.files {
        builder = builder.attachment(
            file.content_type.as_str(),
            file.filename.as_str(),
            file.data.as_slice(),
        );
    }
    let raw = match builder.write_to_vec() {
        Ok(raw) => raw,
        Err(e) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot build the message: {e}"),
            )
        }
    };

    let hints = Hints {
        no_threading: !config.threaded,
        properties,
        status: config.status.clone(),
        fingerprint: idempotency,
    };
    let raw = RawMessage {
        channel: name.clone(),
        source: Some(format!("form:{}", peer.ip())),
        data: Arc::new(raw),
    };
    let pipeline = &state.pipeline;
    let result = state.commits.submit(raw, hints).await;
    match result {
        Ok(Disposition::Applied(Outcome::Created {
            ticket_id, number, ..
        })) => (
            StatusCode::CREATED,
            Json(json!({ "outcome": "created", "ticket_id": ticket_id, "ticket_number": number })),
        )
            .into_response(),
        Ok(Disposition::Applied(
            outcome @ (Outcome::Appended { .. } | Outcome::Duplicate { .. }),
        )) => {
            let ticket_id = outcome.ticket_id();
            let number: Option<i64> = match ticket_id {
                Some(id) => sqlx::query_scalar("SELECT number FROM tickets WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pipeline.store().pool())
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            (
                    StatusCode::OK,
                    Json(json!({ "outcome": outcome.name(), "ticket_id": ticket_id, "ticket_number": number })),
                )
                    .into_response()
        }
        Ok(Disposition::Applied(Outcome::Recorded)) => {
            (StatusCode::ACCEPTED, Json(json!({ "outcome": "recorded" }))).into_response()
        }
        other => super::not_applied(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation_refuses_what_could_inject_or_bounce() {
        assert!(valid_email("ann@example.com"));
        for bad in [
            "ann",
            "ann@",
            "@x.com",
            "ann@localhost",
            "a b@x.com",
            "a@x.com\r\nBcc: e@x.com",
            "a@@x.com",
            "<a@x.com>",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn rate_limit_is_per_form_and_ip_per_minute() {
        let limiter = RateLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.allow("f", ip, 2, 60));
        assert!(limiter.allow("f", ip, 2, 61));
        assert!(!limiter.allow("f", ip, 2, 62));
        assert!(limiter.allow("g", ip, 2, 62));
        assert!(limiter.allow("f", ip, 2, 120));
    }
}
