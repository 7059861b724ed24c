//! Typed configuration: one TOML file, every key overridable from the
//! environment, validated as a whole so `mailroom check` can list every
//! problem at once with the key that has it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the config file is looked for when neither `--config` nor
/// `MAILROOM_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/mailroom.toml";

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub database: DatabaseConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    #[serde(default)]
    pub teams: BTreeMap<String, TeamConfig>,
    #[serde(default)]
    pub agents: BTreeMap<String, AgentConfig>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    /// Key for the HMAC tags in outgoing Message-IDs and body markers. When
    /// unset, one is generated on first start and kept in the database, so
    /// every instance sharing that database agrees on it.
    pub secret: Option<Secret>,
    /// SMTP relays replies go out through, by name.
    #[serde(default)]
    pub relays: BTreeMap<String, RelayConfig>,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub instance: InstanceConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// Prometheus metrics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` here (e.g. `127.0.0.1:9464`); off when unset.
    pub bind: Option<String>,
}

/// This process among several sharing one database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// Names this instance in outbox claims, mailbox leases and `mailroom
    /// status`; the host name when unset.
    pub name: Option<String>,
    /// How long a mailbox belongs to the instance polling it without a
    /// renewal. Another instance takes the mailbox over after this when the
    /// holder dies; it is renewed every third of it.
    pub mailbox_lease_secs: u64,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            name: None,
            mailbox_lease_secs: 60,
        }
    }
}

impl InstanceConfig {
    /// This process's identity in leases and claims: the name plus the
    /// process id and a random tag, fixed for the life of the process. Two
    /// processes never share one, even with the same name on one host, so
    /// neither can take the other's mailbox or reply; a crashed process's
    /// leases and claims are taken over when they expire.
    pub fn holder_id(&self) -> String {
        static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let tag = TAG.get_or_init(|| hex::encode(rand::random::<[u8; 3]>()));
        format!("{}/{}/{tag}", self.name(), std::process::id())
    }

    /// The configured name, or this machine's host name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "mailroom".into())
        })
    }
}

/// An SMTP relay (submission server) replies are sent through.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub host: String,
    /// 587 for STARTTLS, 465 for implicit TLS, 25 otherwise.
    pub port: Option<u16>,
    /// `starttls` (the default), `implicit`, or `none` (plaintext; check warns).
    #[serde(default = "default_relay_tls")]
    pub tls: TlsMode,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `plain` (the default), `login`, or `xoauth2` (needs `oauth`).
    #[serde(default)]
    pub auth: ImapAuth,
    pub oauth: Option<OAuthConfig>,
    /// Connections kept open to this relay (and sends in flight at once).
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
    /// The longest one SMTP exchange may take.
    #[serde(default = "default_smtp_timeout")]
    pub timeout_secs: u64,
    /// Name given in EHLO; the machine's host name when unset.
    pub hello_name: Option<String>,
}

fn default_relay_tls() -> TlsMode {
    TlsMode::Starttls
}
fn default_pool_size() -> u32 {
    4
}
fn default_smtp_timeout() -> u64 {
    60
}

impl RelayConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 465,
            TlsMode::Starttls => 587,
            TlsMode::None => 25,
        })
    }
}

/// How queued replies are sent and retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Attempts before a reply is marked failed (temporary errors only; a
    /// permanent 5xx fails it at once).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a claimed reply belongs to the instance sending it. Another
    /// instance takes it over only after this, so it must exceed the relay timeout.
    pub lease_secs: u64,
    /// How often to look for replies queued by other processes (`mailroom
    /// reply`, other instances); replies queued in-process are sent at once.
    pub poll_interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: 10,
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
            lease_secs: 120,
            poll_interval_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created on first run) or `postgres://…`.
    pub url: Secret,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long to wait for a connection before calling the database unreachable.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_max_connections() -> u32 {
    8
}
fn default_connect_timeout() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Messages larger than this are refused (pipe: EX_DATAERR) or quarantined.
    pub max_message_bytes: u64,
    /// A message whose parse takes longer than this is quarantined.
    pub parse_timeout_ms: u64,
    /// Messages committed per transaction when backfilling or draining a spool.
    pub batch_size: usize,
    /// Attempts for a transient database error before the message is quarantined.
    pub max_attempts: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 50 * 1024 * 1024,
            parse_timeout_ms: 10_000,
            batch_size: 256,
            max_attempts: 5,
        }
    }
}

