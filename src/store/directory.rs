//! Teams, agents, pipelines and channels come from the config file; at start
//! they are upserted into the store (by their config key) and the resulting
//! ids are kept in a [`Directory`] so the pipeline never looks them up again.
//! Who acts ([`Actor`]) and what they may do is decided against it.

use std::collections::HashMap;

use super::{Store, Tx};
use crate::config::{
    AgentConfig, ChannelKind, Config, FollowUp, PipelineConfig, Role, StatusKind, TeamConfig,
};

#[derive(Debug, Clone)]
pub struct TeamInfo {
    pub id: i64,
    pub key: String,
    /// The display name (the key unless configured).
    pub name: String,
    pub subject_tag: bool,
    pub assign_on_reply: bool,
}

#[derive(Debug, Clone)]
pub struct StatusInfo {
    pub id: i64,
    pub name: String,
    pub kind: StatusKind,
    pub pipeline_id: i64,
    /// Ticket properties that must be set before a ticket may enter it.
    pub required_properties: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PipelineInfo {
    pub id: i64,
    pub key: String,
    /// Status of a new ticket.
    pub default_status: i64,
    /// Status a customer reply moves a waiting or closed ticket to.
    pub reopen_status: i64,
    pub follow_up: FollowUp,
    pub new_ticket_after_days: Option<u32>,
    /// Status an emailed reply moves a ticket to, unless the reply sets one.
    pub status_after_reply: Option<i64>,
    pub merge_late_parents: bool,
    pub thread_by_subject_days: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: i64,
    pub key: String,
    pub kind: ChannelKind,
    pub team_id: i64,
    pub pipeline_key: String,
    pub create_tickets: bool,
    /// Each message goes to the team it was addressed to (`route = "recipient"`).
    pub route_by_recipient: bool,
}

#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub id: i64,
    pub key: String,
    /// Normalised (lower-case).
    pub email: String,
    pub name: String,
    pub role: Role,
    pub team_ids: Vec<i64>,
}

/// Ids of everything configured, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub teams: HashMap<String, TeamInfo>,
    pub pipelines: HashMap<String, PipelineInfo>,
    pub statuses: HashMap<i64, StatusInfo>,
    pub channels: HashMap<String, ChannelInfo>,
    /// Agents by config key.
    pub agents: HashMap<String, AgentInfo>,
    /// Every team address (lower-case) → its team, for routing by recipient.
    pub team_addresses: HashMap<String, i64>,
    /// Key for the HMAC tags on our Message-IDs and body markers.
    pub secret: ServerSecret,
}

/// The server secret; kept out of `Debug` output and logs.
#[derive(Clone, Default)]
pub struct ServerSecret(pub Vec<u8>);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(…)")
    }
}

impl Directory {
    pub fn channel(&self, key: &str) -> Option<&ChannelInfo> {
        self.channels.get(key)
    }

    /// The pipeline a channel files new tickets in. Every channel's pipeline
    /// is synced with it, so this only fails for a hand-made directory.
    pub fn pipeline_of(&self, channel: &ChannelInfo) -> &PipelineInfo {
        &self.pipelines[&channel.pipeline_key]
    }

    pub fn pipeline_by_id(&self, id: i64) -> Option<&PipelineInfo> {
        self.pipelines.values().find(|p| p.id == id)
    }

    pub fn team_by_id(&self, id: i64) -> Option<&TeamInfo> {
        self.teams.values().find(|t| t.id == id)
    }

    pub fn status(&self, id: i64) -> Option<&StatusInfo> {
        self.statuses.get(&id)
    }

    /// The status called `name` in pipeline `pipeline_id`.
    pub fn agent_by_id(&self, id: i64) -> Option<&AgentInfo> {
        self.agents.values().find(|a| a.id == id)
    }

    pub fn status_named(&self, pipeline_id: i64, name: &str) -> Option<&StatusInfo> {
        self.statuses
            .values()
            .find(|s| s.pipeline_id == pipeline_id && s.name == name)
    }
}

