//! In-process WebSocket test server with scripted behaviours.
//!
//! [`Server::start`] binds `127.0.0.1:0` and serves each TCP connection on its own thread;
//! dropping the [`Server`] stops accepting and shuts every connection down. The opening
//! handshake is tungstenite's (`accept_hdr_with_config`), so the client's request is checked by a
//! real implementation; after it the server speaks RFC 6455 frames itself, which lets it do
//! what tungstenite never does: receive a Ping without answering it, answer with a wrong
//! payload, or stop reading altogether.
//!
//! Everything the server sees is recorded as an [`Event`] (connection id, arrival time, kind) in
//! a history that tests wait on with a bound: [`Server::wait_for`], [`Server::wait_count`],
//! [`Server::expect`], or [`Server::subscribe`] for a channel of new events. Connection ids
//! count TCP accepts from 0.
//!
//! Hostile servers: [`Msg::Raw`] writes hand-made (possibly invalid) frames built with [`frame()`],
//! [`Behavior::with_101`] writes frames in the same `write()` as the 101 response,
//! [`Behavior::response_header`] adds headers to the 101 (an extension never offered), and
//! [`Handshake::Trickle`] answers the upgrade one byte at a time, never finishing.
//!
//! TLS ([`Server::start_tls`]) uses OpenSSL with certificates from [`Pki`], optionally requiring
//! a client certificate (mutual TLS). On TLS connections reads and writes share a lock, so a
//! flooding TLS connection reads late; use plain connections for timing-sensitive floods.

//!
//! Files: [`Behavior`] and its shortcuts in `behavior.rs`, the recorded [`Event`]s in
//! `event.rs`, the frame codec in `frame.rs`, a connection's thread in `conn.rs`, the
//! opening handshake in `handshake.rs` and the TLS side in `tls.rs`.

mod behavior;
mod conn;
mod event;
mod frame;
mod handshake;
mod tls;

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::SslAcceptor;

pub use self::behavior::{Behavior, Handshake, Msg, Pongs, TRICKLE};
use self::conn::{Conn, serve};
pub use self::event::{Event, Kind};
pub use self::frame::{FIN, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, encode, frame};
use super::lock;
use super::tls::Pki;

/// Which [`Behavior`] a connection gets, by id.
type Script = Arc<dyn Fn(usize) -> Behavior + Send + Sync>;

/// What the accept loop and every connection thread share.
struct Shared {
    history: Mutex<Vec<Event>>,
    history_cv: Condvar,
    script: Script,
    conns: Mutex<HashMap<usize, Arc<Conn>>>,
    tcp: Mutex<Vec<TcpStream>>,
    stopping: AtomicBool,
    next_id: AtomicUsize,
    tls: Option<SslAcceptor>,
}

impl Shared {
    fn emit(&self, conn: usize, kind: Kind) {
        let e = Event {
            conn,
            at: Instant::now(),
            kind,
        };
        lock(&self.history).push(e);
        self.history_cv.notify_all();
    }
}

/// The test server. See the module docs.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<thread::JoinHandle<()>>,
    /// For a server on a given listener ([`Server::start_on`]), perhaps in another network
    /// namespace where a connect from here cannot reach it: shut down to wake the accept loop.
    listener: Option<TcpListener>,
}

impl Server {
    /// A plain `ws://` server doing `behavior` on every connection.
    pub fn start(behavior: Behavior) -> Server {
        Server::start_with(move |_| behavior.clone())
    }

    /// A plain server that does `first` on its first connection and [`Behavior::default`]
    /// on every later one: misbehave once, then serve normally.
    pub fn start_first(first: Behavior) -> Server {
        Server::start_with(move |n| {
            if n == 0 {
                first.clone()
            } else {
                Behavior::default()
            }
        })
    }

    /// A plain server whose behaviour depends on the connection id (TCP accept order from 0),
    /// e.g. `|n| if n == 0 { Behavior::silent() } else { Behavior::echo() }`.
    pub fn start_with(script: impl Fn(usize) -> Behavior + Send + Sync + 'static) -> Server {
        Server::launch(Arc::new(script), None)
    }

