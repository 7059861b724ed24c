//! Agents working by email, over a real SMTP server (Postfix's smtp-sink):
//! notifications, answers built from the captured notification relayed to
//! the customer, the spoofing cases, commands, and automatic mail that
//! must not start a loop; on SQLite and PostgreSQL.

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;

use mail_parser::MessageParser;
use sqlx::Row;

use crate::harness::*;
use crate::outbound::{number_of, OutApp};
use crate::smtp::{Captured, SmtpSink};
use mailroom::mail::token::{Purpose, Token};
use mailroom::net::dmarc::Dmarc;
use mailroom::store::directory::Directory;

/// Notifications for the support team, from its main address.
const NOTIFY: &str = r#"
[teams.support.notify]
address = "support@example.com"
"#;

const CUSTOMER: &[u8] = b"From: Carol Customer <carol@customer.test>\r\n\
To: support@example.com\r\n\
Subject: Printer on fire\r\n\
Message-ID: <first@customer.test>\r\n\
Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\
\r\n\
It is burning.\r\n\
Please help.\r\n";

impl OutApp {
    /// Agents' mail and notifications, as the daemon's worker does them,
    /// then the outbox; with `dir` standing for the running config.
    async fn work_with(&self, dir: &Directory) {
        mailroom::desk::agent_mail::run_pass(self.store(), dir, &self.config, &dns().dmarc)
            .await
            .unwrap();
        mailroom::outbound::notify::run_pass(self.store(), dir, &self.config)
            .await
            .unwrap();
        self.flush().await;
    }

    async fn work(&self) {
        let dir = self.pipeline.directory().clone();
        self.work_with(&dir).await;
    }

    fn secret(&self) -> Vec<u8> {
        self.pipeline.directory().secret.0.clone()
    }

    fn agent_id(&self, key: &str) -> i64 {
        self.pipeline.directory().agents[key].id
    }

    async fn ticket_id(&self, number: i64) -> i64 {
        sqlx::query("SELECT id FROM tickets WHERE number = $1")
            .bind(number)
            .fetch_one(self.store().pool())
            .await
            .unwrap()
            .get(0)
    }

    /// Flags of the latest message on ticket `number`.
    async fn last_flags(&self, number: i64) -> String {
        sqlx::query(
            "SELECT m.flags FROM messages m JOIN tickets t ON t.id = m.ticket_id
             WHERE t.number = $1 ORDER BY m.id DESC LIMIT 1",
        )
        .bind(number)
        .fetch_one(self.store().pool())
        .await
        .unwrap()
        .get(0)
    }

    async fn comments_on(&self, number: i64) -> Vec<String> {
        sqlx::query(
            "SELECT c.body FROM comments c JOIN tickets t ON t.id = c.ticket_id
             WHERE t.number = $1 ORDER BY c.id",
        )
        .bind(number)
        .fetch_all(self.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    async fn owner_of(&self, number: i64) -> Option<String> {
        sqlx::query(
            "SELECT a.key FROM tickets t LEFT JOIN agents a ON a.id = t.owner_agent_id WHERE t.number = $1",
        )
        .bind(number)
        .fetch_one(self.store().pool())
        .await
        .unwrap()
        .get(0)
    }
}

/// The test's DNS: strict.test publishes `p=reject` and a DKIM key made
/// at test time; nothing else exists (example.com publishes no DMARC).
struct Dns {
    dmarc: Dmarc,
    key: Vec<u8>,
}

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let key = Ed25519Key::generate_pkcs8().unwrap();
        let public = Ed25519Key::from_pkcs8_der(&key).unwrap().public_key();
        let record = format!("v=DKIM1; k=ed25519; p={}", BASE64.encode(public));
        let dmarc = Dmarc::offline(&[
            ("_dmarc.strict.test", "v=DMARC1; p=reject"),
            ("s1._domainkey.strict.test", &record),
        ]);
        Dns { dmarc, key }
    })
}

/// `raw` with a DKIM signature of `domain` by the test's key.
fn dkim_signed(raw: &[u8], domain: &str) -> Vec<u8> {
    let key = Ed25519Key::from_pkcs8_der(&dns().key).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector("s1")
        .headers(["From", "To", "Subject", "Message-ID", "In-Reply-To"])
        .sign(raw)
        .unwrap();
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(raw);
    signed
}

fn to(captured: &[Captured], address: &str) -> Vec<Captured> {
    captured
        .iter()
        .filter(|c| c.rcpt_to.iter().any(|r| r == address))
        .cloned()
        .collect()
}