/// Who asks for a change.
#[derive(Debug, Clone)]
pub enum Actor {
    /// An agent, authenticated by the API or named on the command line.
    Agent(AgentInfo),
    /// The operator at the command line, acting for no agent.
    Ops,
}

impl Actor {
    /// The configured agent `key`.
    pub fn agent(dir: &Directory, key: &str) -> Option<Actor> {
        dir.agents.get(key).cloned().map(Actor::Agent)
    }

    /// How events name the actor.
    pub fn label(&self) -> String {
        match self {
            Actor::Agent(a) => format!("agent:{}", a.key),
            Actor::Ops => "ops".into(),
        }
    }

    pub fn agent_id(&self) -> Option<i64> {
        match self {
            Actor::Agent(a) => Some(a.id),
            Actor::Ops => None,
        }
    }

    /// Agents work in their own teams; a super admin and the operator in all.
    pub fn can_access_team(&self, team_id: i64) -> bool {
        match self {
            Actor::Agent(a) => a.role == Role::SuperAdmin || a.team_ids.contains(&team_id),
            Actor::Ops => true,
        }
    }

    /// An admin of some team, a super admin or the operator: the actions
    /// that are not one team's (blocked senders, shared snippets).
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Agent(a) => a.role != Role::Agent,
            Actor::Ops => true,
        }
    }

    /// The teams the actor works in; None for all.
    pub fn teams(&self) -> Option<Vec<i64>> {
        match self {
            Actor::Agent(a) if a.role != Role::SuperAdmin => Some(a.team_ids.clone()),
            _ => None,
        }
    }

    /// Changing a team's settings (its default From address) takes an admin
    /// of that team.
    pub fn can_admin_team(&self, team_id: i64) -> bool {
        match self {
            Actor::Agent(a) => match a.role {
                Role::SuperAdmin => true,
                Role::Admin => a.team_ids.contains(&team_id),
                Role::Agent => false,
            },
            Actor::Ops => true,
        }
    }
}

#[derive(sqlx::FromRow)]
struct StatusRow {
    id: i64,
    name: String,
    kind: String,
    pipeline_id: i64,
    required_properties: String,
}

impl Store {
    /// Writes the configured teams, agents, pipelines and channels to the store
    /// and returns their ids. Safe to run from several instances at once.
    pub async fn sync_config(&self, config: &Config) -> Result<Directory, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let tx = &mut w.tx;
        let mut dir = Directory::default();
        for (key, team) in &config.teams {
            let info = sync_team(tx, key, team).await?;
            for address in &team.addresses {
                dir.team_addresses
                    .insert(address.address.to_lowercase(), info.id);
            }
            dir.teams.insert(key.clone(), info);
        }
        for (key, pipeline) in &config.pipelines {
            let info = sync_pipeline(tx, key, pipeline, &mut dir).await?;
            dir.pipelines.insert(key.clone(), info);
        }
        // Statuses dropped from the config stay known, so old tickets still show theirs.
        let rows: Vec<StatusRow> =
            sqlx::query_as("SELECT id, name, kind, pipeline_id, required_properties FROM statuses")
                .fetch_all(&mut **tx)
                .await?;
        for row in rows {
            dir.statuses
                .entry(row.id)
                .or_insert_with(|| status_info(row));
        }
        for (key, agent) in &config.agents {
            let info = sync_agent(tx, key, agent, &dir).await?;
            dir.agents.insert(key.clone(), info);
        }
        for (key, channel) in &config.channels {
            let (Some(team), Some(pipeline)) = (
                dir.teams.get(&channel.team),
                dir.pipelines.get(&channel.pipeline),
            ) else {
                continue; // validation reports it
            };
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO channels (key, kind, team_id, pipeline_id, create_tickets) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, team_id = excluded.team_id,
                   pipeline_id = excluded.pipeline_id, create_tickets = excluded.create_tickets
                 RETURNING id",
            )
            .bind(key)
            .bind(channel.kind().as_str())
            .bind(team.id)
            .bind(pipeline.id)
            .bind(channel.create_tickets as i64)
            .fetch_one(&mut **tx)
            .await?;
            let info = ChannelInfo {
                id,
                key: key.clone(),
                kind: channel.kind(),
                team_id: team.id,
                pipeline_key: channel.pipeline.clone(),
                create_tickets: channel.create_tickets,
                route_by_recipient: channel.route == crate::config::Route::Recipient,
            };
            dir.channels.insert(key.clone(), info);
        }
        dir.secret = server_secret(tx, config).await?;
        w.commit().await?;
        Ok(dir)
    }
}

