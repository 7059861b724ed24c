//! Replies through a real submission server: a throwaway Postfix that
//! requires STARTTLS (the test CA's certificate) and SMTP AUTH (checked by
//! Dovecot), and delivers into Dovecot over LMTP, so the reply is read back
//! over IMAP and answered like a customer would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mail_parser::MessageParser;
use sqlx::Row;

use crate::dovecot::{self, Dovecot};
use crate::harness::*;
use crate::outbound::{number_of, outbound_config};
use crate::smtp::free_port;
use mailroom::outbound::{queue_reply, Actor, Outbox, ReplyRequest};

pub struct Postfix {
    dir: tempfile::TempDir,
    pub submit_port: u16,
}

impl Postfix {
    /// A submission server on a free port: STARTTLS required, AUTH through
    /// Dovecot's auth service on `auth_port`, mail for example.test handed
    /// to Dovecot's LMTP on `lmtp_port`, everything else refused.
    pub fn start(auth_port: u16, lmtp_port: u16) -> Postfix {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("queue")).unwrap();
        // Postfix reads the key as root; copies keep the checkout's
        // permissions out of it.
        let certs = dovecot::certs();
        std::fs::copy(certs.join("server.pem"), d.join("server.pem")).unwrap();
        std::fs::copy(certs.join("server.key"), d.join("server.key")).unwrap();
        let submit_port = free_port();
        let dp = d.display();
        let main_cf = format!(
            "compatibility_level = 3.6
config_directory = {dp}
queue_directory = {dp}/queue
data_directory = {dp}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {dp}/postfix.log
maillog_file_prefixes = {dp}
myhostname = mx.example.test
mydomain = example.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relay_domains =
mynetworks = 127.0.0.0/8
virtual_mailbox_domains = example.test
virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}
default_transport = error:outbound mail disabled in test
relay_transport = error:outbound mail disabled in test
smtpd_tls_cert_file = {dp}/server.pem
smtpd_tls_key_file = {dp}/server.key
smtpd_tls_security_level = encrypt
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{auth_port}
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_client_restrictions =
biff = no
smtputf8_enable = no
"
        );
        let master_cf = format!(
            "127.0.0.1:{submit_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"
        );
        std::fs::write(d.join("main.cf"), main_cf).unwrap();
        std::fs::write(d.join("master.cf"), master_cf).unwrap();
        // Postfix waits for a main.cf younger than ~2 s to settle; an older
        // mtime starts it in a quarter of a second.
        std::fs::File::options()
            .write(true)
            .open(d.join("main.cf"))
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        let status = Command::new("postfix")
            .arg("-c")
            .arg(d)
            .arg("start")
            .output()
            .expect("postfix must be installed (scripts/test.sh installs it)");
        let postfix = Postfix { dir, submit_port };
        assert!(
            status.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr),
            postfix.log()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", submit_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "postfix did not listen: {}",
                postfix.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        postfix
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postfix.log")).unwrap_or_default()
    }

    fn master_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("queue/pid/master.pid"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // The master leads its own process group: one signal ends them all.
        if let Some(pid) = self.master_pid() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

fn ca_file() -> PathBuf {
    dovecot::certs().join("ca.pem")
}

/// A relay section for the Postfix submission port.
fn relay(port: u16, auth: &str, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[relays.submission]\nhost = \"localhost\"\nport = {port}\ntls = \"starttls\"\n{ca}timeout_secs = 10\n{auth}\n"
    )
}

struct Stack {
    dovecot: Dovecot,
    postfix: Postfix,
}

fn stack(oauth_introspection: Option<&str>) -> Stack {
    let (lmtp, auth) = (free_port(), free_port());
    let dovecot = Dovecot::start_for_postfix(oauth_introspection, lmtp, auth);
    let postfix = Postfix::start(auth, lmtp);
    Stack { dovecot, postfix }
}

