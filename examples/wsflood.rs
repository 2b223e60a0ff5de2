//! The fast end of the data-path benchmark (`bench/throughput.sh`): a WebSocket
//! server that floods or counts text messages, and a batching raw client that shows
//! the harness's own ceiling. Not a general server: one purpose, raw frames, no
//! allocation per message, so that it is never the bottleneck of the measurement.
//!
//! ```text
//! cargo build --release --example wsflood
//! wsflood server --mode down|up --count N --size BYTES
//! wsflood client ws://127.0.0.1:PORT/PATH
//! ```
//!
//! `server` listens on 127.0.0.1 (port 0) and talks to the benchmark over stdio, one
//! event a line, times in seconds of `CLOCK_MONOTONIC` (the clock of Python's
//! `time.monotonic()`, so the benchmark can compare them with its own):
//!
//! - `listening PORT`
//! - `open CONN T` when a WebSocket handshake is done (the server answers the upgrade
//!   itself: `Sec-WebSocket-Accept` from tungstenite's `derive_accept_key`).
//! - `--mode down`: on the line `go` on stdin, the first connection gets N text
//!   messages of BYTES bytes each (a 10-digit sequence number, then `x`s), written
//!   in 256 KiB batches: `start T`, then `sent N T` once the kernel has them all.
//! - `--mode up`: text messages from any connection are counted (a message split
//!   into fragments counts once) and their sequence numbers checked (the first 10
//!   bytes of each, unmasked: a message whose number is not the previous one + 1 is
//!   a `seq_error`). `first T` at the first one, `count C T_LAST` at most every
//!   100 ms while the count moves, `done C T_FIRST T_LAST` when it reaches N.
//! - Pings are answered with Pongs and a Close with a Close, in both modes.
//! - On `quit` or EOF on stdin: `final COUNT SEQ_ERRORS T_FIRST T_LAST BYTES CONNS`,
//!   then exit 0 (T_FIRST and T_LAST are 0 when nothing arrived).
//!
//! `client` is the best case a client could be: it connects, then copies stdin lines
//! into masked text frames and received text frames into stdout lines, in whole
//! batches (one write per read, no flush per message). Run by the benchmark in place
//! of a real client, it shows how fast the harness (this server, the benchmark's
//! stdin writer and stdout line counter) can go on this machine: the ceiling column.

use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use tungstenite::handshake::derive_accept_key;

/// Size of the 10-digit sequence number at the start of every payload.
const SEQ_DIGITS: usize = 10;
const BATCH: usize = 256 * 1024;

fn mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn event(line: String) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("server") => server(&args[1..]),
        Some("client") if args.len() == 2 => client(&args[1]),
        _ => Err(usage()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsflood: {e}");
            ExitCode::from(2)
        }
    }
}

fn usage() -> String {
    "usage: wsflood server --mode down|up --count N --size BYTES | wsflood client ws://HOST:PORT/PATH".into()
}

// ------------------------------------------------------------------------ frames

