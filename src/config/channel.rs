//! Channels: where mail comes from. A channel has a team, a pipeline and
//! whether it creates tickets; everything else depends on its `kind`, so
//! each kind is its own struct with its own keys and its own validation. A
//! key of another kind (a `host` on a maildir) is refused when the file is
//! read, with the key named.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{yes, ImapAuth, OAuthConfig, Problems, Secret, TlsMode};

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub team: String,
    pub pipeline: String,
    /// A channel that does not create tickets only appends to existing ones.
    pub create_tickets: bool,
    /// Which team a message goes to: the channel's, or the team whose
    /// address it was sent to (one inbox that receives several teams'
    /// forwarded mail).
    pub route: Route,
    pub settings: ChannelSettings,
}

impl ChannelConfig {
    /// The channel's secrets, resolved (a rotated password file counts as
    /// a change even when the config text is the same).
    pub fn secrets(&self) -> Vec<Result<String, String>> {
        let all: Vec<&Secret> = match &self.settings {
            ChannelSettings::Imap(imap) => imap
                .password
                .iter()
                .chain(
                    imap.oauth
                        .iter()
                        .flat_map(|o| o.client_secret.iter().chain(o.refresh_token.iter())),
                )
                .collect(),
            ChannelSettings::Webhook(hook) => hook
                .auth_token
                .iter()
                .chain(hook.signing_secret.iter())
                .collect(),
            ChannelSettings::Form(form) => form.signing_secret.iter().collect(),
            ChannelSettings::Maildir(_) | ChannelSettings::Pipe => Vec::new(),
        };
        all.into_iter().map(Secret::resolve).collect()
    }
}

/// How a channel picks each message's team.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The channel's `team`.
    #[default]
    Team,
    /// The first team address among the envelope recipient (the pipe's
    /// `--recipient`), Delivered-To, X-Original-To, X-Forwarded-To, To and
    /// Cc; the channel's `team` when none is one.
    Recipient,
}

/// What a channel of each kind needs.
#[derive(Debug, Clone)]
pub enum ChannelSettings {
    /// `mailroom ingest` fed by an MTA or by hand.
    Pipe,
    /// A watched Maildir folder (the laptop default: `./spool`).
    Maildir(MaildirConfig),
    /// An IMAP mailbox, with IDLE where the server offers it.
    Imap(Box<ImapConfig>),
    /// Raw RFC 5322 messages posted to `POST /inbound/{channel}`.
    Webhook(WebhookConfig),
    /// A web form posted to `POST /forms/{channel}`.
    Form(Box<FormConfig>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Pipe,
    Maildir,
    Imap,
    Webhook,
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

impl ChannelConfig {
    pub fn kind(&self) -> ChannelKind {
        match &self.settings {
            ChannelSettings::Pipe => ChannelKind::Pipe,
            ChannelSettings::Maildir(_) => ChannelKind::Maildir,
            ChannelSettings::Imap(_) => ChannelKind::Imap,
            ChannelSettings::Webhook(_) => ChannelKind::Webhook,
            ChannelSettings::Form(_) => ChannelKind::Form,
        }
    }

    pub fn imap(&self) -> Option<&ImapConfig> {
        match &self.settings {
            ChannelSettings::Imap(imap) => Some(imap),
            _ => None,
        }
    }

    pub fn webhook(&self) -> Option<&WebhookConfig> {
        match &self.settings {
            ChannelSettings::Webhook(hook) => Some(hook),
            _ => None,
        }
    }

    pub fn form(&self) -> Option<&FormConfig> {
        match &self.settings {
            ChannelSettings::Form(form) => Some(form),
            _ => None,
        }
    }
}

/// The keys every channel has, read before the kind's own.
#[derive(Deserialize)]
struct Common {
    kind: String,
    team: String,
    pipeline: String,
    #[serde(default = "yes")]
    create_tickets: bool,
    #[serde(default)]
    route: Route,
}

impl<'de> Deserialize<'de> for ChannelConfig {
    /// The common keys first, then the rest as the kind's own struct. Both
    /// go through the config crate's values, so the same lenient reading
    /// applies as everywhere else (`MAILROOM_CHANNELS__X__USERNAME=1234`
    /// is still a string).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = config::Value::deserialize(deserializer)?
            .into_table()
            .map_err(|e| D::Error::custom(e.to_string()))?;
        let (common, rest): (config::Map<String, config::Value>, _) =
            table.into_iter().partition(|(k, _)| {
                ["kind", "team", "pipeline", "create_tickets", "route"].contains(&k.as_str())
            });
        let table = |map| config::Value::new(None, config::ValueKind::Table(map));
        let common: Common = table(common)
            .try_deserialize()
            .map_err(|e| D::Error::custom(e.to_string()))?;
        let rest = table(rest);
        let kind = |e: config::ConfigError| {
            D::Error::custom(format!("{e} (for a channel with kind = {:?})", common.kind))
        };
        let settings = match common.kind.as_str() {
            "pipe" => {
                rest.try_deserialize::<PipeConfig>().map_err(kind)?;
                ChannelSettings::Pipe
            }
            "maildir" => ChannelSettings::Maildir(rest.try_deserialize().map_err(kind)?),
            "imap" => ChannelSettings::Imap(rest.try_deserialize().map_err(kind)?),
            "webhook" => ChannelSettings::Webhook(rest.try_deserialize().map_err(kind)?),
            "form" => ChannelSettings::Form(rest.try_deserialize().map_err(kind)?),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown channel kind {other:?}: expected pipe, maildir, imap, webhook or form"
                )))
            }
        };
        Ok(ChannelConfig {
            team: common.team,
            pipeline: common.pipeline,
            create_tickets: common.create_tickets,
            route: common.route,
            settings,
        })
    }
}

