//! systemd's readiness protocol (`sd_notify(3)`) without libsystemd.
//!
//! With `Type=notify` systemd passes `NOTIFY_SOCKET`, a Unix datagram socket given
//! either as a filesystem path or, with a leading `@`, as an abstract name. Each
//! datagram holds newline-separated `KEY=VALUE` assignments; [`Notify`]'s `Display`
//! is that wire format. Sending is best effort: a lost notification is logged at
//! debug and never stops the client (systemd's watchdog is the safety net).
//!
//! The watchdog interval is [`watchdog_interval`]: half of `WATCHDOG_USEC`, as
//! `sd_watchdog_enabled(3)` recommends, and only if `WATCHDOG_PID` (when set) is us.

use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// One state assignment sent to systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// `READY=1`: start-up finished (configuration valid, supervisor running).
    Ready,
    /// `STATUS=...`: free-form one-line status shown by `systemctl status`.
    /// Newlines are replaced by spaces when sent, since they would end the assignment.
    Status(String),
    /// `WATCHDOG=1`: the supervisor loop is healthy.
    Watchdog,
    /// `STOPPING=1`: shutdown has begun.
    Stopping,
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notify::Ready => f.write_str("READY=1"),
            Notify::Status(text) => {
                f.write_str("STATUS=")?;
                for c in text.chars() {
                    let c = if c == '\n' || c == '\r' { ' ' } else { c };
                    fmt::Write::write_char(f, c)?;
                }
                Ok(())
            }
            Notify::Watchdog => f.write_str("WATCHDOG=1"),
            Notify::Stopping => f.write_str("STOPPING=1"),
        }
    }
}

/// A connection to systemd's notification socket. Cheap to share by reference
/// between threads (`send` on a datagram socket needs only `&self`).
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: String,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, or `None` when the variable is unset or
    /// empty (not running under `Type=notify`) or the socket cannot be reached
    /// (logged at warn: systemd will then time the start out, so say why).
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        let addr = addr.to_str().filter(|addr| !addr.is_empty())?.to_owned();
        match Notifier::connect(&addr) {
            Ok(notifier) => Some(notifier),
            Err(err) => {
                log::warn!("NOTIFY_SOCKET {addr}: {err}; not notifying systemd");
                None
            }
        }
    }

    /// Connects to `addr`: a filesystem path, or `@name` for an abstract socket.
    /// Fails if the address is malformed or nobody listens there.
    pub fn connect(addr: &str) -> io::Result<Notifier> {
        let sock_addr = match addr.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(addr)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.connect_addr(&sock_addr)?;
        Ok(Notifier {
            socket,
            addr: addr.to_owned(),
        })
    }

    /// Sends `states` as one datagram (so systemd applies them together).
    /// Never fails: errors are logged at debug, because a missed notification
    /// must not take the client down.
    pub fn notify(&self, states: &[Notify]) {
        if states.is_empty() {
            return;
        }
        let message = datagram(states);
        match self.socket.send(message.as_bytes()) {
            Ok(_) => log::trace!("sd_notify {addr}: {message:?}", addr = self.addr),
            Err(err) => log::debug!("sd_notify {addr}: {err}", addr = self.addr),
        }
    }
}

/// The datagram for `states`: assignments joined by newlines.
pub fn datagram(states: &[Notify]) -> String {
    let mut out = String::new();
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&state.to_string());
    }
    out
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`. `None` when the
/// watchdog is off for us: the variable is unset, not a number or zero, or
/// `WATCHDOG_PID` is set and names another process (or is not a number).
///
/// Pass `std::env::var("WATCHDOG_USEC").ok().as_deref()`, the same for
/// `WATCHDOG_PID`, and `std::process::id()`.
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    my_pid: u32,
) -> Option<Duration> {
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = watchdog_pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::status_file::test_support::TempDir;

    fn receive(server: &UnixDatagram) -> String {
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        let mut buf = [0u8; 4096];
        let n = server.recv(&mut buf).expect("datagram within 5 s");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn wire_format() {
        assert_eq!(Notify::Ready.to_string(), "READY=1");
        assert_eq!(Notify::Watchdog.to_string(), "WATCHDOG=1");
        assert_eq!(Notify::Stopping.to_string(), "STOPPING=1");
        assert_eq!(
            Notify::Status("connected to ws://h/p, rtt 1.2 ms".into()).to_string(),
            "STATUS=connected to ws://h/p, rtt 1.2 ms"
        );
        assert_eq!(
            Notify::Status("two\nlines\r\n".into()).to_string(),
            "STATUS=two lines  "
        );
        assert_eq!(
            datagram(&[Notify::Ready, Notify::Status("up".into())]),
            "READY=1\nSTATUS=up"
        );
        assert_eq!(datagram(&[]), "");
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = TempDir::new("path");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::connect(path.to_str().expect("utf-8 path")).expect("connect");
        notifier.notify(&[Notify::Ready, Notify::Status("starting".into())]);
        assert_eq!(receive(&server), "READY=1\nSTATUS=starting");
        notifier.notify(&[Notify::Watchdog]);
        assert_eq!(receive(&server), "WATCHDOG=1");
        notifier.notify(&[]);
        notifier.notify(&[Notify::Stopping]);
        assert_eq!(receive(&server), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("wsbeat-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let notifier = Notifier::connect(&format!("@{name}")).expect("connect");
        notifier.notify(&[Notify::Ready]);
        assert_eq!(receive(&server), "READY=1");
    }

    #[test]
    fn a_vanished_socket_is_not_fatal() {
        let dir = TempDir::new("gone");
        let path = dir.path().join("notify");
        assert!(Notifier::connect(path.to_str().expect("utf-8 path")).is_err());
        let server = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::connect(path.to_str().expect("utf-8 path")).expect("connect");
        drop(server);
        std::fs::remove_file(&path).expect("remove socket");
        notifier.notify(&[Notify::Watchdog]); // logged, no panic
    }

    #[test]
    fn watchdog_is_half_of_watchdog_usec() {
        let me = 42;
        assert_eq!(
            watchdog_interval(Some("400000"), None, me),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("42"), me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval(None, None, me), None);
        assert_eq!(watchdog_interval(Some("0"), None, me), None);
        assert_eq!(watchdog_interval(Some(""), None, me), None);
        assert_eq!(watchdog_interval(Some("30s"), None, me), None);
        assert_eq!(watchdog_interval(Some("-5"), None, me), None);
        assert_eq!(watchdog_interval(Some("400000"), Some("43"), me), None);
        assert_eq!(watchdog_interval(Some("400000"), Some("x"), me), None);
    }
}
