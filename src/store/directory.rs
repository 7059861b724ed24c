//! Teams, agents, pipelines and channels come from the config file; at start
//! they are upserted into the store (by their config key) and the resulting
//! ids are kept in a [`Directory`] so the pipeline never looks them up again.

use std::collections::HashMap;

use sqlx::Row;

use super::Store;
use crate::config::{ChannelKind, Config, FollowUp, StatusKind};

#[derive(Debug, Clone)]
pub struct TeamInfo {
    pub id: i64,
    pub key: String,
    pub subject_tag: bool,
    pub assign_on_reply: bool,
}

#[derive(Debug, Clone)]
pub struct StatusInfo {
    pub id: i64,
    pub name: String,
    pub kind: StatusKind,
    pub pipeline_id: i64,
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
}

#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: i64,
    pub key: String,
    pub kind: ChannelKind,
    pub team_id: i64,
    pub pipeline_key: String,
    pub create_tickets: bool,
}

/// Ids of everything configured, resolved once at start.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub teams: HashMap<String, TeamInfo>,
    pub pipelines: HashMap<String, PipelineInfo>,
    pub statuses: HashMap<i64, StatusInfo>,
    pub channels: HashMap<String, ChannelInfo>,
    /// Agent email (normalised) → agent id.
    pub agents: HashMap<String, i64>,
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

    pub fn pipeline_of(&self, channel: &ChannelInfo) -> &PipelineInfo {
        &self.pipelines[&channel.pipeline_key]
    }

    pub fn status(&self, id: i64) -> Option<&StatusInfo> {
        self.statuses.get(&id)
    }
}

async fn upsert_id(tx: &mut super::Tx, sql: &str, binds: &[&str]) -> Result<i64, sqlx::Error> {
    let mut query = sqlx::query(sql);
    for b in binds {
        query = query.bind(b.to_string());
    }
    query.fetch_one(&mut **tx).await?.try_get(0)
}

impl Store {
    /// Writes the configured teams, agents, pipelines and channels to the store
    /// and returns their ids. Safe to run from several instances at once.
    pub async fn sync_config(&self, config: &Config) -> Result<Directory, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let tx = &mut w.tx;
        let mut dir = Directory::default();