fn header(raw: &[u8], name: &str) -> String {
    let parsed = MessageParser::default().parse(raw).unwrap();
    parsed
        .header_raw(name)
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn body(raw: &[u8]) -> String {
    let parsed = MessageParser::default().parse(raw).unwrap();
    parsed
        .body_text(0)
        .unwrap_or_default()
        .replace("\r\n", "\n")
}

fn message_id(raw: &[u8]) -> String {
    let parsed = MessageParser::default().parse(raw).unwrap();
    parsed.message_id().unwrap().to_string()
}

/// The Reply-To address of a notification.
fn reply_to(raw: &[u8]) -> String {
    let parsed = MessageParser::default().parse(raw).unwrap();
    let address = parsed.reply_to().unwrap().first().unwrap().address();
    address.unwrap().to_string()
}

/// An answer as a mail client writes it: to the notification's Reply-To,
/// threaded to it, the notification quoted below a Gmail attribution, a
/// signature between.
fn answer(from: &str, notification: &[u8], text: &str) -> Vec<u8> {
    answer_to(
        from,
        &reply_to(notification),
        &message_id(notification),
        notification,
        text,
    )
}

fn answer_to(from: &str, to: &str, parent: &str, notification: &[u8], text: &str) -> Vec<u8> {
    let quoted: String = body(notification)
        .lines()
        .map(|l| format!("> {l}\r\n"))
        .collect();
    let nonce: u64 = rand::random();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: Re: notification\r\nMessage-ID: <answer.{nonce}@mail.example.com>\r\n\
         In-Reply-To: <{parent}>\r\nReferences: <{parent}>\r\nDate: Thu, 26 Nov 2026 11:00:00 +0000\r\n\r\n\
         {text}\r\n\r\n-- \r\nAlice Agent\r\nExample Support\r\n\r\n\
         On Thu, 26 Nov 2026 at 10:01, Support notifications <support@example.com> wrote:\r\n{quoted}"
    )
    .into_bytes()
}

/// A customer's mail, a notification of it to alice (and bob), and the
/// captured notification to alice.
async fn notified(backend: Backend, sink: &SmtpSink, extra: &str) -> (OutApp, i64, Captured) {
    let app = OutApp::start_with(backend, sink.port, &format!("{NOTIFY}{extra}")).await;
    let number = app.customer_mail(CUSTOMER).await;
    app.work().await;
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    let alice = to(&got, "alice@example.com");
    assert_eq!(alice.len(), 1, "one notification to alice: {got:?}");
    (app, number, alice[0].clone())
}

