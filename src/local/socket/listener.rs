//! The local socket's listening end: passed by systemd (socket activation) or
//! created at `--socket PATH`, and removed at exit if wsbeat created it.
//!
//! The file is created without a window in which it is reachable with the
//! wrong mode: the socket is bound in a fresh private folder (mode 0700) next to
//! `PATH`, given `--socket-mode` there, and renamed over `PATH`, which also
//! replaces a stale socket file in one step. What is at `PATH` is checked first:
//! nothing or a stale socket (`connect` refused) is fine; a socket that still
//! accepts connections (another instance), a symlink or any other file is a
//! configuration error naming it.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::error::ConfigError;
use crate::os;
use crate::rules::backoff::SplitMix64;

/// The variables of socket activation, unset once read (as `sd_listen_fds` does),
/// so programs wsbeat might start do not take them for theirs.
const LISTEN_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The listening socket, and the file to remove at exit if wsbeat created it.
#[derive(Debug)]
pub struct Listener {
    /// The socket, non-blocking.
    pub socket: UnixListener,
    /// The socket file wsbeat created: its path, device and inode.
    created: Option<(PathBuf, u64, u64)>,
}

impl Listener {
    /// The socket systemd passed, else one created at `path` with `mode`, else
    /// `None`. Call while the process has one thread (the activation variables
    /// are unset).
    pub fn open(path: Option<&Path>, mode: u32) -> Result<Option<Listener>, ConfigError> {
        if let Some(socket) = activated() {
            if let Some(path) = path {
                log::info!(
                    "--socket {} ignored: using the socket systemd passed",
                    path.display()
                );
            }
            socket
                .set_nonblocking(true)
                .map_err(|err| error(path.unwrap_or(Path::new("LISTEN_FDS")), err.to_string()))?;
            log::info!("local socket: passed by systemd");
            return Ok(Some(Listener {
                socket,
                created: None,
            }));
        }
        let Some(path) = path else {
            return Ok(None);
        };
        check_path(path)?;
        let socket = create(path, mode).map_err(|err| error(path, err.to_string()))?;
        socket
            .set_nonblocking(true)
            .map_err(|err| error(path, err.to_string()))?;
        let meta = fs::symlink_metadata(path).map_err(|err| error(path, err.to_string()))?;
        log::info!("local socket: {} (mode {mode:04o})", path.display());
        Ok(Some(Listener {
            socket,
            created: Some((path.to_path_buf(), meta.dev(), meta.ino())),
        }))
    }
}

impl Drop for Listener {
    /// Removes the socket file, if it is still the one wsbeat created.
    fn drop(&mut self) {
        if let Some((path, dev, ino)) = &self.created {
            let ours = fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if ours {
                if let Err(err) = fs::remove_file(path) {
                    log::warn!("--socket {}: not removed: {err}", path.display());
                }
            }
        }
    }
}

fn error(path: &Path, message: String) -> ConfigError {
    ConfigError {
        path: path.to_path_buf(),
        flag: "--socket",
        message,
    }
}

/// The listening socket systemd passed for this process, if any.
fn activated() -> Option<UnixListener> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    if pid.is_none() && fds.is_none() {
        return None;
    }
    let taken = os::activated_unix_listener(pid.as_deref(), fds.as_deref());
    if matches!(taken, Ok(Some(_)) | Err(_)) && !os::remove_env_single_threaded(&LISTEN_VARS) {
        log::debug!("socket activation: variables not unset (threads running)");
    }
    match taken {
        Ok(fd) => fd.map(|fd: OwnedFd| UnixListener::from(fd)),
        Err(why) => {
            log::warn!("socket activation ignored: {why}");
            None
        }
    }
}

/// Whether a socket may be created at `path`: nothing there, or a stale socket.
fn check_path(path: &Path) -> Result<(), ConfigError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(error(path, err.to_string())),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(error(path, "is a symbolic link, not a socket".into()));
    }
    if !kind.is_socket() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(error(path, format!("exists and is {what}")));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(error(
            path,
            "another process accepts connections on it (another wsbeat?)".into(),
        )),
        Err(err) if err.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log::info!("--socket {}: replacing a stale socket", path.display());
            Ok(())
        }
        Err(err) => Err(error(
            path,
            format!("an existing socket that cannot be checked: {err}"),
        )),
    }
}

/// Binds a socket in a private folder next to `path`, sets `mode`, and renames
/// it over `path`.
fn create(path: &Path, mode: u32) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let private = parent.join(format!(
        ".wsbeat-{:x}{:08x}",
        std::process::id(),
        SplitMix64::from_os().next_u64() as u32
    ));
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    let temp = private.join("s");
    let result = UnixListener::bind(&temp).and_then(|socket| {
        fs::set_permissions(&temp, fs::Permissions::from_mode(mode))?;
        fs::rename(&temp, path)?;
        Ok(socket)
    });
    let _ = fs::remove_file(&temp);
    let _ = fs::remove_dir(&private);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::status_file::test_support::TempDir;

    #[test]
    fn creates_with_the_mode_replaces_a_stale_one_and_removes_it() {
        let dir = TempDir::new("listener");
        let path = dir.path().join("sock");
        let mut listener = Listener::open(Some(&path), 0o640).unwrap().unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        // A second one while the first listens: refused.
        let err = Listener::open(Some(&path), 0o660).unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
        // Left behind (a crash): stale, replaced.
        listener.created = None;
        drop(listener);
        let again = Listener::open(Some(&path), 0o660).unwrap().unwrap();
        drop(again);
        assert!(!path.exists(), "removed at exit");
        // Nothing but the socket was left in the folder.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn other_files_are_configuration_errors() {
        let dir = TempDir::new("listener-files");
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = Listener::open(Some(&file), 0o660).unwrap_err();
        assert!(err.to_string().contains("regular file"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = Listener::open(Some(&link), 0o660).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "x", "left alone");
    }
}
