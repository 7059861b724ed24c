//! Backfill (`mailroom ingest PATH…`): .eml files, mbox files and Maildir
//! folders, read one batch ahead on a blocking thread, parsed while the
//! previous batch commits, and committed in batches.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::pipeline::{Disposition, OnBadInput, Outcome, Pipeline, PipelineError, RawMessage};

/// Totals printed at the end of a backfill.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub created: u64,
    pub appended: u64,
    pub duplicate: u64,
    pub recorded: u64,
    pub quarantined: u64,
    pub failed: u64,
}

impl Summary {
    pub fn total(&self) -> u64 {
        self.created
            + self.appended
            + self.duplicate
            + self.recorded
            + self.quarantined
            + self.failed
    }

    fn add(&mut self, disposition: &Disposition) {
        match disposition {
            Disposition::Applied(Outcome::Created { .. }) => self.created += 1,
            Disposition::Applied(Outcome::Appended { .. }) => self.appended += 1,
            Disposition::Applied(Outcome::Duplicate { .. }) => self.duplicate += 1,
            Disposition::Applied(Outcome::Recorded) => self.recorded += 1,
            Disposition::Quarantined { .. } => self.quarantined += 1,
            Disposition::Refused { .. } => self.failed += 1,
        }
    }
}

/// One message found in a backfill source.
struct Found {
    source: String,
    data: Result<Vec<u8>, String>,
}

/// Walks paths: a file is an mbox when it starts with "From ", a single
/// message otherwise; a folder with `cur/` or `new/` is a Maildir, any other
/// folder is searched for files.
fn walk(paths: &[PathBuf], emit: &mut dyn FnMut(Found) -> bool) {
    for path in paths {
        if !walk_one(path, emit) {
            return;
        }
    }
}

fn walk_one(path: &Path, emit: &mut dyn FnMut(Found) -> bool) -> bool {
    if path.is_dir() {
        let maildir = path.join("cur").is_dir() || path.join("new").is_dir();
        let folders: Vec<PathBuf> = if maildir {
            vec![path.join("cur"), path.join("new")]
        } else {
            vec![path.to_path_buf()]
        };
        for folder in folders {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(&folder) {
                Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) if maildir && e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return emit(Found {
                        source: folder.display().to_string(),
                        data: Err(format!("cannot read folder: {e}")),
                    })
                }
            };
            entries.sort();
            for entry in entries {
                let name = entry
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if name.starts_with('.')
                    || (!maildir && entry.is_file() && !looks_like_mail_file(&entry))
                {
                    continue;
                }
                if !walk_one(&entry, emit) {
                    return false;
                }
            }
        }
        return true;
    }
    walk_file(path, emit)
}

/// A file: an mbox (streamed, so a multi-gigabyte one does not have to fit
/// in memory) when it starts with "From ", one message otherwise.
fn walk_file(path: &Path, emit: &mut dyn FnMut(Found) -> bool) -> bool {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return emit(Found {
                source: path.display().to_string(),
                data: Err(format!("cannot open: {e}")),
            })
        }
    };
    let mut reader = std::io::BufReader::new(file);
    let mut head = [0u8; 5];
    let n = std::io::Read::read(&mut reader, &mut head).unwrap_or(0);
    let rest = |mut r: std::io::BufReader<std::fs::File>| {
        let mut data = head[..n].to_vec();
        r.read_to_end(&mut data).map(|_| data)
    };
    if &head[..n] == b"From " {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => std::io::BufReader::with_capacity(64 * 1024, f),
            Err(e) => {
                return emit(Found {
                    source: path.display().to_string(),
                    data: Err(format!("cannot open: {e}")),
                })
            }
        };
        // An mbox written by an old Mac mailer ends its lines with CR alone.
        let cr_only = std::io::BufRead::fill_buf(&mut file)
            .map(|start| !start.contains(&b'\n') && start.contains(&b'\r'))
            .unwrap_or(false);
        let lines = std::io::BufReader::new(CrAsLf {
            inner: file,
            active: cr_only,
        });
        for (i, message) in mail_parser::mailbox::mbox::MessageIterator::new(lines).enumerate() {
            let found = Found {
                source: format!("{}#{}", path.display(), i + 1),
                data: message
                    .map(|m| m.unwrap_contents())
                    .map_err(|e| format!("cannot read mbox entry: {e}")),
            };
            if !emit(found) {
                return false;
            }
        }
        true
    } else {
        emit(Found {
            source: path.display().to_string(),
            data: rest(reader).map_err(|e| format!("cannot read: {e}")),
        })
    }
}

/// A reader that turns each CR into LF when `active` (a CR-only file has no
/// LF of its own, so this restores its line ends exactly).
struct CrAsLf<R> {
    inner: R,
    active: bool,
}

impl<R: std::io::Read> std::io::Read for CrAsLf<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.active {
            buf[..n]
                .iter_mut()
                .filter(|b| **b == b'\r')
                .for_each(|b| *b = b'\n');
        }
        Ok(n)
    }
}

