//! Fault-injecting TCP proxy between the client and a server.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and, for each accepted connection, connects to the
//! target and pumps bytes both ways on two threads. The [`Mode`] can be switched at any time
//! with [`Proxy::set_mode`] and applies to current and future connections:
//!
//! - [`Mode::Pass`]: forward everything.
//! - [`Mode::Blackhole`]: a half-open link. Both sockets stay open, bytes are read and
//!   discarded in both directions, so the client's writes succeed and nothing ever arrives.
//! - [`Mode::StopReadingClient`]: stop reading from the client (its writes fill the socket
//!   buffers and then block); server → client still flows.
//! - [`Mode::Refuse`]: new connections are accepted, counted and closed at once.
//! - [`Mode::Freeze`]: a link that stops moving. Neither direction is read or forwarded
//!   (bytes already read are held back), both sockets stay open: the kernel buffers fill
//!   and every read on either side waits.
//! - [`Mode::DropUpstream`]: a one-way failure. Both legs stay up, server → client flows,
//!   everything the client sends is read and discarded.
//! - [`Mode::Drip`]: a slow downstream. Server → client bytes go out at most `chunk` at a
//!   time, one piece per `every`; client → server flows.
//!
//! [`Proxy::set_mode_after_next_from_server`] arms a switch that happens with the next
//! server → client read: that read is still forwarded, then the new mode holds (e.g. let a
//! TLS renegotiation request through, then freeze before the client's answer can pass).
//!
//! [`Proxy::cut`] closes every current connection on both sides (FIN).
//! [`Proxy::accepted`] counts accepted connections; [`Proxy::wait_accepted`] waits for the
//! Nth with a bound. Dropping the proxy stops it and closes everything.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::lock;

/// What the proxy does with bytes; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Read and discard both ways, keep the sockets open.
    Blackhole,
    /// Do not read from the client; server → client still forwarded.
    StopReadingClient,
    /// Accept new connections and close them at once.
    Refuse,
    /// Read nothing and forward nothing either way; keep both sockets open.
    Freeze,
    /// Forward server → client; read and discard what the client sends.
    DropUpstream,
    /// Forward server → client at most `chunk` bytes per `every`; client → server as is.
    Drip {
        /// Most bytes per piece.
        chunk: usize,
        /// Pause before each piece.
        every: Duration,
    },
}

impl Mode {
    /// Whether the pump of this direction must not read now.
    fn holds(self, from_client: bool) -> bool {
        self == Mode::Freeze || (from_client && self == Mode::StopReadingClient)
    }
}

struct State {
    mode: Mode,
    /// Armed by [`Proxy::set_mode_after_next_from_server`].
    after_server_read: Option<Mode>,
    accepted: usize,
    accept_times: Vec<Instant>,
    /// Connection id → (client, server) socket clones of live connections, for [`Proxy::cut`].
    live: HashMap<u64, (TcpStream, Option<TcpStream>)>,
    next_id: u64,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
    stopping: AtomicBool,
    target: SocketAddr,
}