    /// A `wss://` server with `pki`'s server certificate; `require_client_cert` makes it demand
    /// a client certificate signed by the test CA (mutual TLS).
    pub fn start_tls(behavior: Behavior, pki: &Pki, require_client_cert: bool) -> Server {
        Server::start_tls_with(move |_| behavior.clone(), pki, require_client_cert)
    }

    /// [`Server::start_tls`] with a per-connection script.
    pub fn start_tls_with(
        script: impl Fn(usize) -> Behavior + Send + Sync + 'static,
        pki: &Pki,
        require_client_cert: bool,
    ) -> Server {
        let acceptor = tls::acceptor(pki, require_client_cert);
        Server::launch(Arc::new(script), Some(acceptor))
    }

    /// A plain server doing `behavior` on every connection accepted from `listener` (bound
    /// by the caller, e.g. inside a network namespace).
    pub fn start_on(listener: TcpListener, behavior: Behavior) -> Server {
        let wake = listener.try_clone().expect("clone the listener");
        let mut server = Server::launch_on(listener, Arc::new(move |_| behavior.clone()), None);
        server.listener = Some(wake);
        server
    }

    /// [`Server::start_on`] with a per-connection script.
    pub fn start_on_with(
        listener: TcpListener,
        script: impl Fn(usize) -> Behavior + Send + Sync + 'static,
    ) -> Server {
        let wake = listener.try_clone().expect("clone the listener");
        let mut server = Server::launch_on(listener, Arc::new(script), None);
        server.listener = Some(wake);
        server
    }

    /// A `wss://` server (see [`Server::start_tls`]) on a listener bound by the caller.
    pub fn start_tls_on(listener: TcpListener, behavior: Behavior, pki: &Pki) -> Server {
        let wake = listener.try_clone().expect("clone the listener");
        let acceptor = tls::acceptor(pki, false);
        let mut server = Server::launch_on(
            listener,
            Arc::new(move |_| behavior.clone()),
            Some(acceptor),
        );
        server.listener = Some(wake);
        server
    }

    fn launch(script: Script, tls: Option<SslAcceptor>) -> Server {
        super::watchdog::watch();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Server::launch_on(listener, script, tls)
    }

