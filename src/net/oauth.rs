//! Access tokens for XOAUTH2 (Microsoft 365, Google): refreshed from a
//! refresh token before they expire, or printed by a configured command.
//! A refresh token the provider rotates is written to the [`TokenStore`]
//! (the database) before the new access token is used, so a restart never
//! falls back to a dead one.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::OAuthConfig;

/// Where rotated refresh tokens are kept (the store implements it), by the
/// key of the channel or relay they belong to.
pub trait TokenStore: Sync {
    fn refresh_token(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    fn save_refresh_token(
        &self,
        key: &str,
        token: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// A cached token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// How long a token printed by `token_command` is reused.
const COMMAND_TOKEN_LIFETIME: Duration = Duration::from_secs(600);

struct Cached {
    token: String,
    expires: Instant,
}

/// Access tokens for one channel or relay, cached until close to expiry.
pub struct TokenSource {
    /// The channel's key (relays: `relay:<name>`) under which rotated
    /// refresh tokens are stored.
    key: String,
    config: OAuthConfig,
    /// The current access token; a mutex so concurrent callers refresh once.
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenSource {
    pub fn new(key: &str, config: &OAuthConfig) -> TokenSource {
        TokenSource {
            key: key.to_string(),
            config: config.clone(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// A valid access token, refreshed when it is close to expiry.
    pub async fn token(&self, store: &impl TokenStore) -> Result<String, String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            if c.expires > Instant::now() + REFRESH_MARGIN {
                return Ok(c.token.clone());
            }
        }
        let (token, lifetime) = match &self.config.token_command {
            Some(command) => (
                run_token_command(command).await?,
                COMMAND_TOKEN_LIFETIME + REFRESH_MARGIN,
            ),
            None => self.refresh(store).await?,
        };
        *cached = Some(Cached {
            token: token.clone(),
            expires: Instant::now() + lifetime,
        });
        Ok(token)
    }

    /// Forgets the cached token (the server refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn refresh(&self, store: &impl TokenStore) -> Result<(String, Duration), String> {
        let stored = store
            .refresh_token(&self.key)
            .await
            .map_err(|e| format!("cannot read the stored refresh token: {e}"))?;
        let refresh_token = match stored {
            Some(token) => token,
            None => self
                .config
                .refresh_token
                .as_ref()
                .ok_or("oauth.refresh_token is not set")?
                .resolve()?,
        };
        let url = self
            .config
            .token_url()
            .ok_or("oauth.token_url is not set")?;
        let mut form = vec![
            ("grant_type".to_string(), "refresh_token".to_string()),
            ("refresh_token".to_string(), refresh_token.clone()),
            (
                "client_id".to_string(),
                self.config.client_id.clone().unwrap_or_default(),
            ),
        ];
        if let Some(secret) = &self.config.client_secret {
            form.push(("client_secret".into(), secret.resolve()?));
        }
        if let Some(scope) = self.config.scope() {
            form.push(("scope".into(), scope));
        }
        let endpoint = url.clone();
        let (status, body) = tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            let mut response = agent
                .post(&endpoint)
                .send_form(form.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map_err(|e| format!("token endpoint {endpoint}: {e}"))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .read_to_string()
                .map_err(|e| format!("token endpoint {endpoint}: {e}"))?;
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|e| format!("token refresh task failed: {e}"))??;
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|_| {
            format!("token endpoint {url} answered {status} with a body that is not JSON")
        })?;
        let Some(access_token) = parsed.access_token.filter(|t| !t.is_empty()) else {
            return Err(format!(
                "token endpoint {url} refused the refresh ({status}): {} {}",
                parsed.error.unwrap_or_default(),
                parsed.error_description.unwrap_or_default()
            ));
        };
        if let Some(rotated) = parsed
            .refresh_token
            .filter(|t| !t.is_empty() && *t != refresh_token)
        {
            // Persist before use: the old refresh token may already be dead.
            store
                .save_refresh_token(&self.key, &rotated)
                .await
                .map_err(|e| format!("cannot store the rotated refresh token: {e}"))?;
            tracing::info!(key = %self.key, "OAuth refresh token rotated and stored.");
        }
        Ok((
            access_token,
            Duration::from_secs(parsed.expires_in.unwrap_or(3600)),
        ))
    }
}

async fn run_token_command(command: &str) -> Result<String, String> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "oauth.token_command took longer than 30 s".to_string())?
    .map_err(|e| format!("cannot run oauth.token_command: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "oauth.token_command failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("oauth.token_command printed no single token".into());
    }
    Ok(token)
}
