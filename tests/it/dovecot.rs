//! A throwaway Dovecot for IMAP tests: its own config, users and Maildirs in
//! a temp dir, free loopback ports, the test CA's certificate for TLS.
//! Killed (whole process group) when dropped.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_imap::Session;
use futures::TryStreamExt;
use tokio::net::TcpStream;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

pub struct Dovecot {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Introspection endpoint for XOAUTH2 logins, when enabled.
    oauth_introspection: Option<String>,
    /// Extra lines for dovecot.conf (e.g. a reduced capability list).
    extra: String,
    pub imap_port: u16,
    pub imaps_port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn certs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/certs")
}

impl Dovecot {
    pub fn start() -> Dovecot {
        Self::start_with(None)
    }

    /// A Dovecot that also accepts XOAUTH2, checking tokens at `introspection_url`.
    pub fn start_with_oauth(introspection_url: &str) -> Dovecot {
        Self::start_with(Some(introspection_url.to_string()))
    }

    /// A Dovecot that does not advertise MOVE (servers without RFC 6851).
    pub fn start_without_move() -> Dovecot {
        Self::start_full(
            None,
            "imap_capability = IMAP4rev1 LITERAL+ SASL-IR IDLE UIDPLUS ENABLE\n",
        )
    }

    fn start_with(oauth_introspection: Option<String>) -> Dovecot {
        Self::start_full(oauth_introspection, "")
    }

    /// A Dovecot that Postfix can deliver into (LMTP on `lmtp_port`) and
    /// authenticate SMTP clients against (auth on `auth_port`).
    pub fn start_for_postfix(
        oauth_introspection: Option<&str>,
        lmtp_port: u16,
        auth_port: u16,
    ) -> Dovecot {
        Self::start_full(
            oauth_introspection.map(str::to_string),
            &format!(
                "protocols = imap lmtp\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    port = {lmtp_port}\n  }}\n}}\n\
                 service auth {{\n  inet_listener auth-postfix {{\n    port = {auth_port}\n  }}\n}}\n"
            ),
        )
    }

    fn start_full(oauth_introspection: Option<String>, extra: &str) -> Dovecot {
        let dir = tempfile::tempdir().unwrap();
        // Dovecot's unprivileged processes must traverse and write these.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        std::fs::set_permissions(&mail, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let users = dir.path().join("users");
        std::fs::write(
            &users,
            format!("{USER}:{{PLAIN}}{PASSWORD}\nbob:{{PLAIN}}other\n"),
        )
        .unwrap();
        let mut dovecot = Dovecot {
            dir,
            child: None,
            oauth_introspection,
            extra: extra.to_string(),
            imap_port: free_port(),
            imaps_port: free_port(),
        };
        dovecot.write_config();
        dovecot.launch();
        dovecot
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let certs = certs();
        let certs = certs.display();
        let instance = self
            .dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let config = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
instance_name = mr-{instance}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = yes
ssl_cert = <{certs}/server.pem
ssl_key = <{certs}/server.key
ssl_dh = </usr/share/dovecot/dh.pem
disable_plaintext_auth = no
auth_mechanisms = plain login{mechanisms}
auth_failure_delay = 0
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = 1
mail_location = maildir:~/Maildir
{oauth_passdb}passdb {{
  driver = passwd-file
  # "none": lookups without a login (LMTP delivery checks the user exists).
  mechanisms = plain login none
  args = scheme=PLAIN username_format=%n {d}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/mail/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
{extra}"#,
            imap = self.imap_port,
            imaps = self.imaps_port,
            extra = self.extra,
            mechanisms = if self.oauth_introspection.is_some() { " xoauth2 oauthbearer" } else { "" },
            oauth_passdb = match &self.oauth_introspection {
                Some(_) => format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {d}/oauth2.conf.ext\n}}\n"
                ),
                None => String::new(),
            },
        );
        if let Some(url) = &self.oauth_introspection {
            std::fs::write(
                self.dir.path().join("oauth2.conf.ext"),
                format!(
                    "introspection_mode = post\nintrospection_url = {url}\nforce_introspection = yes\n\
                     username_attribute = username\nactive_attribute = active\nactive_value = true\n"
                ),
            )
            .unwrap();
        }
        std::fs::write(self.config_path(), config).unwrap();
    }

    fn launch(&mut self) {
        let child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("dovecot must be installed (scripts/test.sh installs dovecot-imapd)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.imap_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "dovecot did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "dovecot exited at start ({exited:?}): {}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Kills the server (and its children) at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            // Children of the old master may hold the listening sockets for a
            // moment; a new master started before they are gone cannot bind.
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.imap_port)).is_ok()
                || std::net::TcpStream::connect(("127.0.0.1", self.imaps_port)).is_ok()
            {
                assert!(Instant::now() < deadline, "old dovecot processes linger");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kill -9 and start again. Dot-lock files a killed process leaves behind
    /// (dovecot-uidlist.lock) would hold new sessions until Dovecot deems them
    /// stale, which takes up to minutes. An init script clears them at boot,
    /// and so does this harness.
    pub fn restart(&mut self) {
        self.kill();
        remove_lock_files(&self.dir.path().join("mail"));
        self.launch();
    }

    /// A plain logged-in session for arranging and inspecting the mailbox.
    pub async fn client(&self) -> Session<TcpStream> {
        self.client_as(USER, PASSWORD).await
    }

    /// The same, as another user of the test's users file (`bob`, `other`).
    pub async fn client_as(&self, user: &str, password: &str) -> Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.imap_port))
            .await
            .unwrap();
        let mut client = async_imap::Client::new(tcp);
        client.read_response().await.unwrap();
        client
            .login(user, password)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
    }
}

fn remove_lock_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_lock_files(&path);
        } else if path.extension().is_some_and(|e| e == "lock") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Appends messages to a folder (created if needed).
pub async fn append(session: &mut Session<TcpStream>, folder: &str, messages: &[Vec<u8>]) {
    let _ = session.create(folder).await;
    for m in messages {
        session.append(folder, None, None, m).await.unwrap();
    }
}

/// (uid, flags) of every message in a folder.
pub async fn flags(session: &mut Session<TcpStream>, folder: &str) -> Vec<(u32, Vec<String>)> {
    let mailbox = session.select(folder).await.unwrap();
    if mailbox.exists == 0 {
        return Vec::new();
    }
    let fetches: Vec<_> = session
        .uid_fetch("1:*", "(UID FLAGS)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: Vec<(u32, Vec<String>)> = fetches
        .iter()
        .map(|f| {
            (
                f.uid.unwrap(),
                f.flags().map(|fl| format!("{fl:?}")).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

pub async fn count(session: &mut Session<TcpStream>, folder: &str) -> u32 {
    session.select(folder).await.map(|m| m.exists).unwrap_or(0)
}
