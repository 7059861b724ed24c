//! `mailroom reload`: the config was loaded and validated before this runs
//! (a broken one exits 78 with its problems, and nothing is signalled);
//! then every `mailroom run` on this host reading the same config file
//! gets SIGHUP, as `systemctl reload` does. Its log says what changed.

use std::path::{Path, PathBuf};

/// No daemon to tell (sysexits.h EX_UNAVAILABLE).
const EX_UNAVAILABLE: u8 = 69;

#[derive(clap::Args)]
pub struct Args {
    /// Signal this process instead of looking for the daemon.
    #[arg(long)]
    pid: Option<i32>,
}

pub fn run(config: &Path, args: Args) -> u8 {
    let pids = match args.pid {
        Some(pid) => vec![pid],
        None => daemons_reading(config),
    };
    if pids.is_empty() {
        eprintln!(
            "mailroom: no `mailroom run` with config {} is running on this host (use --pid, or `systemctl reload mailroom`)",
            config.display()
        );
        return EX_UNAVAILABLE;
    }
    let mut code = 0;
    for pid in pids {
        // SAFETY: kill(2) with a plain pid and signal number.
        if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 {
            println!("config {} is valid; asked mailroom (pid {pid}) to reload it (its log says what changed)", config.display());
        } else {
            let error = std::io::Error::last_os_error();
            eprintln!("mailroom: cannot signal pid {pid}: {error}");
            code = EX_UNAVAILABLE;
        }
    }
    code
}

/// The pids of `mailroom run` processes whose config file is this one:
/// same executable, and the file they name (by `--config`, by
/// MAILROOM_CONFIG, or the default, relative to their working directory)
/// is the same file.
fn daemons_reading(config: &Path) -> Vec<i32> {
    let (Ok(ours), Ok(wanted)) = (std::env::current_exe(), config.canonicalize()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| same_executable(pid, &ours))
        .filter(|&pid| config_of_daemon(pid).is_some_and(|path| path == wanted))
        .collect()
}

fn same_executable(pid: i32, ours: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == ours)
}

/// The config file of `mailroom run` process `pid`; None for any other command.
fn config_of_daemon(pid: i32) -> Option<PathBuf> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut flag = None;
    let mut runs = false;
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        if arg == "--config" {
            flag = rest.next().cloned();
        } else if let Some(value) = arg.strip_prefix("--config=") {
            flag = Some(value.to_string());
        } else if arg == "run" {
            runs = true;
        }
    }
    if !runs {
        return None;
    }
    let named = flag.map(PathBuf::from).or_else(|| {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        environ
            .split(|&b| b == 0)
            .find_map(|var| var.strip_prefix(b"MAILROOM_CONFIG="))
            .map(|value| PathBuf::from(String::from_utf8_lossy(value).into_owned()))
    });
    let named = named.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_CONFIG_PATH));
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    cwd.join(named).canonicalize().ok()
}