/// Queues a reply on a new ticket from alice@example.test and runs the
/// outbox once; returns the app pieces and the reply's delivery row.
async fn reply_through(
    relay_section: &str,
) -> (TestDb, mailroom::pipeline::Pipeline, i64, String, String) {
    let db = TestDb::new(Backend::Sqlite).await;
    // The relay under test replaces the smtp-sink relay of the usual config.
    let config = outbound_config(&db.url, 0, relay_section);
    let pipeline = TestApp::pipeline_for(&config).await;
    let customer = b"From: Alice Customer <alice@example.test>\r\nTo: support@example.com\r\n\
Subject: Invoice missing\r\nMessage-ID: <inv1@example.test>\r\n\r\nWhere is my invoice?\r\n";
    let outcome = apply_with(&pipeline, "pipe", customer).await;
    let number = number_of(pipeline.store(), ticket_of(&outcome)).await;
    let queued = queue_reply(
        pipeline.store(),
        pipeline.directory(),
        &config,
        &Actor::Ops,
        number,
        ReplyRequest {
            body_text: Some("Attached is your invoice.".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let outbox = Arc::new(Outbox::new(
        pipeline.store().clone(),
        Arc::new(pipeline.directory().clone()),
        Arc::new(config),
    ));
    // A few attempts, as the daemon would make: on a loaded machine the
    // first login through Postfix → Dovecot (→ the token provider) can meet
    // a temporary error. What stays after them is the answer.
    let mut attempts = 0;
    loop {
        outbox.run_until_idle().await;
        attempts += 1;
        let row = sqlx::query("SELECT delivery_state, delivery_detail FROM messages WHERE id = $1")
            .bind(queued.message)
            .fetch_one(pipeline.store().pool())
            .await
            .unwrap();
        let state: String = row.get(0);
        let detail: Option<String> = row.get(1);
        if state != "queued" || attempts == 3 {
            return (db, pipeline, number, state, detail.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for `n` messages in alice's INBOX and returns them.
async fn inbox(dovecot: &Dovecot, n: u32) -> Vec<Vec<u8>> {
    inbox_of(dovecot, dovecot::USER, dovecot::PASSWORD, n).await
}

/// Waits for `n` messages in `user`'s INBOX and returns them.
async fn inbox_of(dovecot: &Dovecot, user: &str, password: &str, n: u32) -> Vec<Vec<u8>> {
    use futures::TryStreamExt;
    let mut session = dovecot.client_as(user, password).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while dovecot::count(&mut session, "INBOX").await < n {
        assert!(
            Instant::now() < deadline,
            "nothing delivered: {}",
            dovecot.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    session.select("INBOX").await.unwrap();
    let fetched: Vec<_> = session
        .fetch("1:*", "BODY.PEEK[]")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    fetched
        .iter()
        .map(|f| f.body().unwrap_or_default().to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_through_starttls_and_auth_and_its_answer_threads_back() {
    let s = stack(None);
    let section = relay(
        s.postfix.submit_port,
        &format!(
            "username = \"{}\"\npassword = \"{}\"",
            dovecot::USER,
            dovecot::PASSWORD
        ),
        Some(&ca_file()),
    );
    let (_db, pipeline, number, state, detail) = reply_through(&section).await;
    assert_eq!(state, "sent", "{detail}\n{}", s.postfix.log());
    assert!(detail.starts_with("250"), "{detail}");

    // Read back from the customer's mailbox, as delivered.
    let delivered = inbox(&s.dovecot, 1).await.remove(0);
    let parsed = MessageParser::default().parse(&delivered).unwrap();
    assert_eq!(
        parsed.subject(),
        Some(format!("Re: [#{number}] Invoice missing").as_str())
    );
    assert_eq!(
        parsed.from().unwrap().first().unwrap().address(),
        Some("support@example.com")
    );
    assert_eq!(parsed.in_reply_to().as_text(), Some("inv1@example.test"));
    let ours = parsed.message_id().unwrap().to_string();

    // The customer answers it from their client.
    let answer = format!(
        "From: alice@example.test\r\nTo: support@example.com\r\nSubject: Re: Invoice missing\r\n\
         Message-ID: <inv2@example.test>\r\nIn-Reply-To: <{ours}>\r\nReferences: <inv1@example.test> <{ours}>\r\n\r\n\
         Got it, thanks.\r\n"
    );
    let outcome = apply_with(&pipeline, "pipe", answer.as_bytes()).await;
    assert_eq!(
        number_of(pipeline.store(), ticket_of(&outcome)).await,
        number
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_an_untrusted_certificate_keeps_the_reply_queued() {
    let s = stack(None);
    let wrong = relay(
        s.postfix.submit_port,
        &format!("username = \"{}\"\npassword = \"nope\"", dovecot::USER),
        Some(&ca_file()),
    );
    let (_db, _p, _n, state, detail) = reply_through(&wrong).await;
    assert_eq!(
        state, "queued",
        "an AUTH failure is the relay's config: retried"
    );
    assert!(detail.contains("535"), "{detail}");

    // Without the test CA the certificate does not verify: no plaintext
    // fallback, nothing delivered.
    let untrusted = relay(
        s.postfix.submit_port,
        &format!(
            "username = \"{}\"\npassword = \"{}\"",
            dovecot::USER,
            dovecot::PASSWORD
        ),
        None,
    );
    let (_db, _p, _n, state, detail) = reply_through(&untrusted).await;
    assert_eq!(state, "queued");
    assert!(
        detail.contains("STARTTLS") && detail.to_lowercase().contains("certificate"),
        "{detail}"
    );
    let mut session = s.dovecot.client().await;
    assert_eq!(dovecot::count(&mut session, "INBOX").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_logs_in_to_the_submission_server() {
    let (url, _provider) = crate::imap::fake_oauth("unused").await;
    let s = stack(Some(&format!("{url}/introspect")));
    let section = relay(
        s.postfix.submit_port,
        &format!(
            "username = \"{}\"\nauth = \"xoauth2\"\n[relays.submission.oauth]\ntoken_command = \"echo static-token\"",
            dovecot::USER
        ),
        Some(&ca_file()),
    );
    let (_db, _p, _n, state, detail) = reply_through(&section).await;
    assert_eq!(state, "sent", "{detail}\n{}", s.postfix.log());
    assert_eq!(inbox(&s.dovecot, 1).await.len(), 1);
}

/// Agents by email end to end through real servers: the customer
/// (alice@example.test) writes; the agent (bob@example.test, assigned)
/// gets the notification through Postfix into Dovecot and reads it over
/// IMAP; answers it from a mail client (quote, signature); the customer's
/// mailbox receives the answer from the team address, threaded, without
/// the quote; the customer answers; the agent hears of that too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_works_a_ticket_by_email_through_postfix_and_dovecot() {
    let s = stack(None);
    let auth = format!(
        "username = \"{}\"\npassword = \"{}\"",
        dovecot::USER,
        dovecot::PASSWORD
    );
    let section = format!(
        "{}[teams.support.notify]\naddress = \"support@example.com\"\nnew_ticket = []\n\
         [agents.bea]\nemail = \"bob@example.test\"\nname = \"Bea Agent\"\nteams = [\"support\"]\n",
        relay(s.postfix.submit_port, &auth, Some(&ca_file()))
    );
    let db = TestDb::new(Backend::Sqlite).await;
    let config = outbound_config(&db.url, 0, &section);
    let pipeline = TestApp::pipeline_for(&config).await;
    let store = pipeline.store().clone();
    let dir = pipeline.directory().clone();
    let outbox = Arc::new(Outbox::new(
        store.clone(),
        Arc::new(dir.clone()),
        Arc::new(config.clone()),
    ));
    let dmarc = mailroom::net::dmarc::Dmarc::offline(&[]);
    let work = || async {
        mailroom::desk::agent_mail::run_pass(&store, &dir, &config, &dmarc)
            .await
            .unwrap();
        mailroom::outbound::notify::run_pass(&store, &dir, &config)
            .await
            .unwrap();
        outbox.run_until_idle().await;
    };

    let customer = b"From: Alice Customer <alice@example.test>\r\nTo: support@example.com\r\n\
Subject: Router blinking\r\nMessage-ID: <router1@example.test>\r\n\r\nThe router blinks red.\r\n";
    let outcome = apply_with(&pipeline, "pipe", customer).await;
    let number = number_of(&store, ticket_of(&outcome)).await;
    mailroom::desk::tickets::assign(&store, &dir, &Actor::Ops, number, Some("bea".into()))
        .await
        .unwrap();
    work().await;

    // Bea reads the notification in her mailbox.
    let notice = inbox_of(&s.dovecot, "bob", "other", 1).await.remove(0);
    let parsed = MessageParser::default().parse(&notice).unwrap();
    assert_eq!(
        parsed.subject(),
        Some(format!("[#{number}] Assigned to you: Router blinking").as_str())
    );
    assert_eq!(
        parsed.header_raw("Auto-Submitted").map(str::trim),
        Some("auto-generated")
    );
    let reply_to = parsed
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    assert!(reply_to.starts_with("support+"), "{reply_to}");
    let notice_id = parsed.message_id().unwrap().to_string();
    let quoted: String = parsed
        .body_text(0)
        .unwrap()
        .lines()
        .map(|l| format!("> {l}\r\n"))
        .collect();

    // She answers from her mail client; it reaches the support inbox.
    let answer = format!(
        "From: Bea Agent <bob@example.test>\r\nTo: {reply_to}\r\nSubject: Re: [#{number}] Assigned to you\r\n\
         Message-ID: <bea1@example.test>\r\nIn-Reply-To: <{notice_id}>\r\nReferences: <{notice_id}>\r\n\r\n\
         Please unplug it for ten seconds.\r\n\r\n-- \r\nBea\r\n\r\n\
         On Thu, 3 Dec 2026 at 10:00, Support notifications <support@example.com> wrote:\r\n{quoted}"
    );
    apply_with(&pipeline, "pipe", answer.as_bytes()).await;
    work().await;

    // The customer's mailbox: from the team, threaded, no quote, no token.
    let delivered = inbox(&s.dovecot, 1).await.remove(0);
    let reply = MessageParser::default().parse(&delivered).unwrap();
    assert_eq!(
        reply.from().unwrap().first().unwrap().address(),
        Some("support@example.com")
    );
    assert_eq!(reply.in_reply_to().as_text(), Some("router1@example.test"));
    let text = reply.body_text(0).unwrap().to_string();
    assert!(text.contains("Please unplug it for ten seconds."), "{text}");
    for leaked in [
        "Assigned to you",
        "wrote:",
        "Bea\n",
        "support+",
        "reply above",
    ] {
        assert!(!text.contains(leaked), "{leaked:?} leaked: {text}");
    }

    // The customer answers; the ticket has it and Bea is told.
    let ours = reply.message_id().unwrap().to_string();
    let again = format!(
        "From: alice@example.test\r\nTo: support@example.com\r\nSubject: Re: Router blinking\r\n\
         Message-ID: <router2@example.test>\r\nIn-Reply-To: <{ours}>\r\n\r\nIt works again.\r\n"
    );
    let outcome = apply_with(&pipeline, "pipe", again.as_bytes()).await;
    assert_eq!(number_of(&store, ticket_of(&outcome)).await, number);
    work().await;
    let told = inbox_of(&s.dovecot, "bob", "other", 2).await;
    let last = MessageParser::default().parse(&told[1]).unwrap();
    assert_eq!(
        last.subject(),
        Some(format!("[#{number}] New reply: Router blinking").as_str())
    );
    assert!(last.body_text(0).unwrap().contains("> It works again."));
}
