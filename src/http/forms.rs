//! Web forms: `POST /forms/{name}` with a urlencoded, multipart or JSON body
//! becomes a ticket with its contact. The form's fields map to the ticket
//! (subject, body, email, name); other fields become ticket properties, and
//! file fields become attachments. The submission goes through the same
//! pipeline as mail, as a message built with mail-builder.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::Quota;
use serde_json::json;

use super::{auth, problem, HttpState};
use crate::config::{Config, FormConfig};
use crate::crypto::sha256_hex;
use crate::mail::ids::SYNTHETIC_DOMAIN;
use crate::mail::wire::base64_len;
use crate::pipeline::{Disposition, Hints, Outcome, RawMessage};

/// Default per-IP limit for browser forms without a configured one.
const DEFAULT_RATE_PER_MINUTE: u32 = 10;

/// Client IPs remembered per form before idle ones are forgotten.
const MAX_TRACKED_CLIENTS: usize = 100_000;

type Limiter<C> = governor::RateLimiter<
    IpAddr,
    HashMapStateStore<IpAddr>,
    C,
    governor::middleware::NoOpMiddleware<<C as Clock>::Instant>,
>;

/// Per-form, per-client-IP submission limits (the `governor` crate's
/// GCRA: a burst of the per-minute quota, then one every 60/n seconds).
/// Browser forms are limited by default; signed server posts are not.
pub struct RateLimiter<C: Clock = DefaultClock> {
    forms: HashMap<String, Limiter<C>>,
}

impl RateLimiter {
    pub fn new(config: &Config) -> RateLimiter {
        RateLimiter::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    fn with_clock(config: &Config, clock: C) -> RateLimiter<C> {
        let forms = config
            .channels
            .iter()
            .filter_map(|(name, channel)| {
                let form = channel.form()?;
                let per_minute = form.rate_limit_per_minute.or_else(|| {
                    form.signing_secret
                        .is_none()
                        .then_some(DEFAULT_RATE_PER_MINUTE)
                })?;
                // Validation refuses 0.
                let quota = Quota::per_minute(NonZeroU32::new(per_minute)?);
                Some((
                    name.clone(),
                    Limiter::hashmap_with_clock(quota, clock.clone()),
                ))
            })
            .collect();
        RateLimiter { forms }
    }

    fn allow(&self, form: &str, ip: IpAddr) -> bool {
        let Some(limiter) = self.forms.get(form) else {
            return true;
        };
        if limiter.len() > MAX_TRACKED_CLIENTS {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).is_ok()
    }
}

struct File {
    filename: String,
    content_type: String,
    data: Bytes,
}

/// Form values by field name, plus uploaded files.
#[derive(Default)]
struct Submission {
    values: BTreeMap<String, String>,
    files: Vec<File>,
}

/// What one submission may hold; past any of them it is refused (413)
/// while it is parsed, so a body of many tiny fields costs no more memory
/// than the fields allowed.
#[derive(Debug, Clone, Copy)]
struct Caps {
    fields: usize,
    field_bytes: usize,
    files: usize,
    file_bytes: usize,
}

impl Caps {
    fn of(config: &FormConfig) -> Caps {
        Caps {
            fields: config.max_fields,
            field_bytes: config.max_field_bytes,
            files: config.max_files,
            file_bytes: config.max_file_bytes,
        }
    }

    fn too_long(&self, name: &str) -> Response {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "field {:?} is longer than {} bytes (max_field_bytes)",
                shown(name),
                self.field_bytes
            ),
        )
    }

    /// Checks the raw (still encoded) sizes before anything is decoded:
    /// decoding never yields more than a few bytes per raw byte, so the
    /// decoded value stays within a small multiple of the cap.
    fn check_raw(&self, name: &[u8], value: &[u8]) -> Result<(), Box<Response>> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Box::new(name_too_long()));
        }
        if value.len() > self.field_bytes.saturating_mul(3) {
            return Err(Box::new(self.too_long(&String::from_utf8_lossy(name))));
        }
        Ok(())
    }

    /// The answer for a JSON body that did not parse or passed a cap.
    fn json_error(&self, e: serde_json::Error) -> Response {
        let message = e.to_string();
        if message.starts_with(TOO_MANY) {
            self.too_many_fields()
        } else if let Some(rest) = message.strip_prefix(TOO_LONG) {
            // serde_json appends " at line L column C".
            self.too_long(rest.rsplit_once(" at line ").map_or(rest, |(n, _)| n))
        } else {
            bad_request(format!("malformed JSON: {e}"))
        }
    }

    fn too_many_fields(&self) -> Response {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("more than {} fields (max_fields)", self.fields),
        )
    }
}

