//! Typed configuration: one TOML file, every key overridable from the
//! environment, validated as a whole so `mailroom check` can list every
//! problem at once with the key that has it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod channel;
mod validate;

pub use channel::{
    After, ChannelConfig, ChannelKind, ChannelSettings, FirstSync, FormConfig, FormFields,
    ImapConfig, MaildirAfter, MaildirConfig, Route, WebhookConfig,
};
pub use validate::Problems;

/// Where the config file is looked for when neither `--config` nor
/// `MAILROOM_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config/mailroom.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
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
    pub notifications: NotificationsConfig,
    #[serde(default)]
    pub agent_mail: AgentMailConfig,
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
    /// Most recipients (To, Cc and Bcc together) one reply may have; more
    /// are refused when the reply is queued.
    pub max_recipients: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: 10,
            max_recipients: 300,
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
    /// The shape of a message, beyond its size: MIME parts, nesting depth
    /// (multiparts and attached messages), the header section's fields and
    /// bytes, addresses in one address header, decoded attachment bytes.
    /// A message over one is refused (pipe) or quarantined, named.
    pub max_parts: usize,
    pub max_depth: usize,
    pub max_header_fields: usize,
    pub max_header_bytes: usize,
    pub max_addresses: usize,
    pub max_attachment_bytes: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 50 * 1024 * 1024,
            parse_timeout_ms: 10_000,
            batch_size: 256,
            max_attempts: 5,
            max_parts: 1000,
            max_depth: 20,
            max_header_fields: 2000,
            max_header_bytes: 256 * 1024,
            max_addresses: 2000,
            max_attachment_bytes: 100 * 1024 * 1024,
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
    /// A client has this long to send its request body; a slower one is
    /// answered 408 and nothing is stored. Once a submission is received,
    /// the answer says what was committed, however long that takes.
    pub request_timeout_secs: u64,
    /// A connection must send a whole request head within this long of
    /// opening (or of its previous answer); otherwise it is closed.
    pub header_timeout_secs: u64,
    /// A connection that moves no bytes either way for this long is closed.
    pub idle_timeout_secs: u64,
    /// Connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: None,
            max_body_bytes: 25 * 1024 * 1024,
            request_timeout_secs: 30,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 512,
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
    /// Colour in text logs: `auto` (only when stderr is a terminal, so
    /// journald and files get plain text), `always` or `never`.
    pub color: LogColor,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    #[default]
    Auto,
    Always,
    Never,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            color: LogColor::Auto,
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
    /// When a parent that arrives late shows two tickets are one
    /// conversation, merge the later ticket into the earlier one if both
    /// have the same requester and no agent has worked on the later one.
    /// Otherwise (the default) the link is recorded on both timelines for
    /// an agent to merge.
    #[serde(default)]
    pub merge_late_parents: bool,
    /// Opt-in: a message with no threading headers, from a contact of an
    /// open ticket with the same subject (without `Re:`, `[#n]` …) whose
    /// last message is at most this many days old, joins that ticket.
    pub thread_by_subject_days: Option<u32>,
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
    /// Notification mail to agents; none when unset.
    pub notify: Option<NotifyConfig>,
}

/// Who hears of what on a team, by email. Agents answer the notification
/// from their mail client; the answer comes back to `address` (plus a
/// per-ticket, per-agent token), so it must be one of the team's
/// addresses whose mail reaches mailroom.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// From and Reply-To of notifications (with `+token` for the reply).
    pub address: String,
    /// Display name; "<team name> notifications" when unset.
    pub name: Option<String>,
    #[serde(default = "audience_team")]
    pub new_ticket: Vec<Audience>,
    #[serde(default = "audience_owner_followers")]
    pub customer_reply: Vec<Audience>,
    #[serde(default = "audience_assignee")]
    pub assigned: Vec<Audience>,
    #[serde(default = "audience_mentioned")]
    pub mention: Vec<Audience>,
}

/// Who a notification goes to. `owner` falls back to the whole team while
/// a ticket has no owner.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    Team,
    Owner,
    Followers,
    Assignee,
    Mentioned,
}

fn audience_team() -> Vec<Audience> {
    vec![Audience::Team]
}
fn audience_owner_followers() -> Vec<Audience> {
    vec![Audience::Owner, Audience::Followers]
}
fn audience_assignee() -> Vec<Audience> {
    vec![Audience::Assignee]
}
fn audience_mentioned() -> Vec<Audience> {
    vec![Audience::Mentioned]
}

/// Notification events an agent may mute.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    NewTicket,
    CustomerReply,
    Assigned,
    Mention,
}

impl NotifyEvent {
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::NewTicket => "new_ticket",
            NotifyEvent::CustomerReply => "customer_reply",
            NotifyEvent::Assigned => "assigned",
            NotifyEvent::Mention => "mention",
        }
    }
    pub fn from_name(name: &str) -> Option<NotifyEvent> {
        [
            NotifyEvent::NewTicket,
            NotifyEvent::CustomerReply,
            NotifyEvent::Assigned,
            NotifyEvent::Mention,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }
}

/// Server-wide settings for mail to agents and other automatic mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// How long the reply token of a notification stays valid.
    pub token_days: u32,
    /// Automatic mail (notifications, answers to commands) to any one
    /// address per hour; more is held back (shown in `mailroom status`).
    pub max_per_address_per_hour: u32,
    /// How often pending notifications and agents' mail are looked at.
    pub poll_interval_ms: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            token_days: 30,
            max_per_address_per_hour: 20,
            poll_interval_ms: 500,
        }
    }
}

