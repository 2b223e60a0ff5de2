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
//! Hostile servers: [`Msg::Raw`] writes hand-made (possibly invalid) frames built with [`frame`],
//! [`Behavior::with_101`] writes frames in the same `write()` as the 101 response,
//! [`Behavior::response_header`] adds headers to the 101 (an extension never offered), and
//! [`Handshake::Trickle`] answers the upgrade one byte at a time, never finishing.
//!
//! TLS ([`Server::start_tls`]) uses OpenSSL with certificates from [`Pki`], optionally requiring
//! a client certificate (mutual TLS). On TLS connections reads and writes share a lock, so a
//! flooding TLS connection reads late; use plain connections for timing-sensitive floods.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::{SslAcceptor, SslMethod, SslStream, SslVerifyMode};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderName, HeaderValue, StatusCode};

use super::tls::Pki;

/// A message the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// Bytes written as they are: a hand-made frame, valid or not (see [`frame`]).
    Raw(Vec<u8>),
}

/// How the opening handshake goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Handshake {
    /// Upgrade, answering with the first requested subprotocol (if any).
    #[default]
    Accept,
    /// Answer the upgrade request with this status and extra headers (e.g. 503 + Retry-After).
    Reject {
        /// HTTP status.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// Accept TCP and say nothing, not even TLS: a connect-timeout test (also for `wss://`,
    /// where the client's TLS handshake stalls).
    Stall,
    /// Complete TLS (if any), read the upgrade request, never answer it.
    StallUpgrade,
    /// Plain connections only: read the upgrade request, then answer with a 101 status line
    /// and a header line that never ends, one byte every [`TRICKLE`]: a slow-loris server whose
    /// every read returns something, so no socket timeout ever fires.
    Trickle,
}

/// The pace of [`Handshake::Trickle`].
pub const TRICKLE: Duration = Duration::from_millis(100);

/// How Pings from the client are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pongs {
    /// A Pong with the same payload, at once.
    #[default]
    Normal,
    /// A Pong with a payload that differs from the Ping's.
    WrongPayload,
    /// No Pong at all (the Ping is still read and recorded).
    Never,
}

/// What the server does on a connection. Build with [`Behavior::default`] (accept, read and
/// record, answer pings, send nothing) or the shortcuts, then chain modifiers.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// The opening handshake.
    pub handshake: Handshake,
    /// Answers to Pings.
    pub pongs: Pongs,
    /// Read frames after the handshake. `false` = never read: truly silent, nothing recorded,
    /// no Pongs, no disconnect noticed, and the client's writes eventually fill the buffers.
    pub read: bool,
    /// Send received text and binary messages back.
    pub echo: bool,
    /// Sent right after the handshake.
    pub on_connect: Vec<Msg>,
    /// Sent periodically, first one after one period.
    pub every: Option<(Duration, Msg)>,
    /// Server Pings at this period (payload `srv-<seq>`); their Pongs are recorded with latency.
    pub ping_every: Option<Duration>,
    /// Send a Close frame with this code and reason after this delay.
    pub close_after: Option<(Duration, u16, String)>,
    /// Shut the TCP connection down (no Close frame) after this delay.
    pub drop_after: Option<Duration>,
    /// Send text messages of this size back to back, as fast as the client takes them.
    pub flood: Option<usize>,
    /// Send 125-byte Pings back to back, as fast as the client takes them.
    pub ping_flood: bool,
    /// Text replies: when a text equal to `.0` arrives, send `.1` (e.g. `("ping", "pong")`).
    pub replies: Vec<(String, String)>,
    /// Plain connections: bytes (frames) written in the same `write()` call as the 101
    /// response, so they reach the client in the handshake's own segment.
    pub with_101: Vec<u8>,
    /// Extra headers on the 101 response (e.g. an extension the client never offered).
    pub response_headers: Vec<(String, String)>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            handshake: Handshake::Accept,
            pongs: Pongs::Normal,
            read: true,
            echo: false,
            on_connect: Vec::new(),
            every: None,
            ping_every: None,
            close_after: None,
            drop_after: None,
            flood: None,
            ping_flood: false,
            replies: Vec::new(),
            with_101: Vec::new(),
            response_headers: Vec::new(),
        }
    }
}

