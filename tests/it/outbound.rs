//! Agent replies over a real SMTP server (Postfix's smtp-sink): what arrives,
//! the customer's answer threading back, relay outages, refusals, status
//! automation, idempotency and bounces; on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{json, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::smtp::{free_port, SmtpSink};
use mailroom::config::Config;
use mailroom::http::HttpState;
use mailroom::outbound::Outbox;
use mailroom::pipeline::Pipeline;
use mailroom::store::Store;

/// A config with a relay on `smtp_port` (none for 0: `extra` brings its
/// own), two support addresses, a status that needs a property, a rule for
/// replies, and agents with API tokens.
pub fn outbound_config(db_url: &str, smtp_port: u16, extra: &str) -> Config {
    let relay = if smtp_port == 0 {
        String::new()
    } else {
        format!(
            "[relays.sink]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\n\
             username = \"mailroom\"\npassword = \"relay-password\"\ntimeout_secs = 5\n"
        )
    };
    let text = format!(
        r#"
[database]
url = "{db_url}"
max_connections = 4

[outbox]
retry_base_ms = 100
retry_max_ms = 400
max_attempts = 4
poll_interval_ms = 100
lease_secs = 30

{relay}

[pipelines.support]
statuses = [
  {{ name = "open", kind = "open" }},
  {{ name = "waiting on contact", kind = "waiting" }},
  {{ name = "solved", kind = "closed", required_properties = ["resolution"] }},
  {{ name = "closed", kind = "closed" }},
]
status_after_reply = "waiting on contact"

[teams.support]
addresses = [
  {{ address = "support@example.com", name = "Example Support", default = true }},
  {{ address = "help@example.org", name = "Help Desk" }},
]
[teams.sales]
addresses = [{{ address = "sales@example.com" }}]

[agents.alice]
email = "alice@example.com"
name = "Alice Agent"
teams = ["support"]
api_token = "alice-token-0123456789"
[agents.bob]
email = "bob@example.com"
teams = ["support"]
role = "admin"
api_token = "bob-token-0123456789"
[agents.sam]
email = "sam@example.com"
teams = ["sales"]
api_token = "sam-token-0123456789"

[channels.pipe]
kind = "pipe"
team = "support"
pipeline = "support"
[channels.sales]
kind = "pipe"
team = "sales"
pipeline = "support"
{extra}
"#
    );
    config_from_toml(&text)
}

/// A pipeline, an HTTP listener with the agent API, and an outbox that the
/// test drives (`flush`) or runs in the background (`run_outbox`).
pub struct OutApp {
    /// Kept so the database outlives the app.
    pub _db: TestDb,
    pub config: Config,
    pub pipeline: Pipeline,
    pub outbox: Arc<Outbox>,
    pub base: String,
    stop: CancellationToken,
}

impl OutApp {
    pub async fn start(backend: Backend, smtp_port: u16) -> OutApp {
        Self::start_with(backend, smtp_port, "").await
    }