        for (key, team) in &config.teams {
            let name = team.name.clone().unwrap_or_else(|| key.clone());
            let id: i64 = sqlx::query(
                "INSERT INTO teams (key, name, subject_tag) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET name = excluded.name, subject_tag = excluded.subject_tag
                 RETURNING id",
            )
            .bind(key)
            .bind(name)
            .bind(team.subject_tag as i64)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            // The config's default (the first address unless one says
            // otherwise) applies until an admin picks another through the
            // API; that choice is kept across restarts while the address is
            // still configured.
            let default_index = team.addresses.iter().position(|a| a.default).unwrap_or(0);
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
            sqlx::query(
                "UPDATE team_addresses SET is_default = 0 WHERE team_id = $1 AND active = 0",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
            let has_default = sqlx::query(
                "SELECT 1 FROM team_addresses WHERE team_id = $1 AND is_default = 1 AND active = 1",
            )
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
            if let (false, Some(address)) = (has_default, team.addresses.get(default_index)) {
                sqlx::query("UPDATE team_addresses SET is_default = 1 WHERE address = $1")
                    .bind(address.address.to_lowercase())
                    .execute(&mut **tx)
                    .await?;
            }
            dir.teams.insert(
                key.clone(),
                TeamInfo {
                    id,
                    key: key.clone(),
                    subject_tag: team.subject_tag,
                    assign_on_reply: team.assign_on_reply,
                },
            );
        }

        for (key, pipeline) in &config.pipelines {
            let id: i64 = sqlx::query(
                "INSERT INTO pipelines (key, follow_up, new_ticket_after_days) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET follow_up = excluded.follow_up,
                   new_ticket_after_days = excluded.new_ticket_after_days
                 RETURNING id",
            )
            .bind(key)
            .bind(pipeline.follow_up.as_str())
            .bind(pipeline.new_ticket_after_days.map(i64::from))
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            let default_name = pipeline.default_status.clone().or_else(|| {
                pipeline
                    .statuses
                    .iter()
                    .find(|s| s.kind == StatusKind::Open)
                    .map(|s| s.name.clone())
            });
            let mut default_status = None;
            let mut reopen_status = None;
            let mut status_after_reply = None;
            for (position, status) in pipeline.statuses.iter().enumerate() {
                let is_default = default_name.as_deref() == Some(status.name.as_str());
                let status_id: i64 = sqlx::query(
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
                .bind(serde_json::to_string(&status.required_properties).unwrap_or_else(|_| "[]".into()))
                .bind(is_default as i64)
                .fetch_one(&mut **tx)
                .await?
                .try_get(0)?;
                if is_default {
                    default_status = Some(status_id);
                }
                if pipeline.status_after_reply.as_deref() == Some(status.name.as_str()) {
                    status_after_reply = Some(status_id);
                }
                if status.kind == StatusKind::Open && reopen_status.is_none() {
                    reopen_status = Some(status_id);
                }
                dir.statuses.insert(
                    status_id,
                    StatusInfo {
                        id: status_id,
                        name: status.name.clone(),
                        kind: status.kind,
                        pipeline_id: id,
                    },
                );
            }
            // Validation guarantees an open status exists.
            let reopen_status = reopen_status.unwrap_or_default();
            dir.pipelines.insert(
                key.clone(),
                PipelineInfo {
                    id,
                    key: key.clone(),
                    default_status: default_status.unwrap_or(reopen_status),
                    reopen_status,
                    follow_up: pipeline.follow_up,
                    new_ticket_after_days: pipeline.new_ticket_after_days,
                    status_after_reply,
                },
            );
        }

        // Statuses dropped from the config stay known, so old tickets still show theirs.
        let rows = sqlx::query("SELECT id, name, kind, pipeline_id FROM statuses")
            .fetch_all(&mut **tx)
            .await?;
        for row in rows {
            let id: i64 = row.try_get(0)?;
            dir.statuses.entry(id).or_insert(StatusInfo {
                id,
                name: row.try_get(1)?,
                kind: StatusKind::parse(&row.try_get::<String, _>(2)?).unwrap_or(StatusKind::Open),
                pipeline_id: row.try_get(3)?,
            });
        }

        for (key, agent) in &config.agents {
            let email = agent.email.to_lowercase();
            let name = agent.name.clone().unwrap_or_else(|| key.clone());
            let id = upsert_id(
                tx,
                "INSERT INTO agents (key, email, name, role) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO UPDATE SET email = excluded.email, name = excluded.name, role = excluded.role
                 RETURNING id",
                &[key, &email, &name, agent.role.as_str()],
            )
            .await?;
            sqlx::query("DELETE FROM agent_teams WHERE agent_id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
            for team in &agent.teams {
                if let Some(team) = dir.teams.get(team) {
                    sqlx::query("INSERT INTO agent_teams (agent_id, team_id) VALUES ($1, $2)")
                        .bind(id)
                        .bind(team.id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            dir.agents.insert(email, id);
        }

        for (key, channel) in &config.channels {
            let (Some(team), Some(pipeline)) = (
                dir.teams.get(&channel.team),
                dir.pipelines.get(&channel.pipeline),
            ) else {
                continue; // validation reports it
            };
            let id: i64 = sqlx::query(
                "INSERT INTO channels (key, kind, team_id, pipeline_id, create_tickets) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET kind = excluded.kind, team_id = excluded.team_id,
                   pipeline_id = excluded.pipeline_id, create_tickets = excluded.create_tickets
                 RETURNING id",
            )
            .bind(key)
            .bind(channel.kind.as_str())
            .bind(team.id)
            .bind(pipeline.id)
            .bind(channel.create_tickets as i64)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            dir.channels.insert(
                key.clone(),
                ChannelInfo {
                    id,
                    key: key.clone(),
                    kind: channel.kind,
                    team_id: team.id,
                    pipeline_key: channel.pipeline.clone(),
                    create_tickets: channel.create_tickets,
                },
            );
        }
        dir.secret = match config.secret.as_ref().map(|s| s.resolve()) {
            Some(Ok(secret)) => ServerSecret(secret.into_bytes()),
            // Validation reports an unreadable secret; here it falls back
            // to the stored one so tools that skip validation still agree.
            _ => {
                let generated = hex::encode(rand::random::<[u8; 32]>());
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ('secret', $1) ON CONFLICT (key) DO NOTHING",
                )
                .bind(generated)
                .execute(&mut **tx)
                .await?;
                let stored: String = sqlx::query("SELECT value FROM settings WHERE key = 'secret'")
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get(0)?;
                ServerSecret(stored.into_bytes())
            }
        };
        w.commit().await?;
        Ok(dir)
    }
}
