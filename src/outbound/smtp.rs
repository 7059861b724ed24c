//! SMTP relays: lettre's protocol client (`AsyncSmtpConnection`) over
//! connections we open and pool ourselves, so that each socket has
//! TCP_NODELAY. lettre writes the message body and the final `.` in two
//! writes; with Nagle's algorithm on, the `.` waits for the peer's delayed
//! ACK (40 ms on Linux), which capped a connection at ~22 messages/s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Semaphore};

use crate::config::{ImapAuth, RelayConfig, TlsMode};
use crate::net::oauth::TokenSource;
use crate::net::{tls_connect, Conn};
use crate::store::Store;

/// What one send attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted; the relay's answer (`250 2.0.0 Ok: queued as …`).
    Sent(String),
    /// 4xx, a network error, a timeout: try again later.
    Temporary(String),
    /// 5xx: the relay will never take it.
    Permanent(String),
}

/// An idle connection is not reused after this: servers drop idle clients
/// (Postfix after 300 s).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// A connection idle longer than this is checked with NOOP before reuse, so
/// a server that closed it does not cost the reply an attempt. (Once a
/// message is under way it is never sent again in the same attempt: the
/// relay may have taken it.)
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// A relay: its idle connections, and a cap on sends in flight.
pub struct Relay {
    pub name: String,
    config: RelayConfig,
    /// Idle, authenticated connections with the time they were parked and
    /// the credential they logged in with.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant, Option<String>)>>,
    tokens: Option<TokenSource>,
    /// The configured password, read once (from the config, env or file)
    /// rather than for every message; the error says why it could not be.
    password: Option<Result<String, String>>,
    /// For implicit TLS (ours, so the socket keeps TCP_NODELAY); the error
    /// says why the CA certificates could not be loaded.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Sends in flight to this relay, at most `pool_size`.
    pub slots: Arc<Semaphore>,
}

fn temporary(context: &str) -> impl Fn(String) -> SendOutcome + '_ {
    move |e| SendOutcome::Temporary(format!("{context}: {e}"))
}

fn classify(e: lettre::transport::smtp::Error) -> SendOutcome {
    // A client error (8BITMIME or SMTPUTF8 needed but not offered) will be
    // the same on every attempt.
    if e.is_permanent() || e.is_client() {
        SendOutcome::Permanent(e.to_string())
    } else {
        SendOutcome::Temporary(e.to_string())
    }
}

impl Relay {
    pub fn new(name: &str, config: &RelayConfig) -> Relay {
        let tokens = (config.auth == ImapAuth::Xoauth2)
            .then_some(config.oauth.as_ref())
            .flatten()
            .map(|o| TokenSource::new(&format!("relay:{name}"), &smtp_oauth(o)));
        let tls = crate::net::tls_config(config.ca_file.as_deref()).map_err(|e| format!("{e:#}"));
        Relay {
            name: name.to_string(),
            config: config.clone(),
            idle: Mutex::new(Vec::new()),
            tokens,
            password: config.password.as_ref().map(|p| p.resolve()),
            tls,
            slots: Arc::new(Semaphore::new(config.pool_size as usize)),
        }
    }