crate::both_backends!(
    an_agent_answers_a_notification_and_the_customer_gets_it_from_the_team_threaded,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let (app, number, notice) = notified(backend, &sink, "").await;

        // The notification: the team's address, the agent's token, marked
        // automatic, quoting the customer.
        let raw = &notice.message;
        assert_eq!(notice.mail_from, "support@example.com");
        assert_eq!(header(raw, "Auto-Submitted"), "auto-generated");
        assert_eq!(header(raw, "X-Auto-Response-Suppress"), "All");
        assert_eq!(header(raw, "Precedence"), "bulk");
        assert!(!header(raw, "X-Mailroom-Loop").is_empty());
        let reply_address = reply_to(raw);
        assert!(
            reply_address.starts_with("support+") && reply_address.ends_with("@example.com"),
            "{reply_address}"
        );
        let subject = MessageParser::default()
            .parse(raw)
            .unwrap()
            .subject()
            .unwrap()
            .to_string();
        assert_eq!(subject, format!("[#{number}] New ticket: Printer on fire"));
        let text = body(raw);
        assert!(text.starts_with(mailroom::mail::quote::SEPARATOR), "{text}");
        assert!(text.contains("> It is burning.\n> Please help."), "{text}");

        // The agent answers from a mail client.
        let mail = answer(
            "Alice Agent <alice@example.com>",
            raw,
            "Hi Carol,\r\n\r\nstep away from the printer; a technician is on the way.",
        );
        app.pipeline_apply("pipe", &mail).await;
        app.work().await;
        let got = sink.wait_for(3, Duration::from_secs(10)).await;
        let carol = to(&got, "carol@customer.test");
        assert_eq!(carol.len(), 1, "{got:?}");
        let reply = &carol[0].message;
        assert_eq!(carol[0].mail_from, "support@example.com");
        assert_eq!(header(reply, "In-Reply-To"), "<first@customer.test>");
        let sent = body(reply);
        assert!(
            sent.contains("Hi Carol,\n\nstep away from the printer; a technician is on the way."),
            "{sent}"
        );
        for leaked in [
            "Please type your reply",
            "Alice Agent",
            "wrote:",
            "It is burning",
            "support+",
        ] {
            assert!(!sent.contains(leaked), "{leaked:?} leaked: {sent}");
        }
        assert!(!String::from_utf8_lossy(reply).contains("support+"));
        // Shown as alice's reply; her mail is on the ticket as hers; the
        // reply rules applied.
        assert_eq!(app.owner_of(number).await.as_deref(), Some("alice"));
        assert_eq!(app.ticket_status(number).await, "waiting on contact");
        let authors: Vec<(String, Option<String>, String)> = sqlx::query(
            "SELECT m.direction, a.key, m.flags FROM messages m JOIN tickets t ON t.id = m.ticket_id
             LEFT JOIN agents a ON a.id = m.author_agent_id WHERE t.number = $1 ORDER BY m.id",
        )
        .bind(number)
        .fetch_all(app.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
        assert_eq!(authors.len(), 3, "{authors:?}");
        assert_eq!(authors[1].1.as_deref(), Some("alice"));
        assert_eq!(authors[1].2, "agent_reply");
        assert_eq!(
            (authors[2].0.as_str(), authors[2].1.as_deref()),
            ("outbound", Some("alice"))
        );

        // The customer answers the reply: on the ticket, and alice (the
        // owner now) hears of it, nobody else.
        let answer = format!(
            "From: carol@customer.test\r\nTo: support@example.com\r\nSubject: Re: Printer on fire\r\n\
             Message-ID: <second@customer.test>\r\nIn-Reply-To: <{}>\r\n\r\nThanks, it is out.\r\n\r\n\
             On Thu, 26 Nov 2026 at 11:00, Support <support@example.com> wrote:\r\n\
             > Hi Carol,\r\n> step away from the printer\r\n",
            message_id(reply)
        );
        let outcome = app.pipeline_apply("pipe", answer.as_bytes()).await;
        assert_eq!(number_of(app.store(), ticket_of(&outcome)).await, number);
        app.work().await;
        let got = sink.wait_for(4, Duration::from_secs(10)).await;
        let last = got.last().unwrap();
        assert_eq!(last.rcpt_to, vec!["alice@example.com"]);
        let notice = body(&last.message);
        assert!(notice.contains("> Thanks, it is out."), "{notice}");
        assert!(
            !notice.contains("step away"),
            "the quote is not quoted again: {notice}"
        );
        // The message stays whole; its new part is beside it.
        let (status, view) = app
            .api(
                "GET",
                &format!("/api/v1/tickets/{number}"),
                "alice-token-0123456789",
                &[],
                None,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        let answer = view["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["message_id"] == "second@customer.test")
            .unwrap();
        assert_eq!(answer["new_text"], "Thanks, it is out.");
        assert!(answer["body_text"]
            .as_str()
            .unwrap()
            .contains("> step away"));
        assert_eq!(
            to(&got, "bob@example.com").len(),
            1,
            "bob only had the first"
        );

        // Nothing more: a pass with nothing new sends nothing.
        app.work().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sink.count(), 4);
    }
);

/// Feeds `mail`, runs the worker, and says nothing reached the customer
/// and the mail was flagged unverified with a reason that contains `why`.
async fn refused(
    app: &OutApp,
    sink: &SmtpSink,
    number: i64,
    mail: &[u8],
    dir: Option<&Directory>,
    why: &str,
) {
    let before = sink.count();
    app.pipeline_apply("pipe", mail).await;
    match dir {
        Some(dir) => app.work_with(dir).await,
        None => app.work().await,
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = sink.messages();
    assert_eq!(
        to(&got, "carol@customer.test").len(),
        0,
        "nothing to the customer"
    );
    assert_eq!(got.len(), before, "no mail at all: {got:?}");
    assert_eq!(app.last_flags(number).await, "unverified");
    let outcome: String =
        sqlx::query("SELECT outcome FROM agent_mail ORDER BY message_id DESC LIMIT 1")
            .fetch_one(app.store().pool())
            .await
            .unwrap()
            .get(0);
    assert!(outcome.contains(why), "{outcome:?} should say {why:?}");
}

crate::both_backends!(
    spoofed_and_stale_answers_are_kept_unverified_and_never_reach_the_customer,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let (app, number, notice) = notified(backend, &sink, "").await;
        let raw = &notice.message;

        // Alice's From without a token: threads by the customer's ID.
        let forged = b"From: Alice Agent <alice@example.com>\r\nTo: support@example.com\r\n\
Subject: Re: Printer on fire\r\nMessage-ID: <forged@evil.test>\r\nIn-Reply-To: <first@customer.test>\r\n\r\n\
Please send your card number.\r\n";
        refused(&app, &sink, number, forged, None, "no reply token").await;

        // Alice's token with bob's From.
        let mail = answer("bob@example.com", raw, "Send me your password.");
        refused(&app, &sink, number, &mail, None, "not the sender's").await;

        // Alice's token from a customer's address.
        let mail = answer("mallory@evil.test", raw, "Send me your password.");
        refused(&app, &sink, number, &mail, None, "is not an agent").await;

        // A token for ticket A on ticket B.
        let other = CUSTOMER
            .to_vec()
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .replace("first@customer.test", "other@customer.test")
            .replace("carol@", "dave@");
        let number_b = app.customer_mail(other.as_bytes()).await;
        assert_ne!(number_b, number);
        app.work().await;
        sink.wait_for(4, Duration::from_secs(10)).await;
        let mail = answer_to(
            "alice@example.com",
            &reply_to(raw),
            "other@customer.test",
            raw,
            "Wrong ticket.",
        );
        refused(&app, &sink, number_b, &mail, None, "another ticket").await;

        // An expired token (made with the server secret, 40 days ago).
        let old = Token::new(
            app.ticket_id(number).await,
            app.agent_id("alice"),
            Purpose::Reply,
            mailroom::store::now_ms() - 40 * 86_400_000,
            30,
        )
        .encode(&app.secret());
        let mail = answer_to(
            "alice@example.com",
            &format!("support+{old}@example.com"),
            "first@customer.test",
            raw,
            "Too late.",
        );
        refused(&app, &sink, number, &mail, None, "expired").await;

        // A token whose tag was not made by us.
        let mut forged_token = reply_to(raw);
        let at = forged_token.find('@').unwrap();
        forged_token.replace_range(at - 4..at, "0000");
        let mail = answer_to(
            "alice@example.com",
            &forged_token,
            "first@customer.test",
            raw,
            "Forged.",
        );
        refused(&app, &sink, number, &mail, None, "signature").await;

        // A replayed answer after alice left the team.
        let mut left = app.pipeline.directory().clone();
        left.agents.get_mut("alice").unwrap().team_ids.clear();
        let mail = answer("alice@example.com", raw, "Replayed.");
        refused(
            &app,
            &sink,
            number,
            &mail,
            Some(&left),
            "no longer a member",
        )
        .await;

        let counts = app
            .store()
            .automatic_mail_counts(mailroom::store::now_ms())
            .await
            .unwrap();
        assert_eq!(
            (counts.agent_mail_pending, counts.agent_mail_unverified),
            (0, 7)
        );

        // The same answer while she is in the team goes out.
        let mail = answer("alice@example.com", raw, "Genuine.");
        app.pipeline_apply("pipe", &mail).await;
        app.work().await;
        let got = sink.wait_for(5, Duration::from_secs(10)).await;
        assert_eq!(to(&got, "carol@customer.test").len(), 1);
    }
);

crate::both_backends!(
    an_agent_domain_with_dmarc_reject_needs_an_aligned_dkim_signature,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let dora =
            "[agents.dora]\nemail = \"dora@strict.test\"\nname = \"Dora\"\nteams = [\"support\"]\n";
        let app = OutApp::start_with(backend, sink.port, &format!("{NOTIFY}{dora}")).await;
        let number = app.customer_mail(CUSTOMER).await;
        app.work().await;
        let got = sink.wait_for(3, Duration::from_secs(10)).await;
        let notice = to(&got, "dora@strict.test");
        assert_eq!(notice.len(), 1, "{got:?}");
        let raw = &notice[0].message;

        // Token and From are right, but strict.test says p=reject and the
        // mail carries no signature.
        let mail = answer("Dora <dora@strict.test>", raw, "Unsigned.");
        refused(
            &app,
            &sink,
            number,
            &mail,
            None,
            "DMARC fails for strict.test (p=reject)",
        )
        .await;
        // Signed, but by another domain: not aligned.
        let mail = dkim_signed(
            &answer("dora@strict.test", raw, "Signed elsewhere."),
            "evil.test",
        );
        refused(&app, &sink, number, &mail, None, "DMARC fails").await;
        // Signed by strict.test, then altered on the way: fails too.
        let mut mail = dkim_signed(
            &answer("dora@strict.test", raw, "Original text."),
            "strict.test",
        );
        let at = mail.windows(8).position(|w| w == b"Original").unwrap();
        mail[at..at + 8].copy_from_slice(b"Tampered");
        refused(&app, &sink, number, &mail, None, "DMARC fails").await;

        // Signed by strict.test: relayed.
        let mail = dkim_signed(
            &answer("dora@strict.test", raw, "Signed and sealed."),
            "strict.test",
        );
        app.pipeline_apply("pipe", &mail).await;
        app.work().await;
        let got = sink.wait_for(4, Duration::from_secs(10)).await;
        let carol = to(&got, "carol@customer.test");
        assert_eq!(carol.len(), 1, "{got:?}");
        assert!(body(&carol[0].message).contains("Signed and sealed."));
        let relayed: i64 = sqlx::query("SELECT COUNT(*) FROM messages WHERE flags = 'agent_reply'")
            .fetch_one(app.store().pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(relayed, 1);
    }
);

/// Feeds alice's `text` as an answer to `notice`, runs the worker, and
/// returns the body of the next mail the sink receives.
async fn next_mail_after(app: &OutApp, sink: &SmtpSink, notice: &[u8], text: &str) -> Captured {
    let before = sink.count();
    app.pipeline_apply("pipe", &answer("alice@example.com", notice, text))
        .await;
    app.work().await;
    let got = sink.wait_for(before + 1, Duration::from_secs(10)).await;
    got.last().unwrap().clone()
}

crate::both_backends!(
    commands_in_the_first_line_and_their_refusals,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let (app, number, notice) = notified(backend, &sink, "").await;
        let raw = &notice.message;
        let mails_to_carol = || to(&sink.messages(), "carol@customer.test").len();

        // #note: an internal comment, nothing sent.
        app.pipeline_apply(
            "pipe",
            &answer("alice@example.com", raw, "#note\r\nShe called, all fine."),
        )
        .await;
        app.work().await;
        assert_eq!(app.comments_on(number).await, vec!["She called, all fine."]);
        assert_eq!(mails_to_carol(), 0);
        assert_eq!(app.last_flags(number).await, "agent_note");

        // #status with a missing required property: refused, explained to
        // alice, nothing changed, nothing to the customer.
        let explained = next_mail_after(&app, &sink, raw, "#status solved\r\nFixed it.").await;
        assert_eq!(explained.rcpt_to, vec!["alice@example.com"]);
        let text = body(&explained.message);
        assert!(text.contains("resolution"), "{text}");
        assert_eq!(app.ticket_status(number).await, "open");
        assert_eq!(mails_to_carol(), 0);

        // An unknown command: answered with the known ones.
        let text = body(
            &next_mail_after(&app, &sink, raw, "#frobnicate\r\nHello.")
                .await
                .message,
        );
        assert!(
            text.contains("#frobnicate is not a command") && text.contains("#assign"),
            "{text}"
        );
        assert_eq!(mails_to_carol(), 0);

        // Over 1 MiB of text: it would reach the customer cut; refused.
        let long: String = (0..15_000).map(|i| format!("{i:075}\r\n")).collect();
        let text = body(&next_mail_after(&app, &sink, raw, &long).await.message);
        assert!(text.contains("over 1 MiB of text"), "{text}");
        assert_eq!(mails_to_carol(), 0);

        // #assign someone who is not an agent: refused, explained.
        let text = body(
            &next_mail_after(&app, &sink, raw, "#assign nobody@customer.test")
                .await
                .message,
        );
        assert!(text.contains("no agent nobody@customer.test"), "{text}");
        assert_eq!(app.owner_of(number).await, None);

        // #assign by address: bob owns it; the words for him are a
        // comment, nothing goes to the customer.
        app.pipeline_apply(
            "pipe",
            &answer(
                "alice@example.com",
                raw,
                "#assign bob@example.com\r\nBob, can you take this one?",
            ),
        )
        .await;
        app.work().await;
        assert_eq!(app.owner_of(number).await.as_deref(), Some("bob"));
        assert_eq!(
            app.comments_on(number).await.last().map(String::as_str),
            Some("Bob, can you take this one?")
        );
        assert_eq!(mails_to_carol(), 0);

        // #close with text: the answer goes out and the ticket is closed.
        app.pipeline_apply(
            "pipe",
            &answer("alice@example.com", raw, "#close\r\nAll done, closing."),
        )
        .await;
        app.work().await;
        let carol = to(&sink.messages(), "carol@customer.test");
        assert_eq!(carol.len(), 1);
        assert!(body(&carol[0].message).contains("All done, closing."));
        assert!(!body(&carol[0].message).contains("#close"));
        assert_eq!(app.ticket_status(number).await, "closed");
    }
);