/// The proxy. See the module docs.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `target` in [`Mode::Pass`].
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mode: Mode::Pass,
                after_server_read: None,
                accepted: 0,
                accept_times: Vec::new(),
                live: HashMap::new(),
                next_id: 0,
            }),
            cv: Condvar::new(),
            stopping: AtomicBool::new(false),
            target,
        });
        let sh = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("test-proxy-accept".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if sh.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    handle(&sh, client);
                }
            })
            .expect("spawn proxy thread");
        Proxy {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port>/` (use [`Proxy::url_scheme`] for `wss`).
    pub fn url(&self) -> String {
        self.url_scheme("ws")
    }

    /// `<scheme>://127.0.0.1:<port>/`.
    pub fn url_scheme(&self, scheme: &str) -> String {
        format!("{scheme}://{}/", self.addr)
    }

    /// Switches the mode for current and future connections.
    /// Refuses new connections, cuts the live ones, and waits until the client has made
    /// at least `attempts` failed attempts, so it is surely disconnected.
    pub fn disconnect(&self, attempts: usize) {
        let before = self.accepted();
        self.set_mode(Mode::Refuse);
        self.cut();
        assert!(
            self.wait_accepted(before + attempts, super::WAIT()),
            "client did not retry"
        );
    }

    pub fn set_mode(&self, mode: Mode) {
        lock(&self.shared.state).mode = mode;
        self.shared.cv.notify_all();
    }

    /// Switches to `mode` with the next server → client read (on any connection); that
    /// read is still forwarded, and the switch happens before it is, so nothing the client
    /// sends in answer to it passes under the old mode.
    pub fn set_mode_after_next_from_server(&self, mode: Mode) {
        lock(&self.shared.state).after_server_read = Some(mode);
    }

    /// Waits until the switch armed by [`Proxy::set_mode_after_next_from_server`] has
    /// happened; false after `timeout`.
    pub fn wait_switched(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.state);
        while g.after_server_read.is_some() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        lock(&self.shared.state).accepted
    }

    /// When each connection was accepted, in order.
    pub fn accept_times(&self) -> Vec<Instant> {
        lock(&self.shared.state).accept_times.clone()
    }

    /// Waits until at least `n` connections have been accepted; false after `timeout`.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.state);
        while g.accepted < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Closes every current connection on both sides (FIN). The mode is unchanged.
    pub fn cut(&self) {
        for (_, (c, s)) in lock(&self.shared.state).live.drain() {
            let _ = c.shutdown(Shutdown::Both);
            if let Some(s) = s {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn handle(sh: &Arc<Shared>, client: TcpStream) {
    let mode = {
        let mut g = lock(&sh.state);
        g.accepted += 1;
        g.accept_times.push(Instant::now());
        sh.cv.notify_all();
        g.mode
    };
    if mode == Mode::Refuse {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let _ = client.set_nodelay(true);
    let server = TcpStream::connect_timeout(&sh.target, Duration::from_secs(10)).ok();
    let id = {
        let mut g = lock(&sh.state);
        let id = g.next_id;
        g.next_id += 1;
        g.live.insert(
            id,
            (
                client.try_clone().expect("clone client"),
                server
                    .as_ref()
                    .map(|s| s.try_clone().expect("clone server")),
            ),
        );
        id
    };
    let Some(server) = server else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = server.set_nodelay(true);
    let pairs = [
        (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
            true,
        ),
        (server, client, false),
    ];
    for (from, to, from_client) in pairs {
        let sh = Arc::clone(sh);
        let _ = thread::Builder::new()
            .name("test-proxy-pump".into())
            .spawn(move || pump(&sh, id, from, to, from_client));
    }
}

/// Copies `from` → `to` according to the mode; on EOF or error shuts both down.
fn pump(sh: &Shared, id: u64, mut from: TcpStream, mut to: TcpStream, from_client: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    // Wake up now and then to notice mode changes while blocked in read. Only a bound on
    // how stale a mode can be, not a synchronisation device.
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        if sh.stopping.load(Ordering::SeqCst) {
            break;
        }
        // Do not read while the mode says so.
        if wait_while(sh, id, |mode| mode.holds(from_client)).is_none() {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let (mode, armed) = {
            let mut g = lock(&sh.state);
            let armed = match g.after_server_read.filter(|_| !from_client) {
                Some(next) => {
                    g.after_server_read = None;
                    g.mode = next;
                    sh.cv.notify_all();
                    true
                }
                None => false,
            };
            (g.mode, armed)
        };
        let mode = if armed {
            Mode::Pass
        } else if mode == Mode::Freeze {
            // Read just before the freeze: held back until the link moves again.
            match wait_while(sh, id, |mode| mode == Mode::Freeze) {
                Some(mode) => mode,
                None => break,
            }
        } else {
            mode
        };
        let sent = match mode {
            Mode::Blackhole => Ok(()),
            Mode::DropUpstream if from_client => Ok(()),
            Mode::Drip { chunk, every } if !from_client => {
                drip(&mut to, &buf[..n], chunk.max(1), every)
            }
            _ => to.write_all(&buf[..n]),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    lock(&sh.state).live.remove(&id);
}

/// Waits while `hold(mode)`; the mode that ended the wait, or `None` when the proxy stops
/// or connection `id` was cut meanwhile.
fn wait_while(sh: &Shared, id: u64, hold: impl Fn(Mode) -> bool) -> Option<Mode> {
    let mut g = lock(&sh.state);
    while hold(g.mode) {
        if sh.stopping.load(Ordering::SeqCst) || !g.live.contains_key(&id) {
            return None;
        }
        g = sh
            .cv
            .wait_timeout(g, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    Some(g.mode)
}

/// Writes `data` in pieces of `chunk` bytes, sleeping `every` before each.
fn drip(to: &mut TcpStream, data: &[u8], chunk: usize, every: Duration) -> std::io::Result<()> {
    for piece in data.chunks(chunk) {
        thread::sleep(every);
        to.write_all(piece)?;
    }
    Ok(())
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.cv.notify_all();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.cut();
        if let Some(h) = self.accept_thread.take() {
            let _ = h.join();
        }
    }
}
