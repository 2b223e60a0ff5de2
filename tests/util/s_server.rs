//! A real `openssl s_server` as a hand-driven `wss://` peer: the test reads what the client
//! sends from its stdout and writes what the server sends to its stdin, and can make it do
//! what no library-based server here does, such as asking for a TLS renegotiation
//! (a HelloRequest, the interactive command `r`) in the middle of a WebSocket session.
//!
//! [`SServer::start`] runs `openssl s_server` on `127.0.0.1` with a port of its choosing,
//! `pki`'s server certificate and the given extra flags (e.g. `-tls1_2`), and keeps it in
//! interactive mode: no `-quiet`, since s_server only obeys its one-letter commands then.
//! [`SServer::accept_upgrade`] answers the client's WebSocket upgrade with a 101;
//! [`SServer::renegotiate`] sends the HelloRequest. The process is killed on drop.
//!
//! The `openssl` binary must be on `PATH` (Debian: the `openssl` package; `.ci/run`
//! installs it): without it [`SServer::start`] panics saying so, it never skips.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;
use super::tls::Pki;

/// Everything s_server printed on stdout (its own reports and the bytes the client sent).
#[derive(Default)]
struct Printed {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

/// A running `openssl s_server`. See the module docs.
pub struct SServer {
    child: Child,
    stdin: ChildStdin,
    printed: Arc<Printed>,
    addr: SocketAddr,
    /// Holds the certificate and key files.
    _dir: TempDir,
}

impl SServer {
    /// Starts `openssl s_server -accept 127.0.0.1:0` with `pki`'s server certificate plus
    /// `extra` flags, and waits (bounded) until it listens.
    pub fn start(pki: &Pki, extra: &[&str]) -> SServer {
        let dir = TempDir::new();
        let cert = dir.write("server.pem", pki.server_cert.to_pem().expect("pem"));
        let key = dir.write(
            "server.key",
            pki.server_key.private_key_to_pem_pkcs8().expect("pkcs8"),
        );
        let mut cmd = Command::new("openssl");
        cmd.arg("s_server")
            .args(["-accept", "127.0.0.1:0"])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        assert!(
            on_path("openssl"),
            "no `openssl` on PATH: the TLS stall tests need the openssl command-line tool \
             (Debian package `openssl`, installed by .ci/run)"
        );
        let mut child = super::spawn_checked_through(&mut cmd, 0);
        let stdin = child.stdin.take().expect("s_server stdin");
        let mut stdout = child.stdout.take().expect("s_server stdout");
        let printed = Arc::new(Printed::default());
        let sink = Arc::clone(&printed);
        thread::Builder::new()
            .name("test-s_server-stdout".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    sink.bytes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]);
                    sink.grew.notify_all();
                }
            })
            .expect("spawn s_server stdout reader");
        let mut server = SServer {
            child,
            stdin,
            printed,
            addr: "127.0.0.1:0".parse().expect("addr"),
            _dir: dir,
        };
        // It prints `ACCEPT 127.0.0.1:<port>` once it listens.
        let port = server.wait_printed(super::WAIT(), |out| {
            let text = String::from_utf8_lossy(out);
            let rest = &text[text.find("ACCEPT 127.0.0.1:")? + "ACCEPT 127.0.0.1:".len()..];
            let end = rest.find(|c: char| !c.is_ascii_digit())?;
            rest[..end].parse::<u16>().ok()
        });
        let Some(port) = port else {
            panic!(
                "openssl s_server did not report its port within {:?}; it printed:\n{}",
                super::WAIT(),
                server.printed()
            );
        };
        server.addr.set_port(port);
        server
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it printed so far, for failure messages.
    pub fn printed(&self) -> String {
        String::from_utf8_lossy(&self.printed.bytes.lock().unwrap_or_else(|e| e.into_inner()))
            .into_owned()
    }

    /// Waits until `f` finds something in what s_server printed; `None` after `timeout`.
    pub fn wait_printed<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[u8]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut g = self.printed.bytes.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = f(&g) {
                return Some(v);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .printed
                .grew
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Writes `bytes` to its stdin: application data for the client, or a command.
    pub fn type_in(&mut self, bytes: &[u8]) {
        self.stdin
            .write_all(bytes)
            .and_then(|_| self.stdin.flush())
            .expect("write to s_server's stdin");
    }

    /// Waits for the client's upgrade request (bounded; panics with what was printed) and
    /// answers it with a 101 carrying the matching `Sec-WebSocket-Accept`.
    pub fn accept_upgrade(&mut self, timeout: Duration) {
        let key = self.wait_printed(timeout, |out| {
            let text = String::from_utf8_lossy(out);
            let request = &text[text.find("GET ")?..];
            let request = &request[..request.find("\r\n\r\n")?];
            request.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| value.trim().to_owned())
            })
        });
        let Some(key) = key else {
            panic!(
                "no WebSocket upgrade request reached s_server within {timeout:?}; it printed:\n{}",
                self.printed()
            );
        };
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        // One write, so s_server reads it in one piece: it takes a chunk from stdin whose
        // first byte is a command letter (`Q`, `q`, `r`, …) as that command.
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        self.type_in(response.as_bytes());
    }

    /// The interactive command `r`: renegotiate, i.e. send the client a HelloRequest (TLS
    /// 1.2). Its report (`SSL_do_handshake -> 1`) sits in s_server's stdio buffer until it
    /// exits; watch the bytes pass the proxy instead.
    pub fn renegotiate(&mut self) {
        self.type_in(b"r\n");
    }
}

/// Whether an executable file `name` is in one of `PATH`'s directories.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