impl OutApp {
    /// The requester's address, the subject, the first message's body and
    /// flags, and who the `created` event says forwarded it.
    async fn opened(&self, number: i64) -> (String, String, String, String, Option<String>) {
        let row = sqlx::query(
            "SELECT c.email, t.subject, m.body_text, m.flags FROM tickets t
             JOIN ticket_contacts tc ON tc.ticket_id = t.id AND tc.role = 'requester'
             JOIN contacts c ON c.id = tc.contact_id
             JOIN messages m ON m.ticket_id = t.id
             WHERE t.number = $1 ORDER BY m.id LIMIT 1",
        )
        .bind(number)
        .fetch_one(self.store().pool())
        .await
        .unwrap();
        let data: String = sqlx::query(
            "SELECT e.data FROM ticket_events e JOIN tickets t ON t.id = e.ticket_id
             WHERE t.number = $1 AND e.kind = 'created'",
        )
        .bind(number)
        .fetch_one(self.store().pool())
        .await
        .unwrap()
        .get(0);
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            data["forwarded_by"].as_str().map(str::to_string),
        )
    }

    async fn files_of_first_message(&self, number: i64) -> Vec<String> {
        sqlx::query(
            "SELECT a.filename FROM attachments a JOIN messages m ON m.id = a.message_id
             JOIN tickets t ON t.id = m.ticket_id WHERE t.number = $1 ORDER BY a.id",
        )
        .bind(number)
        .fetch_all(self.store().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }
}