/// A pipe channel has no keys of its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipeConfig {}

/// What happens to a maildir file once its message is committed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MaildirAfter {
    /// Into `cur/`, flagged seen.
    #[default]
    Move,
    Delete,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaildirConfig {
    /// The folder whose `new/` is watched.
    #[serde(default)]
    pub path: PathBuf,
    /// How often to look into `new/`.
    #[serde(default = "default_maildir_poll")]
    pub poll_interval_ms: u64,
    #[serde(default)]
    pub after: MaildirAfter,
    /// A file in `new/` is taken once it has not changed for this long, so
    /// a copy still being written (`cp` straight into `new/`) is not read
    /// half-way. 0 trusts every writer to write into `tmp/` and rename.
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
}

fn default_maildir_poll() -> u64 {
    250
}

fn default_settle_ms() -> u64 {
    1000
}

impl MaildirConfig {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.add(format!("{at}.path"), "a maildir channel needs a path");
        }
        if self.poll_interval_ms == 0 {
            problems.add(format!("{at}.poll_interval_ms"), "must be at least 1");
        }
        if self.settle_ms > 600_000 {
            problems.add(
                format!("{at}.settle_ms"),
                "at most 600000 (10 minutes); 0 takes files at once",
            );
        }
    }
}

/// What happens to an IMAP message once it is committed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum After {
    #[default]
    MarkSeen,
    Move,
    Delete,
    Keep,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Server host name (also the name its certificate must carry).
    #[serde(default)]
    pub host: String,
    /// 993 for implicit TLS, 143 otherwise.
    pub port: Option<u16>,
    /// `implicit` (the default), `starttls`, or `none` (plaintext; check warns).
    #[serde(default)]
    pub tls: TlsMode,
    /// Extra CA certificates (PEM) to trust besides the system roots.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: String,
    pub password: Option<Secret>,
    /// `login` (the default), `plain` (AUTHENTICATE PLAIN) or `xoauth2`
    /// (Microsoft 365, Google; needs `oauth`).
    #[serde(default)]
    pub auth: ImapAuth,
    /// Where XOAUTH2 access tokens come from.
    pub oauth: Option<OAuthConfig>,
    /// The folder to take mail from.
    #[serde(default = "default_folder")]
    pub folder: String,
    /// After commit: `mark_seen` (the default), `move` (to `move_to`),
    /// `delete` or `keep`.
    #[serde(default)]
    pub after: After,
    /// Destination folder for `after = "move"`.
    pub move_to: Option<String>,
    /// Where to move messages over `ingest.max_message_bytes`; they are left
    /// in place and reported when unset.
    pub oversize_folder: Option<String>,
    /// Use IDLE when the server offers it.
    #[serde(default = "yes")]
    pub idle: bool,
    /// Without IDLE: how often to look for new mail.
    #[serde(default = "default_imap_poll")]
    pub poll_interval_ms: u64,
    /// What to take on the very first connect to a mailbox that already
    /// holds mail: `all` (a backfill), `unseen` (unread mail only), or `new`.
    #[serde(default)]
    pub first_sync: FirstSync,
    /// Messages fetched per round trip (a chunk also closes at 32 MiB).
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: usize,
    /// The longest any command may take (a FETCH gets more per megabyte).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// How long the server may keep refusing the same message (in at least
    /// three sessions) before the mailbox passes over it: it stays on the
    /// server, reported in `mailroom status`, the log and the metrics.
    /// 0: wait for it for ever.
    #[serde(default = "default_pass_over_refused_after")]
    pub pass_over_refused_after_secs: u64,
}