/// One parsed frame header at the start of a buffer.
struct Head {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

/// Parses the frame header at the start of `b`; None if more bytes are needed.
fn parse_head(b: &[u8]) -> Option<Head> {
    if b.len() < 2 {
        return None;
    }
    let (b0, b1) = (b[0], b[1]);
    let mut at = 2;
    let mut len = (b1 & 0x7f) as usize;
    if len == 126 {
        if b.len() < at + 2 {
            return None;
        }
        len = u16::from_be_bytes([b[2], b[3]]) as usize;
        at += 2;
    } else if len == 127 {
        if b.len() < at + 8 {
            return None;
        }
        len = u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize;
        at += 8;
    }
    let mask = if b1 & 0x80 != 0 {
        if b.len() < at + 4 {
            return None;
        }
        let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    Some(Head {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        header_len: at,
        payload_len: len,
    })
}

/// Appends a frame header (FIN set) to `out`; masked with a zero key when `masked`.
fn push_head(out: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    let m = if masked { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(m | len as u8);
    } else if len < 65536 {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        // A zero key: XOR is the identity, so the payload is copied as is. The server
        // side of this benchmark does not mind (RFC 6455 wants an unpredictable key
        // against cache poisoning by proxies, which does not apply on loopback).
        out.extend_from_slice(&[0, 0, 0, 0]);
    }
}

fn unmask(data: &[u8], mask: Option<[u8; 4]>, offset: usize) -> Vec<u8> {
    match mask {
        None => data.to_vec(),
        Some(m) => data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[(i + offset) & 3])
            .collect(),
    }
}

/// A buffer of received bytes: frames are parsed at the front, reads append at the end.
struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RxBuf {
    fn new() -> RxBuf {
        RxBuf {
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
        }
    }
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }
    /// Reads more; makes room first (moving the unparsed tail to the front, growing the
    /// buffer when one frame needs more). Ok(0) is EOF.
    fn fill(&mut self, r: &mut impl Read, need: usize) -> io::Result<usize> {
        if self.start > 0
            && (self.buf.len() - self.end < 64 * 1024 || self.start + need > self.buf.len())
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.buf.len() {
            self.buf.resize(need, 0);
        }
        loop {
            match r.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

// ------------------------------------------------------------------------ server

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Down,
    Up,
}

struct Shared {
    mode: Mode,
    count: u64,
    size: usize,
    go: (Mutex<bool>, Condvar),
    received: AtomicU64,
    seq_errors: AtomicU64,
    bytes: AtomicU64,
    /// f64 bits of the monotonic times of the first and the latest message.
    t_first: AtomicU64,
    t_last: AtomicU64,
    conns: AtomicU64,
    /// The next expected sequence number, over all connections.
    next_seq: Mutex<u64>,
    flood_taken: AtomicBool,
}

fn server(args: &[String]) -> Result<(), String> {
    let (mut mode, mut count, mut size) = (None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or_else(usage)?;
        match a.as_str() {
            "--mode" => {
                mode = Some(match v.as_str() {
                    "down" => Mode::Down,
                    "up" => Mode::Up,
                    _ => return Err(usage()),
                })
            }
            "--count" => count = Some(v.parse::<u64>().map_err(|e| format!("--count: {e}"))?),
            "--size" => size = Some(v.parse::<usize>().map_err(|e| format!("--size: {e}"))?),
            _ => return Err(usage()),
        }
    }
    let (mode, count, size) = (
        mode.ok_or_else(usage)?,
        count.ok_or_else(usage)?,
        size.ok_or_else(usage)?,
    );
    if size < SEQ_DIGITS {
        return Err(format!("--size must be at least {SEQ_DIGITS}"));
    }
    let sh = Arc::new(Shared {
        mode,
        count,
        size,
        go: (Mutex::new(false), Condvar::new()),
        received: AtomicU64::new(0),
        seq_errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        t_first: AtomicU64::new(0),
        t_last: AtomicU64::new(0),
        conns: AtomicU64::new(0),
        next_seq: Mutex::new(0),
        flood_taken: AtomicBool::new(false),
    });
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    event(format!(
        "listening {}",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    ));

    {
        let sh = sh.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let sh = sh.clone();
                thread::spawn(move || {
                    if let Err(e) = serve(s, &sh) {
                        eprintln!("wsflood: connection: {e}");
                    }
                });
            }
        });
    }
    if mode == Mode::Up {
        let sh = sh.clone();
        thread::spawn(move || {
            let mut last = 0;
            loop {
                thread::sleep(Duration::from_millis(100));
                let n = sh.received.load(Ordering::Acquire);
                if n != last && n < sh.count {
                    event(format!(
                        "count {n} {:.6}",
                        f64::from_bits(sh.t_last.load(Ordering::Acquire))
                    ));
                    last = n;
                }
            }
        });
    }
    // stdin: `go` starts the flood; `quit` or EOF ends the run.
    for line in io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("go") => {
                *sh.go.0.lock().unwrap() = true;
                sh.go.1.notify_all();
            }
            Ok("quit") | Err(_) => break,
            _ => {}
        }
    }
    event(format!(
        "final {} {} {:.6} {:.6} {} {}",
        sh.received.load(Ordering::Acquire),
        sh.seq_errors.load(Ordering::Acquire),
        f64::from_bits(sh.t_first.load(Ordering::Acquire)),
        f64::from_bits(sh.t_last.load(Ordering::Acquire)),
        sh.bytes.load(Ordering::Acquire),
        sh.conns.load(Ordering::Acquire),
    ));
    Ok(())
}