/// The HTTP listener: health checks, web forms and inbound-mail webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// `host:port` to listen on; no listener when unset.
    pub bind: Option<String>,
    /// Larger request bodies are refused with 413 before anything is stored.
    pub max_body_bytes: usize,
    /// A request that takes longer is answered 408.
    pub request_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: None,
            max_body_bytes: 25 * 1024 * 1024,
            request_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for a terminal, `json` for log shippers.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `mailroom=debug,sqlx=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Ordered stages of a ticket's life.
    pub statuses: Vec<StatusConfig>,
    /// Status of a new ticket; the first `open` status when unset.
    pub default_status: Option<String>,
    /// What a customer's reply to a closed ticket does.
    #[serde(default)]
    pub follow_up: FollowUp,
    /// With `follow_up = "new_ticket"`: only start a new ticket when the old
    /// one has been closed for longer than this; reopen it otherwise.
    pub new_ticket_after_days: Option<u32>,
    /// Status a ticket moves to when a reply is emailed to the customer
    /// (usually a `waiting` one), unless the reply sets a status itself.
    pub status_after_reply: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FollowUp {
    #[default]
    Reopen,
    NewTicket,
}

impl FollowUp {
    pub fn as_str(self) -> &'static str {
        match self {
            FollowUp::Reopen => "reopen",
            FollowUp::NewTicket => "new_ticket",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    pub name: String,
    pub kind: StatusKind,
    /// Ticket properties that must be set before a ticket may enter this status.
    #[serde(default)]
    pub required_properties: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusKind {
    Open,
    /// Waiting on the contact: a customer reply moves the ticket back to open.
    Waiting,
    Closed,
}

impl StatusKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Open => "open",
            StatusKind::Waiting => "waiting",
            StatusKind::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(StatusKind::Open),
            "waiting" => Some(StatusKind::Waiting),
            "closed" => Some(StatusKind::Closed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    /// Display name; the key is used when unset.
    pub name: Option<String>,
    /// The team's From addresses; one of them is the default.
    pub addresses: Vec<TeamAddress>,
    /// Whether outgoing subjects carry `[#number]` (and incoming tags are honoured).
    #[serde(default = "yes")]
    pub subject_tag: bool,
    /// A reply on an unassigned ticket assigns it to the agent who sent it.
    #[serde(default = "yes")]
    pub assign_on_reply: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamAddress {
    pub address: String,
    pub name: Option<String>,
    #[serde(default)]
    pub default: bool,
    /// The relay mail from this address goes through; needed only when
    /// several relays are configured.
    pub relay: Option<String>,
    /// Append each reply sent from this address to an IMAP folder (the
    /// team mailbox's Sent), using that IMAP channel's login.
    pub sent_copy: Option<SentCopy>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentCopy {
    /// An IMAP channel whose server and login are used.
    pub channel: String,
    #[serde(default = "default_sent_folder")]
    pub folder: String,
}

fn default_sent_folder() -> String {
    "Sent".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub email: String,
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub teams: Vec<String>,
    /// Bearer token for the HTTP API (`Authorization: Bearer …`).
    pub api_token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Agent,
    Admin,
    SuperAdmin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::SuperAdmin => "super_admin",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub kind: ChannelKind,
    pub team: String,
    pub pipeline: String,
    /// A channel that does not create tickets only appends to existing ones.
    #[serde(default = "yes")]
    pub create_tickets: bool,
    /// Maildir channel: the folder whose `new/` is watched.
    pub path: Option<PathBuf>,
    /// How often to look for new mail: `new/` for a maildir (default 250 ms),
    /// the mailbox for IMAP without IDLE (default 30 s).
    pub poll_interval_ms: Option<u64>,
    /// What happens to a message at its source once it is committed.
    /// Maildir: `move` (into cur/, the default) or `delete`. IMAP:
    /// `mark_seen` (the default), `move` (to `move_to`), `delete` or `keep`.
    pub after: Option<After>,

    /// IMAP: server host name (also the name its certificate must carry).
    pub host: Option<String>,
    /// IMAP: port; 993 for implicit TLS, 143 otherwise.
    pub port: Option<u16>,
    /// IMAP: `implicit` (the default), `starttls`, or `none` (plaintext; check warns).
    #[serde(default)]
    pub tls: TlsMode,
    /// IMAP: extra CA certificates (PEM) to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// IMAP: `login` (the default), `plain` (AUTHENTICATE PLAIN) or `xoauth2`
    /// (Microsoft 365, Google; needs `oauth`).
    #[serde(default)]
    pub auth: ImapAuth,
    /// IMAP: where XOAUTH2 access tokens come from.
    pub oauth: Option<OAuthConfig>,
    /// IMAP: the folder to take mail from.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// IMAP: destination folder for `after = "move"`.
    pub move_to: Option<String>,
    /// IMAP: where to move messages over `ingest.max_message_bytes`; they are
    /// left in place and reported when unset.
    pub oversize_folder: Option<String>,
    /// IMAP: use IDLE when the server offers it.
    #[serde(default = "yes")]
    pub idle: bool,
    /// IMAP: what to take on the very first connect to a mailbox that
    /// already holds mail: `all` (the default: a backfill), `unseen` (unread
    /// mail only), or `new` (nothing already there).
    #[serde(default)]
    pub first_sync: FirstSync,
    /// IMAP: messages fetched per round trip.
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: usize,
    /// IMAP: the longest any command may take (a FETCH gets more per megabyte).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,

    /// Webhook: callers must send `Authorization: Bearer <token>`.
    pub auth_token: Option<Secret>,
    /// Webhook or form: callers must sign the body with HMAC-SHA256 (see README).
    pub signing_secret: Option<Secret>,

    /// Form: which form field carries each part of the ticket.
    #[serde(default)]
    pub fields: FormFields,
    /// Form: fields that must be present and non-empty (default: email and body).
    pub required: Option<Vec<String>>,
    /// Form (browser): Origin headers accepted; others get 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Form (browser): a field humans leave empty; a filled one is dropped.
    pub honeypot: Option<String>,
    /// Form: submissions per minute per client IP (browser forms: default 10).
    pub rate_limit_per_minute: Option<u32>,
    /// Form: thread submissions like mail (default: every submission is a new ticket).
    #[serde(default)]
    pub threaded: bool,
    /// Form: status a new ticket starts in (default: the pipeline's).
    pub status: Option<String>,
}

/// Form field names for the parts of a ticket; other fields become ticket properties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormFields {
    pub subject: String,
    pub body: String,
    pub email: String,
    pub name: String,
}

impl Default for FormFields {
    fn default() -> Self {
        Self {
            subject: "subject".into(),
            body: "body".into(),
            email: "email".into(),
            name: "name".into(),
        }
    }
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_fetch_batch() -> usize {
    200
}
fn default_command_timeout() -> u64 {
    60
}

impl ChannelConfig {
    pub fn poll_interval(&self) -> std::time::Duration {
        let default = match self.kind {
            ChannelKind::Imap => 30_000,
            _ => 250,
        };
        std::time::Duration::from_millis(self.poll_interval_ms.unwrap_or(default))
    }

    pub fn after_action(&self) -> After {
        self.after.unwrap_or(match self.kind {
            ChannelKind::Imap => After::MarkSeen,
            _ => After::Move,
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// `mailroom ingest` fed by an MTA or by hand.
    Pipe,
    /// A watched Maildir folder (the laptop default: `./spool`).
    Maildir,
    /// An IMAP mailbox, with IDLE where the server offers it.
    Imap,
    /// Raw RFC 5322 messages posted to `POST /inbound/{channel}`.
    Webhook,
    /// A web form posted to `POST /forms/{channel}`.
    Form,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Pipe => "pipe",
            ChannelKind::Maildir => "maildir",
            ChannelKind::Imap => "imap",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Form => "form",
        }
    }
}

/// What an IMAP channel takes on its first connect to a mailbox.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FirstSync {
    #[default]
    All,
    Unseen,
    New,
}

/// What happens at the source once a message is committed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum After {
    MarkSeen,
    Move,
    Delete,
    Keep,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Implicit,
    Starttls,
    /// Plaintext: only for a server on the same host or a trusted network.
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImapAuth {
    #[default]
    Login,
    Plain,
    Xoauth2,
}

/// OAuth2 for XOAUTH2: either a refresh-token flow against the provider's
/// token endpoint, or a command that prints a current access token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// `microsoft`, `google` or `custom` (then `token_url` is required).
    #[serde(default)]
    pub provider: OAuthProvider,
    /// Microsoft: the directory (tenant) id or domain; `common` when unset.
    pub tenant: Option<String>,
    /// Overrides the provider's token endpoint.
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    /// The first refresh token. When the provider rotates it, the new one is
    /// kept in the database and used from then on.
    pub refresh_token: Option<Secret>,
    /// Overrides the provider's default scope.
    pub scope: Option<String>,
    /// Instead of the refresh flow: a shell command that prints an access token.
    pub token_command: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OAuthProvider {
    Microsoft,
    Google,
    #[default]
    Custom,
}

impl OAuthConfig {
    pub fn token_url(&self) -> Option<String> {
        self.token_url.clone().or_else(|| match self.provider {
            OAuthProvider::Microsoft => Some(format!(
                "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                self.tenant.as_deref().unwrap_or("common")
            )),
            OAuthProvider::Google => Some("https://oauth2.googleapis.com/token".into()),
            OAuthProvider::Custom => None,
        })
    }

    pub fn scope(&self) -> Option<String> {
        self.scope.clone().or_else(|| match self.provider {
            OAuthProvider::Microsoft => {
                Some("https://outlook.office365.com/IMAP.AccessAsUser.All offline_access".into())
            }
            OAuthProvider::Google => Some("https://mail.google.com/".into()),
            OAuthProvider::Custom => None,
        })
    }
}

/// A secret value: inline, from an environment variable, or from a file.
/// Its `Debug` never shows the value.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    Inline(String),
    Env { env: String },
    File { file: PathBuf },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(inline, redacted)"),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
        }
    }
}