    fn launch_on(listener: TcpListener, script: Script, tls: Option<SslAcceptor>) -> Server {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            history: Mutex::new(Vec::new()),
            history_cv: Condvar::new(),
            script,
            conns: Mutex::new(HashMap::new()),
            tcp: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            next_id: AtomicUsize::new(0),
            tls,
        });
        let sh = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name("test-server-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c) = stream.try_clone() {
                        lock(&sh.tcp).push(c);
                    }
                    let _ = stream.set_nodelay(true);
                    sh.emit(id, Kind::Accepted);
                    let behavior = (sh.script)(id);
                    let sh2 = Arc::clone(&sh);
                    let _ = thread::Builder::new()
                        .name(format!("test-server-conn-{id}"))
                        .spawn(move || serve(sh2, id, stream, behavior));
                }
            })
            .expect("spawn accept thread");
        Server {
            addr,
            shared,
            accept_thread: Some(accept_thread),
            listener: None,
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:<port>/` or `wss://127.0.0.1:<port>/` for a TLS server.
    pub fn url(&self) -> String {
        self.url_path("/")
    }

    /// The URL with `path` (starting with `/`).
    pub fn url_path(&self, path: &str) -> String {
        let scheme = if self.shared.tls.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Waits until the history holds at least `n` events matching `pred` and returns all the
    /// matching ones; `None` after `timeout`.
    pub fn wait_count(
        &self,
        timeout: Duration,
        n: usize,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.shared.history);
        loop {
            let found: Vec<Event> = g.iter().filter(|e| pred(e)).cloned().collect();
            if found.len() >= n {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .shared
                .history_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The first event in the history matching `pred`, waiting at most `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, pred: impl FnMut(&Event) -> bool) -> Option<Event> {
        self.wait_count(timeout, 1, pred)
            .and_then(|v| v.into_iter().next())
    }

    /// Like [`Server::wait_for`], but panics naming `what` and dumping the history on timeout.
    pub fn expect(&self, timeout: Duration, what: &str, pred: impl FnMut(&Event) -> bool) -> Event {
        match self.wait_for(timeout, pred) {
            Some(e) => e,
            None => panic!(
                "server did not see {what} within {timeout:?}\n{}",
                self.dump()
            ),
        }
    }

    /// Like [`Server::wait_count`], but panics naming `what` and dumping the history on timeout.
    pub fn expect_count(
        &self,
        timeout: Duration,
        n: usize,
        what: &str,
        pred: impl FnMut(&Event) -> bool,
    ) -> Vec<Event> {
        match self.wait_count(timeout, n, pred) {
            Some(v) => v,
            None => panic!(
                "server did not see {n} x {what} within {timeout:?}\n{}",
                self.dump()
            ),
        }
    }

    /// Waits for the `n`th upgrade (1-based) and returns its event.
    pub fn expect_upgrades(&self, timeout: Duration, n: usize) -> Event {
        let v = self.expect_count(timeout, n, &format!("{n} upgrades"), Event::is_upgraded);
        v[n - 1].clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.count(Event::is_accepted)
    }

    /// Number of completed upgrades so far.
    pub fn upgrades(&self) -> usize {
        self.count(Event::is_upgraded)
    }

    /// Number of events so far matching `pred`.
    pub fn count(&self, mut pred: impl FnMut(&Event) -> bool) -> usize {
        lock(&self.shared.history)
            .iter()
            .filter(|e| pred(e))
            .count()
    }

    /// Texts received on connection `conn`, in order.
    pub fn texts(&self, conn: usize) -> Vec<String> {
        lock(&self.shared.history)
            .iter()
            .filter(|e| e.conn == conn)
            .filter_map(|e| e.text().map(String::from))
            .collect()
    }

    /// The history, one event per line with times relative to the first, for failure messages.
    pub fn dump(&self) -> String {
        let h = lock(&self.shared.history);
        let t0 = h.first().map(|e| e.at);
        let mut s = String::from("server history:\n");
        for e in h.iter() {
            let t = t0.map(|t0| e.at - t0).unwrap_or_default();
            let kind = match &e.kind {
                Kind::Text(t) if t.len() > 80 => format!("Text({} bytes)", t.len()),
                Kind::Binary(b) => format!("Binary({} bytes)", b.len()),
                k => format!("{k:?}"),
            };
            s.push_str(&format!(
                "  {:>8.3}s conn {} {kind}\n",
                t.as_secs_f64(),
                e.conn
            ));
        }
        s
    }

    /// Shuts connection `id` down (TCP FIN, no Close frame).
    pub fn drop_conn(&self, id: usize) {
        if let Some(c) = lock(&self.shared.conns).get(&id) {
            c.mark_closed();
        }
    }

    /// Connection `id`, which stopped reading ([`Behavior::stop_reading_after`]), reads
    /// everything its kernel received (and so acknowledged), then closes: FIN, or RST if
    /// `reset`. Its [`Kind::Disconnected`] event says when that is done.
    pub fn close_after_draining(&self, id: usize, reset: bool) {
        let conn = lock(&self.shared.conns).get(&id).cloned();
        conn.unwrap_or_else(|| panic!("no connection {id}"))
            .close_after_draining(reset);
    }

    /// Shuts every connection down (TCP FIN, no Close frame).
    pub fn drop_all(&self) {
        for s in lock(&self.shared.tcp).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for c in lock(&self.shared.conns).values() {
            c.mark_closed();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        match &self.listener {
            // SAFETY: shutdown on a descriptor the listener owns; a blocked accept returns.
            Some(listener) => unsafe {
                libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(listener), libc::SHUT_RDWR);
            },
            None => {
                let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            }
        }
        self.drop_all();
        if let Some(h) = self.accept_thread.take() {
            let _ = h.join();
        }
    }
}