fn status_info(row: StatusRow) -> StatusInfo {
    StatusInfo {
        id: row.id,
        name: row.name,
        kind: StatusKind::parse(&row.kind).unwrap_or(StatusKind::Open),
        pipeline_id: row.pipeline_id,
        required_properties: serde_json::from_str(&row.required_properties).unwrap_or_default(),
    }
}

/// A team and its From addresses. The config's default (the first address
/// unless one says otherwise) applies until an admin picks another through
/// the API; that choice is kept across restarts while the address is still
/// configured.
async fn sync_team(tx: &mut Tx, key: &str, team: &TeamConfig) -> Result<TeamInfo, sqlx::Error> {
    let name = team.name.clone().unwrap_or_else(|| key.to_string());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO teams (key, name, subject_tag) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET name = excluded.name, subject_tag = excluded.subject_tag
         RETURNING id",
    )
    .bind(key)
    .bind(&name)
    .bind(team.subject_tag as i64)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE team_addresses SET active = 0 WHERE team_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    for address in &team.addresses {
        sqlx::query(
            "INSERT INTO team_addresses (team_id, address, name, is_default, active) VALUES ($1, $2, $3, 0, 1)
             ON CONFLICT (address) DO UPDATE SET team_id = excluded.team_id, name = excluded.name,
               active = 1,
               is_default = CASE WHEN team_addresses.team_id = excluded.team_id
                                 THEN team_addresses.is_default ELSE 0 END",
        )
        .bind(id)
        .bind(address.address.to_lowercase())
        .bind(address.name.clone())
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query("UPDATE team_addresses SET is_default = 0 WHERE team_id = $1 AND active = 0")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let has_default: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM team_addresses WHERE team_id = $1 AND is_default = 1 AND active = 1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let default_index = team.addresses.iter().position(|a| a.default).unwrap_or(0);
    if let (None, Some(address)) = (has_default, team.addresses.get(default_index)) {
        sqlx::query("UPDATE team_addresses SET is_default = 1 WHERE address = $1")
            .bind(address.address.to_lowercase())
            .execute(&mut **tx)
            .await?;
    }
    Ok(TeamInfo {
        id,
        key: key.to_string(),
        name,
        subject_tag: team.subject_tag,
        assign_on_reply: team.assign_on_reply,
    })
}