impl OAuthConfig {
    /// What is missing for this OAuth setup to get tokens, keyed under `at`.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.token_command.is_some() {
            return out;
        }
        if self.token_url().is_none() {
            out.push((
                format!("{at}.oauth.token_url"),
                "needed with provider = \"custom\"".into(),
            ));
        }
        if self.client_id.is_none() {
            out.push((
                format!("{at}.oauth.client_id"),
                "needed for the refresh-token flow".into(),
            ));
        }
        match &self.refresh_token {
            None => out.push((
                format!("{at}.oauth.refresh_token"),
                "needed for the refresh-token flow (or set token_command)".into(),
            )),
            Some(secret) => {
                if let Err(e) = secret.resolve() {
                    out.push((format!("{at}.oauth.refresh_token"), e));
                }
            }
        }
        out
    }
}

impl Secret {
    /// Reads the secret's value; the error names where it was looked for.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Inline(value) => Ok(value.clone()),
            Secret::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))
            }
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
        }
    }
}

/// One thing wrong with the configuration, tied to the key that has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Load {
        path: String,
        source: config::ConfigError,
    },
    #[error("config {path} has {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// Picks the config path: the flag, then `MAILROOM_CONFIG`, then the default.
pub fn config_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("MAILROOM_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

impl Config {
    /// Loads the file, layers the environment over it (`MAILROOM_SECTION__KEY`,
    /// plus the shorthand `MAILROOM_DATABASE_URL`), and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::load_unvalidated(path)?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.display().to_string(),
                problems,
            })
        }
    }

    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let load_err = |source| ConfigError::Load {
            path: path.display().to_string(),
            source,
        };
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("MAILROOM")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(nested_env_vars())),
            );
        if let Ok(url) = std::env::var("MAILROOM_DATABASE_URL") {
            builder = builder
                .set_override("database.url", url)
                .map_err(load_err)?;
        }
        builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(load_err)
    }

    /// Every problem found, each with its key. Empty means the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        match self.database.url.resolve() {
            Ok(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres:")
                    || url.starts_with("postgresql:") => {}
            Ok(_) => problem(
                "database.url".into(),
                "must start with sqlite:// or postgres://".into(),
            ),
            Err(e) => problem("database.url".into(), e),
        }
        if self.database.max_connections == 0 {
            problem(
                "database.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        if self.ingest.batch_size == 0 {
            problem("ingest.batch_size".into(), "must be at least 1".into());
        }
        if self.ingest.max_attempts == 0 {
            problem("ingest.max_attempts".into(), "must be at least 1".into());
        }
        if self.pipelines.is_empty() {
            problem("pipelines".into(), "define at least one pipeline".into());
        }
        for (key, pipeline) in &self.pipelines {
            let at = format!("pipelines.{key}");
            let mut seen = std::collections::HashSet::new();
            for (i, status) in pipeline.statuses.iter().enumerate() {
                if status.name.trim().is_empty() {
                    problem(
                        format!("{at}.statuses[{i}].name"),
                        "must not be empty".into(),
                    );
                }
                if !seen.insert(status.name.as_str()) {
                    problem(
                        format!("{at}.statuses[{i}].name"),
                        format!("status {:?} is listed twice", status.name),
                    );
                }
            }
            for kind in [StatusKind::Open, StatusKind::Closed] {
                if !pipeline.statuses.iter().any(|s| s.kind == kind) {
                    problem(
                        format!("{at}.statuses"),
                        format!(
                            "needs at least one status with kind = \"{}\"",
                            kind.as_str()
                        ),
                    );
                }
            }
            if let Some(default) = &pipeline.default_status {
                match pipeline.statuses.iter().find(|s| &s.name == default) {
                    None => problem(
                        format!("{at}.default_status"),
                        format!("{default:?} is not one of this pipeline's statuses"),
                    ),
                    Some(s) if s.kind == StatusKind::Closed => problem(
                        format!("{at}.default_status"),
                        "a new ticket cannot start closed".into(),
                    ),
                    Some(_) => {}
                }
            }
            if pipeline.new_ticket_after_days.is_some() && pipeline.follow_up != FollowUp::NewTicket
            {
                problem(
                    format!("{at}.new_ticket_after_days"),
                    "only applies with follow_up = \"new_ticket\"".into(),
                );
            }
        }
        if self.teams.is_empty() {
            problem("teams".into(), "define at least one team".into());
        }
        let mut all_addresses = std::collections::HashMap::new();
        for (key, team) in &self.teams {
            let at = format!("teams.{key}");
            if team.addresses.is_empty() {
                problem(
                    format!("{at}.addresses"),
                    "needs at least one From address".into(),
                );
            }
            if team.addresses.iter().filter(|a| a.default).count() > 1 {
                problem(
                    format!("{at}.addresses"),
                    "only one address can be the default".into(),
                );
            }
            for (i, address) in team.addresses.iter().enumerate() {
                if !looks_like_address(&address.address) {
                    problem(
                        format!("{at}.addresses[{i}].address"),
                        format!("{:?} is not an email address", address.address),
                    );
                }
                if let Some(other) = all_addresses.insert(address.address.to_lowercase(), key) {
                    if other != key {
                        problem(
                            format!("{at}.addresses[{i}].address"),
                            format!("{} already belongs to team {other}", address.address),
                        );
                    }
                }
            }
        }
        for (key, agent) in &self.agents {
            let at = format!("agents.{key}");
            if !looks_like_address(&agent.email) {
                problem(
                    format!("{at}.email"),
                    format!("{:?} is not an email address", agent.email),
                );
            }
            for team in &agent.teams {
                if !self.teams.contains_key(team) {
                    problem(format!("{at}.teams"), format!("unknown team {team:?}"));
                }
            }
        }
        for (key, channel) in &self.channels {
            let at = format!("channels.{key}");
            if !self.teams.contains_key(&channel.team) {
                problem(
                    format!("{at}.team"),
                    format!("unknown team {:?}", channel.team),
                );
            }
            if !self.pipelines.contains_key(&channel.pipeline) {
                problem(
                    format!("{at}.pipeline"),
                    format!("unknown pipeline {:?}", channel.pipeline),
                );
            }
            if channel.poll_interval_ms == Some(0) {
                problem(
                    format!("{at}.poll_interval_ms"),
                    "must be at least 1".into(),
                );
            }
            match channel.kind {
                ChannelKind::Maildir => {
                    if channel.path.is_none() {
                        problem(
                            format!("{at}.path"),
                            "a maildir channel needs a path".into(),
                        );
                    }
                    if !matches!(channel.after_action(), After::Move | After::Delete) {
                        problem(
                            format!("{at}.after"),
                            "a maildir channel can only \"move\" (to cur/) or \"delete\"".into(),
                        );
                    }
                }
                ChannelKind::Imap => {
                    let oauth = channel.auth == ImapAuth::Xoauth2;
                    for (field, missing) in [
                        ("host", channel.host.is_none()),
                        ("username", channel.username.is_none()),
                        ("password", channel.password.is_none() && !oauth),
                        ("oauth", channel.oauth.is_none() && oauth),
                    ] {
                        if missing {
                            problem(
                                format!("{at}.{field}"),
                                format!("an imap channel needs a {field}"),
                            );
                        }
                    }
                    if let Some(Err(e)) = channel.password.as_ref().map(Secret::resolve) {
                        problem(format!("{at}.password"), e);
                    }
                    if let (true, Some(o)) = (oauth, &channel.oauth) {
                        for (k, m) in o.problems(&at) {
                            problem(k, m);
                        }
                    }
                    if channel.after_action() == After::Move && channel.move_to.is_none() {
                        problem(
                            format!("{at}.move_to"),
                            "after = \"move\" needs a move_to folder".into(),
                        );
                    }
                    if let Some(ca) = &channel.ca_file {
                        if !ca.is_file() {
                            problem(
                                format!("{at}.ca_file"),
                                format!("{} does not exist", ca.display()),
                            );
                        }
                    }
                    if channel.fetch_batch == 0 {
                        problem(format!("{at}.fetch_batch"), "must be at least 1".into());
                    }
                }
                ChannelKind::Webhook => {
                    if channel.auth_token.is_none() && channel.signing_secret.is_none() {
                        problem(
                            format!("{at}.auth_token"),
                            "a webhook channel needs auth_token or signing_secret: it must not accept anonymous posts"
                                .into(),
                        );
                    }
                    for (field, secret) in [
                        ("auth_token", &channel.auth_token),
                        ("signing_secret", &channel.signing_secret),
                    ] {
                        if let Some(Err(e)) = secret.as_ref().map(Secret::resolve) {
                            problem(format!("{at}.{field}"), e);
                        }
                    }
                    if self.http.bind.is_none() {
                        problem(
                            "http.bind".into(),
                            format!("channel {key} is a webhook: set http.bind to listen"),
                        );
                    }
                }
                ChannelKind::Form => {
                    if channel.signing_secret.is_none() && channel.allowed_origins.is_empty() {
                        problem(
                            format!("{at}.allowed_origins"),
                            "a form needs signing_secret (server-to-server) or allowed_origins (browser forms)".into(),
                        );
                    }
                    if let Some(status) = &channel.status {
                        let known = self
                            .pipelines
                            .get(&channel.pipeline)
                            .is_some_and(|p| p.statuses.iter().any(|s| &s.name == status));
                        if !known {
                            problem(
                                format!("{at}.status"),
                                format!(
                                    "{status:?} is not a status of pipeline {}",
                                    channel.pipeline
                                ),
                            );
                        }
                    }
                    if self.http.bind.is_none() {
                        problem(
                            "http.bind".into(),
                            format!("channel {key} is a form: set http.bind to listen"),
                        );
                    }
                }
                ChannelKind::Pipe => {}
            }
        }
        self.validate_outbound(&mut problem);
        problems
    }

    fn validate_outbound(&self, problem: &mut impl FnMut(String, String)) {
        if let Some(Err(e)) = self.secret.as_ref().map(Secret::resolve) {
            problem("secret".into(), e);
        }
        for (key, relay) in &self.relays {
            let at = format!("relays.{key}");
            if relay.host.trim().is_empty() {
                problem(format!("{at}.host"), "must not be empty".into());
            }
            if relay.pool_size == 0 {
                problem(format!("{at}.pool_size"), "must be at least 1".into());
            }
            if relay.timeout_secs == 0 {
                problem(format!("{at}.timeout_secs"), "must be at least 1".into());
            }
            if relay.timeout_secs >= self.outbox.lease_secs {
                problem(
                    format!("{at}.timeout_secs"),
                    format!(
                        "must be shorter than outbox.lease_secs ({}), or another instance may send the same reply while this one still waits",
                        self.outbox.lease_secs
                    ),
                );
            }
            if relay.username.is_some()
                && relay.password.is_none()
                && relay.auth != ImapAuth::Xoauth2
            {
                problem(
                    format!("{at}.password"),
                    "a username is set but no password (or set auth = \"xoauth2\" with oauth)"
                        .into(),
                );
            }
            if relay.password.is_some() && relay.username.is_none() {
                problem(
                    format!("{at}.username"),
                    "a password is set but no username".into(),
                );
            }
            if let Some(Err(e)) = relay.password.as_ref().map(Secret::resolve) {
                problem(format!("{at}.password"), e);
            }
            if relay.auth == ImapAuth::Xoauth2 {
                match (&relay.oauth, &relay.username) {
                    (None, _) => problem(
                        format!("{at}.oauth"),
                        "auth = \"xoauth2\" needs oauth".into(),
                    ),
                    (_, None) => problem(
                        format!("{at}.username"),
                        "auth = \"xoauth2\" needs the mailbox's username".into(),
                    ),
                    (Some(o), Some(_)) => {
                        for (k, m) in o.problems(&at) {
                            problem(k, m);
                        }
                    }
                }
            }
            if let Some(ca) = &relay.ca_file {
                if !ca.is_file() {
                    problem(
                        format!("{at}.ca_file"),
                        format!("{} does not exist", ca.display()),
                    );
                }
            }
        }
        for (key, team) in &self.teams {
            for (i, address) in team.addresses.iter().enumerate() {
                let at = format!("teams.{key}.addresses[{i}]");
                match &address.relay {
                    Some(relay) if !self.relays.contains_key(relay) => problem(
                        format!("{at}.relay"),
                        format!("unknown relay {relay:?} (configured: {})", self.relay_names()),
                    ),
                    None if self.relays.len() > 1 && !self.relays.contains_key("default") => {
                        problem(
                            format!("{at}.relay"),
                            format!(
                                "several relays are configured ({}) and none is named \"default\": say which one this address uses",
                                self.relay_names()
                            ),
                        )
                    }
                    _ => {}
                }
                if let Some(copy) = &address.sent_copy {
                    let is_imap = self
                        .channels
                        .get(&copy.channel)
                        .is_some_and(|c| c.kind == ChannelKind::Imap);
                    if !is_imap {
                        problem(
                            format!("{at}.sent_copy.channel"),
                            format!("{:?} is not an imap channel", copy.channel),
                        );
                    }
                }
                if let Some(name) = &address.name {
                    if name.chars().any(|c| c.is_control()) {
                        problem(
                            format!("{at}.name"),
                            "must not hold control characters (CR, LF …)".into(),
                        );
                    }
                }
            }
        }
        for (key, pipeline) in &self.pipelines {
            if let Some(status) = &pipeline.status_after_reply {
                if !pipeline.statuses.iter().any(|s| &s.name == status) {
                    problem(
                        format!("pipelines.{key}.status_after_reply"),
                        format!("{status:?} is not one of this pipeline's statuses"),
                    );
                }
            }
        }
        for (key, agent) in &self.agents {
            if let Some(Err(e)) = agent.api_token.as_ref().map(Secret::resolve) {
                problem(format!("agents.{key}.api_token"), e);
            }
        }
        if self.instance.mailbox_lease_secs < 3 {
            problem(
                "instance.mailbox_lease_secs".into(),
                "must be at least 3 (it is renewed every third)".into(),
            );
        }
        if let Some(name) = &self.instance.name {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                problem(
                    "instance.name".into(),
                    "must be a non-empty single line".into(),
                );
            }
        }
        let outbox = &self.outbox;
        for (field, value) in [
            ("max_attempts", u64::from(outbox.max_attempts)),
            ("retry_base_ms", outbox.retry_base_ms),
            ("lease_secs", outbox.lease_secs),
            ("poll_interval_ms", outbox.poll_interval_ms),
        ] {
            if value == 0 {
                problem(format!("outbox.{field}"), "must be at least 1".into());
            }
        }
    }

    fn relay_names(&self) -> String {
        let names: Vec<&str> = self.relays.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// The relay mail from `address` (of `team`) goes through, if any.
    pub fn relay_for(&self, team: &str, address: &str) -> Option<(&str, &RelayConfig)> {
        let chosen = self
            .teams
            .get(team)
            .and_then(|t| {
                t.addresses
                    .iter()
                    .find(|a| a.address.eq_ignore_ascii_case(address))
            })
            .and_then(|a| a.relay.as_deref());
        let name = match chosen {
            Some(name) => name,
            None if self.relays.len() == 1 => self.relays.keys().next()?,
            None => "default",
        };
        self.relays
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
    }

    /// Settings that work but deserve a second look; `mailroom check` prints them.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings: Vec<Problem> = self
            .channels
            .iter()
            .filter(|(_, c)| c.kind == ChannelKind::Imap && c.tls == TlsMode::None)
            .map(|(key, _)| Problem {
                key: format!("channels.{key}.tls"),
                message: "plaintext IMAP: the password and all mail cross the network unencrypted"
                    .into(),
            })
            .collect();
        for (key, relay) in &self.relays {
            if relay.tls == TlsMode::None {
                warnings.push(Problem {
                    key: format!("relays.{key}.tls"),
                    message:
                        "plaintext SMTP: credentials and replies cross the network unencrypted"
                            .into(),
                });
            }
        }
        if self.relays.is_empty() {
            warnings.push(Problem {
                key: "relays".into(),
                message: "no SMTP relay is configured: replies cannot be sent until one is".into(),
            });
        }
        warnings
    }

    /// The channel `mailroom ingest` uses when `--channel` is not given: the
    /// only pipe channel, if there is exactly one.
    pub fn default_pipe_channel(&self) -> Result<&str, String> {
        let pipes: Vec<&str> = self
            .channels
            .iter()
            .filter(|(_, c)| c.kind == ChannelKind::Pipe)
            .map(|(k, _)| k.as_str())
            .collect();
        match pipes.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "no channel with kind = \"pipe\" is configured; name one with --channel (configured: {})",
                self.channel_names()
            )),
            many => Err(format!(
                "several pipe channels are configured ({}); choose one with --channel",
                many.join(", ")
            )),
        }
    }

    pub fn channel_names(&self) -> String {
        self.channels.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// `MAILROOM_SECTION__KEY` variables only: every config key lives in a
/// section, and this keeps `MAILROOM_CONFIG`, `MAILROOM_LOG` and the
/// `MAILROOM_DATABASE_URL` shorthand from being read as keys.
fn nested_env_vars() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("MAILROOM_") && k.contains("__"))
        .collect()
}