impl Submission {
    /// Adds a field, or answers 413 past the cap.
    fn add_value(&mut self, caps: Caps, name: String, value: String) -> Result<(), Box<Response>> {
        if name.len() > MAX_NAME_BYTES {
            return Err(Box::new(name_too_long()));
        }
        if self.values.len() >= caps.fields && !self.values.contains_key(&name) {
            return Err(Box::new(caps.too_many_fields()));
        }
        if value.len() > caps.field_bytes {
            return Err(Box::new(caps.too_long(&name)));
        }
        self.values.insert(name, value);
        Ok(())
    }
}

/// Longest field name accepted.
const MAX_NAME_BYTES: usize = 256;

fn name_too_long() -> Response {
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a field name is longer than {MAX_NAME_BYTES} bytes"),
    )
}

/// A field name as quoted back in an error: the start of it.
fn shown(name: &str) -> &str {
    match name.char_indices().nth(64) {
        Some((cut, _)) => &name[..cut],
        None => name,
    }
}

fn bad_request(message: impl Into<String>) -> Response {
    problem(StatusCode::BAD_REQUEST, message)
}

async fn parse_body(headers: &HeaderMap, body: Bytes, caps: Caps) -> Result<Submission, Response> {
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
            for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                let split = pair.iter().position(|&b| b == b'=').unwrap_or(pair.len());
                caps.check_raw(&pair[..split], &pair[split..])
                    .map_err(|r| *r)?;
                if let Some((name, value)) = form_urlencoded::parse(pair).next() {
                    submission
                        .add_value(caps, name.into_owned(), value.into_owned())
                        .map_err(|r| *r)?;
                }
            }
        }
        "application/json" => {
            let mut deserializer = serde_json::Deserializer::from_slice(&body);
            let fields =
                serde::de::DeserializeSeed::deserialize(JsonFields(caps), &mut deserializer)
                    .and_then(|fields| deserializer.end().map(|()| fields))
                    .map_err(|e| caps.json_error(e))?;
            submission.values = fields;
        }
        "multipart/form-data" => {
            parse_multipart(&content_type, body, caps, &mut submission).await?
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

/// The body parsers alone, for the fuzzers: how many fields a body
/// yields, or the HTTP status it is refused with. Never panics.
#[doc(hidden)]
pub fn fuzz_form_body(content_type: &str, body: &[u8]) -> Result<usize, u16> {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert("content-type", value);
    }
    let caps = Caps {
        fields: 50,
        field_bytes: 10_000,
        files: 5,
        file_bytes: 1_000_000,
    };
    let parsed = parse_body(&headers, Bytes::copy_from_slice(body), caps);
    futures::executor::block_on(parsed)
        .map(|submission| submission.values.len() + submission.files.len())
        .map_err(|refused| refused.status().as_u16())
}

const TOO_MANY: &str = "too many fields";
const TOO_LONG: &str = "field too long: ";

/// A JSON object of fields read entry by entry, stopping at the cap:
/// strings as they are, other values as JSON text, nulls skipped.
struct JsonFields(Caps);

impl<'de> serde::de::DeserializeSeed<'de> for JsonFields {
    type Value = BTreeMap<String, String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonFields {
    type Value = BTreeMap<String, String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object of fields")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = BTreeMap::new();
        // Values stay raw text until taken: a parsed `Value` of a long
        // array would cost many times the bytes posted.
        while let Some((key, value)) =
            map.next_entry::<String, &'de serde_json::value::RawValue>()?
        {
            let raw = value.get();
            let text = match raw.as_bytes().first() {
                Some(b'"') => {
                    serde_json::from_str::<String>(raw).map_err(serde::de::Error::custom)?
                }
                _ if raw == "null" => continue,
                _ => raw.to_string(),
            };
            if fields.len() >= self.0.fields && !fields.contains_key(&key) {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            if text.len() > self.0.field_bytes {
                return Err(serde::de::Error::custom(format!("{TOO_LONG}{key}")));
            }
            fields.insert(key, text);
        }
        Ok(fields)
    }
}

async fn parse_multipart(
    content_type: &str,
    body: Bytes,
    caps: Caps,
    submission: &mut Submission,
) -> Result<(), Response> {
    let multipart_error = |e: multer::Error| bad_request(format!("multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(multipart_error)?;
    let stream = futures::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut file_bytes = 0;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let content_type = field
            .content_type()
            .map(|m| m.to_string())
            .unwrap_or_else(|| "application/octet-stream".into());
        let data = field
            .bytes()
            .await
            .map_err(|e| bad_request(format!("multipart field {name}: {e}")))?;
        match filename {
            Some(filename) if !filename.is_empty() => {
                file_bytes += data.len();
                if submission.files.len() >= caps.files {
                    return Err(problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("more than {} files (max_files)", caps.files),
                    ));
                }
                if file_bytes > caps.file_bytes {
                    return Err(problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "the files are larger than {} bytes together (max_file_bytes)",
                            caps.file_bytes
                        ),
                    ));
                }
                submission.files.push(File {
                    filename,
                    content_type,
                    data,
                })
            }
            _ => {
                if data.len() > caps.field_bytes {
                    return Err(caps.too_long(&name));
                }
                let text = String::from_utf8_lossy(&data).into_owned();
                submission.add_value(caps, name, text).map_err(|r| *r)?;
            }
        }
    }
    Ok(())
}

