//! Saved reply text per team (team id 0: shared by every team).

use serde::Serialize;

use super::{Store, Tx};

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SnippetView {
    pub id: i64,
    /// The team's id; 0 for a snippet every team shares.
    #[serde(skip)]
    pub team_id: i64,
    /// The team's key; none for a shared snippet.
    #[sqlx(skip)]
    pub team: Option<String>,
    pub name: String,
    pub body: String,
    pub updated_at: i64,
}

/// What a snippet is saved with: its team (0: shared), name, body, who
/// saved it and when.
pub struct SnippetFields<'a> {
    pub team: i64,
    pub name: &'a str,
    pub body: &'a str,
    pub actor: &'a str,
    pub now: i64,
}

const SNIPPET: &str = "SELECT id, team_id, name, body, updated_at FROM snippets";

impl Store {
    /// Snippets of these teams and the shared ones (None: all).
    pub async fn snippets(&self, teams: Option<&[i64]>) -> Result<Vec<SnippetView>, sqlx::Error> {
        let all: Vec<SnippetView> = sqlx::query_as(&format!("{SNIPPET} ORDER BY name, id"))
            .fetch_all(self.pool())
            .await?;
        Ok(all
            .into_iter()
            .filter(|s| s.team_id == 0 || teams.is_none_or(|t| t.contains(&s.team_id)))
            .collect())
    }

    pub async fn snippet(&self, id: i64) -> Result<Option<SnippetView>, sqlx::Error> {
        sqlx::query_as(&format!("{SNIPPET} WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await
    }

    /// Creates (`id` None) or replaces a snippet; the id, or None when `id`
    /// does not exist.
    pub async fn save_snippet(
        &self,
        tx: &mut Tx,
        id: Option<i64>,
        snippet: &SnippetFields<'_>,
    ) -> Result<Option<i64>, sqlx::Error> {
        let query = match id {
            None => sqlx::query_scalar(
                "INSERT INTO snippets (team_id, name, body, actor, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
            ),
            Some(_) => sqlx::query_scalar(
                "UPDATE snippets SET team_id = $1, name = $2, body = $3, actor = $4, updated_at = $5
                 WHERE id = $6 RETURNING id",
            ),
        };
        query
            .bind(snippet.team)
            .bind(snippet.name)
            .bind(snippet.body)
            .bind(snippet.actor)
            .bind(snippet.now)
            .bind(id.unwrap_or_default())
            .fetch_optional(&mut **tx)
            .await
    }

    pub async fn delete_snippet(&self, id: i64) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM snippets WHERE id = $1")
            .bind(id)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        w.commit().await?;
        Ok(n == 1)
    }
}
