//! What an embedding application (or the command line's stdout and local
//! socket) receives: the server's messages, and the client's state changes.

use std::time::Duration;

use crate::report::status_file::Status;

/// Receives what the client gets from the server, and its state changes.
pub trait Observer: Send + Sync {
    /// A text message from the server (heartbeat replies excluded). Called on the
    /// delivery thread, never on the reader: it may take its time (received
    /// messages wait in a buffer bounded by `--queue-bytes`, and when that is full
    /// the client stops reading from the server).
    fn message(&self, text: &str);
    /// Several messages at once, in order; by default [`message`](Observer::message) each.
    fn messages(&self, texts: &[String]) {
        for text in texts {
            self.message(text);
        }
    }
    /// The client is stopping and will not wait any longer: a `message` call that
    /// is blocked (on a stdout nobody reads) should return soon.
    fn interrupt(&self) {}
    /// The state changed (connecting, connected, backoff, stopped).
    fn state(&self, _status: &Status) {}
    /// A heartbeat was answered after `rtt`. Called on the reader thread; keep it short.
    fn heartbeat(&self, _rtt: Duration) {}
}
