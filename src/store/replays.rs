//! The replay record for signed requests: a signature is accepted once
//! while its timestamp is inside the accepted window, by whichever instance
//! sees it first, before or after a restart.

use super::Store;

impl Store {
    /// Records `digest` as used until `expires_at` (unix ms) and drops
    /// records that expired before `prune_before`. False when it was
    /// already recorded.
    pub async fn first_signature_use(
        &self,
        digest: &str,
        expires_at: i64,
        prune_before: i64,
    ) -> Result<bool, sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM seen_signatures WHERE expires_at < $1")
            .bind(prune_before)
            .execute(&mut *w.tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO seen_signatures (digest, expires_at) VALUES ($1, $2)
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest)
        .bind(expires_at)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        w.commit().await?;
        Ok(inserted == 1)
    }

    /// Forgets `digest`, so a request that could not be stored (the
    /// database was unavailable) can be retried with the same signature.
    pub async fn forget_signature(&self, digest: &str) -> Result<(), sqlx::Error> {
        let mut w = self.begin_write().await?;
        sqlx::query("DELETE FROM seen_signatures WHERE digest = $1")
            .bind(digest)
            .execute(&mut *w.tx)
            .await?;
        w.commit().await
    }
}
