//! The reader thread, and the socket both per-connection threads share.
//!
//! # Lock discipline
//! The WebSocket sits behind one mutex in [`SharedSocket`]. The reader never holds
//! it while waiting for data: it blocks in `peek` on a clone of the TCP socket
//! (outside the lock) until bytes or EOF arrive, then takes the lock and drains
//! messages with non-blocking reads (`MSG_DONTWAIT`, see [`Stream::set_draining`])
//! until `WouldBlock`, so bytes already buffered inside TLS or tungstenite are never
//! stranded. After each server Ping it flushes at once, because tungstenite only
//! queues the Pong; writes stay blocking, bounded by the socket's write timeout.
//!
//! `std::sync::Mutex` is not fair, so a reader under a message flood could keep
//! re-taking the lock and starve the heartbeat. Writers therefore announce
//! themselves in `writers_waiting`, and the reader yields the lock to them on a
//! condition variable before draining; it also drains at most [`BATCH`] messages
//! per turn. The heartbeat's writes are bounded by the socket's write timeout,
//! which bounds how long the reader can wait for the lock.
//!
//! A poisoned mutex (a thread panicked while holding it) is taken over as is: the
//! connection is being torn down by then and only needs to be closed.

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::delivery::{BATCH_BYTES, Delivery};
use crate::events::{ConnId, Event, Observer};
use crate::heartbeat::{self, Proof, SharedLiveness};
use crate::transport::Stream;

/// Most messages drained per lock acquisition, so waiting writers get their turn;
/// also at most [`BATCH_BYTES`] of text, so the reader holds little beyond the
/// output buffer's bound.
pub const BATCH: usize = 32;

/// The connection's WebSocket, shared by its reader and heartbeat threads.
pub struct SharedSocket {
    ws: Mutex<WebSocket<Stream>>,
    writers_waiting: AtomicUsize,
    writer_done: Condvar,
}

impl SharedSocket {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocket<Stream>) -> SharedSocket {
        SharedSocket {
            ws: Mutex::new(ws),
            writers_waiting: AtomicUsize::new(0),
            writer_done: Condvar::new(),
        }
    }

    /// Runs `write` with the socket locked, ahead of the reader.
    pub fn write<T>(&self, write: impl FnOnce(&mut WebSocket<Stream>) -> T) -> T {
        self.writers_waiting.fetch_add(1, Ordering::SeqCst);
        let mut ws = self.ws.lock().unwrap_or_else(PoisonError::into_inner);
        // Decrement while holding the lock: the reader checks the count under the same lock.
        self.writers_waiting.fetch_sub(1, Ordering::SeqCst);
        self.writer_done.notify_all();
        write(&mut ws)
    }

    /// The lock, once no writer is waiting for it.
    fn lock_for_read(&self) -> MutexGuard<'_, WebSocket<Stream>> {
        let mut ws = self.ws.lock().unwrap_or_else(PoisonError::into_inner);
        while self.writers_waiting.load(Ordering::SeqCst) > 0 {
            ws = self
                .writer_done
                .wait(ws)
                .unwrap_or_else(PoisonError::into_inner);
        }
        ws
    }
}

/// How the reader thread ended.
enum Ending {
    /// The server sent a Close frame (already answered).
    Closed(Option<CloseFrame>),
    /// Anything else that makes the connection unusable.
    Dead(String),
}

/// Everything the reader thread needs.
pub struct Reader {
    /// Connection this reader serves; tags every event.
    pub conn: ConnId,
    /// The shared WebSocket.
    pub socket: Arc<SharedSocket>,
    /// A clone of the TCP socket to wait on outside the lock.
    pub wait_on: TcpStream,
    /// In text heartbeat mode, the reply that is a heartbeat answer and not printed.
    pub pong_text: Option<String>,
    /// Where answers to heartbeats are recorded.
    pub liveness: SharedLiveness,
    /// Told each heartbeat round trip.
    pub observer: Arc<dyn Observer>,
    /// Where received text messages wait for the observer (stdout).
    pub delivery: Arc<Delivery>,
    /// This connection's generation in `delivery`.
    pub generation: u64,
    /// The supervisor's channel.
    pub events: Sender<Event>,
}

impl Reader {
    /// Body of the reader thread: runs until the connection ends, reports how.
    pub fn run(self) {
        let ending = self.read_until_end();
        let event = match ending {
            Ending::Closed(frame) => Event::Closed {
                conn: self.conn,
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            },
            Ending::Dead(reason) => Event::Dead {
                conn: self.conn,
                reason,
            },
        };
        let _ = self.events.send(event);
    }

    fn read_until_end(&self) -> Ending {
        let mut texts = Vec::new();
        let mut proofs = Vec::new();
        // Drain first: frames that came in the same read as the handshake response
        // already sit in tungstenite's buffer, and the socket may never become
        // readable again for them (a welcome message, a Ping, a Close).
        let mut must_wait = false;
        loop {
            if must_wait {
                match self.wait_on.peek(&mut [0u8; 1]) {
                    // Data or EOF: the drain below tells which.
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => return Ending::Dead(format!("read: {err}")),
                }
            }
            let (drained, ending) = self.drain(&mut texts, &mut proofs);
            must_wait = drained;
            if !proofs.is_empty() {
                self.record(&mut proofs);
            }
            if !texts.is_empty() {
                self.deliver(&mut texts);
            }
            if let Some(ending) = ending {
                return ending;
            }
        }
    }