fn origin_allowed(config: &FormConfig, headers: &HeaderMap) -> bool {
    let origin = headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    config
        .allowed_origins
        .iter()
        .any(|allowed| allowed == origin)
}

fn field_error(message: &str, field: &str) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": message, "field": field })),
    )
        .into_response()
}

/// What a valid submission carries into the ticket.
struct Fields {
    email: String,
    name: String,
    subject: String,
    body: String,
    properties: BTreeMap<String, String>,
}

pub async fn submit(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(config) = state.config.channels.get(&name).and_then(|c| c.form()) else {
        return problem(StatusCode::NOT_FOUND, format!("no form named {name:?}"));
    };
    let accepted = match admit(&state, &name, config, peer.ip(), &headers, &body).await {
        Ok(accepted) => accepted,
        Err(refused) => return *refused,
    };
    let submission = match parse_body(&headers, body, Caps::of(config)).await {
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
    let fields = match fields(config, &submission) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    // An Idempotency-Key makes a retried post the same message: same
    // Message-ID and fingerprint, so the receipt answers with the first ticket.
    let idempotency = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|key| sha256_hex(format!("form\0{name}\0{key}").as_bytes()));
    let raw = match build_message(
        &state.config,
        &name,
        &fields,
        &submission,
        idempotency.as_deref(),
    ) {
        Ok(raw) => raw,
        Err(e) => {
            if let Some(accepted) = &accepted {
                state.replays.forget(accepted);
            }
            let message = format!("cannot build the message: {e}");
            return problem(StatusCode::INTERNAL_SERVER_ERROR, message);
        }
    };
    // The message holds everything now; the body's memory goes before the
    // wait for the commit.
    drop(submission);
    let hints = Hints {
        no_threading: !config.threaded,
        properties: fields.properties,
        status: config.status.clone(),
        fingerprint: idempotency,
        envelope_to: None,
        release_blocked: false,
        forwarded_by: None,
    };
    let raw = RawMessage {
        channel: name.clone(),
        source: Some(format!("form:{}", peer.ip())),
        data: Arc::new(raw),
    };
    let result = state.commits.submit(raw, hints).await;
    if let (Some(accepted), Err(crate::pipeline::PipelineError::Unavailable(_))) =
        (&accepted, &result)
    {
        state.replays.forget(accepted);
    }
    answer(&state, result).await
}

/// Authentication (signed server posts) or Origin (browser forms), then the
/// per-IP rate limit. A signed post's signature is returned, to be
/// forgotten if the submission cannot be stored.
async fn admit(
    state: &HttpState,
    name: &str,
    config: &FormConfig,
    ip: IpAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<auth::Accepted>, Box<Response>> {
    let mut accepted = None;
    if config.signing_secret.is_some() {
        let credentials = auth::Credentials {
            bearer: None,
            signing_secret: config.signing_secret.as_ref(),
        };
        accepted = Some(
            auth::check(&credentials, headers, body, &state.replays)
                .await
                .map_err(|denied| Box::new(denied.into_response()))?,
        );
    } else if !origin_allowed(config, headers) {
        return Err(Box::new(problem(
            StatusCode::FORBIDDEN,
            "this Origin may not post to this form",
        )));
    }
    if !state.rate_limiter.allow(name, ip) {
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many submissions; try again in a minute",
        );
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("60"));
        return Err(Box::new(response));
    }
    Ok(accepted)
}

/// The mapped fields, checked: required ones present, a valid email, no
/// line breaks where they would become header values.
fn fields(config: &FormConfig, submission: &Submission) -> Result<Fields, Box<Response>> {
    let names = &config.fields;
    let required = config
        .required
        .clone()
        .unwrap_or_else(|| vec![names.email.clone(), names.body.clone()]);
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
        let body = json!({ "error": "required fields are missing", "missing": missing });
        return Err(Box::new(
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response(),
        ));
    }
    let value = |field: &str| {
        submission
            .values
            .get(field)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let email = value(&names.email).to_lowercase();
    if crate::mail::address::check(&email).is_err() {
        return Err(Box::new(field_error(
            "not a valid email address",
            &names.email,
        )));
    }
    let name = value(&names.name);
    let subject = value(&names.subject);
    for (field, text) in [(&names.name, &name), (&names.subject, &subject)] {
        // These become header values.
        if crate::mail::ids::breaks_header(text) {
            let message = "line breaks are not allowed in this field";
            return Err(Box::new(field_error(message, field)));
        }
    }
    let mapped = [&names.subject, &names.body, &names.email, &names.name];
    let properties = submission
        .values
        .iter()
        .filter(|(k, _)| !mapped.contains(k) && Some(*k) != config.honeypot.as_ref())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Fields {
        email,
        name,
        subject,
        body: submission
            .values
            .get(&names.body)
            .cloned()
            .unwrap_or_default(),
        properties,
    })
}