impl Behavior {
    /// Accept and echo texts and binaries; Pings answered.
    pub fn echo() -> Behavior {
        Behavior {
            echo: true,
            ..Behavior::default()
        }
    }

    /// Accept, then never read or write again (alive TCP, dead peer).
    pub fn silent() -> Behavior {
        Behavior {
            read: false,
            ..Behavior::default()
        }
    }

    /// Reject the upgrade with `status` and `headers`.
    pub fn reject(status: u16, headers: &[(&str, &str)]) -> Behavior {
        Behavior {
            handshake: Handshake::Reject {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            ..Behavior::default()
        }
    }

    /// Accept TCP and say nothing (see [`Handshake::Stall`]).
    pub fn stall() -> Behavior {
        Behavior {
            handshake: Handshake::Stall,
            ..Behavior::default()
        }
    }

    /// Complete TLS, never answer the upgrade (see [`Handshake::StallUpgrade`]).
    pub fn stall_upgrade() -> Behavior {
        Behavior {
            handshake: Handshake::StallUpgrade,
            ..Behavior::default()
        }
    }

    /// Answers the upgrade request slowly, never finishing (see [`Handshake::Trickle`]).
    pub fn trickle() -> Behavior {
        Behavior {
            handshake: Handshake::Trickle,
            ..Behavior::default()
        }
    }

    /// Appends `frames` (see [`encode`], [`frame`]) to the 101 response, in the same write.
    pub fn with_101(mut self, frames: &[u8]) -> Behavior {
        self.with_101.extend_from_slice(frames);
        self
    }

    /// Adds the header `name: value` to the 101 response.
    pub fn response_header(mut self, name: &str, value: &str) -> Behavior {
        self.response_headers.push((name.into(), value.into()));
        self
    }

    /// Sets how Pings are answered.
    pub fn pongs(mut self, p: Pongs) -> Behavior {
        self.pongs = p;
        self
    }

    /// Sends `text` right after the handshake.
    pub fn send(mut self, text: &str) -> Behavior {
        self.on_connect.push(Msg::Text(text.into()));
        self
    }

    /// Sends `msg` right after the handshake.
    pub fn send_msg(mut self, msg: Msg) -> Behavior {
        self.on_connect.push(msg);
        self
    }

    /// Sends `text` every `period`.
    pub fn send_every(mut self, period: Duration, text: &str) -> Behavior {
        self.every = Some((period, Msg::Text(text.into())));
        self
    }

    /// Sends a server Ping every `period`.
    pub fn ping_every(mut self, period: Duration) -> Behavior {
        self.ping_every = Some(period);
        self
    }

    /// Sends Close(`code`, `reason`) after `delay`.
    pub fn close_after(mut self, delay: Duration, code: u16, reason: &str) -> Behavior {
        self.close_after = Some((delay, code, reason.into()));
        self
    }

    /// Drops TCP (FIN, no Close frame) after `delay`.
    pub fn drop_after(mut self, delay: Duration) -> Behavior {
        self.drop_after = Some(delay);
        self
    }

    /// Answers a text equal to `on` with the text `with`.
    pub fn reply(mut self, on: &str, with: &str) -> Behavior {
        self.replies.push((on.into(), with.into()));
        self
    }

    /// Floods the largest Pings a control frame allows (with [`Behavior::silent`]: a peer
    /// that stops reading but keeps talking, so every Pong the client owes piles up).
    pub fn ping_flood(mut self) -> Behavior {
        self.ping_flood = true;
        self
    }

    /// Floods `size`-byte text messages.
    pub fn flood(mut self, size: usize) -> Behavior {
        self.flood = Some(size);
        self
    }
}

/// What happened on a connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// TCP accepted.
    Accepted,
    /// Upgrade completed.
    Upgraded {
        /// Request path and query.
        path: String,
        /// Request headers, names lower-cased, in order.
        headers: Vec<(String, String)>,
        /// Requested subprotocols (`Sec-WebSocket-Protocol`, split on commas).
        subprotocols: Vec<String>,
        /// Common name of the client's TLS certificate, if one was presented.
        client_cert_cn: Option<String>,
    },
    /// Upgrade request answered with this status instead.
    Rejected {
        /// The status sent.
        status: u16,
    },
    /// A text message from the client.
    Text(String),
    /// A binary message from the client.
    Binary(Vec<u8>),
    /// A Ping from the client, with its payload.
    Ping(Vec<u8>),
    /// A Pong from the client; `latency` is set when it answers one of the server's Pings.
    Pong {
        /// Payload.
        payload: Vec<u8>,
        /// Time since the matching server Ping was written.
        latency: Option<Duration>,
    },
    /// A Close frame from the client.
    Close {
        /// Status code, if any.
        code: Option<u16>,
        /// Reason.
        reason: String,
    },
    /// The client closed TCP, or the connection failed (also after a Close exchange).
    Disconnected,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Connection id (TCP accept order, from 0).
    pub conn: usize,
    /// When the server saw it.
    pub at: Instant,
    /// What it was.
    pub kind: Kind,
}

