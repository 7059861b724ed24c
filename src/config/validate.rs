//! Whole-config validation: every problem at once, each with the key that
//! has it, so `mailroom check` can list them all. One function per section;
//! channel kinds check themselves (`channel.rs`).

use std::collections::{HashMap, HashSet};

use super::{
    channel, ChannelKind, Config, FollowUp, ImapAuth, OAuthConfig, Problem, Secret, StatusKind,
    TlsMode,
};

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Shortest secret, signing key or API token accepted: anything shorter
/// can be guessed or was pasted by mistake.
pub const MIN_SECRET_LEN: usize = 16;

impl Problems {
    /// A secret that must resolve and be at least [`MIN_SECRET_LEN`] long;
    /// its value when it is usable.
    pub fn secret(&mut self, key: impl Into<String>, secret: Option<&Secret>) -> Option<String> {
        let key = key.into();
        match secret?.resolve() {
            Err(e) => self.add(key, e),
            Ok(value) if value.trim().chars().count() < MIN_SECRET_LEN => self.add(
                key,
                format!("must be at least {MIN_SECRET_LEN} characters (generate one with `openssl rand -hex 32`)"),
            ),
            Ok(value) => return Some(value),
        }
        None
    }

    /// A limit that must lie in `min..=max`.
    pub fn range(&mut self, key: impl Into<String>, value: u64, min: u64, max: u64) {
        if value < min || value > max {
            self.add(key, format!("must be between {min} and {max} (is {value})"));
        }
    }
}