    /// Sends this relay takes at once.
    pub fn pool_size(&self) -> usize {
        self.config.pool_size as usize
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_secs)
    }

    fn hello(&self) -> ClientId {
        match &self.config.hello_name {
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        }
    }

    /// The password or current access token, if the relay wants a login.
    async fn secret(&self, store: &Store) -> Result<Option<String>, String> {
        match (&self.tokens, &self.password) {
            (Some(tokens), _) => tokens.token(store).await.map(Some),
            (None, Some(password)) => password.clone().map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Opens, secures and authenticates a new connection.
    async fn connect(&self, secret: Option<&str>) -> Result<AsyncSmtpConnection, SendOutcome> {
        let c = &self.config;
        let address = format!("{}:{}", c.host, c.port());
        let tcp = TcpStream::connect(&address)
            .await
            .map_err(|e| SendOutcome::Temporary(format!("connect to {address}: {e}")))?;
        tcp.set_nodelay(true)
            .map_err(|e| SendOutcome::Temporary(format!("{address}: {e}")))?;
        if c.tls == TlsMode::Implicit
            && rustls::pki_types::ServerName::try_from(c.host.as_str()).is_err()
        {
            // Every attempt would fail the same way.
            return Err(SendOutcome::Permanent(format!("bad host name {}", c.host)));
        }
        let stream = match (&c.tls, &self.tls) {
            (TlsMode::Implicit, Ok(tls)) => tls_connect(tls, &c.host, tcp)
                .await
                .map_err(|e| SendOutcome::Temporary(format!("{address}: {e}")))?,
            (TlsMode::Implicit, Err(e)) => {
                return Err(SendOutcome::Temporary(format!("relay {}: {e}", self.name)))
            }
            _ => Conn::Plain(tcp),
        };
        let hello = self.hello();
        let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
            .await
            .map_err(classify)?;
        if c.tls == TlsMode::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SendOutcome::Temporary(format!(
                    "{address} does not offer STARTTLS; refusing to send in plaintext (set tls = \"none\" only for a local relay)"
                )));
            }
            let mut params = TlsParameters::builder(c.host.clone());
            if let Some(ca) = &c.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("cannot read {}: {e}", ca.display()))
                    .map_err(temporary("ca_file"))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| format!("{}: {e}", ca.display()))
                    .map_err(temporary("ca_file"))?;
                params = params.add_root_certificate(cert);
            }
            let params = params
                .build_rustls()
                .map_err(|e| e.to_string())
                .map_err(temporary("TLS"))?;
            conn.starttls(params, &hello).await.map_err(|e| {
                SendOutcome::Temporary(format!("STARTTLS with {address} failed: {e}"))
            })?;
        }
        if let (Some(user), Some(secret)) = (&c.username, secret) {
            let mechanisms = match c.auth {
                ImapAuth::Xoauth2 => vec![Mechanism::Xoauth2],
                ImapAuth::Plain => vec![Mechanism::Plain],
                ImapAuth::Login => vec![Mechanism::Plain, Mechanism::Login],
            };
            let credentials = Credentials::new(user.clone(), secret.to_string());
            if let Err(e) = conn.auth(&mechanisms, &credentials).await {
                conn.abort().await;
                // A refused OAuth token: fetch a fresh one next time.
                if let Some(tokens) = &self.tokens {
                    tokens.invalidate().await;
                }
                // An auth failure is the relay's config, not the message:
                // retry (after the fix) rather than fail the reply.
                return Err(SendOutcome::Temporary(format!(
                    "AUTH at {address} as {user}: {e}"
                )));
            }
        }
        Ok(conn)
    }

    /// For `mailroom check`: connects, secures and logs in, and says what
    /// worked; `Err` says what failed.
    pub async fn probe(&self, store: &Store) -> Result<String, String> {
        let secret = self.secret(store).await?;
        let connected = tokio::time::timeout(self.timeout(), self.connect(secret.as_deref())).await;
        let mut conn = match connected {
            Err(_) => return Err(format!("no answer within {} s", self.config.timeout_secs)),
            Ok(Err(SendOutcome::Permanent(e) | SendOutcome::Temporary(e))) => return Err(e),
            Ok(Err(SendOutcome::Sent(_))) => unreachable!("connect never sends"),
            Ok(Ok(conn)) => conn,
        };
        let _ = conn.quit().await;
        let transport = match self.config.tls {
            TlsMode::Implicit => "TLS verified",
            TlsMode::Starttls => "STARTTLS verified",
            TlsMode::None => "plaintext",
        };
        let login = match (&self.config.username, secret) {
            (Some(user), Some(_)) => format!("AUTH ok as {user}"),
            _ => "no AUTH configured".into(),
        };
        Ok(format!(
            "{}:{} {transport}, {login}",
            self.config.host,
            self.config.port()
        ))
    }

    /// Sends stored bytes to the envelope recipients.
    pub async fn send(
        &self,
        store: &Store,
        mail_from: &str,
        rcpt_to: &[String],
        raw: &[u8],
    ) -> SendOutcome {
        // Composed messages are safe already; this is the last check on the
        // bytes themselves, whoever stored them.
        if let Err(e) = crate::mail::wire::check_smtp_safe(raw) {
            return SendOutcome::Permanent(format!(
                "not sent ({e}): a relay could read such a message as SMTP commands"
            ));
        }
        let envelope = match envelope(mail_from, rcpt_to) {
            Ok(e) => e,
            Err(e) => return SendOutcome::Permanent(e),
        };
        let secret = match self.secret(store).await {
            Ok(s) => s,
            Err(e) => return SendOutcome::Temporary(format!("relay {}: {e}", self.name)),
        };
        match tokio::time::timeout(self.timeout(), self.send_on_pool(&envelope, raw, secret)).await
        {
            Ok(outcome) => outcome,
            Err(_) => SendOutcome::Temporary(format!(
                "relay {}: no answer within {} s",
                self.name, self.config.timeout_secs
            )),
        }
    }

    async fn send_on_pool(
        &self,
        envelope: &lettre::address::Envelope,
        raw: &[u8],
        secret: Option<String>,
    ) -> SendOutcome {
        // A parked connection, if one is fresh and logged in with the
        // current credential; otherwise a new one.
        let mut reused = None;
        loop {
            let parked = {
                let mut idle = self.idle.lock().await;
                idle.pop()
            };
            let Some((mut conn, parked_at, used)) = parked else {
                break;
            };
            let usable = parked_at.elapsed() < MAX_IDLE
                && used == secret
                && (parked_at.elapsed() < CHECK_AFTER || conn.test_connected().await);
            if usable {
                reused = Some(conn);
                break;
            }
            // Stale: dropping it closes the socket (a QUIT could hang on a
            // peer that is gone).
            drop(conn);
        }
        let mut conn = match reused {
            Some(conn) => conn,
            None => match self.connect(secret.as_deref()).await {
                Ok(conn) => conn,
                Err(outcome) => return outcome,
            },
        };
        let result = conn.send(envelope, raw).await;
        let outcome = match result {
            Ok(response) => SendOutcome::Sent(
                format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )
                .trim()
                .to_string(),
            ),
            Err(e) => classify(e),
        };
        // After a refused message the session stays usable; after a broken
        // one it does not.
        if conn.has_broken() {
            conn.abort().await;
        } else {
            let mut idle = self.idle.lock().await;
            if idle.len() < self.config.pool_size as usize {
                idle.push((conn, Instant::now(), secret));
            } else {
                drop(idle);
                let _ = conn.quit().await;
            }
        }
        outcome
    }
}

