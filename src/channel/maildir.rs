//! A watched Maildir folder: files in `new/` become tickets; after commit each
//! file moves to `cur/` (flagged seen) or is deleted. A crash between commit
//! and the move only means the file is read again and found a duplicate.
//! A file is taken once it has not changed for `settle_ms` and did not
//! change while it was read: a copy still being written waits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{MaildirAfter, MaildirConfig};
use crate::pipeline::{Disposition, OnBadInput, Pipeline, PipelineError, RawMessage};
use crate::retry::Backoff;

pub struct MaildirChannel {
    pub name: String,
    pub path: PathBuf,
    pub poll_interval: Duration,
    pub after: MaildirAfter,
    pub batch_size: usize,
    pub settle: Duration,
}

impl MaildirChannel {
    /// The channel `name` with its config; `batch_size` files per commit.
    pub fn new(name: &str, config: &MaildirConfig, batch_size: usize) -> MaildirChannel {
        MaildirChannel {
            name: name.to_string(),
            path: config.path.clone(),
            poll_interval: config.poll_interval(),
            after: config.after,
            batch_size,
            settle: Duration::from_millis(config.settle_ms),
        }
    }

    /// Creates `new/`, `cur/` and `tmp/` if missing, so a fresh checkout works.
    pub fn prepare(&self) -> std::io::Result<()> {
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(self.path.join(sub))?;
        }
        Ok(())
    }

    /// Watches `new/` until `shutdown` is cancelled. A batch in progress is
    /// finished (committed and acknowledged) before returning.
    pub async fn run(self, pipeline: Pipeline, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.prepare().map_err(|e| {
            anyhow::anyhow!(
                "channel {}: cannot prepare {}: {e}",
                self.name,
                self.path.display()
            )
        })?;
        tracing::info!(channel = %self.name, path = %self.path.display(), "Watching maildir.");
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let wait = match self.drain_once(&pipeline).await {
                Ok(0) => {
                    failures = 0;
                    self.poll_interval
                }
                Ok(_) => {
                    failures = 0;
                    Duration::ZERO
                }
                Err(e) => {
                    failures += 1;
                    tracing::error!(channel = %self.name, error = %e, "Maildir batch not committed; will retry.");
                    Backoff::STORE.delay(failures + 3)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Processes up to one batch from `new/`; returns how many files it took.
    pub async fn drain_once(&self, pipeline: &Pipeline) -> Result<usize, PipelineError> {
        let files = self.pending_files();
        if files.is_empty() {
            return Ok(0);
        }
        let mut raws = Vec::with_capacity(files.len());
        let mut taken = Vec::with_capacity(files.len());
        for file in files {
            match read_settled(&file) {
                Ok(None) => {
                    tracing::debug!(channel = %self.name, file = %file.display(), "Still being written; later.");
                }
                Ok(Some(data)) => {
                    raws.push(RawMessage {
                        channel: self.name.clone(),
                        source: Some(file.display().to_string()),
                        data: Arc::new(data),
                    });
                    taken.push(file);
                }
                // Renamed away by another reader, or not ours to read: skip it.
                Err(e) => {
                    tracing::warn!(channel = %self.name, file = %file.display(), error = %e, "Cannot read file.")
                }
            }
        }
        let count = taken.len();
        if count == 0 {
            return Ok(0);
        }
        let dispositions = pipeline.process(raws, OnBadInput::Quarantine).await?;
        for (file, disposition) in taken.iter().zip(&dispositions) {
            match disposition {
                Disposition::Applied(outcome) => tracing::info!(
                    channel = %self.name, file = %file.display(), outcome = outcome.name(),
                    ticket = outcome.ticket_id(), "Message ingested."
                ),
                Disposition::Quarantined { id, reason } => tracing::warn!(
                    channel = %self.name, file = %file.display(), quarantine = id, %reason, "Message quarantined."
                ),
                // Not with OnBadInput::Quarantine; logged should it happen.
                Disposition::Refused { reason } => tracing::warn!(
                    channel = %self.name, file = %file.display(), %reason, "Message refused."
                ),
            }
            // The message is committed (or kept in quarantine): acknowledge it.
            if let Err(e) = self.acknowledge(file) {
                tracing::error!(channel = %self.name, file = %file.display(), error = %e, "Cannot move committed file.");
            }
        }
        Ok(count)
    }

    fn pending_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.path.join("new")) else {
            return Vec::new();
        };
        let settled_before = std::time::SystemTime::now() - self.settle;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            // Changed within the settle time: perhaps still being written.
            .filter(|e| {
                self.settle.is_zero()
                    || e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t <= settled_before)
            })
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(".")
                    .starts_with('.')
            })
            .collect();
        // Maildir names start with a timestamp: oldest first.
        files.sort();
        files.truncate(self.batch_size);
        files
    }

    fn acknowledge(&self, file: &Path) -> std::io::Result<()> {
        match self.after {
            MaildirAfter::Delete => std::fs::remove_file(file),
            MaildirAfter::Move => {
                let name = file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("message");
                let base = name.split(":2,").next().unwrap_or(name);
                std::fs::rename(file, self.path.join("cur").join(format!("{base}:2,S")))
            }
        }
    }
}

/// The file's bytes, or `None` when it changed (size or modification
/// time) while it was read: a writer is still at it.
fn read_settled(file: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let stamp = |m: std::fs::Metadata| (m.len(), m.modified().ok());
    let before = stamp(std::fs::metadata(file)?);
    let data = std::fs::read(file)?;
    let after = stamp(std::fs::metadata(file)?);
    Ok((before == after && after.0 == data.len() as u64).then_some(data))
}