impl Event {
    /// The text, if this is a [`Kind::Text`].
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is an upgrade.
    pub fn is_upgraded(&self) -> bool {
        matches!(self.kind, Kind::Upgraded { .. })
    }

    /// Whether this is a TCP accept.
    pub fn is_accepted(&self) -> bool {
        matches!(self.kind, Kind::Accepted)
    }

    /// Whether this is a Ping.
    pub fn is_ping(&self) -> bool {
        matches!(self.kind, Kind::Ping(_))
    }

    /// The request header `name` (case-insensitive), if this is an upgrade carrying it.
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.kind {
            Kind::Upgraded { headers, .. } => headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

type Script = Arc<dyn Fn(usize) -> Behavior + Send + Sync>;

enum Io {
    Plain {
        read: TcpStream,
        write: Mutex<TcpStream>,
    },
    Tls {
        stream: Mutex<SslStream<TcpStream>>,
        tcp: TcpStream,
    },
}

impl Io {
    fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain { read, .. } => (&*read).read(buf),
            Io::Tls { stream, .. } => lock(stream).read(buf),
        }
    }

    fn write_all(&self, data: &[u8]) -> io::Result<()> {
        match self {
            Io::Plain { write, .. } => {
                let mut w = lock(write);
                w.write_all(data)?;
                w.flush()
            }
            Io::Tls { stream, .. } => {
                let mut s = lock(stream);
                s.write_all(data)?;
                s.flush()
            }
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Io::Plain { read, .. } => read.shutdown(Shutdown::Both),
            Io::Tls { tcp, .. } => tcp.shutdown(Shutdown::Both),
        };
    }
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Conn {
    id: usize,
    io: Io,
    closed: Mutex<bool>,
    closed_cv: Condvar,
    close_sent: AtomicBool,
    pings: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        *lock(&self.closed)
    }

    fn mark_closed(&self) {
        *lock(&self.closed) = true;
        self.closed_cv.notify_all();
        self.io.shutdown();
    }

