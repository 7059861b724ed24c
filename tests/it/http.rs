//! The HTTP listener over real loopback HTTP: health, inbound-mail webhooks
//! with bearer and signature auth, size limits, and a database outage.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::harness::*;
use mailroom::http::{auth, HttpState};

const HOOKS: &str = r#"
[channels.hook]
kind = "webhook"
team = "support"
pipeline = "support"
auth_token = "tok-123-0123456789ab"

[channels.signed]
kind = "webhook"
team = "support"
pipeline = "support"
signing_secret = "shh-0123456789abcdef"

[http]
bind = "127.0.0.1:0"
max_body_bytes = 100000
"#;

struct Listener {
    base: String,
    token: CancellationToken,
}

async fn listen(app: &TestApp) -> Listener {
    let state = Arc::new(HttpState::new(app.pipeline.clone(), app.config.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    tokio::spawn(mailroom::http::serve_on(listener, state, token.clone()));
    Listener { base, token }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// POSTs over real HTTP; returns the status and the JSON body (or Null).
pub async fn post(
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.post(&url);
        for (k, v) in &headers {
            request = request.header(*k, v.as_str());
        }
        let mut response = request.send(&body[..]).unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    })
    .await
    .unwrap()
}

async fn get(url: String) -> u16 {
    get_json(url).await.0
}

/// GETs over real HTTP; returns the status and the JSON body (or Null).
pub async fn get_json(url: String) -> (u16, serde_json::Value) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).call().unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or_default())
    })
    .await
    .unwrap()
}

pub fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn signed(secret: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("x-mailroom-timestamp", timestamp.to_string()),
        ("x-mailroom-signature", auth::sign(secret, timestamp, body)),
    ]
}

fn now() -> i64 {
    mailroom::store::now_ms() / 1000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let app = TestApp::with_config(Backend::Sqlite, HOOKS).await;
    let http = listen(&app).await;
    assert_eq!(get(format!("{}/healthz", http.base)).await, 200);
    assert_eq!(get(format!("{}/readyz", http.base)).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_false_before_the_start_and_from_the_drain_on() {
    let app = TestApp::with_config(Backend::Sqlite, HOOKS).await;
    let ready = Arc::new(mailroom::http::Readiness::starting());
    let state =
        HttpState::new(app.pipeline.clone(), app.config.clone()).with_readiness(ready.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let token = CancellationToken::new();
    tokio::spawn(mailroom::http::serve_on(
        listener,
        Arc::new(state),
        token.clone(),
    ));
    let (status, body) = get_json(url.clone()).await;
    assert_eq!(
        (status, &body["channels_started"]),
        (503, &serde_json::json!(false))
    );
    ready.set_started();
    assert_eq!(get(url.clone()).await, 200);
    ready.set_draining();
    let (status, body) = get_json(url).await;
    assert_eq!((status, &body["draining"]), (503, &serde_json::json!(true)));
    // Health stays up while draining: the process is alive.
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_webhook_commits_then_answers_and_threads_replies() {
    let app = TestApp::with_config(Backend::Sqlite, HOOKS).await;
    let http = listen(&app).await;
    let url = format!("{}/inbound/hook", http.base);
    let first = mail("ann@c.test", "w1@c.test", "Via webhook", "", "hello");

    let (status, body) = post(url.clone(), bearer("tok-123-0123456789ab"), first.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["outcome"], "created");
    let ticket = body["ticket_id"].clone();
    // Committed before the answer: the store has it now.
    assert_eq!(app.store().counts().await.unwrap().messages, 1);

    let (status, body) = post(url.clone(), bearer("tok-123-0123456789ab"), first.clone()).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));

    let reply = mail(
        "ann@c.test",
        "w2@c.test",
        "Re: Via webhook",
        "In-Reply-To: <w1@c.test>\r\n",
        "more",
    );
    let (status, body) = post(url.clone(), bearer("tok-123-0123456789ab"), reply).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("appended")));
    assert_eq!(body["ticket_id"], ticket);

    assert_eq!(
        post(url.clone(), bearer("wrong"), first.clone()).await.0,
        401
    );
    assert_eq!(post(url.clone(), vec![], first.clone()).await.0, 401);
    let (status, body) = post(
        url.clone(),
        bearer("tok-123-0123456789ab"),
        b"not a message".to_vec(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        post(
            format!("{}/inbound/nope", http.base),
            bearer("tok-123-0123456789ab"),
            first
        )
        .await
        .0,
        404
    );
    assert_eq!(app.store().counts().await.unwrap().messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhook_refuses_bad_expired_and_replayed_signatures() {
    let app = TestApp::with_config(Backend::Sqlite, HOOKS).await;
    let http = listen(&app).await;
    let url = format!("{}/inbound/signed", http.base);
    let body = mail("sig@c.test", "s1@c.test", "Signed", "", "hello");

    let headers = signed("shh-0123456789abcdef", now(), &body);
    let (status, answer) = post(url.clone(), headers.clone(), body.clone()).await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = post(url.clone(), headers, body.clone()).await;
    assert_eq!(status, 401, "a replayed signature is refused");
    assert!(answer["error"].as_str().unwrap().contains("replay"));

    let tampered = mail("sig@c.test", "s2@c.test", "Signed", "", "changed");
    let (status, _) = post(
        url.clone(),
        signed("shh-0123456789abcdef", now(), &body),
        tampered,
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = post(
        url.clone(),
        signed("shh-0123456789abcdef", now() - 600, &body),
        body.clone(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("5-minute window"));
    let (status, _) = post(url.clone(), signed("other", now(), &body), body.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(app.store().counts().await.unwrap().messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413_and_nothing_is_stored() {
    let app = TestApp::with_config(Backend::Sqlite, HOOKS).await;
    let http = listen(&app).await;
    let big = mail("big@c.test", "big@c.test", "Big", "", &"z".repeat(200_000));
    let (status, _) = post(
        format!("{}/inbound/hook", http.base),
        bearer("tok-123-0123456789ab"),
        big,
    )
    .await;
    assert_eq!(status, 413);
    let counts = app.store().counts().await.unwrap();
    assert_eq!((counts.messages, counts.quarantined), (0, 0));
}

/// A TCP proxy in front of PostgreSQL that can be switched off: while off it
/// drops every connection, as a database outage would.
async fn switchable_proxy(target: u16) -> (u16, Arc<AtomicBool>) {
    let up = Arc::new(AtomicBool::new(true));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let flag = up.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                continue; // dropped: connection closed at once
            }
            let flag = flag.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let mut buf_in = vec![0u8; 16384];
                let mut buf_out = vec![0u8; 16384];
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                loop {
                    if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    tokio::select! {
                        n = inbound.read(&mut buf_in) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if outbound.write_all(&buf_in[..n]).await.is_err() { return },
                        },
                        n = outbound.read(&mut buf_out) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if inbound.write_all(&buf_out[..n]).await.is_err() { return },
                        },
                        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                    }
                }
            });
        }
    });
    (port, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_answers_503_and_the_retry_succeeds_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let (port, up) = switchable_proxy(5432).await;
    let proxied = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    let mut config = test_config(&proxied, HOOKS);
    config.database.connect_timeout_secs = 1;
    config.ingest.max_attempts = 2;
    let pipeline = TestApp::pipeline_for(&config).await;
    let app = TestApp {
        db,
        config,
        pipeline,
    };
    let http = listen(&app).await;
    let url = format!("{}/inbound/hook", http.base);
    let message = mail(
        "down@c.test",
        "down@c.test",
        "While down",
        "",
        "please keep me",
    );

    up.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = post(url.clone(), bearer("tok-123-0123456789ab"), message.clone()).await;
    assert_eq!(status, 503, "{body}");
    up.store(true, std::sync::atomic::Ordering::SeqCst);

    let (status, body) = post(url.clone(), bearer("tok-123-0123456789ab"), message.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(url, bearer("tok-123-0123456789ab"), message).await;
    assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
    assert_eq!(app.store().counts().await.unwrap().messages, 1);
}

const FORMS: &str = r#"
[channels.contact]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]
honeypot = "website"
rate_limit_per_minute = 100
fields = { body = "message" }

[channels.limited]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]
rate_limit_per_minute = 2