crate::both_backends!(
    an_agent_forwarding_a_customer_mail_opens_the_ticket_for_the_original_sender,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = OutApp::start_with(backend, sink.port, "").await;

        // Inline, as Gmail forwards.
        let gmail = b"From: Alice Agent <alice@example.com>\r\nTo: support@example.com\r\n\
Subject: Fwd: Invoice wrong\r\nMessage-ID: <fwd1@example.com>\r\n\r\n\
FYI, from the phone.\r\n\r\n---------- Forwarded message ---------\r\n\
From: Dave Customer <dave@customer.test>\r\nDate: Wed, Nov 25, 2026 at 9:00 AM\r\n\
Subject: Invoice wrong\r\nTo: <alice@example.com>\r\n\r\nMy invoice is wrong.\r\nDave\r\n";
        let number = app.customer_mail(gmail).await;
        let (requester, subject, body, flags, by) = app.opened(number).await;
        assert_eq!(requester, "dave@customer.test");
        assert_eq!(subject, "Invoice wrong");
        assert_eq!(body.replace("\r\n", "\n"), "My invoice is wrong.\nDave");
        assert_eq!(flags, "forwarded");
        assert_eq!(by.as_deref(), Some("alice"));

        // Outlook, behind its rule, with a file.
        let outlook = b"From: bob@example.com\r\nTo: support@example.com\r\nSubject: FW: Broken screen\r\n\
Message-ID: <fwd2@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Please take this one.\r\n\r\n________________________________\r\n\
From: Erin Example [mailto:erin@customer.test]\r\nSent: Tuesday, November 24, 2026 08:00\r\n\
To: Bob\r\nSubject: Broken screen\r\n\r\nThe screen cracked, photo attached.\r\n--b\r\n\
Content-Type: image/png; name=\"screen.png\"\r\nContent-Disposition: attachment; filename=\"screen.png\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n";
        let number = app.customer_mail(outlook).await;
        let (requester, subject, body, _, by) = app.opened(number).await;
        assert_eq!(requester, "erin@customer.test");
        assert_eq!(subject, "Broken screen");
        assert!(body.starts_with("The screen cracked"), "{body}");
        assert_eq!(by.as_deref(), Some("bob"));
        assert_eq!(app.files_of_first_message(number).await, vec!["screen.png"]);

        // The original attached (message/rfc822), with its own file.
        let attached = b"From: alice@example.com\r\nTo: support@example.com\r\nSubject: Fwd: Refund\r\n\
Message-ID: <fwd3@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"o\"\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\n\
See attached.\r\n--o\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n\
From: Frank <frank@customer.test>\r\nTo: alice@example.com\r\nSubject: Refund please\r\n\
Message-ID: <refund@customer.test>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"i\"\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\n\
I want my money back.\r\n--i\r\nContent-Type: application/pdf; name=\"receipt.pdf\"\r\n\
Content-Disposition: attachment; filename=\"receipt.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
JVBERi0xLjQK\r\n--i--\r\n\r\n--o--\r\n";
        let number = app.customer_mail(attached).await;
        let (requester, subject, body, flags, by) = app.opened(number).await;
        assert_eq!(requester, "frank@customer.test");
        assert_eq!(subject, "Refund please");
        assert!(body.contains("I want my money back."), "{body}");
        assert_eq!(flags, "forwarded");
        assert_eq!(by.as_deref(), Some("alice"));
        assert_eq!(
            app.files_of_first_message(number).await,
            vec!["receipt.pdf"]
        );
        // The original's Message-ID is the message's: the customer's
        // later reply to it threads here.
        let reply = b"From: frank@customer.test\r\nTo: support@example.com\r\nSubject: Re: Refund please\r\n\
Message-ID: <refund2@customer.test>\r\nIn-Reply-To: <refund@customer.test>\r\n\r\nStill waiting.\r\n";
        assert_eq!(app.customer_mail(reply).await, number);

        // The same forward by someone who is not an agent: their own mail.
        let by_customer = String::from_utf8_lossy(gmail)
            .replace("Alice Agent <alice@example.com>", "mallory@evil.test")
            .replace("fwd1@", "fwd4@");
        let number = app.customer_mail(by_customer.as_bytes()).await;
        let (requester, subject, body, flags, by) = app.opened(number).await;
        assert_eq!(requester, "mallory@evil.test");
        assert_eq!(subject, "Fwd: Invoice wrong");
        assert!(body.contains("Forwarded message"));
        assert_eq!(flags, "");
        assert_eq!(by, None);
    }
);