/// Reads the HTTP upgrade request, answers 101; returns (path, bytes read past it).
fn accept_upgrade(s: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if req.len() > 65536 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "request head too long",
            ));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed during the handshake",
            ));
        }
        req.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&req[..end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "no Sec-WebSocket-Key"))?;
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(resp.as_bytes())?;
    s.set_read_timeout(None)?;
    Ok((path, req[end..].to_vec()))
}

fn serve(mut s: TcpStream, sh: &Arc<Shared>) -> io::Result<()> {
    s.set_nodelay(true)?;
    let (_path, rest) = accept_upgrade(&mut s)?;
    let id = sh.conns.fetch_add(1, Ordering::AcqRel) + 1;
    event(format!("open {id} {:.6}", mono()));
    // Control frames (Pong, Close) and the flood share the socket: one lock.
    let writer = Arc::new(Mutex::new(s.try_clone()?));
    if sh.mode == Mode::Down && !sh.flood_taken.swap(true, Ordering::AcqRel) {
        let (sh, writer) = (sh.clone(), writer.clone());
        thread::spawn(move || {
            if let Err(e) = flood(&sh, &writer) {
                eprintln!("wsflood: flood: {e}");
            }
        });
    }
    let mut rx = RxBuf::new();
    rx.buf[..rest.len()].copy_from_slice(&rest);
    rx.end = rest.len();
    loop {
        // Parse every whole frame in the buffer.
        let mut need = 0;
        while let Some(h) = parse_head(rx.data()) {
            let total = h.header_len + h.payload_len;
            if rx.data().len() < total {
                need = total;
                break;
            }
            let payload = &rx.data()[h.header_len..total];
            match h.opcode {
                0x1 | 0x0 if sh.mode == Mode::Up => {
                    sh.bytes.fetch_add(h.payload_len as u64, Ordering::Relaxed);
                    if h.opcode == 0x1 {
                        check_seq(
                            sh,
                            &unmask(&payload[..payload.len().min(SEQ_DIGITS)], h.mask, 0),
                        );
                    }
                    if h.fin {
                        received(sh);
                    }
                }
                0x9 => {
                    let data = unmask(payload, h.mask, 0);
                    let mut f = Vec::with_capacity(data.len() + 2);
                    push_head(&mut f, 0xA, data.len(), false);
                    f.extend_from_slice(&data);
                    writer.lock().unwrap().write_all(&f)?;
                }
                0x8 => {
                    let code = unmask(&payload[..payload.len().min(2)], h.mask, 0);
                    let mut f = Vec::new();
                    push_head(&mut f, 0x8, code.len(), false);
                    f.extend_from_slice(&code);
                    let _ = writer.lock().unwrap().write_all(&f);
                    return Ok(());
                }
                _ => {}
            }
            rx.consume(total);
        }
        if rx.fill(&mut s, need)? == 0 {
            return Ok(());
        }
    }
}

fn check_seq(sh: &Shared, digits: &[u8]) {
    let seq = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok());
    let mut next = sh.next_seq.lock().unwrap();
    match seq {
        Some(n) if n == *next => *next += 1,
        Some(n) => {
            sh.seq_errors.fetch_add(1, Ordering::Relaxed);
            *next = n + 1;
        }
        None => {
            sh.seq_errors.fetch_add(1, Ordering::Relaxed);
            *next += 1;
        }
    }
}