impl Config {
    /// Every problem found, each with its key. Empty means the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Problems::default();
        self.validate_storage(&mut problems);
        self.validate_pipelines(&mut problems);
        self.validate_teams(&mut problems);
        self.validate_agents(&mut problems);
        channel::validate(self, &mut problems);
        self.validate_relays(&mut problems);
        self.validate_addresses(&mut problems);
        self.validate_instance(&mut problems);
        self.validate_http(&mut problems);
        self.validate_tokens(&mut problems);
        problems.0
    }

    fn validate_http(&self, problems: &mut Problems) {
        let http = &self.http;
        if let Some(bind) = &http.bind {
            if bind.parse::<std::net::SocketAddr>().is_err() {
                problems.add(
                    "http.bind",
                    format!("{bind:?} is not an address to listen on: write host:port, like 127.0.0.1:8025 or [::]:8025"),
                );
            }
        }
        const GIB: u64 = 1024 * 1024 * 1024;
        problems.range("http.max_body_bytes", http.max_body_bytes as u64, 1024, GIB);
        problems.range(
            "http.request_timeout_secs",
            http.request_timeout_secs,
            1,
            3600,
        );
        problems.range("http.header_timeout_secs", http.header_timeout_secs, 1, 300);
        problems.range("http.idle_timeout_secs", http.idle_timeout_secs, 1, 3600);
        problems.range(
            "http.max_connections",
            http.max_connections as u64,
            1,
            1_000_000,
        );
    }

    /// Every credential a caller presents (API tokens, webhook tokens) must
    /// be long enough and belong to one caller only: a token shared by two
    /// agents would act as whichever was read last.
    fn validate_tokens(&self, problems: &mut Problems) {
        let mut owners: HashMap<String, String> = HashMap::new();
        let mut claim = |problems: &mut Problems, key: String, token: Option<String>| {
            let Some(token) = token else { return };
            if let Some(other) = owners.insert(token, key.clone()) {
                problems.add(
                    key,
                    format!("the same token as {other}: every caller needs its own"),
                );
            }
        };
        for (key, agent) in &self.agents {
            let at = format!("agents.{key}.api_token");
            let token = problems.secret(&at, agent.api_token.as_ref());
            claim(problems, at, token);
        }
        for (key, channel) in &self.channels {
            if let Some(hook) = channel.webhook() {
                let at = format!("channels.{key}.auth_token");
                let token = problems.secret(&at, hook.auth_token.as_ref());
                claim(problems, at, token);
            }
        }
    }

    fn validate_storage(&self, problems: &mut Problems) {
        match self.database.url.resolve() {
            Ok(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres:")
                    || url.starts_with("postgresql:") => {}
            Ok(_) => problems.add("database.url", "must start with sqlite:// or postgres://"),
            Err(e) => problems.add("database.url", e),
        }
        for (key, value) in [
            (
                "database.max_connections",
                self.database.max_connections as usize,
            ),
            ("ingest.max_attempts", self.ingest.max_attempts as usize),
        ] {
            if value == 0 {
                problems.add(key, "must be at least 1");
            }
        }
        problems.secret("secret", self.secret.as_ref());
        let ingest = &self.ingest;
        const GIB: u64 = 1024 * 1024 * 1024;
        problems.range(
            "ingest.max_message_bytes",
            ingest.max_message_bytes,
            1024,
            4 * GIB,
        );
        problems.range(
            "ingest.parse_timeout_ms",
            ingest.parse_timeout_ms,
            100,
            600_000,
        );
        problems.range("ingest.batch_size", ingest.batch_size as u64, 1, 10_000);
        for (key, value, min, max) in [
            ("ingest.max_parts", ingest.max_parts as u64, 1, 1_000_000),
            ("ingest.max_depth", ingest.max_depth as u64, 1, 1_000),
            (
                "ingest.max_header_fields",
                ingest.max_header_fields as u64,
                10,
                1_000_000,
            ),
            (
                "ingest.max_header_bytes",
                ingest.max_header_bytes as u64,
                1024,
                64 * 1024 * 1024,
            ),
            (
                "ingest.max_addresses",
                ingest.max_addresses as u64,
                1,
                1_000_000,
            ),
            (
                "ingest.max_attachment_bytes",
                ingest.max_attachment_bytes,
                1024,
                16 * GIB,
            ),
        ] {
            problems.range(key, value, min, max);
        }
        problems.range(
            "outbox.max_recipients",
            self.outbox.max_recipients as u64,
            1,
            10_000,
        );
    }

    fn validate_pipelines(&self, problems: &mut Problems) {
        if self.pipelines.is_empty() {
            problems.add("pipelines", "define at least one pipeline");
        }
        for (key, pipeline) in &self.pipelines {
            let at = format!("pipelines.{key}");
            let mut seen = HashSet::new();
            for (i, status) in pipeline.statuses.iter().enumerate() {
                if status.name.trim().is_empty() {
                    problems.add(format!("{at}.statuses[{i}].name"), "must not be empty");
                }
                if !seen.insert(status.name.as_str()) {
                    problems.add(
                        format!("{at}.statuses[{i}].name"),
                        format!("status {:?} is listed twice", status.name),
                    );
                }
            }
            for kind in [StatusKind::Open, StatusKind::Closed] {
                if !pipeline.statuses.iter().any(|s| s.kind == kind) {
                    problems.add(
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
                    None => problems.add(
                        format!("{at}.default_status"),
                        format!("{default:?} is not one of this pipeline's statuses"),
                    ),
                    Some(s) if s.kind == StatusKind::Closed => problems.add(
                        format!("{at}.default_status"),
                        "a new ticket cannot start closed",
                    ),
                    Some(_) => {}
                }
            }
            if pipeline.new_ticket_after_days.is_some() && pipeline.follow_up != FollowUp::NewTicket
            {
                problems.add(
                    format!("{at}.new_ticket_after_days"),
                    "only applies with follow_up = \"new_ticket\"",
                );
            }
            if let Some(status) = &pipeline.status_after_reply {
                if !pipeline.statuses.iter().any(|s| &s.name == status) {
                    problems.add(
                        format!("{at}.status_after_reply"),
                        format!("{status:?} is not one of this pipeline's statuses"),
                    );
                }
            }
        }
    }

    fn validate_teams(&self, problems: &mut Problems) {
        if self.teams.is_empty() {
            problems.add("teams", "define at least one team");
        }
        let mut owners = HashMap::new();
        for (key, team) in &self.teams {
            let at = format!("teams.{key}");
            if team.addresses.is_empty() {
                problems.add(format!("{at}.addresses"), "needs at least one From address");
            }
            if team.addresses.iter().filter(|a| a.default).count() > 1 {
                problems.add(
                    format!("{at}.addresses"),
                    "only one address can be the default",
                );
            }
            for (i, address) in team.addresses.iter().enumerate() {
                if let Err(e) = crate::mail::address::check(&address.address) {
                    problems.add(format!("{at}.addresses[{i}].address"), e);
                }
                if let Some(other) = owners.insert(address.address.to_lowercase(), key) {
                    if other != key {
                        problems.add(
                            format!("{at}.addresses[{i}].address"),
                            format!("{} already belongs to team {other}", address.address),
                        );
                    }
                }
            }
            if let Some(notify) = &team.notify {
                let own = team
                    .addresses
                    .iter()
                    .any(|a| a.address.eq_ignore_ascii_case(&notify.address));
                if !own {
                    problems.add(
                        format!("{at}.notify.address"),
                        format!(
                            "{} is not one of the team's addresses; agents' answers to notifications must come back to a mailbox of the team",
                            notify.address
                        ),
                    );
                }
                if notify
                    .address
                    .split('@')
                    .next()
                    .is_some_and(|l| l.contains('+'))
                {
                    problems.add(
                        format!("{at}.notify.address"),
                        "must not contain '+': mailroom adds +<token> to it for replies",
                    );
                }
            }
        }
    }

    fn validate_agents(&self, problems: &mut Problems) {
        for (key, agent) in &self.agents {
            let at = format!("agents.{key}");
            if let Err(e) = crate::mail::address::check(&agent.email) {
                problems.add(format!("{at}.email"), e);
            }
            for team in &agent.teams {
                if !self.teams.contains_key(team) {
                    problems.add(format!("{at}.teams"), format!("unknown team {team:?}"));
                }
            }
        }
    }

    fn validate_relays(&self, problems: &mut Problems) {
        for (key, relay) in &self.relays {
            let at = format!("relays.{key}");
            if relay.host.trim().is_empty() {
                problems.add(format!("{at}.host"), "must not be empty");
            }
            if relay.pool_size == 0 {
                problems.add(format!("{at}.pool_size"), "must be at least 1");
            }
            if relay.timeout_secs == 0 {
                problems.add(format!("{at}.timeout_secs"), "must be at least 1");
            }
            if relay.timeout_secs >= self.outbox.lease_secs {
                problems.add(
                    format!("{at}.timeout_secs"),
                    format!(
                        "must be shorter than outbox.lease_secs ({}), or another instance may send the same reply while this one still waits",
                        self.outbox.lease_secs
                    ),
                );
            }
            let oauth = relay.auth == ImapAuth::Xoauth2;
            if relay.username.is_some() && relay.password.is_none() && !oauth {
                problems.add(
                    format!("{at}.password"),
                    "a username is set but no password (or set auth = \"xoauth2\" with oauth)",
                );
            }
            if relay.password.is_some() && relay.username.is_none() {
                problems.add(
                    format!("{at}.username"),
                    "a password is set but no username",
                );
            }
            if let Some(Err(e)) = relay.password.as_ref().map(Secret::resolve) {
                problems.add(format!("{at}.password"), e);
            }
            if oauth {
                match (&relay.oauth, &relay.username) {
                    (None, _) => {
                        problems.add(format!("{at}.oauth"), "auth = \"xoauth2\" needs oauth")
                    }
                    (_, None) => problems.add(
                        format!("{at}.username"),
                        "auth = \"xoauth2\" needs the mailbox's username",
                    ),
                    (Some(o), Some(_)) => o.validate(&at, problems),
                }
            }
            if let Some(ca) = &relay.ca_file {
                if !ca.is_file() {
                    problems.add(
                        format!("{at}.ca_file"),
                        format!("{} does not exist", ca.display()),
                    );
                }
            }
        }
    }

    /// Each team address: its relay, its Sent copy, its display name.
    fn validate_addresses(&self, problems: &mut Problems) {
        for (key, team) in &self.teams {
            for (i, address) in team.addresses.iter().enumerate() {
                let at = format!("teams.{key}.addresses[{i}]");
                match &address.relay {
                    Some(relay) if !self.relays.contains_key(relay) => problems.add(
                        format!("{at}.relay"),
                        format!("unknown relay {relay:?} (configured: {})", self.relay_names()),
                    ),
                    None if self.relays.len() > 1 && !self.relays.contains_key("default") => {
                        problems.add(
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
                        .is_some_and(|c| c.kind() == ChannelKind::Imap);
                    if !is_imap {
                        problems.add(
                            format!("{at}.sent_copy.channel"),
                            format!("{:?} is not an imap channel", copy.channel),
                        );
                    }
                }
                if address
                    .name
                    .as_deref()
                    .is_some_and(|n| n.chars().any(char::is_control))
                {
                    problems.add(
                        format!("{at}.name"),
                        "must not hold control characters (CR, LF …)",
                    );
                }
            }
        }
    }

    fn validate_instance(&self, problems: &mut Problems) {
        if self.instance.mailbox_lease_secs < 3 {
            problems.add(
                "instance.mailbox_lease_secs",
                "must be at least 3 (it is renewed every third)",
            );
        }
        if let Some(name) = &self.instance.name {
            if name.trim().is_empty() || name.chars().any(char::is_control) {
                problems.add("instance.name", "must be a non-empty single line");
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
                problems.add(format!("outbox.{field}"), "must be at least 1");
            }
        }
        let notifications = &self.notifications;
        problems.range(
            "notifications.token_days",
            u64::from(notifications.token_days),
            1,
            3650,
        );
        problems.range(
            "notifications.poll_interval_ms",
            notifications.poll_interval_ms,
            10,
            600_000,
        );
    }

    fn relay_names(&self) -> String {
        let names: Vec<&str> = self.relays.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Settings that work but deserve a second look; `mailroom check` prints them.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Problems::default();
        for (key, channel) in &self.channels {
            if channel.imap().is_some_and(|i| i.tls == TlsMode::None) {
                warnings.add(
                    format!("channels.{key}.tls"),
                    "plaintext IMAP: the password and all mail cross the network unencrypted",
                );
            }
        }
        for (key, relay) in &self.relays {
            if relay.tls == TlsMode::None {
                warnings.add(
                    format!("relays.{key}.tls"),
                    "plaintext SMTP: credentials and replies cross the network unencrypted",
                );
            }
        }
        if self.relays.is_empty() {
            warnings.add(
                "relays",
                "no SMTP relay is configured: replies cannot be sent until one is",
            );
        }
        warnings.0
    }
}

impl OAuthConfig {
    /// What is missing for this OAuth setup to get tokens, keyed under `at`.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.token_command.is_some() {
            return;
        }
        if self.token_url().is_none() {
            problems.add(
                format!("{at}.oauth.token_url"),
                "needed with provider = \"custom\"",
            );
        }
        if self.client_id.is_none() {
            problems.add(
                format!("{at}.oauth.client_id"),
                "needed for the refresh-token flow",
            );
        }
        match &self.refresh_token {
            None => problems.add(
                format!("{at}.oauth.refresh_token"),
                "needed for the refresh-token flow (or set token_command)",
            ),
            Some(secret) => {
                if let Err(e) = secret.resolve() {
                    problems.add(format!("{at}.oauth.refresh_token"), e);
                }
            }
        }
    }
}