    pub async fn start_with(backend: Backend, smtp_port: u16, extra: &str) -> OutApp {
        let db = TestDb::new(backend).await;
        let config = outbound_config(&db.url, smtp_port, extra);
        let pipeline = TestApp::pipeline_for(&config).await;
        let outbox = Arc::new(Outbox::new(
            pipeline.store().clone(),
            Arc::new(pipeline.directory().clone()),
            Arc::new(config.clone()),
        ));
        let state = Arc::new(
            HttpState::new(pipeline.clone(), config.clone()).with_outbox(outbox.wake.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(mailroom::http::serve_on(listener, state, stop.clone()));
        OutApp {
            _db: db,
            config,
            pipeline,
            outbox,
            base,
            stop,
        }
    }

    pub fn store(&self) -> &Store {
        self.pipeline.store()
    }

    /// Runs the outbox worker in the background until the app is dropped.
    pub fn run_outbox(&self) {
        tokio::spawn(self.outbox.clone().run(self.stop.child_token()));
    }

    pub async fn flush(&self) -> usize {
        self.outbox.run_until_idle().await
    }

    /// A customer's message into the support pipe; returns the ticket number.
    pub async fn customer_mail(&self, raw: &[u8]) -> i64 {
        let outcome = self.pipeline_apply("pipe", raw).await;
        number_of(self.store(), ticket_of(&outcome)).await
    }

    pub async fn pipeline_apply(&self, channel: &str, raw: &[u8]) -> mailroom::pipeline::Outcome {
        apply_with(&self.pipeline, channel, raw).await
    }

    pub async fn api(
        &self,
        method: &'static str,
        path: &str,
        token: &str,
        headers: &[(&'static str, &str)],
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let token = token.to_string();
        let headers: Vec<(&'static str, String)> =
            headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let auth = format!("Bearer {token}");
            let mut response = match method {
                "DELETE" => {
                    let mut r = agent.delete(&url).header("authorization", &auth);
                    for (k, v) in &headers {
                        r = r.header(*k, v.as_str());
                    }
                    r.call().unwrap()
                }
                "GET" => {
                    let mut r = agent.get(&url).header("authorization", &auth);
                    for (k, v) in &headers {
                        r = r.header(*k, v.as_str());
                    }
                    r.call().unwrap()
                }
                _ => {
                    let mut r = match method {
                        "PUT" => agent.put(&url),
                        "PATCH" => agent.patch(&url),
                        _ => agent.post(&url),
                    }
                    .header("authorization", &auth)
                    .header("content-type", "application/json");
                    for (k, v) in &headers {
                        r = r.header(*k, v.as_str());
                    }
                    r.send(body.unwrap_or(Value::Null).to_string()).unwrap()
                }
            };
            let status = response.status().as_u16();
            let text = response.body_mut().read_to_string().unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::Null))
        })
        .await
        .unwrap()
    }

    pub async fn reply(&self, number: i64, token: &str, body: Value) -> (u16, Value) {
        self.api(
            "POST",
            &format!("/api/v1/tickets/{number}/replies"),
            token,
            &[],
            Some(body),
        )
        .await
    }

    pub async fn delivery(&self, message: i64) -> Value {
        let (status, view) = self
            .api(
                "GET",
                &format!("/api/v1/messages/{message}"),
                "alice-token-0123456789",
                &[],
                None,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        view
    }

    /// Waits until a message's delivery state is `state`.
    pub async fn wait_state(&self, message: i64, state: &str, limit: Duration) -> Value {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let view = self.delivery(message).await;
            if view["delivery_state"] == state {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "message {message} never reached {state}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn ticket_status(&self, number: i64) -> String {
        sqlx::query("SELECT s.name FROM tickets t JOIN statuses s ON s.id = t.status_id WHERE t.number = $1")
            .bind(number)
            .fetch_one(self.store().pool())
            .await
            .unwrap()
            .get(0)
    }

    pub async fn messages_on(&self, number: i64) -> Vec<(String, String)> {
        sqlx::query(
            "SELECT m.direction, m.subject FROM messages m JOIN tickets t ON t.id = m.ticket_id
             WHERE t.number = $1 ORDER BY m.id",
        )
        .bind(number)
        .fetch_all(self.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }
}

impl Drop for OutApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn number_of(store: &Store, ticket_id: i64) -> i64 {
    sqlx::query("SELECT number FROM tickets WHERE id = $1")
        .bind(ticket_id)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0)
}

const CUSTOMER: &[u8] = b"From: Carol Customer <carol@customer.test>\r\n\
To: support@example.com\r\n\
Subject: Printer on fire\r\n\
Message-ID: <first@customer.test>\r\n\
Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\
\r\n\
It is burning.\r\n";

fn header(message: &mail_parser::Message<'_>, name: &str) -> String {
    message
        .header_raw(name)
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

crate::both_backends!(
    reply_arrives_with_addresses_threading_headers_bodies_and_attachments,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;

        let (status, queued) = app
            .reply(
                number,
                "alice-token-0123456789",
                json!({
                    "body": "We are on it.\nPlease stand back.",
                    "cc": ["Dave <dave@customer.test>"],
                    "bcc": ["audit@example.com"],
                    "attachments": [{
                        "filename": "steps.txt",
                        "content_type": "text/plain",
                        "content_base64": "MS4gUnVu",
                    }],
                }),
            )
            .await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(queued["from"], "support@example.com");
        assert_eq!(app.flush().await, 1);

        let received = sink.wait_for(1, Duration::from_secs(10)).await;
        let got = &received[0];
        // Bcc only in the envelope.
        assert_eq!(got.mail_from, "support@example.com");
        let mut rcpt = got.rcpt_to.clone();
        rcpt.sort();
        assert_eq!(
            rcpt,
            vec![
                "audit@example.com",
                "carol@customer.test",
                "dave@customer.test"
            ]
        );
        let text = String::from_utf8_lossy(&got.message).to_ascii_lowercase();
        assert!(!text.contains("\nbcc:") && !text.contains("audit@example.com"));

        let parsed = MessageParser::default().parse(&got.message).unwrap();
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Example Support"));
        assert_eq!(from.address(), Some("support@example.com"));
        let to = parsed.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("carol@customer.test"));
        assert_eq!(to.name(), Some("Carol Customer"));
        assert_eq!(
            parsed.cc().unwrap().first().unwrap().address(),
            Some("dave@customer.test")
        );
        assert_eq!(
            parsed.subject(),
            Some(format!("Re: [#{number}] Printer on fire").as_str())
        );
        let message_id = parsed.message_id().unwrap().to_string();
        assert_eq!(message_id, queued["message_id"].as_str().unwrap());
        assert!(message_id.starts_with("mr.") && message_id.ends_with("@example.com"));
        assert_eq!(parsed.in_reply_to().as_text(), Some("first@customer.test"));
        let references: Vec<String> = match parsed.references() {
            mail_parser::HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
            mail_parser::HeaderValue::Text(t) => vec![t.to_string()],
            _ => vec![],
        };
        assert_eq!(references.len(), 2, "{references:?}");
        assert!(references[0].starts_with("mr.") && references[0].contains(".t."));
        assert_eq!(references[1], "first@customer.test");
        assert!(!header(&parsed, "Thread-Index").is_empty());
        assert_eq!(header(&parsed, "Thread-Topic"), "Printer on fire");
        // Line ends go out as CRLF (see mail::wire).
        let body_text = parsed.body_text(0).unwrap().replace("\r\n", "\n");
        assert!(
            body_text.contains("We are on it.\nPlease stand back."),
            "{body_text}"
        );
        let html = parsed.body_html(0).unwrap();
        assert!(html.contains("We are on it.<br>"), "{html}");
        assert!(
            html.contains("mailroom-ref:"),
            "the HTML part carries the marker"
        );
        let attachment = parsed.attachment(0).unwrap();
        assert_eq!(attachment.attachment_name(), Some("steps.txt"));
        assert_eq!(attachment.contents(), b"1. Run");

        // Recorded: sent with the relay's answer; the sender owns the ticket;
        // the reply rule moved it to waiting.
        let view = app.delivery(queued["message"].as_i64().unwrap()).await;
        assert_eq!(view["delivery_state"], "sent");
        assert!(
            view["delivery_detail"].as_str().unwrap().starts_with("250"),
            "{view}"
        );
        assert_eq!(app.ticket_status(number).await, "waiting on contact");
        let owner: Option<String> = sqlx::query(
            "SELECT a.key FROM tickets t LEFT JOIN agents a ON a.id = t.owner_agent_id WHERE t.number = $1",
        )
        .bind(number)
        .fetch_one(app.store().pool())
        .await
        .unwrap()
        .get(0);
        assert_eq!(owner.as_deref(), Some("alice"));
    }
);

crate::both_backends!(
    customer_answer_to_a_reply_threads_back_even_with_a_new_subject,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        let (status, _) = app
            .reply(
                number,
                "alice-token-0123456789",
                json!({ "body": "Try turning it off." }),
            )
            .await;
        assert_eq!(status, 202);
        app.flush().await;
        let sent = sink.wait_for(1, Duration::from_secs(10)).await.remove(0);
        let parsed = MessageParser::default().parse(&sent.message).unwrap();
        let our_id = parsed.message_id().unwrap().to_string();
        let references = header(&parsed, "References");

        // The customer's client answers what arrived: In-Reply-To our ID,
        // References extended, a subject of its own.
        let answer = format!(
            "From: carol@customer.test\r\nTo: support@example.com\r\nSubject: still smoking\r\n\
             Message-ID: <answer@customer.test>\r\nIn-Reply-To: <{our_id}>\r\n\
             References: {references} <{our_id}>\r\n\r\nIt is still smoking.\r\n"
        );
        let outcome = app.pipeline_apply("pipe", answer.as_bytes()).await;
        assert_eq!(number_of(app.store(), ticket_of(&outcome)).await, number);
        // A customer reply reopens the waiting ticket.
        assert_eq!(app.ticket_status(number).await, "open");

        // A provider that rewrote every Message-ID and dropped the subject
        // tag: the quoted body's marker still finds the ticket.
        let body = parsed.body_text(0).unwrap().to_string();
        let quoted: String = body.lines().map(|l| format!("> {l}\r\n")).collect();
        let rewritten = format!(
            "From: carol@customer.test\r\nTo: support@example.com\r\nSubject: Re: hello\r\n\
             Message-ID: <x1@rewriting.test>\r\nIn-Reply-To: <unknown@rewriting.test>\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\nThanks\r\n{quoted}"
        );
        let outcome = app.pipeline_apply("pipe", rewritten.as_bytes()).await;
        assert_eq!(number_of(app.store(), ticket_of(&outcome)).await, number);

        // A forged reference (right shape, wrong tag) does not get in.
        let forged_id = our_id.replacen(
            &our_id[our_id.len() - 20..our_id.find('@').unwrap()],
            "0000000000000000",
            1,
        );
        let forged = format!(
            "From: mallory@evil.test\r\nTo: support@example.com\r\nSubject: hi\r\n\
             Message-ID: <forged@evil.test>\r\nIn-Reply-To: <{forged_id}>\r\n\r\nlet me in\r\n"
        );
        let outcome = app.pipeline_apply("pipe", forged.as_bytes()).await;
        assert_ne!(number_of(app.store(), ticket_of(&outcome)).await, number);

        // The same customer answer sent to another team's mailbox does not
        // reach into this team's ticket.
        let other_team = answer.replace("answer@customer.test", "answer2@customer.test");
        let outcome = app.pipeline_apply("sales", other_team.as_bytes()).await;
        assert_ne!(number_of(app.store(), ticket_of(&outcome)).await, number);

        let directions: Vec<String> = app
            .messages_on(number)
            .await
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(
            directions,
            vec!["inbound", "outbound", "inbound", "inbound"]
        );
    }
);

crate::both_backends!(
    replies_wait_while_the_relay_is_down_and_go_out_once_it_is_back,
    |backend| async move {
        let port = free_port();
        let app = OutApp::start(backend, port).await;
        app.run_outbox();
        let number = app.customer_mail(CUSTOMER).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let (status, queued) = app
                .reply(
                    number,
                    "alice-token-0123456789",
                    json!({ "body": format!("reply {i}") }),
                )
                .await;
            assert_eq!(status, 202, "{queued}");
            ids.push(queued["message"].as_i64().unwrap());
        }
        // Nothing listens: attempts fail and are retried, nothing is lost.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let view = app.delivery(ids[0]).await;
            if view["attempts"].as_i64().unwrap_or(0) >= 2 {
                assert_eq!(view["delivery_state"], "queued");
                assert!(
                    view["delivery_detail"]
                        .as_str()
                        .unwrap()
                        .contains("attempt"),
                    "{view}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no retry: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sink = SmtpSink::start_on(port, &[]);
        for id in &ids {
            app.wait_state(*id, "sent", Duration::from_secs(15)).await;
        }
        let received = sink.wait_for(3, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(sink.count(), 3, "each reply exactly once");
        let mut bodies: Vec<String> = received
            .iter()
            .map(|c| {
                MessageParser::default()
                    .parse(&c.message)
                    .unwrap()
                    .body_text(0)
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        bodies.sort();
        assert_eq!(bodies, vec!["reply 0", "reply 1", "reply 2"]);
    }
);

crate::both_backends!(
    a_permanent_refusal_fails_the_reply_with_the_server_text_and_reopens_the_ticket,
    |backend| async move {
        // Hard-reject every recipient.
        let sink = SmtpSink::start(&[
            "-f",
            "RCPT",
            "-B",
            "550 5.1.1 Recipient address rejected: mailbox unknown",
        ]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        let (status, queued) = app
            .reply(
                number,
                "alice-token-0123456789",
                json!({ "body": "Done.", "status": "closed" }),
            )
            .await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(app.ticket_status(number).await, "closed");
        app.flush().await;
        let view = app.delivery(queued["message"].as_i64().unwrap()).await;
        assert_eq!(view["delivery_state"], "failed");
        let detail = view["delivery_detail"].as_str().unwrap();
        assert!(
            detail.contains("550") && detail.contains("mailbox unknown"),
            "the server's answer is kept: {detail}"
        );
        assert_eq!(view["attempts"], 1, "a 5xx is not retried");
        assert_eq!(sink.count(), 0);
        // Nobody may think the customer was answered.
        assert_eq!(app.ticket_status(number).await, "open");
        let notes = app.messages_on(number).await;
        assert!(
            notes
                .iter()
                .any(|(d, s)| d == "internal" && s.starts_with("Not delivered")),
            "{notes:?}"
        );
    }
);

crate::both_backends!(
    temporary_failures_are_retried_then_given_up_with_a_note,
    |backend| async move {
        // Soft-reject (4xx) every recipient, for good.
        let sink = SmtpSink::start(&["-r", "RCPT"]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        let (_, queued) = app
            .reply(
                number,
                "alice-token-0123456789",
                json!({ "body": "Hello?" }),
            )
            .await;
        app.run_outbox();
        let view = app
            .wait_state(
                queued["message"].as_i64().unwrap(),
                "failed",
                Duration::from_secs(15),
            )
            .await;
        assert_eq!(view["attempts"], 4, "max_attempts = 4: {view}");
        assert!(view["delivery_detail"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 attempts"));
        assert_eq!(app.ticket_status(number).await, "open");
    }
);

crate::both_backends!(
    the_outbox_is_shared_by_two_instances_and_sends_each_reply_once,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        // A second instance on the same database, with its own name.
        let mut other_config = app.config.clone();
        other_config.instance.name = Some("other".into());
        app.run_outbox();
        let other = Arc::new(Outbox::new(
            app.store().clone(),
            Arc::new(app.pipeline.directory().clone()),
            Arc::new(other_config),
        ));
        let stop = CancellationToken::new();
        tokio::spawn(other.run(stop.clone()));
        let count = 40;
        for i in 0..count {
            let (status, _) = app
                .reply(
                    number,
                    "alice-token-0123456789",
                    json!({ "body": format!("reply {i}") }),
                )
                .await;
            assert_eq!(status, 202);
        }
        let received = sink.wait_for(count, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        assert_eq!(sink.count(), count, "no reply sent twice");
        let mut ids: Vec<String> = received
            .iter()
            .map(|c| {
                MessageParser::default()
                    .parse(&c.message)
                    .unwrap()
                    .message_id()
                    .unwrap()
                    .to_string()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replies_are_refused_before_anything_is_queued() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    let number = app.customer_mail(CUSTOMER).await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "alice-token-0123456789",
            json!({ "body": "x", "to": ["a@b.test\r\nBcc: victim@x.test"] }),
            422,
            "to",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "cc": ["Eve\n <eve@x.test>"] }),
            422,
            "cc",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "from": "someone@else.test" }),
            422,
            "from",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "from": "sales@example.com" }),
            422,
            "from",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "status": "solved" }),
            422,
            "properties",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "status": "no such" }),
            422,
            "status",
        ),
        ("alice-token-0123456789", json!({ "body": "" }), 422, "body"),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "in_reply_to": 99_999 }),
            422,
            "in_reply_to",
        ),
        (
            "alice-token-0123456789",
            json!({ "body": "x", "attachments": [{ "filename": "a\r\nb", "content_base64": "eA==" }] }),
            422,
            "attachments[0]",
        ),
        // Another team's ticket looks like a missing one.
        ("sam-token-0123456789", json!({ "body": "x" }), 404, ""),
        ("wrong-token", json!({ "body": "x" }), 401, ""),
    ];
    for (token, body, want, field) in cases {
        let (status, answer) = app.reply(number, token, body.clone()).await;
        assert_eq!(status, want, "{body} → {answer}");
        if !field.is_empty() {
            assert_eq!(answer["field"], field, "{body} → {answer}");
        }
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let (status, _) = app
        .reply(999, "alice-token-0123456789", json!({ "body": "x" }))
        .await;
    assert_eq!(status, 404);
    let counts = app.store().outbox_counts().await.unwrap();
    assert_eq!(counts.queued + counts.sent + counts.failed, 0);
    assert_eq!(app.ticket_status(number).await, "open");
    assert_eq!(app.flush().await, 0);
    assert_eq!(sink.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_set_with_the_reply_when_its_properties_are_supplied() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    let number = app.customer_mail(CUSTOMER).await;
    let (status, queued) = app
        .reply(
            number,
            "bob-token-0123456789",
            json!({ "body": "Fixed.", "status": "solved", "properties": { "resolution": "replaced fuser" }, "from": "help@example.org" }),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    // The explicit status wins over the reply rule (waiting on contact).
    assert_eq!(queued["status"], "solved");
    assert_eq!(queued["owner"], "bob");
    assert_eq!(queued["from"], "help@example.org");
    assert_eq!(app.ticket_status(number).await, "solved");
    app.flush().await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(got.mail_from, "help@example.org");
    let parsed = MessageParser::default().parse(&got.message).unwrap();
    assert!(parsed.message_id().unwrap().ends_with("@example.org"));
    assert_eq!(
        parsed.from().unwrap().first().unwrap().name(),
        Some("Help Desk")
    );
    // An owner is kept: a later reply by someone else does not take the ticket.
    let (_, queued) = app
        .reply(number, "alice-token-0123456789", json!({ "body": "Also…" }))
        .await;
    assert_eq!(queued["owner"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_with_the_same_idempotency_key_sends_once() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    let number = app.customer_mail(CUSTOMER).await;
    let path = format!("/api/v1/tickets/{number}/replies");
    let body = json!({ "body": "Once only" });
    let key = [("idempotency-key", "req-1")];
    let (first, a) = app
        .api(
            "POST",
            &path,
            "alice-token-0123456789",
            &key,
            Some(body.clone()),
        )
        .await;
    let (second, b) = app
        .api("POST", &path, "alice-token-0123456789", &key, Some(body))
        .await;
    assert_eq!((first, second), (202, 200));
    assert_eq!(a["message"], b["message"]);
    assert_eq!(b["replayed"], true);
    app.flush().await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_team_admin_changes_the_default_from_address_and_it_survives_a_restart() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    let path = "/api/v1/teams/support/default-address";
    let body = json!({ "address": "help@example.org" });
    let (status, _) = app
        .api(
            "PUT",
            path,
            "alice-token-0123456789",
            &[],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .api(
            "PUT",
            path,
            "bob-token-0123456789",
            &[],
            Some(json!({ "address": "sales@example.com" })),
        )
        .await;
    assert_eq!(status, 422);
    let (status, answer) = app
        .api("PUT", path, "bob-token-0123456789", &[], Some(body))
        .await;
    assert_eq!(status, 200, "{answer}");
    // A restart syncs the config again; the admin's choice stays.
    TestApp::pipeline_for(&app.config).await;
    let number = app.customer_mail(CUSTOMER).await;
    let (_, queued) = app
        .reply(number, "alice-token-0123456789", json!({ "body": "hi" }))
        .await;
    assert_eq!(queued["from"], "help@example.org");
}

crate::both_backends!(
    a_bounce_for_a_sent_reply_marks_it_failed_and_lands_on_the_ticket,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        let (_, queued) = app
            .reply(number, "alice-token-0123456789", json!({ "body": "hi" }))
            .await;
        app.flush().await;
        let message = queued["message"].as_i64().unwrap();
        assert_eq!(app.delivery(message).await["delivery_state"], "sent");
        let our_id = queued["message_id"].as_str().unwrap();
        let dsn = format!(
        "From: MAILER-DAEMON@mx.customer.test\r\nTo: support@example.com\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.customer.test>\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.test\r\n\r\n\
         Final-Recipient: rfc822; carol@customer.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 mailbox unknown\r\n\
         --b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <{our_id}>\r\nSubject: Re: x\r\n\
         --b--\r\n"
    );
        let outcome = app.pipeline_apply("pipe", dsn.as_bytes()).await;
        assert_eq!(number_of(app.store(), ticket_of(&outcome)).await, number);
        let view = app.delivery(message).await;
        assert_eq!(view["delivery_state"], "failed");
        assert_eq!(
            view["delivery_detail"], "bounced: carol@customer.test: 550 5.1.1 mailbox unknown",
            "{view}"
        );

        // A bounce without a report part (qmail's form, the original's
        // headers quoted in the text) does the same.
        let (_, queued) = app
            .reply(number, "alice-token-0123456789", json!({ "body": "again" }))
            .await;
        app.flush().await;
        let message = queued["message"].as_i64().unwrap();
        assert_eq!(app.delivery(message).await["delivery_state"], "sent");
        let qmail = format!(
            "From: MAILER-DAEMON@mx.customer.test\r\nTo: support@example.com\r\nSubject: failure notice\r\n\
             Message-ID: <qmail1@mx.customer.test>\r\n\r\n\
             Hi. This is the qmail-send program at mx.customer.test.\r\n\
             I'm afraid I wasn't able to deliver your message to the following addresses.\r\n\r\n\
             <carol@customer.test>:\r\nRemote host said: 552 5.2.2 mailbox full\r\n\r\n\
             --- Below this line is a copy of the message.\r\n\r\nMessage-ID: <{}>\r\nSubject: Re: x\r\n\r\nagain\r\n",
            queued["message_id"].as_str().unwrap()
        );
        app.pipeline_apply("pipe", qmail.as_bytes()).await;
        let view = app.delivery(message).await;
        assert_eq!(view["delivery_state"], "failed");
        assert_eq!(
            view["delivery_detail"],
            "bounced: carol@customer.test: Remote host said: 552 5.2.2 mailbox full",
            "{view}"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_an_address_with_sent_copy_is_appended_to_the_imap_sent_folder() {
    let dovecot = crate::dovecot::Dovecot::start();
    let sink = SmtpSink::start(&[]);
    let extra = format!(
        r#"
[channels.mailbox]
kind = "imap"
team = "support"
pipeline = "support"
host = "localhost"
port = {port}
tls = "implicit"
ca_file = "{ca}"
username = "{user}"
password = "{password}"
"#,
        port = dovecot.imaps_port,
        ca = crate::dovecot::certs().join("ca.pem").display(),
        user = crate::dovecot::USER,
        password = crate::dovecot::PASSWORD,
    );
    let db = TestDb::new(Backend::Sqlite).await;
    let mut config = outbound_config(&db.url, sink.port, &extra);
    config.teams.get_mut("support").unwrap().addresses[0].sent_copy =
        Some(mailroom::config::SentCopy {
            channel: "mailbox".into(),
            folder: "Sent".into(),
        });
    let pipeline = TestApp::pipeline_for(&config).await;
    let outbox = Arc::new(Outbox::new(
        pipeline.store().clone(),
        Arc::new(pipeline.directory().clone()),
        Arc::new(config.clone()),
    ));
    let outcome = apply_with(&pipeline, "pipe", CUSTOMER).await;
    let number = number_of(pipeline.store(), ticket_of(&outcome)).await;
    mailroom::outbound::queue_reply(
        pipeline.store(),
        pipeline.directory(),
        &config,
        &mailroom::outbound::Actor::Ops,
        number,
        mailroom::outbound::ReplyRequest {
            body_text: Some("Copied to Sent".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    outbox.run_until_idle().await;
    sink.wait_for(1, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut session = dovecot.client().await;
    while crate::dovecot::count(&mut session, "Sent").await < 1 {
        if std::time::Instant::now() > deadline {
            let state: Option<String> = sqlx::query("SELECT sent_copy FROM outbox")
                .fetch_one(pipeline.store().pool())
                .await
                .unwrap()
                .get(0);
            panic!("no copy in Sent: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state: String = sqlx::query("SELECT sent_copy FROM outbox")
        .fetch_one(pipeline.store().pool())
        .await
        .unwrap()
        .get(0);
    assert!(state.contains("done"), "{state}");
    drop(db);
}

crate::both_backends!(
    a_relay_that_hangs_up_mid_transaction_gets_the_reply_later_once,
    |backend| async move {
        // The relay drops the connection right after DATA: nothing was taken.
        let port = free_port();
        let mut sink = SmtpSink::start_on(port, &["-q", "DATA"]);
        let app = OutApp::start(backend, port).await;
        let number = app.customer_mail(CUSTOMER).await;
        let (_, queued) = app
            .reply(number, "alice-token-0123456789", json!({ "body": "hello" }))
            .await;
        let message = queued["message"].as_i64().unwrap();
        app.flush().await;
        let view = app.delivery(message).await;
        assert_eq!(view["delivery_state"], "queued", "{view}");
        assert_eq!(sink.count(), 0);
        // The relay behaves again: the retry delivers it, once.
        sink.stop();
        let sink = SmtpSink::start_on(port, &[]);
        app.run_outbox();
        app.wait_state(message, "sent", Duration::from_secs(15))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink.count(), 1);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_reply_queued_elsewhere_wakes_the_outbox_at_once() {
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Postgres, sink.port).await;
    let number = app.customer_mail(CUSTOMER).await;
    // An outbox that would poll only once a minute.
    let mut slow = app.config.clone();
    slow.outbox.poll_interval_ms = 60_000;
    let outbox = Arc::new(Outbox::new(
        app.store().clone(),
        Arc::new(app.pipeline.directory().clone()),
        Arc::new(slow),
    ));
    let stop = CancellationToken::new();
    tokio::spawn(outbox.run(stop.clone()));
    // Wait until its LISTEN connection is up (a NOTIFY before it is lost).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(app.store().pool())
        .await
        .unwrap();
        if listening > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never LISTENed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Queued by another process (no in-process wake), as `mailroom reply` does.
    mailroom::outbound::queue_reply(
        app.store(),
        app.pipeline.directory(),
        &app.config,
        &mailroom::outbound::Actor::Ops,
        number,
        mailroom::outbound::ReplyRequest {
            body_text: Some("Right away".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sink.wait_for(1, Duration::from_secs(10)).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_web_form_ticket_goes_to_the_submitter_without_a_synthetic_parent() {
    let sink = SmtpSink::start(&[]);
    let form = r#"
[channels.web]
kind = "form"
team = "support"
pipeline = "support"
allowed_origins = ["https://www.example.com"]

[http]
bind = "127.0.0.1:0"
"#;
    let app = OutApp::start_with(Backend::Sqlite, sink.port, form).await;
    let (status, created) = app
        .api(
            "POST",
            "/forms/web",
            "unused",
            &[("origin", "https://www.example.com")],
            Some(json!({ "name": "Fiona Form", "email": "fiona@customer.test", "subject": "Quote", "body": "How much?" })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let number = created["ticket_number"].as_i64().unwrap();
    let (status, _) = app
        .reply(
            number,
            "alice-token-0123456789",
            json!({ "body": "42 EUR" }),
        )
        .await;
    assert_eq!(status, 202);
    app.flush().await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(got.rcpt_to, vec!["fiona@customer.test"]);
    let parsed = MessageParser::default().parse(&got.message).unwrap();
    assert_eq!(
        parsed.to().unwrap().first().unwrap().name(),
        Some("Fiona Form")
    );
    // The form's message has a made-up Message-ID: nothing to answer to.
    assert!(
        parsed.in_reply_to().is_empty(),
        "{:?}",
        parsed.in_reply_to()
    );
    let references = header(&parsed, "References");
    assert!(
        references.contains(".t.") && !references.contains("mailroom.invalid"),
        "{references}"
    );
    assert_eq!(
        parsed.subject(),
        Some(format!("Re: [#{number}] Quote").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_threading_explicit_recipients_and_an_html_only_body() {
    use base64::Engine as _;
    let sink = SmtpSink::start(&[]);
    let app = OutApp::start(Backend::Sqlite, sink.port).await;
    // An Outlook customer: its conversation header must carry on.
    let conversation = [7u8; 22];
    let index = base64::engine::general_purpose::STANDARD.encode(conversation);
    let outlook = format!(
        "From: Olga <olga@customer.test>\r\nTo: support@example.com\r\nSubject: VPN\r\n\
         Message-ID: <o1@customer.test>\r\nThread-Index: {index}\r\nThread-Topic: VPN\r\n\r\nVPN down\r\n"
    );
    let number = app.customer_mail(outlook.as_bytes()).await;
    let (status, _) = app
        .reply(
            number,
            "alice-token-0123456789",
            json!({
                "body_html": "<p>Try <b>reconnecting</b>.</p>",
                "to": ["Olga Manager <olga.boss@customer.test>"],
            }),
        )
        .await;
    assert_eq!(status, 202);
    app.flush().await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(
        got.rcpt_to,
        vec!["olga.boss@customer.test"],
        "the chosen To only"
    );
    let parsed = MessageParser::default().parse(&got.message).unwrap();
    let ours = base64::engine::general_purpose::STANDARD
        .decode(header(&parsed, "Thread-Index"))
        .unwrap();
    assert_eq!(&ours[..22], &conversation, "same Outlook conversation");
    assert_eq!(ours.len(), 27, "one child block");
    assert!(parsed.body_html(0).unwrap().contains("<b>reconnecting</b>"));
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains("Try") && text.contains("reconnecting") && !text.contains("<b>"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_the_recipients_of_replies_and_of_inbound_mail() {
    // A relay nobody listens on: the reply is only queued.
    let app = OutApp::start(Backend::Sqlite, free_port()).await;
    let number = app
        .customer_mail(&mail(
            "Carol <carol@customer.test>",
            "api-rt@customer.test",
            "Toner",
            "Cc: Frank <frank@customer.test>\r\n",
            "Out of toner",
        ))
        .await;
    let (status, queued) = app
        .reply(
            number,
            "alice-token-0123456789",
            json!({ "body": "On its way.", "cc": ["Dave <dave@customer.test>"] }),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let reply = app.delivery(queued["message"].as_i64().unwrap()).await;
    assert_eq!(reply["to"], json!(["carol@customer.test"]));
    let inbound_id: i64 =
        sqlx::query_scalar("SELECT id FROM messages WHERE message_id = 'api-rt@customer.test'")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    let inbound = app.delivery(inbound_id).await;
    assert_eq!(inbound["to"], json!(["support@example.com"]));
    assert_eq!(inbound["direction"], "inbound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merged_ticket_lives_on_in_the_ticket_it_was_merged_into() {
    let app = OutApp::start(Backend::Sqlite, free_port()).await;
    let old = app
        .customer_mail(&mail(
            "carol@customer.test",
            "m1@customer.test",
            "Toner",
            "",
            "first",
        ))
        .await;
    let survivor = app
        .customer_mail(&mail(
            "carol@customer.test",
            "m2@customer.test",
            "Toner again",
            "",
            "second",
        ))
        .await;
    sqlx::query("UPDATE tickets SET merged_into = (SELECT id FROM tickets WHERE number = $1) WHERE number = $2")
        .bind(survivor)
        .bind(old)
        .execute(app.store().pool())
        .await
        .unwrap();
    // A reply to the old number goes onto the survivor.
    let (status, queued) = app
        .reply(
            old,
            "alice-token-0123456789",
            json!({ "body": "Merged: one thread now." }),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["ticket"], survivor);
    // So does the customer's answer to the old ticket's message.
    let answer = mail(
        "carol@customer.test",
        "m3@customer.test",
        "Re: Toner",
        "In-Reply-To: <m1@customer.test>\r\n",
        "thanks",
    );
    let outcome = app.pipeline_apply("pipe", &answer).await;
    assert_eq!(number_of(app.store(), ticket_of(&outcome)).await, survivor);
    // A deleted ticket takes no reply.
    sqlx::query("UPDATE tickets SET deleted_at = 1 WHERE number = $1")
        .bind(survivor)
        .execute(app.store().pool())
        .await
        .unwrap();
    let (status, refused) = app
        .reply(
            old,
            "alice-token-0123456789",
            json!({ "body": "Anyone there?" }),
        )
        .await;
    assert_eq!(status, 404, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("was deleted"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_a_late_parents_link_and_merges_in_one_call() {
    let app = OutApp::start(Backend::Sqlite, 0).await;
    let irt = "In-Reply-To: <p@f.test>\r\n";
    let a = app
        .customer_mail(&mail("fay@customer.test", "r1@f.test", "Order", irt, "one"))
        .await;
    let b = app
        .customer_mail(&mail("fay@customer.test", "r2@f.test", "Order", irt, "two"))
        .await;
    app.customer_mail(&mail(
        "fay@customer.test",
        "p@f.test",
        "Order",
        "",
        "the question",
    ))
    .await;
    let token = "alice-token-0123456789";
    let (status, view) = app
        .api("GET", &format!("/api/v1/tickets/{a}"), token, &[], None)
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["related"],
        json!([{ "ticket": b, "reason": "late_parent" }])
    );
    let (status, _) = app
        .api(
            "GET",
            &format!("/api/v1/tickets/{a}"),
            "sam-token-0123456789",
            &[],
            None,
        )
        .await;
    assert_eq!(status, 404, "another team's ticket");

    let merge = format!("/api/v1/tickets/{b}/merge");
    let (status, merged) = app
        .api("POST", &merge, token, &[], Some(json!({ "into": a })))
        .await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(merged, json!({ "ticket": b, "into": a }));
    let (_, view) = app
        .api("GET", &format!("/api/v1/tickets/{b}"), token, &[], None)
        .await;
    assert_eq!(view["merged_into"], a);
    let (status, again) = app
        .api("POST", &merge, token, &[], Some(json!({ "into": a })))
        .await;
    assert_eq!(status, 422, "{again}");
    let (status, _) = app
        .api(
            "POST",
            &format!("/api/v1/tickets/{a}/merge"),
            token,
            &[],
            Some(json!({ "into": a })),
        )
        .await;
    assert_eq!(status, 422, "not into itself");
}

crate::both_backends!(
    replies_left_claimed_by_a_crashed_process_are_reported,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start(backend, sink.port).await;
        let number = app.customer_mail(CUSTOMER).await;
        app.reply(number, "alice-token-0123456789", json!({ "body": "hi" }))
            .await;
        // As a process of this instance that died mid-send leaves it.
        let name = app.config.instance.name();
        let dead = format!("{name}/4000000/dead00");
        sqlx::query("UPDATE outbox SET claimed_by = $1, claimed_until = $2")
            .bind(&dead)
            .bind(mailroom::store::now_ms() + 120_000)
            .execute(app.store().pool())
            .await
            .unwrap();
        let me = app.config.instance.holder_id();
        let left = app.store().left_claims(&name, &me).await.unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(
            (left[0].holder.as_str(), left[0].replies),
            (dead.as_str(), 1)
        );
        // Another instance's claims are not this one's to report.
        assert!(app
            .store()
            .left_claims("elsewhere", &me)
            .await
            .unwrap()
            .is_empty());
        let counts = app.store().outbox_counts().await.unwrap();
        assert_eq!((counts.queued, counts.claimed), (1, 1));
    }
);

/// GET with a bearer token: status, content type and the body's bytes.
async fn get_bytes(url: String, token: &'static str) -> (u16, String, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_vec()
            .unwrap();
        (response.status().as_u16(), content_type, body)
    })
    .await
    .unwrap()
}

crate::both_backends!(
    a_long_text_is_cut_on_the_message_and_the_original_comes_back_whole_to_its_team,
    |backend| async move {
        let app = OutApp::start(backend, free_port()).await;
        // 1.5 MiB of text: the stored text stops at 1 MiB.
        let filler: String = (0..20_000).map(|i| format!("{i:075}\n")).collect();
        let raw = mail(
            "carol@customer.test",
            "logs@customer.test",
            "Logs",
            "",
            &filler,
        );
        let number = app.customer_mail(&raw).await;
        let (id, text): (i64, String) =
            sqlx::query_as("SELECT id, body_text FROM messages WHERE message_id = $1")
                .bind("logs@customer.test")
                .fetch_one(app.store().pool())
                .await
                .unwrap();
        assert!(text.len() <= 1024 * 1024 + 100, "{} bytes kept", text.len());
        assert!(text.ends_with("KiB more of this text is in the original message.]"));
        assert!(filler.starts_with(text.split("\n\n[").next().unwrap()));

        let url = format!("{}/api/v1/messages/{id}/original", app.base);
        let (status, content_type, bytes) = get_bytes(url.clone(), "alice-token-0123456789").await;
        assert_eq!((status, content_type.as_str()), (200, "message/rfc822"));
        assert!(bytes == raw, "the original differs ({} bytes)", bytes.len());
        // Another team's agent is told it does not exist; no token, refused.
        assert_eq!(get_bytes(url.clone(), "sam-token-0123456789").await.0, 404);
        assert_eq!(get_bytes(url.clone(), "").await.0, 401);
        let missing = format!("{}/api/v1/messages/{}/original", app.base, id + 1000);
        assert_eq!(get_bytes(missing, "alice-token-0123456789").await.0, 404);

        // Moved to another team (as `POST /tickets/{n}/move` leaves it: the
        // ticket's team changes, its messages keep theirs), the ticket takes
        // its originals along.
        sqlx::query("UPDATE tickets SET team_id = (SELECT id FROM teams WHERE key = 'sales') WHERE number = $1")
            .bind(number)
            .execute(app.store().pool())
            .await
            .unwrap();
        assert_eq!(get_bytes(url.clone(), "sam-token-0123456789").await.0, 200);
        assert_eq!(get_bytes(url, "alice-token-0123456789").await.0, 404);
    }
);