    /// Waits until closed or `deadline`; returns whether closed.
    fn wait_closed(&self, deadline: Option<Instant>) -> bool {
        let mut g = lock(&self.closed);
        loop {
            if *g {
                return true;
            }
            match deadline {
                None => g = self.closed_cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    g = self
                        .closed_cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn send_frame(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.io.write_all(&encode(opcode, payload))
    }

    fn send_msg(&self, m: &Msg) -> io::Result<()> {
        match m {
            Msg::Text(t) => self.send_frame(OP_TEXT, t.as_bytes()),
            Msg::Binary(b) => self.send_frame(OP_BINARY, b),
            Msg::Raw(bytes) => self.io.write_all(bytes),
        }
    }

    fn send_close(&self, code: u16, reason: &str) -> io::Result<()> {
        self.close_sent.store(true, Ordering::SeqCst);
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(OP_CLOSE, &p)
    }

    fn send_ping(&self, payload: &[u8]) -> io::Result<()> {
        lock(&self.pings).insert(payload.to_vec(), Instant::now());
        self.send_frame(OP_PING, payload)
    }
}

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 8;
/// Ping frame opcode.
pub const OP_PING: u8 = 9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 10;
/// FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

/// Largest message the server accepts from a client (protects the test from a runaway client).
const MAX_INCOMING: u64 = 64 << 20;

/// An unmasked server frame with FIN set.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN | opcode, None, payload)
}

/// A frame with any first byte (FIN, RSV bits, opcode: valid or not), masked with `mask` if
/// given (which a server must never do): the raw material of protocol-error tests.
pub fn frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        v.push(mask_bit | n as u8);
    } else if n <= 0xffff {
        v.push(mask_bit | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(mask_bit | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            v.extend_from_slice(&m);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// A parsed frame: (fin, opcode, unmasked payload, bytes used).
type Decoded = (bool, u8, Vec<u8>, usize);

/// One frame parsed from the front of `buf`: (fin, opcode, unmasked payload, bytes used).
/// `Ok(None)` if incomplete.
fn decode(buf: &[u8]) -> io::Result<Option<Decoded>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut pos = 2;
    let mut len = u64::from(buf[1] & 0x7f);
    if len == 126 {
        if buf.len() < 4 {
            return Ok(None);
        }
        len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return Ok(None);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[2..10]);
        len = u64::from_be_bytes(b);
        pos = 10;
    }
    if len > MAX_INCOMING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    if !masked {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "client frame not masked (RFC 6455 5.1)",
        ));
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let end = pos + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = buf[pos..end]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((fin, opcode, payload, end)))
}

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
        let mut b =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).expect("ssl acceptor");
        b.set_private_key(&pki.server_key).expect("server key");
        b.set_certificate(&pki.server_cert).expect("server cert");
        b.check_private_key().expect("key matches cert");
        if require_client_cert {
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            b.cert_store_mut()
                .add_cert(pki.ca.clone())
                .expect("trust test CA");
            b.add_client_ca(&pki.ca).expect("client CA list");
        }
        Server::launch(Arc::new(script), Some(b.build()))
    }

    /// A plain server doing `behavior` on every connection accepted from `listener` (bound
    /// by the caller, e.g. inside a network namespace).
    pub fn start_on(listener: TcpListener, behavior: Behavior) -> Server {
        let wake = listener.try_clone().expect("clone the listener");
        let mut server = Server::launch_on(listener, Arc::new(move |_| behavior.clone()), None);
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

/// Bound for the TLS and upgrade handshake on the server side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Read timeout of TLS connections after the upgrade, so writers get the shared lock.
const TLS_POLL: Duration = Duration::from_millis(5);

fn serve(sh: Arc<Shared>, id: usize, tcp: TcpStream, b: Behavior) {
    if b.handshake == Handshake::Stall {
        // Hold the socket, say nothing; consume whatever comes until the peer goes away.
        let mut buf = [0u8; 4096];
        while !sh.stopping.load(Ordering::SeqCst) {
            match (&tcp).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        sh.emit(id, Kind::Disconnected);
        return;
    }
    let _ = tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let io = match &sh.tls {
        None => {
            let (Ok(r), Ok(w)) = (tcp.try_clone(), tcp.try_clone()) else {
                return;
            };
            if b.handshake == Handshake::StallUpgrade {
                drain(&mut &r);
                sh.emit(id, Kind::Disconnected);
                return;
            }
            if b.handshake == Handshake::Trickle {
                trickle(&sh, &tcp);
                sh.emit(id, Kind::Disconnected);
                return;
            }
            match upgrade(&sh, id, tcp, &b) {
                Some(_) => Io::Plain {
                    read: r,
                    write: Mutex::new(w),
                },
                None => return,
            }
        }
        Some(acceptor) => {
            let Ok(raw) = tcp.try_clone() else { return };
            let mut tls = match acceptor.accept(tcp) {
                Ok(s) => s,
                Err(_) => {
                    sh.emit(id, Kind::Disconnected);
                    return;
                }
            };
            if b.handshake == Handshake::StallUpgrade {
                drain(&mut tls);
                sh.emit(id, Kind::Disconnected);
                return;
            }
            let cn = tls.ssl().peer_certificate().and_then(|c| {
                c.subject_name()
                    .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                    .next()
                    .map(|e| String::from_utf8_lossy(e.data().as_slice()).into_owned())
            });
            match upgrade_tls(&sh, id, tls, &b, cn) {
                Some(tls) => {
                    let _ = raw.set_read_timeout(Some(TLS_POLL));
                    Io::Tls {
                        stream: Mutex::new(tls),
                        tcp: raw,
                    }
                }
                None => return,
            }
        }
    };
    if let Io::Plain { read, .. } = &io {
        let _ = read.set_read_timeout(None);
        let _ = read.set_write_timeout(None);
    }
    let conn = Arc::new(Conn {
        id,
        io,
        closed: Mutex::new(false),
        closed_cv: Condvar::new(),
        close_sent: AtomicBool::new(false),
        pings: Mutex::new(HashMap::new()),
    });
    lock(&sh.conns).insert(id, Arc::clone(&conn));
    if sh.stopping.load(Ordering::SeqCst) {
        conn.mark_closed();
    }
    if b.read {
        let (c, s, b2) = (Arc::clone(&conn), Arc::clone(&sh), b.clone());
        let _ = thread::Builder::new()
            .name(format!("test-server-read-{id}"))
            .spawn(move || read_loop(s, c, &b2));
    }
    script_loop(&conn, &b);
}

/// [`Handshake::Trickle`]: reads the request up to its blank line, then writes a 101 status
/// line and an endless header one byte at a time until the peer goes or the server stops.
fn trickle(sh: &Shared, tcp: &TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match (&*tcp).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if (&*tcp)
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: ")
        .is_err()
    {
        return;
    }
    while !sh.stopping.load(Ordering::SeqCst) && (&*tcp).write_all(b"a").is_ok() {
        thread::sleep(TRICKLE);
    }
}

/// Holds what tungstenite's server handshake writes, so that [`Behavior::with_101`] frames go
/// out in the same `write()` call as the 101 response. Whatever is still held when it is
/// dropped (a rejection) is written then.
struct HoldWrites {
    tcp: TcpStream,
    held: Vec<u8>,
}

impl Read for HoldWrites {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for HoldWrites {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.held.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for HoldWrites {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.tcp.write_all(&self.held);
        }
    }
}

/// Reads and discards until EOF, an error, or the handshake timeout.
fn drain(r: &mut impl Read) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

// tungstenite's callback signature fixes the large `ErrorResponse` error type.
#[allow(clippy::result_large_err)]
fn callback(
    sh: &Arc<Shared>,
    id: usize,
    b: &Behavior,
    cn: Option<String>,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> {
    let sh = Arc::clone(sh);
    let handshake = b.handshake.clone();
    let extra = b.response_headers.clone();
    move |req: &Request, mut resp: Response| {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let subprotocols: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if let Handshake::Reject { status, headers } = handshake {
            sh.emit(id, Kind::Rejected { status });
            let mut r = ErrorResponse::new(Some(format!("rejected with {status}")));
            *r.status_mut() = StatusCode::from_u16(status).expect("valid status");
            for (k, v) in headers {
                r.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_str(&v).expect("header value"),
                );
            }
            return Err(r);
        }
        if let Some(first) = subprotocols.first() {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(first).expect("subprotocol value"),
            );
        }
        for (k, v) in extra {
            resp.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(&v).expect("header value"),
            );
        }
        sh.emit(
            id,
            Kind::Upgraded {
                path,
                headers,
                subprotocols,
                client_cert_cn: cn,
            },
        );
        Ok(resp)
    }
}