/// A pipeline and its statuses (added to `dir.statuses`).
async fn sync_pipeline(
    tx: &mut Tx,
    key: &str,
    pipeline: &PipelineConfig,
    dir: &mut Directory,
) -> Result<PipelineInfo, sqlx::Error> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO pipelines (key, follow_up, new_ticket_after_days) VALUES ($1, $2, $3)
         ON CONFLICT (key) DO UPDATE SET follow_up = excluded.follow_up,
           new_ticket_after_days = excluded.new_ticket_after_days
         RETURNING id",
    )
    .bind(key)
    .bind(pipeline.follow_up.as_str())
    .bind(pipeline.new_ticket_after_days.map(i64::from))
    .fetch_one(&mut **tx)
    .await?;
    let default_name = pipeline.default_status.clone().or_else(|| {
        let open = pipeline
            .statuses
            .iter()
            .find(|s| s.kind == StatusKind::Open);
        open.map(|s| s.name.clone())
    });
    let (mut default_status, mut reopen_status, mut status_after_reply) = (None, None, None);
    for (position, status) in pipeline.statuses.iter().enumerate() {
        let is_default = default_name.as_deref() == Some(status.name.as_str());
        let required =
            serde_json::to_string(&status.required_properties).unwrap_or_else(|_| "[]".into());
        let status_id: i64 = sqlx::query_scalar(
            "INSERT INTO statuses (pipeline_id, name, kind, position, required_properties, is_default)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (pipeline_id, name) DO UPDATE SET kind = excluded.kind,
               position = excluded.position, required_properties = excluded.required_properties,
               is_default = excluded.is_default
             RETURNING id",
        )
        .bind(id)
        .bind(&status.name)
        .bind(status.kind.as_str())
        .bind(position as i64)
        .bind(required)
        .bind(is_default as i64)
        .fetch_one(&mut **tx)
        .await?;
        if is_default {
            default_status = Some(status_id);
        }
        if pipeline.status_after_reply.as_deref() == Some(status.name.as_str()) {
            status_after_reply = Some(status_id);
        }
        if status.kind == StatusKind::Open && reopen_status.is_none() {
            reopen_status = Some(status_id);
        }
        let info = StatusInfo {
            id: status_id,
            name: status.name.clone(),
            kind: status.kind,
            pipeline_id: id,
            required_properties: status.required_properties.clone(),
        };
        dir.statuses.insert(status_id, info);
    }
    // Validation guarantees an open status exists.
    let reopen_status = reopen_status.unwrap_or_default();
    Ok(PipelineInfo {
        id,
        key: key.to_string(),
        default_status: default_status.unwrap_or(reopen_status),
        reopen_status,
        follow_up: pipeline.follow_up,
        new_ticket_after_days: pipeline.new_ticket_after_days,
        status_after_reply,
        merge_late_parents: pipeline.merge_late_parents,
        thread_by_subject_days: pipeline.thread_by_subject_days,
    })
}

async fn sync_agent(
    tx: &mut Tx,
    key: &str,
    agent: &AgentConfig,
    dir: &Directory,
) -> Result<AgentInfo, sqlx::Error> {
    let email = agent.email.to_lowercase();
    let name = agent.name.clone().unwrap_or_else(|| key.to_string());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO agents (key, email, name, role) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET email = excluded.email, name = excluded.name, role = excluded.role
         RETURNING id",
    )
    .bind(key)
    .bind(&email)
    .bind(&name)
    .bind(agent.role.as_str())
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("DELETE FROM agent_teams WHERE agent_id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    let team_ids: Vec<i64> = agent
        .teams
        .iter()
        .filter_map(|t| dir.teams.get(t).map(|t| t.id))
        .collect();
    for team in &team_ids {
        sqlx::query("INSERT INTO agent_teams (agent_id, team_id) VALUES ($1, $2)")
            .bind(id)
            .bind(team)
            .execute(&mut **tx)
            .await?;
    }
    Ok(AgentInfo {
        id,
        key: key.to_string(),
        email,
        name,
        role: agent.role,
        team_ids,
    })
}

/// The configured secret, or the one generated on first start and kept in
/// `settings`, so every instance sharing the database agrees on it.
async fn server_secret(tx: &mut Tx, config: &Config) -> Result<ServerSecret, sqlx::Error> {
    if let Some(Ok(secret)) = config.secret.as_ref().map(|s| s.resolve()) {
        return Ok(ServerSecret(secret.into_bytes()));
    }
    // Validation reports an unreadable secret; here it falls back to the
    // stored one so tools that skip validation still agree.
    let generated = hex::encode(rand::random::<[u8; 32]>());
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES ('secret', $1) ON CONFLICT (key) DO NOTHING",
    )
    .bind(generated)
    .execute(&mut **tx)
    .await?;
    let stored: String = sqlx::query_scalar("SELECT value FROM settings WHERE key = 'secret'")
        .fetch_one(&mut **tx)
        .await?;
    Ok(ServerSecret(stored.into_bytes()))
}
