//! One pooled SMTP transport per relay (lettre over rustls), and the
//! classification of what the relay answered.

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::{Mutex, Semaphore};

use crate::channel::oauth::TokenSource;
use crate::config::{ImapAuth, RelayConfig, TlsMode};
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

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A relay: its pooled transport, and a cap on sends in flight (lettre's
/// pool limits idle connections, not concurrent ones).
pub struct Relay {
    pub name: String,
    config: RelayConfig,
    /// Rebuilt when an XOAUTH2 access token changes (credentials are fixed
    /// per transport). Holds the token it was built with.
    transport: Mutex<(Option<String>, Option<Transport>)>,
    tokens: Option<TokenSource>,
    /// Sends in flight to this relay.
    pub slots: Arc<Semaphore>,
}

impl Relay {
    pub fn new(name: &str, config: &RelayConfig) -> Relay {
        let tokens = (config.auth == ImapAuth::Xoauth2)
            .then_some(config.oauth.as_ref())
            .flatten()
            .map(|o| TokenSource::new(&format!("relay:{name}"), o));
        Relay {
            name: name.to_string(),
            config: config.clone(),
            transport: Mutex::new((None, None)),
            tokens,
            slots: Arc::new(Semaphore::new(config.pool_size as usize)),
        }
    }

    fn build(&self, secret: Option<String>) -> Result<Transport, String> {
        let c = &self.config;
        let tls = match c.tls {
            TlsMode::None => Tls::None,
            mode => {
                let mut params = TlsParameters::builder(c.host.clone());
                if let Some(ca) = &c.ca_file {
                    let pem = std::fs::read(ca)
                        .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                    params = params.add_root_certificate(cert);
                }
                let params = params.build_rustls().map_err(|e| e.to_string())?;
                if mode == TlsMode::Implicit {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = Transport::builder_dangerous(c.host.clone())
            .port(c.port())
            .tls(tls)
            .timeout(Some(Duration::from_secs(c.timeout_secs)))
            .pool_config(
                PoolConfig::new()
                    .max_size(c.pool_size)
                    .idle_timeout(Duration::from_secs(60)),
            );
        if let Some(name) = &c.hello_name {
            builder = builder.hello_name(ClientId::Domain(name.clone()));
        }
        if let (Some(user), Some(secret)) = (&c.username, secret) {
            builder = builder
                .credentials(Credentials::new(user.clone(), secret))
                .authentication(match c.auth {
                    ImapAuth::Xoauth2 => vec![Mechanism::Xoauth2],
                    ImapAuth::Plain => vec![Mechanism::Plain],
                    ImapAuth::Login => vec![Mechanism::Plain, Mechanism::Login],
                });
        }
        Ok(builder.build())
    }

    /// The transport to send with, (re)built when credentials changed.
    async fn transport(&self, store: &Store) -> Result<Transport, String> {
        let secret = match (&self.tokens, &self.config.password) {
            (Some(tokens), _) => Some(tokens.token(store).await?),
            (None, Some(password)) => Some(password.resolve()?),
            (None, None) => None,
        };
        let mut current = self.transport.lock().await;
        if current.1.is_none() || current.0 != secret {
            current.1 = Some(self.build(secret.clone())?);
            current.0 = secret;
        }
        Ok(current.1.clone().expect("just built"))
    }

    /// Sends stored bytes to the envelope recipients.
    pub async fn send(
        &self,
        store: &Store,
        mail_from: &str,
        rcpt_to: &[String],
        raw: &[u8],
    ) -> SendOutcome {
        let envelope = match envelope(mail_from, rcpt_to) {
            Ok(e) => e,
            Err(e) => return SendOutcome::Permanent(e),
        };
        let transport = match self.transport(store).await {
            Ok(t) => t,
            Err(e) => return SendOutcome::Temporary(format!("relay {}: {e}", self.name)),
        };
        match transport.send_raw(&envelope, raw).await {
            Ok(response) => SendOutcome::Sent(
                format!(
                    "{} {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                )
                .trim()
                .to_string(),
            ),
            Err(e) if e.is_permanent() => SendOutcome::Permanent(e.to_string()),
            Err(e) => {
                // An expired OAuth token shows as an auth failure: fetch a fresh one next time.
                if let (Some(tokens), Some(code)) = (&self.tokens, e.status()) {
                    if code.to_string().starts_with("535") || code.to_string().starts_with("454") {
                        tokens.invalidate().await;
                    }
                }
                SendOutcome::Temporary(e.to_string())
            }
        }
    }
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