fn upgrade(sh: &Arc<Shared>, id: usize, tcp: TcpStream, b: &Behavior) -> Option<TcpStream> {
    if !b.with_101.is_empty() {
        let hold = HoldWrites {
            tcp,
            held: Vec::new(),
        };
        return match tungstenite::accept_hdr_with_config(hold, callback(sh, id, b, None), None) {
            Ok(ws) => {
                let mut hold = ws.into_inner();
                let mut out = std::mem::take(&mut hold.held);
                out.extend_from_slice(&b.with_101);
                // One write() with TCP_NODELAY: the response and the frames share a segment.
                let sent = (&hold.tcp).write_all(&out);
                let tcp = hold.tcp.try_clone().ok();
                match (sent, tcp) {
                    (Ok(()), Some(tcp)) => Some(tcp),
                    _ => {
                        sh.emit(id, Kind::Disconnected);
                        None
                    }
                }
            }
            Err(_) => {
                sh.emit(id, Kind::Disconnected);
                None
            }
        };
    }
    match tungstenite::accept_hdr_with_config(tcp, callback(sh, id, b, None), None) {
        Ok(ws) => Some(ws.into_inner()),
        Err(_) => {
            sh.emit(id, Kind::Disconnected);
            None
        }
    }
}

fn upgrade_tls(
    sh: &Arc<Shared>,
    id: usize,
    tls: SslStream<TcpStream>,
    b: &Behavior,
    cn: Option<String>,
) -> Option<SslStream<TcpStream>> {
    match tungstenite::accept_hdr_with_config(tls, callback(sh, id, b, cn), None) {
        Ok(ws) => Some(ws.into_inner()),
        Err(_) => {
            sh.emit(id, Kind::Disconnected);
            None
        }
    }
}

