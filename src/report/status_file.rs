//! The `--status-file`: the client's state as `key=value` lines that a shell can
//! source (`. /run/wsbeat/status`), replaced atomically.
//!
//! [`render`] is pure and follows the os-release quoting rule from the contract:
//! a value made only of letters, digits and `_ . / : @ % + , = -` is written bare,
//! an empty value as `key=`, anything else single-quoted with `'` written as `'\''`.
//! [`StatusFile::write`] writes a temporary file in the same folder and renames it
//! over the target, so a reader sees the old or the new file, never a mix. The
//! temporary file is created exclusively under an unpredictable name, because the
//! folder may be shared (`/run`, `/tmp`) and the writer may be root: a symlink planted
//! at a predictable name would be written through. How often to write (on state
//! change, at most once per ping interval otherwise) is the supervisor's decision.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::rules::backoff::SplitMix64;
pub use crate::rules::machine::State;

/// Names tried for a temporary file before giving up; another is only needed when a name
/// exists already, i.e. someone planted or guessed one.
const TEMP_ATTEMPTS: usize = 16;

/// Everything the status file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Current state.
    pub state: State,
    /// The server URL as configured, its query values masked ([`crate::Target::shown`]).
    pub url: String,
    /// When `state` began, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// Last heartbeat round trip; `None` until one has been measured.
    pub rtt_ms: Option<f64>,
    /// Successful connects after the first.
    pub reconnects: u64,
    /// Stdin messages dropped from a full queue.
    pub dropped: u64,
    /// The last error, if any; forced to one line when rendered.
    pub last_error: Option<String>,
    /// The heartbeat interval in force (the learned one with `auto`); 0: off.
    pub ping_interval_ms: u64,
    /// Heartbeats sent since start.
    pub heartbeats: u64,
    /// Lines sent again after a link died before its TCP acknowledged them.
    pub resent: u64,
    /// Bytes written to the socket since start (frames; TLS records on `wss://`).
    pub bytes_sent: u64,
    /// Bytes read from the socket since start.
    pub bytes_received: u64,
    /// With a local socket (`--socket`) only: its counts.
    pub local: Option<LocalCounts>,
}

/// The local socket's counts (`--socket`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalCounts {
    /// Clients connected now.
    pub clients: u64,
    /// Received messages dropped while no client was connected.
    pub undelivered: u64,
    /// Clients disconnected for falling behind.
    pub lagging: u64,
}

/// The file's text for `status`: twelve `key=value` lines (three more with a
/// local socket), each ending in `\n`.
pub fn render(status: &Status) -> String {
    let rtt = status
        .rtt_ms
        .map(|ms| format!("{ms:.1}"))
        .unwrap_or_default();
    let last_error = status
        .last_error
        .as_deref()
        .map(one_line)
        .unwrap_or_default();
    let mut out = String::with_capacity(160);
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(out, "{key}={}", quote(value));
    };
    line("state", status.state.as_str());
    line("url", &status.url);
    line("since_unix_ms", &status.since_unix_ms.to_string());
    line("rtt_ms", &rtt);
    line("reconnects", &status.reconnects.to_string());
    line("dropped", &status.dropped.to_string());
    line("last_error", &last_error);
    line("ping_interval_ms", &status.ping_interval_ms.to_string());
    line("heartbeats", &status.heartbeats.to_string());
    line("resent", &status.resent.to_string());
    line("bytes_sent", &status.bytes_sent.to_string());
    line("bytes_received", &status.bytes_received.to_string());
    if let Some(local) = &status.local {
        line("local_clients", &local.clients.to_string());
        line("undelivered", &local.undelivered.to_string());
        line("lagging", &local.lagging.to_string());
    }
    out
}