/// How agents' emailed answers are authenticated beyond the reply token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentMailConfig {
    pub dmarc: DmarcCheck,
    /// The authserv-id of your own MTA: its `Authentication-Results`
    /// (the topmost one only, which it wrote) saying `dmarc=pass` counts,
    /// so SPF-aligned mail passes too. mailroom itself sees no connecting
    /// IP, so on its own it can only check aligned DKIM signatures.
    pub authserv_id: Option<String>,
}

/// When an agent's From domain must pass DMARC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DmarcCheck {
    /// Whenever the domain publishes a DMARC record (any policy).
    #[default]
    Published,
    /// Only where the policy is `quarantine` or `reject`.
    Enforced,
    /// Never (the reply token and the From are all that is checked).
    Off,
}

pub(crate) fn yes() -> bool {
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
    /// Notification mail this agent does not want.
    #[serde(default)]
    pub mute: Vec<NotifyEvent>,
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
    #[error("cannot read config {path}: {message}")]
    Load { path: String, message: String },
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

    /// A config from TOML text alone (no file, no environment), validated:
    /// for the fuzzers and for checking a config that is not on disk.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|source| ConfigError::Load {
                path: "(text)".into(),
                message: explain(&source.to_string()),
            })?;
        let problems = config.validate();
        match problems.is_empty() {
            true => Ok(config),
            false => Err(ConfigError::Invalid {
                path: "(text)".into(),
                problems,
            }),
        }
    }

    pub fn load_unvalidated(path: &Path) -> Result<Config, ConfigError> {
        let load_err = |source: config::ConfigError| ConfigError::Load {
            path: path.display().to_string(),
            message: explain(&source.to_string()),
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

    /// The channel `mailroom ingest` uses when `--channel` is not given: the
    /// only pipe channel, if there is exactly one.
    pub fn default_pipe_channel(&self) -> Result<&str, String> {
        let pipes: Vec<&str> = self
            .channels
            .iter()
            .filter(|(_, c)| c.kind() == ChannelKind::Pipe)
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

/// serde's "unknown field `x`, expected one of `a`, `b` for key `k`" as
/// the full key and the nearest known name, which is what a typo needs.
fn explain(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let at = rest
        .rsplit_once(" for key `")
        .map(|(_, k)| k.trim_end_matches('`'))
        .filter(|k| !k.is_empty());
    let known: Vec<&str> = rest
        .split(" for key `")
        .next()
        .unwrap_or_default()
        .split('`')
        .skip(1)
        .step_by(2)
        .collect();
    let key = match at {
        Some(at) => format!("{at}.{field}"),
        None => field.to_string(),
    };
    let nearest = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(field, k), *k))
        .filter(|(distance, k)| *distance <= (k.len() / 3).max(2))
        .min();
    let hint = match nearest {
        Some((_, k)) => format!("; did you mean `{k}`?"),
        None if known.is_empty() => String::new(),
        None => format!(" (known keys here: {})", known.join(", ")),
    };
    let kind = rest
        .find(" (for a channel with kind = ")
        .map(|i| rest[i..].split(')').next().unwrap_or_default().to_string() + ")")
        .unwrap_or_default();
    format!("{key}: unknown key{kind}{hint}")
}

/// `MAILROOM_SECTION__KEY` variables only: every config key lives in a
/// section, and this keeps `MAILROOM_CONFIG`, `MAILROOM_LOG` and the
/// `MAILROOM_DATABASE_URL` shorthand from being read as keys.
fn nested_env_vars() -> config::Map<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("MAILROOM_") && k.contains("__"))
        .collect()
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
    fn each_channel_kind_takes_only_its_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let channel = |kind: &str, extra: &str| {
            format!(
                "[database]\nurl = \"sqlite://x.db\"\n[channels.c]\nkind = \"{kind}\"\nteam = \"t\"\npipeline = \"p\"\n{extra}\n"
            )
        };
        for (kind, foreign) in [
            ("maildir", "host = \"imap.example.com\""),
            ("pipe", "path = \"spool\""),
            ("imap", "allowed_origins = [\"https://x.test\"]"),
            ("webhook", "fetch_batch = 5"),
            ("form", "auth_token = \"t\""),
        ] {
            let path = write(&dir, &channel(kind, foreign));
            let err = Config::load(&path).unwrap_err().to_string();
            let key = foreign.split(' ').next().unwrap();
            assert!(err.contains(key), "{kind} with {key}: {err}");
        }
        let path = write(&dir, &channel("carrier-pigeon", ""));
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("unknown channel kind"), "{err}");
        let path = write(
            &dir,
            &channel("maildir", "path = \"spool\"\nafter = \"keep\""),
        );
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("keep"),
            "a maildir can only move or delete: {err}"
        );
    }

    #[test]
    fn channel_keys_are_read_as_leniently_as_the_rest() {
        // Environment overrides arrive as numbers when they look like one.
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[database]\nurl = \"sqlite://x.db\"\n[channels.c]\nkind = \"imap\"\nteam = \"t\"\npipeline = \"p\"\n\
             host = \"imap.example.com\"\nusername = 100234\npassword = \"x\"\nfetch_batch = \"50\"\n",
        );
        let config = Config::load_unvalidated(&path).unwrap();
        let imap = config.channels["c"].imap().unwrap();
        assert_eq!((imap.username.as_str(), imap.fetch_batch), ("100234", 50));
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