    /// Hands messages to the delivery thread, outside the socket lock. With the
    /// output buffer full this waits, and reading stops: TCP flow control then
    /// slows the server down. Meanwhile the heartbeat must not count unread
    /// answers as missing, so the liveness is paused for the wait.
    fn deliver(&self, texts: &mut Vec<String>) {
        let waited = self.delivery.push(texts, self.generation, || {
            log::debug!("output buffer full: reading paused until stdout catches up");
            heartbeat::lock(&self.liveness).pause();
        });
        if waited {
            heartbeat::lock(&self.liveness).resume(Instant::now());
        }
    }

    /// Feeds what arrived into the shared liveness state. Only the first proof of
    /// life wakes the supervisor (it resets the backoff); later ones just update
    /// the state the heartbeat thread reads at its next wake-up.
    fn record(&self, proofs: &mut Vec<(Proof, Instant)>) {
        let mut live = heartbeat::lock(&self.liveness);
        let was_proven = live.proven();
        let mut rtt = None;
        for (proof, at) in proofs.drain(..) {
            if let Some(measured) = live.on_frame(&proof, at) {
                self.observer.heartbeat(measured);
                rtt = Some(measured);
            }
        }
        if live.proven() && !was_proven {
            drop(live);
            let _ = self.events.send(Event::Proven {
                conn: self.conn,
                rtt,
            });
        }
    }

    /// One turn with the lock. Returns whether the socket ran dry, and the ending if any.
    fn drain(
        &self,
        texts: &mut Vec<String>,
        proofs: &mut Vec<(Proof, Instant)>,
    ) -> (bool, Option<Ending>) {
        let mut ws = self.socket.lock_for_read();
        ws.get_mut().set_draining(true);
        let mut drained = false;
        let mut ending = None;
        let mut other_at = None;
        let mut text_bytes = 0usize;
        for _ in 0..BATCH {
            if text_bytes >= BATCH_BYTES {
                break;
            }
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    drained = true;
                    break;
                }
                Err(err) => {
                    ending = Some(fail(&mut ws, err));
                    break;
                }
            };
            let at = Instant::now();
            match message {
                Message::Text(text) => {
                    if self.pong_text.as_deref() == Some(text.as_str()) {
                        proofs.push((Proof::TextPong, at));
                    } else {
                        text_bytes += text.len();
                        texts.push(text.to_string());
                        other_at = Some(at);
                    }
                }
                Message::Binary(data) => {
                    log::debug!("binary message of {} bytes not printed", data.len());
                    other_at = Some(at);
                }
                Message::Ping(_) => {
                    // tungstenite only queued the Pong; the server's clock is running.
                    let _ = ws.flush();
                    other_at = Some(at);
                }
                Message::Pong(payload) => proofs.push((Proof::Pong(payload), at)),
                Message::Close(frame) => {
                    ending = Some(Ending::Closed(frame));
                    break;
                }
                Message::Frame(_) => {}
            }
        }
        if let Some(at) = other_at {
            proofs.push((Proof::Other, at));
        }
        ws.get_mut().set_draining(false);
        // Whatever tungstenite still holds (a Pong, our Close reply, a 1009 Close) goes
        // out now, bounded by the write timeout. Errors surface on the next read.
        let _ = ws.flush();
        // A write that ran into the write timeout (here, or inside tungstenite's read,
        // which swallows it) means the server stopped reading: the connection is dead,
        // whatever it still sends. Waiting for the next write would double the delay.
        if ending.is_none() && ws.get_ref().write_stalled() {
            ending = Some(Ending::Dead(
                "write timed out: the server stopped reading".into(),
            ));
        }
        (drained, ending)
    }
}

/// The connection's ending for a read error. Errors that break RFC 6455 are answered
/// with the Close its §7.1.7 asks for (1002, 1007 for invalid UTF-8, 1009 for a message
/// over `--max-message-size`) before the TCP connection is dropped.
fn fail(ws: &mut WebSocket<Stream>, err: tungstenite::Error) -> Ending {
    use tungstenite::error::ProtocolError;
    let (code, reason, why) = match err {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            return Ending::Dead("connection closed by server".into());
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            // A server restart or a proxy's idle cut: FIN without a Close frame.
            return Ending::Dead("server closed the TCP connection without a Close frame".into());
        }
        tungstenite::Error::Io(err) => return Ending::Dead(format!("read: {err}")),
        tungstenite::Error::Capacity(err) => (
            CloseCode::Size,
            "message too big",
            format!("incoming message over --max-message-size ({err}), closed with 1009"),
        ),
        tungstenite::Error::Utf8(err) => (
            CloseCode::Invalid,
            "invalid UTF-8",
            format!("invalid UTF-8 in a text message ({err}), closed with 1007"),
        ),
        tungstenite::Error::Protocol(err) => (
            CloseCode::Protocol,
            "protocol error",
            format!("protocol error: {err}, closed with 1002"),
        ),
        other => return Ending::Dead(format!("read: {other}")),
    };
    // `close` queues the frame and flushes it, bounded by the write timeout.
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    Ending::Dead(why)
}