fn script_loop(conn: &Arc<Conn>, b: &Behavior) {
    let start = Instant::now();
    for m in &b.on_connect {
        if conn.send_msg(m).is_err() {
            return;
        }
    }
    if b.ping_flood {
        // 100 Pings per write: the client's Pongs must fill the socket buffers in well
        // under a second, whatever their size.
        let burst: Vec<u8> = (0..100)
            .flat_map(|_| encode(OP_PING, &[b'p'; 125]))
            .collect();
        while !conn.is_closed() {
            if conn.io.write_all(&burst).is_err() {
                return;
            }
        }
        return;
    }
    if let Some(size) = b.flood {
        let text = Msg::Text("f".repeat(size));
        while !conn.is_closed() {
            if conn.send_msg(&text).is_err() {
                return;
            }
        }
        return;
    }
    let mut next_every = b.every.as_ref().map(|(p, _)| start + *p);
    let mut next_ping = b.ping_every.map(|p| start + p);
    let mut close_at = b.close_after.as_ref().map(|(d, _, _)| start + *d);
    let mut drop_at = b.drop_after.map(|d| start + d);
    let mut seq = 0u64;
    loop {
        let deadline = [next_every, next_ping, close_at, drop_at]
            .into_iter()
            .flatten()
            .min();
        if conn.wait_closed(deadline) {
            return;
        }
        let now = Instant::now();
        let res = (|| -> io::Result<()> {
            if let (Some(t), Some((p, m))) = (next_every, &b.every) {
                if now >= t {
                    conn.send_msg(m)?;
                    next_every = Some(t + *p);
                }
            }
            if let (Some(t), Some(p)) = (next_ping, b.ping_every) {
                if now >= t {
                    seq += 1;
                    conn.send_ping(format!("srv-{seq}").as_bytes())?;
                    next_ping = Some(t + p);
                }
            }
            if let (Some(t), Some((_, code, reason))) = (close_at, &b.close_after) {
                if now >= t {
                    close_at = None;
                    conn.send_close(*code, reason)?;
                }
            }
            if let Some(t) = drop_at {
                if now >= t {
                    drop_at = None;
                    conn.mark_closed();
                }
            }
            Ok(())
        })();
        if res.is_err() {
            return;
        }
    }
}

