//! The socket both per-connection threads share, and its lock discipline.
//!
//! # Lock discipline
//! The WebSocket sits behind one mutex in [`SharedSocket`]. The reader never holds
//! it while waiting for data: it blocks in `peek` on a clone of the TCP socket
//! (outside the lock) until bytes or EOF arrive, then takes the lock and drains
//! messages with non-blocking reads (`MSG_DONTWAIT`, see [`Drain::set_draining`])
//! until `WouldBlock`, so bytes already buffered inside TLS or tungstenite are never
//! stranded. After each server Ping it flushes at once, because tungstenite only
//! queues the Pong; writes stay blocking, bounded by the socket's write timeout.
//!
//! `std::sync::Mutex` is not fair, so a reader under a message flood could keep
//! re-taking the lock and starve the heartbeat. Writers therefore announce
//! themselves in `writers_waiting`, and the reader yields the lock to them on a
//! condition variable before draining; it also drains a bounded batch per turn.
//! The heartbeat's writes are bounded by the socket's write timeout, which bounds
//! how long the reader can wait for the lock.
//!
//! A poisoned mutex (a thread panicked while holding it) is taken over as is: the
//! connection is being torn down by then and only needs to be closed.
//!
//! Generic over the stream, so the discipline is tested with an in-memory one.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use tungstenite::WebSocket;

use crate::net::stream::Stream;
use crate::sync;

/// What the reader needs of a stream beyond reading and writing.
pub trait Drain: Read + Write {
    /// Reads return `WouldBlock` instead of waiting while `on`; writes still block.
    fn set_draining(&mut self, on: bool);
    /// A write has run into the write timeout (the peer stopped reading).
    fn write_stalled(&self) -> bool;
}

impl Drain for Stream {
    fn set_draining(&mut self, on: bool) {
        Stream::set_draining(self, on);
    }

    fn write_stalled(&self) -> bool {
        Stream::write_stalled(self)
    }
}

/// The connection's WebSocket, shared by its reader and writer threads.
pub struct SharedSocket<S = Stream> {
    ws: Mutex<WebSocket<S>>,
    writers_waiting: AtomicUsize,
    writer_done: Condvar,
}

impl<S> SharedSocket<S> {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocket<S>) -> SharedSocket<S> {
        SharedSocket {
            ws: Mutex::new(ws),
            writers_waiting: AtomicUsize::new(0),
            writer_done: Condvar::new(),
        }
    }

    /// Runs `write` with the socket locked, ahead of the reader.
    pub fn write<T>(&self, write: impl FnOnce(&mut WebSocket<S>) -> T) -> T {
        self.writers_waiting.fetch_add(1, Ordering::SeqCst);
        let mut ws = sync::lock(&self.ws);
        // Decrement while holding the lock: the reader checks the count under the same lock.
        self.writers_waiting.fetch_sub(1, Ordering::SeqCst);
        self.writer_done.notify_all();
        write(&mut ws)
    }

    /// The lock, once no writer is waiting for it.
    pub(super) fn lock_for_read(&self) -> MutexGuard<'_, WebSocket<S>> {
        let mut ws = sync::lock(&self.ws);
        while self.writers_waiting.load(Ordering::SeqCst) > 0 {
            ws = sync::wait(&self.writer_done, ws);
        }
        ws
    }
}
