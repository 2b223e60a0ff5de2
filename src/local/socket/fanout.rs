//! Who gets which received message: the broadcast log behind the local socket.
//! Pure: no sockets, no lock, no clock.
//!
//! Each received message is kept once, in one log shared by every client, and
//! each client has a cursor into it (the next message it has not been given).
//! The rules of the contract live here:
//! - every connected client gets every message, in order;
//! - while no client is connected, messages wait for the next one that connects
//!   (the oldest dropped beyond the byte bound, counted as *undelivered*);
//! - the log holds at most `--queue-bytes` of payload, however many clients
//!   there are: a client that falls further behind is cut off (*lagging*),
//!   never the connection, and the others go on;
//! - what was not yet given to a client that leaves is not kept for the next.
//!
//! A message larger than the bound on its own is still kept (as the queues do),
//! so any message up to `--max-message-size` gets through.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::report::status_file::LocalCounts;

/// A local client, as the socket server numbers them.
pub type ClientId = u64;

/// One received message, shared by every client it is for; written followed by `\n`.
pub type Line = Arc<str>;

/// The log and the cursors. See the module documentation.
#[derive(Debug)]
pub struct Fanout {
    log: VecDeque<Line>,
    /// Sequence number of `log[0]`; message `n` is `log[n - first]`.
    first: u64,
    /// Payload bytes in `log` (newlines not counted).
    bytes: usize,
    max_bytes: usize,
    /// Each client's next message.
    cursors: BTreeMap<ClientId, u64>,
    /// Clients cut off for lagging, not yet closed by the server.
    lagging_clients: Vec<ClientId>,
    undelivered: u64,
    lagging: u64,
}

impl Fanout {
    /// A log of at most `max_bytes` payload bytes (`--queue-bytes`).
    pub fn new(max_bytes: usize) -> Fanout {
        Fanout {
            log: VecDeque::new(),
            first: 0,
            bytes: 0,
            max_bytes,
            cursors: BTreeMap::new(),
            lagging_clients: Vec::new(),
            undelivered: 0,
            lagging: 0,
        }
    }

    fn end(&self) -> u64 {
        self.first + self.log.len() as u64
    }

    /// A received message, for every connected client (or the next to connect).
    /// Clients that fall behind by more than the bound are cut off; see
    /// [`take_lagging`](Fanout::take_lagging).
    pub fn push(&mut self, text: &str) {
        self.bytes += text.len();
        self.log.push_back(Arc::from(text));
        while self.bytes > self.max_bytes && self.log.len() > 1 {
            if self.cursors.is_empty() {
                self.pop_front();
                self.undelivered += 1;
                continue;
            }
            // The slowest clients hold the oldest message: they are the ones behind.
            let first = self.first;
            let slowest: Vec<ClientId> = self
                .cursors
                .iter()
                .filter(|(_, cursor)| **cursor <= first)
                .map(|(id, _)| *id)
                .collect();
            for id in slowest {
                self.cursors.remove(&id);
                self.lagging_clients.push(id);
                self.lagging += 1;
            }
            self.trim();
        }
    }

    fn pop_front(&mut self) {
        if let Some(line) = self.log.pop_front() {
            self.bytes -= line.len();
            self.first += 1;
        }
    }

    /// Drops what every client has been given; with no client left, everything
    /// (what the last one did not get is not kept for the next).
    fn trim(&mut self) {
        match self.cursors.values().min() {
            Some(&slowest) => {
                while self.first < slowest {
                    self.pop_front();
                }
            }
            None => {
                self.first = self.end();
                self.log.clear();
                self.bytes = 0;
            }
        }
        if self.log.is_empty() && self.log.capacity() > 1024 {
            // Give back the memory of a burst.
            self.log = VecDeque::new();
        }
    }

    /// A client connected. The first one gets what waited while none was
    /// connected; a later one starts with the next message.
    pub fn join(&mut self, id: ClientId) {
        let cursor = if self.cursors.is_empty() {
            self.first
        } else {
            self.end()
        };
        self.cursors.insert(id, cursor);
    }

    /// A client left (or was closed): what it was not given is forgotten.
    pub fn leave(&mut self, id: ClientId) {
        if self.cursors.remove(&id).is_some() {
            self.trim();
        }
    }

    /// Clients cut off for lagging since the last call; they are no longer in
    /// the log, and the caller closes them.
    pub fn take_lagging(&mut self) -> Vec<ClientId> {
        std::mem::take(&mut self.lagging_clients)
    }

    /// Up to `max` messages `id` has not been given yet, oldest first (empty for
    /// a client not in the log).
    pub fn pending(&self, id: ClientId, max: usize) -> Vec<Line> {
        let Some(&cursor) = self.cursors.get(&id) else {
            return Vec::new();
        };
        let start = (cursor - self.first) as usize;
        self.log.range(start..).take(max).cloned().collect()
    }

    /// Whether `id` has messages it has not been given.
    pub fn has_pending(&self, id: ClientId) -> bool {
        self.cursors.get(&id).is_some_and(|&c| c < self.end())
    }

    /// `id` has been given `count` more messages (written in full).
    pub fn advance(&mut self, id: ClientId, count: usize) {
        let end = self.end();
        if let Some(cursor) = self.cursors.get_mut(&id) {
            *cursor = (*cursor + count as u64).min(end);
            self.trim();
        }
    }