/// In a plain folder, take .eml/.mbox/.msg files and files without extension
/// (Maildir-style names) and skip the rest (READMEs, expectation files …).
fn looks_like_mail_file(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        None => true,
        Some(ext) => matches!(
            ext.to_ascii_lowercase().as_str(),
            "eml" | "mbox" | "mbx" | "msg" | "txt"
        ),
    }
}

/// Backfill: ingests every message under `paths`, committing in batches.
/// Failures are reported per source on stderr and counted; the run goes on.
pub async fn ingest_paths(
    pipeline: &Pipeline,
    channel: &str,
    paths: Vec<PathBuf>,
    batch_size: usize,
) -> Result<Summary, PipelineError> {
    let (reader, found) = read_ahead(paths, batch_size);
    let (preparer, mut prepared_rx) = prepare_ahead(pipeline.clone(), channel.to_string(), found);
    let progress = progress_bar();
    // SQLite: keep the WAL short while batches commit (see `Store`).
    let checkpoints = tokio_util::sync::CancellationToken::new();
    let checkpointing = pipeline.store().checkpoint_until(&checkpoints);
    let committing = async {
        let result = commit_all(pipeline, &mut prepared_rx, &progress).await;
        checkpoints.cancel();
        result
    };
    let (summary, ()) = tokio::join!(committing, checkpointing);
    let _ = preparer.await;
    progress.finish_and_clear();
    let _ = reader.await;
    summary
}

/// Reading runs on its own thread, one batch ahead of the pipeline.
fn read_ahead(
    paths: Vec<PathBuf>,
    batch_size: usize,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<Vec<Found>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Found>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(batch_size);
        walk(&paths, &mut |found| {
            batch.push(found);
            if batch.len() >= batch_size {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
                return tx.blocking_send(full).is_ok();
            }
            true
        });
        if !batch.is_empty() {
            let _ = tx.blocking_send(batch);
        }
    });
    (reader, rx)
}

/// Parsing the next batch overlaps with committing this one.
fn prepare_ahead(
    pipeline: Pipeline,
    channel: String,
    mut found: tokio::sync::mpsc::Receiver<Vec<Found>>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<PreparedBatch>,
) {
    let (prepared_tx, prepared_rx) = tokio::sync::mpsc::channel(1);
    let preparer = tokio::spawn(async move {
        while let Some(batch) = found.recv().await {
            let mut raws = Vec::with_capacity(batch.len());
            let mut unreadable = Vec::new();
            for found in batch {
                match found.data {
                    Ok(data) => raws.push(RawMessage {
                        channel: channel.clone(),
                        source: Some(found.source),
                        data: Arc::new(data),
                    }),
                    Err(reason) => unreadable.push(format!("{}: {reason}", found.source)),
                }
            }
            let sources: Vec<Option<String>> = raws.iter().map(|r| r.source.clone()).collect();
            // Unusable mail is kept where ops can see and retry it, as the
            // spool and IMAP do (the pipe refuses instead: its MTA bounces).
            let prepared = pipeline.prepare(raws, OnBadInput::Quarantine).await;
            let stop = prepared.is_err();
            let sent = prepared_tx.send((unreadable, sources, prepared)).await;
            if sent.is_err() || stop {
                break;
            }
        }
    });
    (preparer, prepared_rx)
}

/// A spinner with counts on a terminal; nothing otherwise.
fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} messages  {per_sec}  {elapsed}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}

/// What the preparer hands on: unreadable sources, the sources of the
/// parsed batch, and the batch.
type PreparedBatch = (
    Vec<String>,
    Vec<Option<String>>,
    Result<crate::pipeline::Prepared, PipelineError>,
);

/// Commits prepared batches in order and counts what happened.
async fn commit_all(
    pipeline: &Pipeline,
    prepared_rx: &mut tokio::sync::mpsc::Receiver<PreparedBatch>,
    progress: &indicatif::ProgressBar,
) -> Result<Summary, PipelineError> {
    let mut summary = Summary::default();
    while let Some((unreadable, sources, prepared)) = prepared_rx.recv().await {
        for line in unreadable {
            progress.suspend(|| eprintln!("{line}"));
            summary.failed += 1;
        }
        let dispositions = pipeline.commit(prepared?).await?;
        for (source, disposition) in sources.iter().zip(&dispositions) {
            match disposition {
                Disposition::Refused { reason } => progress.suspend(|| {
                    eprintln!("{}: {reason}", source.as_deref().unwrap_or("?"));
                }),
                Disposition::Quarantined { id, reason } => progress.suspend(|| {
                    eprintln!(
                        "{}: quarantined as #{id}: {reason}",
                        source.as_deref().unwrap_or("?")
                    );
                }),
                Disposition::Applied(_) => {}
            }
            summary.add(disposition);
        }
        progress.set_position(summary.total());
        progress.set_message(format!(
            "created {} appended {} duplicate {}",
            summary.created, summary.appended, summary.duplicate
        ));
    }
    Ok(summary)
}