fn default_folder() -> String {
    "INBOX".into()
}
fn default_imap_poll() -> u64 {
    30_000
}
fn default_fetch_batch() -> usize {
    200
}
fn default_command_timeout() -> u64 {
    60
}
fn default_pass_over_refused_after() -> u64 {
    3600
}

impl ImapConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            _ => 143,
        })
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.command_timeout_secs)
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        let oauth = self.auth == ImapAuth::Xoauth2;
        for (field, missing) in [
            ("host", self.host.is_empty()),
            ("username", self.username.is_empty()),
            ("password", self.password.is_none() && !oauth),
            ("oauth", self.oauth.is_none() && oauth),
        ] {
            if missing {
                problems.add(
                    format!("{at}.{field}"),
                    format!("an imap channel needs a {field}"),
                );
            }
        }
        if let Some(Err(e)) = self.password.as_ref().map(Secret::resolve) {
            problems.add(format!("{at}.password"), e);
        }
        if let (true, Some(o)) = (oauth, &self.oauth) {
            o.validate(at, problems);
        }
        if self.after == After::Move && self.move_to.is_none() {
            problems.add(
                format!("{at}.move_to"),
                "after = \"move\" needs a move_to folder",
            );
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                problems.add(
                    format!("{at}.ca_file"),
                    format!("{} does not exist", ca.display()),
                );
            }
        }
        if self.fetch_batch == 0 {
            problems.add(format!("{at}.fetch_batch"), "must be at least 1");
        }
        if self.poll_interval_ms == 0 {
            problems.add(format!("{at}.poll_interval_ms"), "must be at least 1");
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Callers must send `Authorization: Bearer <token>`.
    pub auth_token: Option<Secret>,
    /// Callers must sign the body with HMAC-SHA256 (see README).
    pub signing_secret: Option<Secret>,
}