    /// The counts for the status file.
    pub fn counts(&self) -> LocalCounts {
        LocalCounts {
            clients: self.cursors.len() as u64,
            undelivered: self.undelivered,
            lagging: self.lagging,
        }
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Line]) -> Vec<String> {
        lines.iter().map(|line| line.to_string()).collect()
    }

    /// Everything pending for `id`, given to it.
    fn drain(fanout: &mut Fanout, id: ClientId) -> Vec<String> {
        let lines = fanout.pending(id, usize::MAX);
        fanout.advance(id, lines.len());
        texts(&lines)
    }

    #[test]
    fn every_client_gets_every_message_in_order() {
        let mut fanout = Fanout::new(1000);
        for id in 1..=3 {
            fanout.join(id);
        }
        fanout.push("a");
        fanout.push("b");
        assert_eq!(drain(&mut fanout, 1), ["a", "b"]);
        fanout.push("c");
        assert_eq!(drain(&mut fanout, 1), ["c"]);
        assert_eq!(drain(&mut fanout, 2), ["a", "b", "c"]);
        assert_eq!(drain(&mut fanout, 3), ["a", "b", "c"]);
        // Kept once, and only until the slowest client has it.
        assert_eq!(fanout.held_bytes(), 0);
        assert_eq!(fanout.counts().clients, 3);
    }

    #[test]
    fn messages_wait_for_the_next_client_within_the_bound() {
        let mut fanout = Fanout::new(10);
        for n in 0..8 {
            fanout.push(&format!("m{n}")); // 2 bytes each: 5 fit
        }
        assert_eq!(fanout.counts().undelivered, 3);
        assert_eq!(fanout.held_bytes(), 10);
        fanout.join(1);
        fanout.join(2); // a second one starts at the next message
        assert_eq!(drain(&mut fanout, 1), ["m3", "m4", "m5", "m6", "m7"]);
        assert!(!fanout.has_pending(2));
        fanout.push("new");
        assert_eq!(drain(&mut fanout, 2), ["new"]);
        assert_eq!(drain(&mut fanout, 1), ["new"]);
    }

    #[test]
    fn a_client_that_falls_behind_is_cut_off_and_the_others_go_on() {
        let mut fanout = Fanout::new(10);
        fanout.join(1); // reads
        fanout.join(2); // never reads
        for n in 0..20 {
            fanout.push(&format!("m{n:02}")); // 3 bytes each
            assert_eq!(drain(&mut fanout, 1), [format!("m{n:02}")]);
        }
        assert_eq!(fanout.take_lagging(), [2]);
        assert!(fanout.take_lagging().is_empty());
        let counts = fanout.counts();
        assert_eq!(
            (counts.clients, counts.lagging, counts.undelivered),
            (1, 1, 0)
        );
        assert!(fanout.held_bytes() <= 10);
        // Cut off: nothing more for it, and its leave changes nothing.
        assert!(fanout.pending(2, 10).is_empty());
        fanout.leave(2);
        fanout.push("x");
        assert_eq!(drain(&mut fanout, 1), ["x"]);
    }

    #[test]
    fn memory_is_bounded_however_many_clients() {
        let mut fanout = Fanout::new(100);
        for id in 0..32 {
            fanout.join(id);
        }
        for n in 0..1000 {
            fanout.push(&format!("{n:09}"));
            assert!(fanout.held_bytes() <= 100);
        }
        assert_eq!(fanout.counts().lagging, 32);
        assert_eq!(fanout.counts().clients, 0);
    }

    #[test]
    fn what_a_leaving_client_was_not_given_is_not_kept() {
        let mut fanout = Fanout::new(1000);
        fanout.join(1);
        fanout.push("a");
        fanout.push("b");
        assert_eq!(texts(&fanout.pending(1, 1)), ["a"]);
        fanout.advance(1, 1);
        fanout.leave(1);
        fanout.join(2);
        assert!(!fanout.has_pending(2), "b was for client 1 only");
        fanout.push("c");
        assert_eq!(drain(&mut fanout, 2), ["c"]);
        assert_eq!(fanout.counts().undelivered, 0);
    }

    #[test]
    fn a_message_larger_than_the_bound_still_goes_through() {
        let mut fanout = Fanout::new(4);
        fanout.push("much longer than four");
        fanout.join(1);
        assert_eq!(drain(&mut fanout, 1), ["much longer than four"]);
        fanout.push("much longer than four");
        fanout.push("next");
        // The big one was the oldest: the client that had not taken it lags.
        assert_eq!(fanout.take_lagging(), [1]);
    }

    #[test]
    fn pending_takes_at_most_max_and_partial_progress_keeps_the_rest() {
        let mut fanout = Fanout::new(1000);
        fanout.join(1);
        for n in 0..5 {
            fanout.push(&n.to_string());
        }
        assert_eq!(texts(&fanout.pending(1, 2)), ["0", "1"]);
        fanout.advance(1, 1);
        assert_eq!(texts(&fanout.pending(1, 2)), ["1", "2"]);
        fanout.advance(1, 100); // clamped to the end
        assert!(!fanout.has_pending(1));
    }
}