crate::both_backends!(
    an_answer_to_a_mention_is_an_internal_comment,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let (app, number, _) = notified(backend, &sink, "").await;
        let (status, view) = app
            .api(
                "POST",
                &format!("/api/v1/tickets/{number}/comments"),
                "bob-token-0123456789",
                &[],
                Some(serde_json::json!({ "body": "@alice can you look?" })),
            )
            .await;
        assert!(status < 300, "{view}");
        app.work().await;
        let got = sink.wait_for(3, Duration::from_secs(10)).await;
        let mention = got.last().unwrap();
        assert_eq!(mention.rcpt_to, vec!["alice@example.com"]);
        assert!(body(&mention.message).contains("> @alice can you look?"));
        app.pipeline_apply(
            "pipe",
            &answer("alice@example.com", &mention.message, "Looking now."),
        )
        .await;
        app.work().await;
        assert_eq!(
            app.comments_on(number).await,
            vec!["@alice can you look?", "Looking now."]
        );
        assert_eq!(to(&sink.messages(), "carol@customer.test").len(), 0);
    }
);

crate::both_backends!(
    auto_responders_answering_notifications_start_no_loop,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let (app, number, notice) = notified(backend, &sink, "").await;
        // Alice's out-of-office answers her notification (to the token).
        let ooo = format!(
            "From: alice@example.com\r\nTo: {}\r\nSubject: Automatic reply: New ticket\r\n\
             Auto-Submitted: auto-replied\r\nMessage-ID: <ooo@example.com>\r\nIn-Reply-To: <{}>\r\n\r\n\
             I am out of the office until Monday.\r\n",
            reply_to(&notice.message),
            message_id(&notice.message)
        );
        app.pipeline_apply("pipe", ooo.as_bytes()).await;
        // The customer's own auto-responder answers too.
        let customer_ooo = b"From: carol@customer.test\r\nTo: support@example.com\r\n\
Subject: Out of office\r\nX-Autoreply: yes\r\nMessage-ID: <ooo@customer.test>\r\n\
In-Reply-To: <first@customer.test>\r\n\r\nAway.\r\n";
        app.pipeline_apply("pipe", customer_ooo).await;
        // And a notification of ours comes back in (a forwarding loop).
        app.pipeline_apply("pipe", &notice.message).await;
        for _ in 0..3 {
            app.work().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sink.count(), 2, "only the first two notifications");
        let pending: i64 = sqlx::query("SELECT COUNT(*) FROM agent_mail")
            .fetch_one(app.store().pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            pending, 0,
            "no automatic mail is taken for an agent's answer"
        );
        let _ = number;
    }
);

