//! The IMAP client both the IMAP channel and the Sent copy log in with: TCP,
//! then implicit TLS or STARTTLS (certificates verified), the greeting, and
//! LOGIN, AUTHENTICATE PLAIN or AUTHENTICATE XOAUTH2. Every step has a
//! deadline and says which step failed.

use std::sync::Arc;
use std::time::Duration;

use async_imap::{Client, Session};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::oauth::{TokenSource, TokenStore};
use super::{tls_config, tls_connect, Conn};
use crate::config::{ImapAuth, ImapConfig, TlsMode};

/// A logged-in IMAP session over our socket type.
pub type ImapSession = Session<Conn>;

/// Why talking to the server failed. An authentication failure is its own
/// kind: retrying it at once only hammers the server with a bad password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImapError {
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
}

/// Maps an async-imap error to `E`, naming the step (`UID FETCH` …).
pub fn other<E: From<ImapError>>(context: &str) -> impl Fn(async_imap::error::Error) -> E + '_ {
    move |e| ImapError::Other(format!("{context}: {e}")).into()
}

/// Runs `fut` with a deadline, naming the step that timed out.
pub async fn deadline<T, E: From<ImapError>>(
    limit: Duration,
    step: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    timeout(limit, fut).await.map_err(|_| {
        E::from(ImapError::Other(format!(
            "{step} timed out after {} s",
            limit.as_secs()
        )))
    })?
}

struct PlainAuth<'a> {
    username: &'a str,
    password: &'a str,
}

impl async_imap::Authenticator for PlainAuth<'_> {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        format!("\0{}\0{}", self.username, self.password).into_bytes()
    }
}

/// The XOAUTH2 SASL response (Microsoft and Google documentation).
struct XOAuth2<'a> {
    user: &'a str,
    token: &'a str,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2<'_> {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        // After a failure the server sends a JSON error as a challenge; an
        // empty answer ends the exchange so the tagged NO arrives.
        if self.sent {
            return String::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
    }
}

fn login_failure(error: async_imap::error::Error, username: &str, host: &str) -> ImapError {
    match error {
        async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
            ImapError::Auth(format!("{username}@{host}: {text}"))
        }
        e => ImapError::Other(format!("login: {e}")),
    }
}

/// How to reach and log in to one mailbox.
pub struct ImapClient {
    config: ImapConfig,
    tls: Arc<rustls::ClientConfig>,
    /// XOAUTH2 access tokens, when `auth = "xoauth2"`.
    oauth: Option<TokenSource>,
}

