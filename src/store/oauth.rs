//! Refresh tokens an OAuth2 provider rotated, by channel or relay key: the
//! configured token is only the first one, and a rotated one must survive a
//! restart or the mailbox can no longer log in.

use crate::net::oauth::TokenStore;

use super::{now_ms, Store};

impl Store {
    pub async fn oauth_refresh_token(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT refresh_token FROM oauth_tokens WHERE channel_key = $1")
            .bind(key)
            .fetch_optional(self.pool())
            .await
    }

    pub async fn set_oauth_refresh_token(&self, key: &str, token: &str) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO oauth_tokens (channel_key, refresh_token, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (channel_key) DO UPDATE SET refresh_token = excluded.refresh_token,
               updated_at = excluded.updated_at",
        )
        .bind(key)
        .bind(token)
        .bind(now_ms())
        .execute(&mut *w.tx)
        .await?;
        w.commit().await
    }
}

impl TokenStore for Store {
    async fn refresh_token(&self, key: &str) -> Result<Option<String>, String> {
        self.oauth_refresh_token(key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn save_refresh_token(&self, key: &str, token: &str) -> Result<(), String> {
        self.set_oauth_refresh_token(key, token)
            .await
            .map_err(|e| e.to_string())
    }
}
