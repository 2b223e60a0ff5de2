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

use crate::heartbeat::{self, Proof, SharedLiveness};
use crate::supervisor::{ConnId, Event, Observer};
use crate::transport::Stream;

/// Most messages drained per lock acquisition, so waiting writers get their turn.
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
    /// Receives text messages.
    pub observer: Arc<dyn Observer>,
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
        let mut must_wait = true;
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
            // Deliver outside the lock: a slow stdout must not stall the heartbeat's writes.
            for text in texts.drain(..) {
                self.observer.message(&text);
            }
            if !proofs.is_empty() {
                self.record(&mut proofs);
            }
            if let Some(ending) = ending {
                return ending;
            }
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
        for _ in 0..BATCH {
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    drained = true;
                    break;
                }
                Err(tungstenite::Error::Capacity(err)) => {
                    let _ = ws.close(Some(CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too big".into(),
                    }));
                    ending = Some(Ending::Dead(format!(
                        "incoming message over --max-message-size ({err}), closed with 1009"
                    )));
                    break;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    ending = Some(Ending::Dead("connection closed by server".into()));
                    break;
                }
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => {
                    // A server restart or a proxy's idle cut: FIN without a Close frame.
                    ending = Some(Ending::Dead(
                        "server closed the TCP connection without a Close frame".into(),
                    ));
                    break;
                }
                Err(err) => {
                    ending = Some(Ending::Dead(format!("read: {err}")));
                    break;
                }
            };
            let at = Instant::now();
            match message {
                Message::Text(text) => {
                    if self.pong_text.as_deref() == Some(text.as_str()) {
                        proofs.push((Proof::TextPong, at));
                    } else {
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
        (drained, ending)
    }
}