fn read_loop(sh: Arc<Shared>, conn: Arc<Conn>, b: &Behavior) {
    let (pongs, echo) = (b.pongs, b.echo);
    let id = conn.id;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // A message being reassembled from fragments: (opcode, data).
    let mut partial: Option<(u8, Vec<u8>)> = None;
    'outer: loop {
        let n = match conn.io.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if conn.is_closed() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let (fin, opcode, payload, used) = match decode(&buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'outer,
            };
            buf.drain(..used);
            let r = match opcode {
                OP_PING => {
                    sh.emit(id, Kind::Ping(payload.clone()));
                    match pongs {
                        Pongs::Normal => conn.send_frame(OP_PONG, &payload),
                        Pongs::WrongPayload => {
                            let mut wrong = b"wrong-".to_vec();
                            wrong.extend(payload.iter().map(|b| b.wrapping_add(1)));
                            conn.send_frame(OP_PONG, &wrong)
                        }
                        Pongs::Never => Ok(()),
                    }
                }
                OP_PONG => {
                    let latency = lock(&conn.pings)
                        .remove(&payload)
                        .map(|sent| Instant::now() - sent);
                    sh.emit(id, Kind::Pong { payload, latency });
                    Ok(())
                }
                OP_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason =
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned();
                    sh.emit(id, Kind::Close { code, reason });
                    if !conn.close_sent.swap(true, Ordering::SeqCst) {
                        let _ = conn.send_frame(OP_CLOSE, &payload[..payload.len().min(2)]);
                    }
                    break 'outer;
                }
                OP_TEXT | OP_BINARY | OP_CONT => {
                    let msg = if opcode == OP_CONT {
                        match partial.as_mut() {
                            Some((_, data)) => data.extend_from_slice(&payload),
                            None => break 'outer, // protocol error
                        }
                        if fin { partial.take() } else { None }
                    } else if fin {
                        Some((opcode, payload))
                    } else {
                        partial = Some((opcode, payload));
                        None
                    };
                    match msg {
                        Some((OP_TEXT, data)) => {
                            let t = String::from_utf8_lossy(&data).into_owned();
                            let reply = b.replies.iter().find(|(on, _)| *on == t);
                            let r = match reply {
                                Some((_, with)) => conn.send_frame(OP_TEXT, with.as_bytes()),
                                None => Ok(()),
                            };
                            sh.emit(id, Kind::Text(t));
                            if echo {
                                r.and_then(|_| conn.send_frame(OP_TEXT, &data))
                            } else {
                                r
                            }
                        }
                        Some((_, data)) => {
                            sh.emit(id, Kind::Binary(data.clone()));
                            if echo {
                                conn.send_frame(OP_BINARY, &data)
                            } else {
                                Ok(())
                            }
                        }
                        None => Ok(()),
                    }
                }
                _ => break 'outer,
            };
            if r.is_err() {
                break 'outer;
            }
        }
    }
    sh.emit(id, Kind::Disconnected);
    conn.mark_closed();
}