crate::both_backends!(
    automatic_mail_to_one_address_is_rate_limited_and_muted_events_are_not_mailed,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let extra = "[notifications]\nmax_per_address_per_hour = 2\n";
        let app = OutApp::start_with(backend, sink.port, &format!("{NOTIFY}{extra}")).await;
        for i in 0..4 {
            let mail = format!(
                "From: c{i}@customer.test\r\nTo: support@example.com\r\nSubject: Case {i}\r\n\
                 Message-ID: <case{i}@customer.test>\r\n\r\nHelp {i}.\r\n"
            );
            app.customer_mail(mail.as_bytes()).await;
        }
        // Bob muted new tickets.
        let mut config = app.config.clone();
        config.agents.get_mut("bob").unwrap().mute = vec![mailroom::config::NotifyEvent::NewTicket];
        let dir = app.pipeline.directory().clone();
        mailroom::outbound::notify::run_pass(app.store(), &dir, &config)
            .await
            .unwrap();
        app.flush().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = sink.messages();
        assert_eq!(to(&got, "alice@example.com").len(), 2);
        assert_eq!(to(&got, "bob@example.com").len(), 0);
        let counts = app
            .store()
            .automatic_mail_counts(mailroom::store::now_ms())
            .await
            .unwrap();
        assert_eq!((counts.held, counts.held_last_day), (2, 2));
        // Still there for the API: held and muted ones are notifications.
        let (status, view) = app
            .api(
                "GET",
                "/api/v1/notifications",
                "bob-token-0123456789",
                &[],
                None,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view.to_string().matches("new_ticket").count(), 4, "{view}");
    }
);

