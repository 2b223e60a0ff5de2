//! One accepted connection: its thread ([`serve`]), the scripted sending
//! ([`Behavior`]'s timers) and the reading and recording of client frames.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;

use openssl::ssl::SslStream;

use super::frame::{OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, decode, encode};
use super::handshake::HANDSHAKE_TIMEOUT;
use super::{Behavior, Handshake, Kind, Msg, Pongs, Shared, handshake, lock, tls};

/// A connection's stream after the upgrade: plain (a reading and a writing half) or TLS
/// (one stream behind a lock, plus the TCP socket to shut down).
pub(super) enum Io {
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

    /// The TCP socket of a plain connection (its reading half).
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            Io::Plain { read, .. } => Some(read),
            Io::Tls { .. } => None,
        }
    }

    fn shutdown(&self) {
        let _ = match self {
            Io::Plain { read, .. } => read.shutdown(Shutdown::Both),
            Io::Tls { tcp, .. } => tcp.shutdown(Shutdown::Both),
        };
    }
}

/// An upgraded connection.
pub(super) struct Conn {
    id: usize,
    io: Io,
    closed: Mutex<bool>,
    closed_cv: Condvar,
    close_sent: AtomicBool,
    pings: Mutex<HashMap<Vec<u8>, Instant>>,
    /// Set by [`Conn::close_after_draining`]: `Some(reset)` once asked.
    drain: Mutex<Option<bool>>,
    drain_cv: Condvar,
}

/// How a connection that stopped reading ends, once it has drained its receive buffer.
fn end_drained(tcp: &TcpStream, reset: bool) {
    if reset {
        // connect(AF_UNSPEC) disconnects the socket itself, whatever other descriptors
        // share it: from ESTABLISHED the kernel sends a RST (what SO_LINGER 0 and close
        // would do, which needs every duplicate closed).
        // SAFETY: a zeroed sockaddr with only the family set, of its own size.
        let rc = unsafe {
            let mut addr: libc::sockaddr = std::mem::zeroed();
            addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(tcp),
                &addr,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "disconnect: {}", io::Error::last_os_error());
    } else {
        let _ = tcp.shutdown(Shutdown::Both);
    }
}

impl Conn {
    /// Asks a connection that stopped reading ([`Behavior::stop_reading_after`]) to read
    /// what its kernel holds, then close with a FIN, or a RST if `reset`.
    pub(super) fn close_after_draining(&self, reset: bool) {
        *lock(&self.drain) = Some(reset);
        self.drain_cv.notify_all();
    }

    /// Waits until asked to drain (`Some(reset)`) or closed (`None`).
    fn wait_drain(&self) -> Option<bool> {
        let mut g = lock(&self.drain);
        loop {
            if let Some(reset) = *g {
                return Some(reset);
            }
            if self.is_closed() {
                return None;
            }
            g = self
                .drain_cv
                .wait_timeout(g, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn is_closed(&self) -> bool {
        *lock(&self.closed)
    }

    pub(super) fn mark_closed(&self) {
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

/// A connection's thread: the handshake `b` asks for, then its script, with the client's
/// frames read on a second thread.
pub(super) fn serve(sh: Arc<Shared>, id: usize, tcp: TcpStream, b: Behavior) {
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
        None => handshake::plain(&sh, id, tcp, &b),
        Some(acceptor) => tls::accept(&sh, id, tcp, &b, acceptor),
    };
    let Some(io) = io else { return };
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
        drain: Mutex::new(None),
        drain_cv: Condvar::new(),
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

/// Sends what `b` scripts: on connect, periodically, floods, a Close or a drop.
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

/// Reads and records the client's frames, answering Pings and echoing as `b` says.
fn read_loop(sh: Arc<Shared>, conn: Arc<Conn>, b: &Behavior) {
    let (pongs, echo) = (b.pongs, b.echo);
    let id = conn.id;
    let mut texts = 0usize;
    // While draining (after `stop_reading_after`): read until the kernel holds nothing
    // more, record, answer nothing, then close as asked.
    let mut draining: Option<bool> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // A message being reassembled from fragments: (opcode, data).
    let mut partial: Option<(u8, Vec<u8>)> = None;
    'outer: loop {
        if draining.is_none() && b.stop_reading_after.is_some_and(|n| texts >= n) {
            let Some(reset) = conn.wait_drain() else {
                break;
            };
            let Some(tcp) = conn.io.plain_tcp() else {
                panic!("stop_reading_after is for plain connections");
            };
            tcp.set_nonblocking(true).expect("nonblocking");
            draining = Some(reset);
        }
        let n = match conn.io.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if draining.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
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
            if draining.is_some() {
                if opcode == OP_TEXT && fin {
                    sh.emit(
                        id,
                        Kind::Text(String::from_utf8_lossy(&payload).into_owned()),
                    );
                }
                continue;
            }
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
                            texts += 1;
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
    if let (Some(reset), Some(tcp)) = (draining, conn.io.plain_tcp()) {
        end_drained(tcp, reset);
    }
    sh.emit(id, Kind::Disconnected);
    conn.mark_closed();
}