/// The submission as a message to the team's address.
fn build_message(
    config: &Config,
    name: &str,
    fields: &Fields,
    submission: &Submission,
    idempotency: Option<&str>,
) -> std::io::Result<Vec<u8>> {
    let message_id = match idempotency {
        Some(hash) => format!("form-{}{SYNTHETIC_DOMAIN}", &hash[..32]),
        None => format!(
            "form-{}{SYNTHETIC_DOMAIN}",
            hex::encode(rand::random::<[u8; 16]>())
        ),
    };
    let team = config
        .channels
        .get(name)
        .map(|c| c.team.as_str())
        .unwrap_or_default();
    let team_address = config
        .teams
        .get(team)
        .and_then(|t| {
            t.addresses
                .iter()
                .find(|a| a.default)
                .or(t.addresses.first())
        })
        .map(|a| a.address.clone())
        .unwrap_or_else(|| "support@localhost".into());
    let subject = match fields.subject.is_empty() {
        true => format!("Form submission: {name}"),
        false => fields.subject.clone(),
    };
    let from: mail_builder::headers::address::Address<'_> = match fields.name.is_empty() {
        true => fields.email.as_str().into(),
        false => (fields.name.as_str(), fields.email.as_str()).into(),
    };
    let mut builder = mail_builder::MessageBuilder::new()
        .from(from)
        .to(team_address.as_str())
        .subject(subject.as_str())
        .message_id(message_id.as_str())
        .header(
            "X-Mailroom-Form",
            mail_builder::headers::text::Text::new(name),
        )
        .text_body(fields.body.as_str());
    for file in &submission.files {
        builder = builder.attachment(
            file.content_type.as_str(),
            file.filename.as_str(),
            file.data.as_ref(),
        );
    }
    // Sized up front: growing by doubling would hold two copies at once.
    let files: usize = submission.files.iter().map(|f| f.data.len()).sum();
    let mut raw = Vec::with_capacity(base64_len(files) + fields.body.len() * 3 + 8192);
    builder.write_to(&mut raw)?;
    Ok(raw)
}

/// 201 with the new ticket, 200 for an existing one, 202 when recorded
/// without a ticket; otherwise what `not_applied` says.
async fn answer(
    state: &HttpState,
    result: Result<Disposition, crate::pipeline::PipelineError>,
) -> Response {
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
            let number = match ticket_id {
                Some(id) => state
                    .pipeline
                    .store()
                    .ticket_number(id)
                    .await
                    .ok()
                    .flatten(),
                None => None,
            };
            let body = json!({ "outcome": outcome.name(), "ticket_id": ticket_id, "ticket_number": number });
            (StatusCode::OK, Json(body)).into_response()
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
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn config(forms: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailroom.toml");
        let text =
            format!("[database]\nurl = \"sqlite://x.db\"\n[http]\nbind = \"127.0.0.1:0\"\n{forms}");
        std::fs::write(&path, text).unwrap();
        Config::load_unvalidated(&path).unwrap()
    }

    #[test]
    fn rate_limit_is_per_form_and_ip_per_minute() {
        let form = |name: &str| {
            format!("[channels.{name}]\nkind = \"form\"\nteam = \"t\"\npipeline = \"p\"\nallowed_origins = [\"https://x.test\"]\nrate_limit_per_minute = 2\n")
        };
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(&config(&(form("f") + &form("g"))), clock.clone());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limiter.allow("f", ip));
        clock.advance(Duration::from_secs(1));
        assert!(limiter.allow("f", ip));
        clock.advance(Duration::from_secs(1));
        assert!(!limiter.allow("f", ip));
        assert!(limiter.allow("g", ip));
        clock.advance(Duration::from_secs(58));
        assert!(limiter.allow("f", ip));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(
            limiter.allow("f", other),
            "each client has its own allowance"
        );
    }

    #[test]
    fn signed_forms_are_not_limited_unless_configured() {
        let signed = "[channels.s]\nkind = \"form\"\nteam = \"t\"\npipeline = \"p\"\nsigning_secret = \"k\"\n";
        let limiter = RateLimiter::with_clock(&config(signed), FakeRelativeClock::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..50).all(|_| limiter.allow("s", ip)));
    }
}
