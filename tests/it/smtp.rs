//! A real SMTP server for tests: Postfix's `smtp-sink`, writing each message
//! it accepts to a file (envelope first, as `X-Mail-Args`/`X-Rcpt-Args`).
//! Its switches inject failures: `-r CMD` answers 5xx at a command, `-s CMD`
//! 4xx, `-q CMD` drops the connection.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One message as the sink received it.
#[derive(Clone)]
pub struct Captured {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent (the sink's own header lines removed).
    pub message: Vec<u8>,
}

/// Readable in assertion messages: the envelope and the text.
impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n--- from {} to {:?}\n{}",
            self.mail_from,
            self.rcpt_to,
            String::from_utf8_lossy(&self.message)
        )
    }
}

pub struct SmtpSink {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SmtpSink {
    /// A sink on a free port; `switches` are extra smtp-sink options.
    pub fn start(switches: &[&str]) -> SmtpSink {
        Self::start_on(free_port(), switches)
    }

    pub fn start_on(port: u16, switches: &[&str]) -> SmtpSink {
        assert!(
            std::path::Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is missing: install postfix (scripts/test.sh does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(SMTP_SINK);
        // As root, smtp-sink must drop to a user, and chroots into -R; the
        // dump folder must be writable by that user.
        if unsafe_is_root() {
            let status = Command::new("chown")
                .args(["postfix", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown postfix failed");
            cmd.args(["-u", "postfix"]);
        }
        cmd.args(["-R", dir.path().to_str().unwrap(), "-d", "%Y%m%d%H%M%S."])
            .args(switches)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("cannot start smtp-sink");
        let sink = SmtpSink {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "smtp-sink did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        sink
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        // The names carry the second and a random part: order by the time
        // the sink wrote each file, so "last" is the latest received.
        files.sort_by_key(|p| {
            let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok();
            (modified, p.clone())
        });
        files
    }

    pub fn count(&self) -> usize {
        self.files().len()
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<Captured> {
        self.files()
            .iter()
            .map(|p| parse_dump(&std::fs::read(p).unwrap()))
            .collect()
    }

    /// Waits until `n` messages arrived; returns them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Captured> {
        let deadline = Instant::now() + limit;
        loop {
            let count = self.count();
            if count >= n {
                // The sink writes while DATA streams in; give the last one a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return self.messages();
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} messages at the SMTP sink, got {count}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unsafe_is_root() -> bool {
    // The effective uid, without a libc dependency: /proc/self/status "Uid:" line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Splits a sink dump into envelope and message.
fn parse_dump(data: &[u8]) -> Captured {
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    let mut rest = data;
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end]).trim_end().to_string();
        let envelope_value = |l: &str| {
            l.split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(['<', '>'])
                .to_string()
        };
        if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
            mail_from = envelope_value(v);
        } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
            rcpt_to.push(envelope_value(v));
        } else if !line.starts_with("X-Client-") && !line.starts_with("X-Helo-Args") {
            break;
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    // The sink adds its own Received header first; drop it (and its folded lines).
    let mut message = rest;
    if message.starts_with(b"Received:") {
        let mut at = 0;
        loop {
            let end = message[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|p| at + p + 1)
                .unwrap_or(message.len());
            at = end;
            if at >= message.len() || !(message[at] == b' ' || message[at] == b'\t') {
                break;
            }
        }
        message = &message[at..];
    }
    Captured {
        mail_from,
        rcpt_to,
        message: message.to_vec(),
    }
}