[channels.partner]
kind = "form"
team = "support"
pipeline = "support"
signing_secret = "form-secret-0123456789"
status = "waiting on contact"

[http]
bind = "127.0.0.1:0"
max_body_bytes = 100000
"#;

fn browser(content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("origin", "https://www.example.com".into()),
        ("content-type", content_type.into()),
    ]
}

const URLENCODED: &str = "application/x-www-form-urlencoded";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_accept_urlencoded_json_and_multipart() {
    let app = TestApp::with_config(Backend::Sqlite, FORMS).await;
    let http = listen(&app).await;
    let url = format!("{}/forms/contact", http.base);

    let body = "name=Ann+Smith&email=Ann%40C.test&subject=Broken+login&message=I+cannot+log+in&order=A-17&website=";
    let (status, first) = post(url.clone(), browser(URLENCODED), body.into()).await;
    assert_eq!(status, 201, "{first}");
    let number = first["ticket_number"].as_i64().unwrap();

    let json = r#"{"name":"Ann Smith","email":"ann@c.test","subject":"Second question","message":"Another one","plan":"pro"}"#;
    let (status, second) = post(url.clone(), browser("application/json"), json.into()).await;
    assert_eq!(status, 201, "{second}");
    assert_eq!(
        second["ticket_number"].as_i64().unwrap(),
        number + 1,
        "forms are not threaded: a new ticket"
    );

    let boundary = "XyZ";
    let multipart = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nbob@c.test\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nScreenshot attached\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"shot\"; filename=\"error.png\"\r\nContent-Type: image/png\r\n\r\n\
         \u{89}PNG-bytes\r\n--{boundary}--\r\n"
    );
    let (status, third) = post(
        url.clone(),
        browser(&format!("multipart/form-data; boundary={boundary}")),
        multipart.into(),
    )
    .await;
    assert_eq!(status, 201, "{third}");

    let first_ticket = app.store().ticket_show(number).await.unwrap().unwrap();
    assert_eq!(first_ticket.ticket.subject, "Broken login");
    assert_eq!(first_ticket.ticket.contacts, vec!["ann@c.test"]);
    assert_eq!(
        first_ticket.messages[0].from_name.as_deref(),
        Some("Ann Smith")
    );
    assert!(first_ticket.messages[0]
        .body_text
        .contains("I cannot log in"));
    let properties: String = sqlx::query_scalar("SELECT properties FROM tickets WHERE number = $1")
        .bind(number)
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    let properties: serde_json::Value = serde_json::from_str(&properties).unwrap();
    assert_eq!(
        properties,
        serde_json::json!({ "order": "A-17" }),
        "honeypot and mapped fields are not properties"
    );
    let with_file = app
        .store()
        .ticket_show(third["ticket_number"].as_i64().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(with_file.messages[0].attachments, vec!["error.png"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_refuse_missing_and_invalid_fields_with_422() {
    let app = TestApp::with_config(Backend::Sqlite, FORMS).await;
    let http = listen(&app).await;
    let url = format!("{}/forms/contact", http.base);
    let (status, body) = post(url.clone(), browser(URLENCODED), "name=Ann".into()).await;
    assert_eq!(status, 422);
    assert_eq!(body["missing"], serde_json::json!(["email", "message"]));
    let (status, body) = post(
        url.clone(),
        browser(URLENCODED),
        "email=not-an-address&message=hi".into(),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("email")));
    let injected = "email=a%40c.test&message=hi&name=Ann%0D%0ABcc%3A+victim%40x.test";
    let (status, body) = post(url.clone(), browser(URLENCODED), injected.into()).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("name")));
    assert_eq!(post(url, browser("text/plain"), "hi".into()).await.0, 415);
    assert_eq!(app.store().counts().await.unwrap().tickets, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_forms_check_origin_honeypot_and_rate() {
    let app = TestApp::with_config(Backend::Sqlite, FORMS).await;
    let http = listen(&app).await;
    let url = format!("{}/forms/contact", http.base);
    let body = "email=a%40c.test&message=hello";

    let foreign = vec![
        ("origin", "https://evil.test".to_string()),
        ("content-type", URLENCODED.to_string()),
    ];
    assert_eq!(post(url.clone(), foreign, body.into()).await.0, 403);
    assert_eq!(
        post(
            url.clone(),
            vec![("content-type", URLENCODED.into())],
            body.into()
        )
        .await
        .0,
        403
    );

    let (status, answer) = post(
        url.clone(),
        browser(URLENCODED),
        format!("{body}&website=http://spam.test").into(),
    )
    .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("accepted"))
    );
    assert_eq!(
        app.store().counts().await.unwrap().tickets,
        0,
        "the bot's post is dropped"
    );

    let limited = format!("{}/forms/limited", http.base);
    let body = "email=a%40c.test&body=hello";
    assert_eq!(
        post(limited.clone(), browser(URLENCODED), body.into())
            .await
            .0,
        201
    );
    assert_eq!(
        post(limited.clone(), browser(URLENCODED), body.into())
            .await
            .0,
        201
    );
    assert_eq!(post(limited, browser(URLENCODED), body.into()).await.0, 429);
    assert_eq!(app.store().counts().await.unwrap().tickets, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_forms_and_idempotent_retries() {
    let app = TestApp::with_config(Backend::Sqlite, FORMS).await;
    let http = listen(&app).await;
    let url = format!("{}/forms/partner", http.base);
    let body = br#"{"email":"partner@c.test","body":"Order sync failed"}"#.to_vec();
    let headers = |ts: i64, key: &str| {
        let mut h = signed("form-secret-0123456789", ts, &body);
        h.push(("content-type", "application/json".into()));
        h.push(("idempotency-key", key.into()));
        h
    };
    // Distinct timestamps: identical ones would make identical signatures (replays).
    let t = now();
    let (status, first) = post(url.clone(), headers(t, "req-1"), body.clone()).await;
    assert_eq!(status, 201, "{first}");
    // A retry (new signature, same key) returns the first ticket.
    let (status, retry) = post(url.clone(), headers(t - 1, "req-1"), body.clone()).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["outcome"], "duplicate");
    assert_eq!(retry["ticket_number"], first["ticket_number"]);
    let (status, other) = post(url.clone(), headers(t - 2, "req-2"), body.clone()).await;
    assert_eq!(status, 201, "a new key is a new submission: {other}");
    let mut forged = headers(t - 3, "req-3");
    forged[1].1 = auth::sign("wrong", t - 3, &body);
    assert_eq!(post(url, forged, body.clone()).await.0, 401);

    assert_eq!(app.store().counts().await.unwrap().tickets, 2);
    let waiting = app
        .store()
        .ticket_list(Some("waiting on contact"))
        .await
        .unwrap();
    assert_eq!(waiting.len(), 2, "the form's status applies to its tickets");
}