fn received(sh: &Shared) {
    let t = mono();
    if sh.t_first.load(Ordering::Acquire) == 0 {
        sh.t_first.store(t.to_bits(), Ordering::Release);
        event(format!("first {t:.6}"));
    }
    sh.t_last.store(t.to_bits(), Ordering::Release);
    let n = sh.received.fetch_add(1, Ordering::AcqRel) + 1;
    if n == sh.count {
        event(format!(
            "done {n} {:.6} {t:.6}",
            f64::from_bits(sh.t_first.load(Ordering::Acquire))
        ));
    }
}

fn flood(sh: &Shared, writer: &Mutex<TcpStream>) -> io::Result<()> {
    {
        let mut go = sh.go.0.lock().unwrap();
        while !*go {
            go = sh.go.1.wait(go).unwrap();
        }
    }
    // One frame, whose sequence digits are rewritten for every message.
    let mut frame = Vec::new();
    push_head(&mut frame, 0x1, sh.size, false);
    let digits_at = frame.len();
    frame.resize(digits_at + sh.size, b'x');
    let mut batch = Vec::with_capacity(BATCH + frame.len());
    event(format!("start {:.6}", mono()));
    for i in 0..sh.count {
        let d = format!("{i:0width$}", width = SEQ_DIGITS);
        frame[digits_at..digits_at + SEQ_DIGITS].copy_from_slice(d.as_bytes());
        batch.extend_from_slice(&frame);
        if batch.len() >= BATCH || i + 1 == sh.count {
            writer.lock().unwrap().write_all(&batch)?;
            batch.clear();
        }
    }
    event(format!("sent {} {:.6}", sh.count, mono()));
    Ok(())
}

// ------------------------------------------------------------------------ client

fn client(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(hostport).map_err(|e| format!("connect {hostport}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut rx = RxBuf::new();
    let end = loop {
        if let Some(i) = rx.data().windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if rx.fill(&mut s, 0).map_err(|e| e.to_string())? == 0 {
            return Err("closed during the handshake".into());
        }
    };
    if !rx.data().starts_with(b"HTTP/1.1 101") {
        return Err("handshake refused".into());
    }
    rx.consume(end);

    // stdin lines -> masked text frames, one socket write per stdin read.
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut inbuf = vec![0u8; 1 << 20];
        let mut partial: Vec<u8> = Vec::new();
        let mut out = Vec::with_capacity(2 << 20);
        loop {
            let n = match stdin.read(&mut inbuf) {
                Ok(0) => return, // EOF: keep the connection, as wsbeat does
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut data = &inbuf[..n];
            while let Some(i) = data.iter().position(|&b| b == b'\n') {
                let line: &[u8] = if partial.is_empty() {
                    &data[..i]
                } else {
                    partial.extend_from_slice(&data[..i]);
                    &partial
                };
                push_head(&mut out, 0x1, line.len(), true);
                out.extend_from_slice(line);
                partial.clear();
                data = &data[i + 1..];
            }
            partial.extend_from_slice(data);
            if w.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    });

    // Text frames -> stdout lines, one stdout write per socket read.
    let mut stdout = io::stdout().lock();
    let mut out = Vec::with_capacity(2 << 20);
    loop {
        let mut need = 0;
        while let Some(h) = parse_head(rx.data()) {
            let total = h.header_len + h.payload_len;
            if rx.data().len() < total {
                need = total;
                break;
            }
            match h.opcode {
                0x1 | 0x0 => {
                    out.extend_from_slice(&rx.data()[h.header_len..total]);
                    if h.fin {
                        out.push(b'\n');
                    }
                }
                0x8 => return Ok(()),
                _ => {}
            }
            rx.consume(total);
        }
        if !out.is_empty() {
            stdout.write_all(&out).map_err(|e| e.to_string())?;
            stdout.flush().map_err(|e| e.to_string())?;
            out.clear();
        }
        if rx.fill(&mut s, need).map_err(|e| e.to_string())? == 0 {
            return Ok(());
        }
    }
}