fn looks_like_address(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts validation names each of `expected`; returns every key it named.
    fn assert_problems(config: &Config, expected: &[&str]) -> Vec<String> {
        let keys: Vec<String> = config.validate().into_iter().map(|p| p.key).collect();
        for key in expected {
            assert!(keys.iter().any(|k| k == key), "missing {key} in {keys:?}");
        }
        keys
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("mailroom.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn shipped_config_is_valid() {
        let config = Config::load(Path::new("config/mailroom.toml")).expect("shipped config loads");
        assert!(config.channels.contains_key("spool"));
        assert_eq!(config.default_pipe_channel().unwrap(), "pipe");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            [database]
            url = "mysql://nope"
            [pipelines.p]
            statuses = [{ name = "open", kind = "open" }, { name = "open", kind = "waiting" }]
            default_status = "missing"
            [teams.t]
            addresses = [{ address = "not-an-address", default = true }]
            [channels.c]
            kind = "maildir"
            team = "ghost"
            pipeline = "p"
            "#,
        );
        let Err(ConfigError::Invalid { problems, .. }) = Config::load(&path) else {
            panic!("expected validation problems");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "database.url",
            "pipelines.p.statuses[1].name",
            "pipelines.p.statuses",
            "pipelines.p.default_status",
            "teams.t.addresses[0].address",
            "channels.c.team",
            "channels.c.path",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let secret = Secret::File { file };
        assert_eq!(secret.resolve().unwrap(), "s3cret");
        assert!(!format!("{:?}", Secret::Inline("s3cret".into())).contains("s3cret"));
        let missing = Secret::Env {
            env: "MAILROOM_TEST_SURELY_UNSET".into(),
        };
        assert!(missing
            .resolve()
            .unwrap_err()
            .contains("MAILROOM_TEST_SURELY_UNSET"));
    }

    #[test]
    fn imap_channels_name_what_they_lack() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            [database]
            url = "sqlite://x.db"
            [pipelines.p]
            statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
            [teams.t]
            addresses = [{ address = "s@example.com" }]
            [channels.a]
            kind = "imap"
            team = "t"
            pipeline = "p"
            after = "move"
            tls = "none"
            [channels.b]
            kind = "imap"
            team = "t"
            pipeline = "p"
            host = "imap.example.com"
            username = "u"
            auth = "xoauth2"
            [channels.b.oauth]
            provider = "custom"
            "#,
        );
        let config = Config::load_unvalidated(&path).unwrap();
        let keys = assert_problems(
            &config,
            &[
                "channels.a.host",
                "channels.a.username",
                "channels.a.password",
                "channels.a.move_to",
                "channels.b.oauth.token_url",
                "channels.b.oauth.client_id",
                "channels.b.oauth.refresh_token",
            ],
        );
        assert!(
            !keys.iter().any(|k| k == "channels.b.password"),
            "xoauth2 needs no password"
        );
        let warnings: Vec<String> = config.warnings().into_iter().map(|p| p.key).collect();
        assert_eq!(warnings, vec!["channels.a.tls", "relays"]);
    }

    #[test]
    fn unknown_channel_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            [database]
            url = "sqlite://x.db"
            [channels.c]
            kind = "pipe"
            team = "t"
            pipeline = "p"
            pathh = "typo"
            "#,
        );
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("pathh"), "{err}");
    }

    #[test]
    fn relays_and_reply_settings_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
            [database]
            url = "sqlite://x.db"
            [outbox]
            lease_secs = 30
            [relays.a]
            host = "smtp.a.test"
            timeout_secs = 60
            [relays.b]
            host = "smtp.b.test"
            auth = "xoauth2"
            [pipelines.p]
            statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
            status_after_reply = "waiting"
            [teams.t]
            addresses = [
              { address = "a@t.test", relay = "c" },
              { address = "b@t.test", sent_copy = { channel = "pipe" } },
            ]
            [channels.pipe]
            kind = "pipe"
            team = "t"
            pipeline = "p"
            "#,
        );
        let config = Config::load_unvalidated(&path).unwrap();
        assert_problems(
            &config,
            &[
                "relays.a.timeout_secs",
                "relays.b.oauth",
                "teams.t.addresses[0].relay",
                "teams.t.addresses[1].relay",
                "teams.t.addresses[1].sent_copy.channel",
                "pipelines.p.status_after_reply",
            ],
        );
        assert!(config.relay_for("t", "a@t.test").is_none());
    }
}