/// A relay's OAuth settings: Microsoft 365 needs the SMTP scope (the
/// provider default is the IMAP one); Google's one scope covers both.
fn smtp_oauth(config: &crate::config::OAuthConfig) -> crate::config::OAuthConfig {
    let mut config = config.clone();
    if config.scope.is_none() && config.provider == crate::config::OAuthProvider::Microsoft {
        config.scope = Some("https://outlook.office.com/SMTP.Send offline_access".into());
    }
    config
}

fn envelope(mail_from: &str, rcpt_to: &[String]) -> Result<lettre::address::Envelope, String> {
    let parse = |a: &str| {
        a.parse::<lettre::Address>()
            .map_err(|e| format!("{a:?} is not a valid envelope address: {e}"))
    };
    let to = rcpt_to
        .iter()
        .map(|a| parse(a))
        .collect::<Result<Vec<_>, _>>()?;
    lettre::address::Envelope::new(Some(parse(mail_from)?), to).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_relays_ask_for_the_smtp_scope_unless_told_otherwise() {
        let oauth = |v: serde_json::Value| -> crate::config::OAuthConfig {
            serde_json::from_value(v).unwrap()
        };
        let microsoft = smtp_oauth(&oauth(serde_json::json!({ "provider": "microsoft" })));
        assert_eq!(
            microsoft.scope().as_deref(),
            Some("https://outlook.office.com/SMTP.Send offline_access")
        );
        let chosen = smtp_oauth(&oauth(
            serde_json::json!({ "provider": "microsoft", "scope": "x" }),
        ));
        assert_eq!(chosen.scope().as_deref(), Some("x"));
        let google = smtp_oauth(&oauth(serde_json::json!({ "provider": "google" })));
        assert_eq!(google.scope().as_deref(), Some("https://mail.google.com/"));
    }
}