impl ImapClient {
    /// `key` names the mailbox (its channel) for stored OAuth tokens.
    pub fn new(key: &str, config: &ImapConfig) -> anyhow::Result<ImapClient> {
        Ok(ImapClient {
            tls: tls_config(config.ca_file.as_deref())?,
            oauth: config.oauth.as_ref().map(|o| TokenSource::new(key, o)),
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ImapConfig {
        &self.config
    }

    pub fn host(&self) -> &str {
        &self.config.host
    }

    /// Connects, secures and logs in. `tokens` keeps rotated OAuth tokens.
    pub async fn connect(&self, tokens: &impl TokenStore) -> Result<ImapSession, ImapError> {
        let client = self.greeted().await?;
        let limit = self.config.command_timeout();
        let username = self.config.username.as_str();
        if self.config.auth == ImapAuth::Xoauth2 {
            return self.xoauth2(client, tokens).await;
        }
        let password = self
            .config
            .password
            .as_ref()
            .map(|p| p.resolve())
            .transpose()
            .map_err(ImapError::Auth)?
            .unwrap_or_default();
        deadline(limit, "login", async {
            let result = match self.config.auth {
                ImapAuth::Plain => {
                    let plain = PlainAuth {
                        username,
                        password: &password,
                    };
                    client.authenticate("PLAIN", plain).await
                }
                _ => client.login(username, &password).await,
            };
            result.map_err(|(e, _)| login_failure(e, username, self.host()))
        })
        .await
    }

    /// TCP, TLS (implicit or STARTTLS) and the server's greeting.
    async fn greeted(&self) -> Result<Client<Conn>, ImapError> {
        let limit = self.config.command_timeout();
        let address = format!("{}:{}", self.host(), self.config.port());
        let tcp = deadline(limit, "connect", async {
            TcpStream::connect(&address)
                .await
                .map_err(|e| ImapError::Other(format!("cannot connect to {address}: {e}")))
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        let secure = |tcp| async move {
            tls_connect(&self.tls, self.host(), tcp)
                .await
                .map_err(ImapError::Other)
        };
        deadline(limit, "greeting", async {
            let conn = match self.config.tls {
                TlsMode::Implicit => secure(tcp).await?,
                _ => Conn::Plain(tcp),
            };
            let mut client = Client::new(conn);
            client
                .read_response()
                .await
                .map_err(|e| ImapError::Other(format!("no greeting from {address}: {e}")))?
                .ok_or_else(|| {
                    ImapError::Other(format!(
                        "{address} closed the connection before its greeting"
                    ))
                })?;
            if self.config.tls == TlsMode::Starttls {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(other::<ImapError>("STARTTLS"))?;
                let Conn::Plain(tcp) = client.into_inner() else {
                    unreachable!("STARTTLS starts on a plain connection")
                };
                client = Client::new(secure(tcp).await?);
            }
            Ok(client)
        })
        .await
    }

    async fn xoauth2(
        &self,
        client: Client<Conn>,
        tokens: &impl TokenStore,
    ) -> Result<ImapSession, ImapError> {
        let username = self.config.username.as_str();
        let source = self
            .oauth
            .as_ref()
            .ok_or_else(|| ImapError::Auth("auth = \"xoauth2\" needs an oauth section".into()))?;
        let token = source.token(tokens).await.map_err(ImapError::Auth)?;
        let result = deadline(
            self.config.command_timeout(),
            "AUTHENTICATE XOAUTH2",
            async {
                let sasl = XOAuth2 {
                    user: username,
                    token: &token,
                    sent: false,
                };
                client
                    .authenticate("XOAUTH2", sasl)
                    .await
                    .map_err(|(e, _)| login_failure(e, username, self.host()))
            },
        )
        .await;
        if result.is_err() {
            // Perhaps revoked early: fetch a fresh one next time.
            source.invalidate().await;
        }
        result
    }

    /// For `mailroom check`: connects, logs in and selects the folder, and
    /// says what works. `Err` names the first step that failed.
    pub async fn probe(&self, tokens: &impl TokenStore) -> Result<String, ImapError> {
        let limit = self.config.command_timeout();
        let mut session = self.connect(tokens).await?;
        let capabilities = deadline(limit, "CAPABILITY", async {
            session
                .capabilities()
                .await
                .map_err(other::<ImapError>("CAPABILITY"))
        })
        .await?;
        let folder = &self.config.folder;
        let mailbox = deadline(limit, "SELECT", async {
            session
                .select(folder)
                .await
                .map_err(|e| ImapError::Other(format!("folder {folder:?}: {e}")))
        })
        .await?;
        let _ = timeout(Duration::from_secs(2), session.logout()).await;
        let transport = match self.config.tls {
            TlsMode::Implicit => "TLS verified",
            TlsMode::Starttls => "STARTTLS verified",
            TlsMode::None => "plaintext",
        };
        let idle = if capabilities.has_str("IDLE") {
            "IDLE supported"
        } else {
            "no IDLE: polling"
        };
        Ok(format!(
            "{transport}, login ok, folder {folder:?} has {} messages, {idle}",
            mailbox.exists
        ))
    }

    /// Appends a message to `folder` as read (a reply's copy in the team
    /// mailbox's Sent folder), creating the folder when it is missing.
    pub async fn append_copy(
        &self,
        tokens: &impl TokenStore,
        folder: &str,
        raw: &[u8],
    ) -> Result<(), ImapError> {
        let mut session = self.connect(tokens).await?;
        let appended = deadline(self.config.command_timeout(), "APPEND", async {
            match session.append(folder, Some("(\\Seen)"), None, raw).await {
                Ok(()) => Ok(()),
                // Not there yet (TRYCREATE): create it once and try again.
                Err(async_imap::error::Error::No(_) | async_imap::error::Error::Append) => {
                    session
                        .create(folder)
                        .await
                        .map_err(other::<ImapError>("CREATE"))?;
                    session
                        .append(folder, Some("(\\Seen)"), None, raw)
                        .await
                        .map_err(other::<ImapError>("APPEND"))
                }
                Err(e) => Err(other::<ImapError>("APPEND")(e)),
            }
        })
        .await;
        let _ = timeout(Duration::from_secs(2), session.logout()).await;
        appended
    }
}