impl WebhookConfig {
    fn validate(&self, at: &str, problems: &mut Problems) {
        if self.auth_token.is_none() && self.signing_secret.is_none() {
            problems.add(
                format!("{at}.auth_token"),
                "a webhook channel needs auth_token or signing_secret: it must not accept anonymous posts",
            );
        }
        // auth_token is checked with the other caller tokens.
        problems.secret(format!("{at}.signing_secret"), self.signing_secret.as_ref());
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormConfig {
    /// Server-to-server posts must be signed with HMAC-SHA256 (see README).
    pub signing_secret: Option<Secret>,
    /// Which form field carries each part of the ticket.
    #[serde(default)]
    pub fields: FormFields,
    /// Fields that must be present and non-empty (default: email and body).
    pub required: Option<Vec<String>>,
    /// Browser forms: Origin headers accepted; others get 403.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Browser forms: a field humans leave empty; a filled one is dropped.
    pub honeypot: Option<String>,
    /// Submissions per minute per client IP (browser forms: default 10).
    pub rate_limit_per_minute: Option<u32>,
    /// Thread submissions like mail (default: every submission is a new ticket).
    #[serde(default)]
    pub threaded: bool,
    /// Status a new ticket starts in (default: the pipeline's).
    pub status: Option<String>,
    /// Most fields a submission may have (files not counted); more get 413.
    #[serde(default = "default_form_max_fields")]
    pub max_fields: usize,
    /// Longest value of one (non-file) field, the message body included;
    /// a longer one gets 413.
    #[serde(default = "default_form_max_field_bytes")]
    pub max_field_bytes: usize,
    /// Most files a submission may carry; more get 413.
    #[serde(default = "default_form_max_files")]
    pub max_files: usize,
    /// Most bytes of all files together; more get 413. The whole body is
    /// limited by `http.max_body_bytes` as well.
    #[serde(default = "default_form_max_file_bytes")]
    pub max_file_bytes: usize,
}

fn default_form_max_fields() -> usize {
    100
}

fn default_form_max_field_bytes() -> usize {
    1024 * 1024
}

fn default_form_max_files() -> usize {
    10
}

fn default_form_max_file_bytes() -> usize {
    20 * 1024 * 1024
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

impl FormConfig {
    fn validate(
        &self,
        at: &str,
        pipeline: Option<(&str, &super::PipelineConfig)>,
        problems: &mut Problems,
    ) {
        if self.signing_secret.is_none() && self.allowed_origins.is_empty() {
            problems.add(
                format!("{at}.allowed_origins"),
                "a form needs signing_secret (server-to-server) or allowed_origins (browser forms)",
            );
        }
        problems.secret(format!("{at}.signing_secret"), self.signing_secret.as_ref());
        problems.range(
            format!("{at}.max_fields"),
            self.max_fields as u64,
            4,
            10_000,
        );
        problems.range(
            format!("{at}.max_field_bytes"),
            self.max_field_bytes as u64,
            1024,
            1 << 30,
        );
        problems.range(format!("{at}.max_files"), self.max_files as u64, 0, 1_000);
        problems.range(
            format!("{at}.max_file_bytes"),
            self.max_file_bytes as u64,
            0,
            1 << 30,
        );
        if self.rate_limit_per_minute == Some(0) {
            problems.add(format!("{at}.rate_limit_per_minute"), "must be at least 1");
        }
        if let Some(status) = &self.status {
            let known = pipeline.is_some_and(|(_, p)| p.statuses.iter().any(|s| &s.name == status));
            if !known {
                problems.add(
                    format!("{at}.status"),
                    format!(
                        "{status:?} is not a status of pipeline {}",
                        pipeline.map_or("?", |(name, _)| name)
                    ),
                );
            }
        }
    }
}

/// Checks every channel; `config` gives what channels refer to.
pub(super) fn validate(config: &super::Config, problems: &mut Problems) {
    for (key, channel) in &config.channels {
        let at = format!("channels.{key}");
        if !config.teams.contains_key(&channel.team) {
            problems.add(
                format!("{at}.team"),
                format!("unknown team {:?}", channel.team),
            );
        }
        let pipeline = config.pipelines.get(&channel.pipeline);
        if pipeline.is_none() {
            problems.add(
                format!("{at}.pipeline"),
                format!("unknown pipeline {:?}", channel.pipeline),
            );
        }
        match &channel.settings {
            ChannelSettings::Pipe => {}
            ChannelSettings::Maildir(maildir) => maildir.validate(&at, problems),
            ChannelSettings::Imap(imap) => imap.validate(&at, problems),
            ChannelSettings::Webhook(hook) => hook.validate(&at, problems),
            ChannelSettings::Form(form) => form.validate(
                &at,
                pipeline.map(|p| (channel.pipeline.as_str(), p)),
                problems,
            ),
        }
        let listens = matches!(channel.kind(), ChannelKind::Webhook | ChannelKind::Form);
        if listens && config.http.bind.is_none() {
            problems.add(
                "http.bind",
                format!(
                    "channel {key} is a {}: set http.bind to listen",
                    channel.kind().as_str()
                ),
            );
        }
    }
}