/// `value` as an os-release / shell value: bare if safe, else single-quoted.
pub fn quote(value: &str) -> String {
    let bare = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:@%+,=-".contains(c));
    if bare {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `text` with every control character (newlines included) turned into a space,
/// so the value stays on one line for `grep`/`cut` users as well as shells.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The status file at a fixed path.
#[derive(Debug, Clone)]
pub struct StatusFile {
    path: PathBuf,
    /// The folder of `path`, where temporary files go.
    dir: PathBuf,
    /// Start of every temporary file's name: `.<name>.<pid>.`.
    temp_prefix: String,
}

impl StatusFile {
    /// A status file at `path`. Nothing is written until [`StatusFile::write`];
    /// the folder must exist then (under systemd: `RuntimeDirectory=`).
    pub fn new(path: PathBuf) -> StatusFile {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "status".to_owned());
        let temp_prefix = format!(".{name}.{}.", std::process::id());
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        StatusFile {
            path,
            dir,
            temp_prefix,
        }
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `status`: write a temporary file next to it, then
    /// rename it over the old one. No fsync: the file is meant for a tmpfs such
    /// as `/run`, and syncing would wear flash on every heartbeat. On error the
    /// temporary file is removed and the old status file is left as it was;
    /// the caller should log the error and carry on.
    pub fn write(&self, status: &Status) -> io::Result<()> {
        self.write_text(&render(status))
    }

    /// Replaces the file with `text` the same way (the metrics file uses it too).
    pub fn write_text(&self, text: &str) -> io::Result<()> {
        let (temp, mut file) = self.create_temp()?;
        let result = file
            .write_all(text.as_bytes())
            .and_then(|()| fs::rename(&temp, &self.path));
        if result.is_err() {
            // Ours alone: created exclusively under a name nobody could guess.
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Replaces the file with `text` the same way, synced to disk before the rename
    /// and the folder after it, so a power cut leaves the old file or the new one,
    /// never an empty one. For rare writes that must survive a reboot
    /// (`--state-dir`); the status and metrics files do not pay for it.
    pub fn write_synced(&self, text: &str) -> io::Result<()> {
        let (temp, mut file) = self.create_temp()?;
        let result = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| fs::rename(&temp, &self.path));
        if result.is_err() {
            let _ = fs::remove_file(&temp);
            return result;
        }
        // The rename itself is durable once the folder is synced; if that fails
        // the new file is in place all the same.
        if let Ok(dir) = File::open(if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.dir
        }) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// A new, empty temporary file next to the target and its path. `O_CREAT|O_EXCL`
    /// never opens an existing file nor follows a symlink (`O_NOFOLLOW` says so once
    /// more), and the random part of the name keeps anyone from planting one in our
    /// way; a name that exists anyway is left alone and another one tried.
    fn create_temp(&self) -> io::Result<(PathBuf, File)> {
        let mut random = SplitMix64::from_os();
        for _ in 0..TEMP_ATTEMPTS {
            let name = format!("{}{:016x}.tmp", self.temp_prefix, random.next_u64());
            let temp = self.dir.join(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&temp)
            {
                Ok(file) => return Ok((temp, file)),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("no free temporary file name after {TEMP_ATTEMPTS} tries"),
        ))
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A walkdir-style temporary directory for this crate's unit tests.
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique empty directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static COUNT: AtomicU32 = AtomicU32::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("wsbeat-unit-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::TempDir;
    use super::*;
    use std::process::Command;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn sample() -> Status {
        Status {
            state: State::Connected,
            url: "wss://example.com/ws".into(),
            since_unix_ms: 1_764_100_000_000,
            rtt_ms: Some(12.34),
            reconnects: 2,
            dropped: 0,
            last_error: Some("connect: Connection refused (os error 111)".into()),
            ping_interval_ms: 20000,
            heartbeats: 118,
            resent: 0,
            bytes_sent: 14230,
            bytes_received: 13988,
            local: None,
        }
    }

    #[test]
    fn renders_the_contract_example() {
        assert_eq!(
            render(&sample()),
            "state=connected\n\
             url=wss://example.com/ws\n\
             since_unix_ms=1764100000000\n\
             rtt_ms=12.3\n\
             reconnects=2\n\
             dropped=0\n\
             last_error='connect: Connection refused (os error 111)'\n\
             ping_interval_ms=20000\n\
             heartbeats=118\n\
             resent=0\n\
             bytes_sent=14230\n\
             bytes_received=13988\n"
        );
    }

    #[test]
    fn the_local_socket_counts_only_with_a_local_socket() {
        assert!(!render(&sample()).contains("local_clients"));
        let status = Status {
            local: Some(LocalCounts {
                clients: 2,
                undelivered: 0,
                lagging: 1,
            }),
            ..sample()
        };
        assert!(
            render(&status).ends_with("\nlocal_clients=2\nundelivered=0\nlagging=1\n"),
            "{}",
            render(&status)
        );
    }

    #[test]
    fn empty_values_are_bare() {
        let status = Status {
            state: State::Connecting,
            rtt_ms: None,
            last_error: None,
            ..sample()
        };
        let text = render(&status);
        assert!(text.starts_with("state=connecting\n"), "{text}");
        assert!(text.contains("\nrtt_ms=\n"), "{text}");
        assert!(text.contains("\nlast_error=\n"), "{text}");
        assert_eq!(State::Backoff.as_str(), "backoff");
        assert_eq!(State::Stopped.as_str(), "stopped");
    }

    #[test]
    fn quoting_follows_os_release() {
        assert_eq!(quote(""), "");
        assert_eq!(quote("a-Z_0.9/:@%+,="), "a-Z_0.9/:@%+,=");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote("$(x)"), "'$(x)'");
        assert_eq!(quote("ws://h/p?a=1&b=2"), "'ws://h/p?a=1&b=2'");
        assert_eq!(quote("é"), "'é'");
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
    }

    /// Sources `file` in `sh` and returns each variable; `None` under emulation
    /// (`WSBEAT_TEST_RUNNER` set, as `scripts/cross-test.sh` does): the shell would be the
    /// host's anyway, and under qemu-user a fork of this multi-threaded test binary can
    /// deadlock before exec, hanging the run.
    fn source(file: &Path) -> Option<Vec<String>> {
        if std::env::var_os("WSBEAT_TEST_RUNNER").is_some() {
            return None;
        }
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                r#". "$1" && printf '%s\0' "$state" "$url" "$since_unix_ms" "$rtt_ms" "$reconnects" "$dropped" "$last_error""#,
            )
            .arg("sh")
            .arg(file)
            .current_dir(file.parent().expect("file has a folder"))
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        Some(text.split_terminator('\0').map(str::to_owned).collect())
    }

    #[test]
    fn hostile_values_survive_sourcing_in_sh() {
        let dir = TempDir::new("status-sh");
        let file = StatusFile::new(dir.path().join("status"));
        let url = "ws://h/p?x=1&y='2' $(touch pwned1) `touch pwned2` \"q\" \\ ;|<>*".to_owned();
        let error = "it's bad\nreally $(touch pwned3)\r\n'; touch pwned4; '".to_owned();
        let status = Status {
            url: url.clone(),
            rtt_ms: Some(0.05),
            last_error: Some(error.clone()),
            ..sample()
        };
        file.write(&status).expect("write");
        let text = fs::read_to_string(file.path()).expect("read");
        assert_eq!(text.lines().count(), 12, "{text}");
        let Some(values) = source(file.path()) else {
            return;
        };
        assert_eq!(
            values,
            vec![
                "connected".to_owned(),
                url,
                "1764100000000".to_owned(),
                "0.1".to_owned(),
                "2".to_owned(),
                "0".to_owned(),
                one_line(&error),
            ]
        );
        for n in 1..=4 {
            assert!(!dir.path().join(format!("pwned{n}")).exists(), "pwned{n}");
        }
    }

    #[test]
    fn write_replaces_and_leaves_no_temp_file() {
        let dir = TempDir::new("status-replace");
        let file = StatusFile::new(dir.path().join("status"));
        file.write(&sample()).expect("first write");
        let stopped = Status {
            state: State::Stopped,
            ..sample()
        };
        file.write(&stopped).expect("second write");
        assert_eq!(
            fs::read_to_string(file.path()).expect("read"),
            render(&stopped)
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status")]);
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = TempDir::new("status-symlink");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("write victim");
        // The name the client used to write through, and a dangling link beside it.
        let old_name = dir
            .path()
            .join(format!(".status.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &old_name).expect("plant symlink");
        let dangling = dir.path().join(".status.dangling.tmp");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).expect("plant");
        let file = StatusFile::new(dir.path().join("status"));
        file.write(&sample()).expect("first write");
        file.write(&sample()).expect("second write");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert_eq!(fs::read_link(&old_name).expect("still a link"), victim);
        assert!(!dir.path().join("nothing").exists());
        let meta = fs::symlink_metadata(file.path()).expect("status file");
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(
            fs::read_to_string(file.path()).expect("read"),
            render(&sample())
        );
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 4);
    }

    #[test]
    fn temporary_names_are_unpredictable() {
        let dir = TempDir::new("status-names");
        let file = StatusFile::new(dir.path().join("status"));
        let (a, _) = file.create_temp().expect("first");
        let (b, _) = file.create_temp().expect("second");
        assert_ne!(a, b);
        let prefix = format!(".status.{}.", std::process::id());
        for p in [&a, &b] {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            assert!(
                name.starts_with(&prefix) && name.ends_with(".tmp"),
                "{name}"
            );
            assert_eq!(name.len(), prefix.len() + 16 + 4, "{name}");
        }
    }

    #[test]
    fn write_into_a_missing_folder_fails_cleanly() {
        let dir = TempDir::new("status-missing");
        let file = StatusFile::new(dir.path().join("nope").join("status"));
        assert!(file.write(&sample()).is_err());
    }

    #[test]
    fn a_reader_never_sees_a_partial_file() {
        let dir = TempDir::new("status-atomic");
        let file = StatusFile::new(dir.path().join("status"));
        // Sizes vary from write to write, so a torn read would show.
        let status_n = |n: u64| Status {
            reconnects: n,
            last_error: Some("x".repeat((n % 97) as usize * 13)),
            ..sample()
        };
        file.write(&status_n(0)).expect("initial write");
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let done = Arc::clone(&done);
            let path = file.path().to_owned();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::Acquire) {
                    let text = fs::read_to_string(&path).expect("the file always exists");
                    let n: u64 = text
                        .lines()
                        .find_map(|line| line.strip_prefix("reconnects="))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("no reconnects line in {text:?}"));
                    assert_eq!(text, render(&status_n(n)), "torn read");
                    reads += 1;
                }
                reads
            })
        };
        for n in 1..=1000 {
            file.write(&status_n(n)).expect("write");
        }
        done.store(true, Ordering::Release);
        let reads = reader.join().expect("reader thread");
        assert!(reads > 0);
        assert_eq!(
            fs::read_to_string(file.path()).expect("read"),
            render(&status_n(1000))
        );
    }
}