crate::both_backends!(
    no_kind_of_automatic_mail_makes_mailroom_send_anything,
    |backend| async move {
        // The loop matrix: every automatic fixture (RFC 3834 and vendor
        // auto-replies, Exchange and Gmail vacation answers, other help
        // desks' acknowledgements, DSNs and bounces without a report, list
        // mail, ARF and DMARC reports, read receipts), then our own
        // notification coming back, with notifications on for everything.
        let sink = SmtpSink::start(&[]);
        let everything = "new_ticket = [\"team\"]\ncustomer_reply = [\"team\"]\n";
        let app = OutApp::start_with(backend, sink.port, &format!("{NOTIFY}{everything}")).await;
        let automatic = crate::classify::messages("automatic");
        assert!(automatic.len() >= 150);
        for (_, raw) in &automatic {
            app.pipeline_apply("pipe", raw).await;
        }
        app.work().await;
        app.work().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            sink.count(),
            0,
            "{} automatic messages sent nothing",
            automatic.len()
        );

        // The control: a person's mail is announced (to alice and bob).
        app.customer_mail(CUSTOMER).await;
        app.work().await;
        let got = sink.wait_for(2, Duration::from_secs(10)).await;
        // That notification looping back (a forward rule) is recorded,
        // never announced or answered.
        app.pipeline_apply("pipe", &got[0].message).await;
        for _ in 0..2 {
            app.work().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(sink.count(), 2);
    }
);

crate::both_backends!(
    two_help_desks_mailing_each_other_do_not_ping_pong,
    |backend| async move {
        // Help desk A (support@example.com, and front@first.test for a
        // second team) and help desk B (desk@other.test), each with an agent
        // whose address is one of the other desk's, and every notification
        // on: the worst wiring. A person at
        // B writes to A; A's agent answers; then everything either desk
        // sends to the other is delivered, round after round.
        let (sink_a, sink_b) = (SmtpSink::start(&[]), SmtpSink::start(&[]));
        let everything = "new_ticket = [\"team\"]\ncustomer_reply = [\"team\"]\n";
        let a_extra = format!(
            r#"{NOTIFY}{everything}
[agents.zed]
email = "desk@other.test"
teams = ["support"]
[teams.front]
addresses = [{{ address = "front@first.test", default = true }}]
[channels.front]
kind = "pipe"
team = "front"
pipeline = "support"
"#
        );
        let b_extra = format!(
            r#"
[teams.desk]
addresses = [{{ address = "desk@other.test", default = true }}]
[teams.desk.notify]
address = "desk@other.test"
{everything}
[agents.ann]
email = "front@first.test"
teams = ["desk"]
[channels.desk]
kind = "pipe"
team = "desk"
pipeline = "support"
"#
        );
        let a = OutApp::start_with(backend, sink_a.port, &a_extra).await;
        let b = OutApp::start_with(backend, sink_b.port, &b_extra).await;
        let person = b"From: Dana <desk@other.test>\r\nTo: support@example.com\r\n\
Subject: Your invoice\r\nMessage-ID: <dana1@other.test>\r\n\
Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\nWhich invoice is this?\r\n";
        let number = a.customer_mail(person).await;
        let (status, queued) = a
            .api(
                "POST",
                &format!("/api/v1/tickets/{number}/replies"),
                "alice-token-0123456789",
                &[],
                Some(serde_json::json!({ "body": "The one from November." })),
            )
            .await;
        assert_eq!(status, 202, "{queued}");
        a.work().await;
        let mut delivered = std::collections::BTreeSet::new();
        let mut per_round = Vec::new();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut exchanged = 0;
            for captured in to(&sink_a.messages(), "desk@other.test") {
                if delivered.insert(message_id(&captured.message)) {
                    b.pipeline_apply("desk", &captured.message).await;
                    exchanged += 1;
                }
            }
            b.work().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            for captured in to(&sink_b.messages(), "front@first.test") {
                if delivered.insert(message_id(&captured.message)) {
                    a.pipeline_apply("front", &captured.message).await;
                    exchanged += 1;
                }
            }
            a.work().await;
            per_round.push(exchanged);
        }
        println!("mails between the desks, per round: {per_round:?}");
        // A's notification to zed and A's reply reach B; B's notification
        // of that reply reaches A, which records it and sends nothing.
        assert!(
            per_round[0] >= 2,
            "the desks did exchange mail: {per_round:?}"
        );
        assert_eq!(
            per_round[2..],
            [0, 0, 0, 0],
            "the exchange died out: {per_round:?}"
        );
        // Nothing delivered was dropped: each desk stored what it was given.
        let inbound = |app: &OutApp| {
            let pool = app.store().pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM messages WHERE direction = 'inbound'",
                )
                .fetch_one(&pool)
                .await
                .unwrap()
            }
        };
        assert_eq!((inbound(&a).await, inbound(&b).await), (2, 2));
    }
);
