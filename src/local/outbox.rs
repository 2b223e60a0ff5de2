//! Lines on their way to the server: the queue between stdin (or
//! [`Handle::send`](crate::supervisor::Handle::send)) and the connection's writer.
//!
//! The rule of the contract, "nothing is dropped while connected", lives here:
//! - while a writer is attached (connected), a full queue makes [`Outbox::push`]
//!   wait for room, so the producer (the stdin thread, and through the pipe the
//!   program feeding it) is paused instead of losing lines;
//! - while no writer is attached (disconnected), a full queue drops its oldest
//!   lines, counted, so a long outage costs bounded memory.
//!
//! "Full" is whichever bound is reached first: `--queue-size` lines or
//! `--queue-bytes` bytes. The bookkeeping is [`LineQueue`], pure and tested on
//! its own; [`Outbox`] adds the lock, the wait and the writer's wake-up.
//!
//! The writer is woken once per burst, not per line: the first line pushed into
//! an idle queue calls the writer's waker, and the writer then takes batches
//! ([`Outbox::take`]) until the queue is empty.

use crate::sync;
use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Wakes the attached writer (sends it a command).
pub type Waker = Box<dyn Fn() + Send>;

/// The queue and its two bounds. Pure: no lock, no clock.
#[derive(Debug)]
pub struct LineQueue {
    lines: VecDeque<String>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl LineQueue {
    /// An empty queue bounded by `max_lines` lines and `max_bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> LineQueue {
        LineQueue {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    /// Offers `line`; `Ok` with the number of lines dropped (the new one included
    /// if it alone breaks a bound). Connected, a full queue gives the line back
    /// (`Err`): the producer must wait for the writer. An empty
    /// one always takes the line, so one line larger than the byte bound (or a
    /// bound of 0) still goes out. Disconnected, the line is queued and the
    /// oldest lines are dropped until both bounds hold again.
    pub fn admit(&mut self, line: String, connected: bool) -> Result<usize, String> {
        if connected {
            let fits = self.lines.len() < self.max_lines
                && self.bytes.saturating_add(line.len()) <= self.max_bytes;
            if !fits && !self.lines.is_empty() {
                return Err(line);
            }
            self.push_back(line);
            return Ok(0);
        }
        self.push_back(line);
        Ok(self.enforce_bounds())
    }

    /// Drops the oldest lines until both bounds hold; returns how many.
    pub fn enforce_bounds(&mut self) -> usize {
        let mut dropped = 0;
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(line) => {
                    self.bytes -= line.len();
                    dropped += 1;
                }
                None => break,
            }
        }
        dropped
    }

    /// Takes lines from the front: at least one (if any), then more while their
    /// total stays within `budget` bytes.
    pub fn take(&mut self, budget: usize) -> Vec<String> {
        let mut taken = Vec::new();
        let mut size = 0usize;
        while let Some(front) = self.lines.front() {
            if !taken.is_empty() && size.saturating_add(front.len()) > budget {
                break;
            }
            size = size.saturating_add(front.len());
            let line = self.lines.pop_front().expect("front exists");
            self.bytes -= line.len();
            taken.push(line);
        }
        taken
    }

    /// Queues `line` whatever the bounds (the caller bounds how often).
    pub fn push_over_bound(&mut self, line: String) {
        self.push_back(line);
    }

    /// Puts lines a writer took but could not send back at the front, in order.
    pub fn put_back(&mut self, lines: Vec<String>) {
        for line in lines.into_iter().rev() {
            self.bytes += line.len();
            self.lines.push_front(line);
        }
    }

    fn push_back(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
    }

    #[cfg(test)]
    /// Lines queued.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    #[cfg(test)]
    /// Bytes the queued lines hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

struct State {
    queue: LineQueue,
    /// Present while connected.
    writer: Option<Waker>,
    /// The writer has been woken and has not yet found the queue empty.
    woken: bool,
    /// Lines taken by the writer whose write has not finished.
    writing: usize,
    /// No more lines are accepted (the client is stopping).
    closed: bool,
    dropped: u64,
    /// Producers waiting for room.
    waiting: usize,
    /// Called once when room appears after a [`Outbox::try_push`] was refused
    /// (the local socket's thread, which cannot wait on the condition variable).
    room_waker: Option<Waker>,
    /// A `try_push` was refused and its producer has not been woken since.
    room_wanted: bool,
}

/// The shared queue. See the module documentation.
pub struct Outbox {
    state: Mutex<State>,
    room: Condvar,
    max_lines: usize,
}

impl Outbox {
    /// An outbox for `--queue-size` lines and `--queue-bytes` bytes.
    pub fn new(max_lines: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                queue: LineQueue::new(max_lines, max_bytes),
                writer: None,
                woken: false,
                writing: 0,
                closed: false,
                dropped: 0,
                waiting: 0,
                room_waker: None,
                room_wanted: false,
            }),
            room: Condvar::new(),
            max_lines,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere does not corrupt it.
        sync::lock(&self.state)
    }

    /// Queues `line` for the server. Connected and full, waits until the writer
    /// has taken lines (or the connection is lost, or the outbox is closed).
    /// Returns `false` if the outbox is closed and the line was not taken.
    pub fn push(&self, line: String) -> bool {
        let mut state = self.lock();
        let mut line = line;
        loop {
            if state.closed {
                return false;
            }
            let connected = state.writer.is_some();
            match state.queue.admit(line, connected) {
                Ok(dropped) => {
                    self.count_dropped(&mut state, dropped);
                    break;
                }
                Err(refused) => {
                    line = refused;
                    state = sync::wait_counted(&self.room, state, |s| &mut s.waiting, None);
                }
            }
        }
        if !state.woken && state.writer.is_some() {
            state.woken = true;
            if let Some(wake) = &state.writer {
                wake();
            }
        }
        true
    }

    /// Like [`push`](Outbox::push), but never waits: connected and full, the line
    /// comes back (`Err`) and the waker given to
    /// [`set_room_waker`](Outbox::set_room_waker) is called once room appears.
    /// A closed outbox discards the line (`Ok`).
    pub fn try_push(&self, line: String) -> Result<(), String> {
        let mut state = self.lock();
        if state.closed {
            return Ok(());
        }
        let connected = state.writer.is_some();
        match state.queue.admit(line, connected) {
            Ok(dropped) => self.count_dropped(&mut state, dropped),
            Err(refused) => {
                state.room_wanted = true;
                return Err(refused);
            }
        }
        if !state.woken && state.writer.is_some() {
            state.woken = true;
            if let Some(wake) = &state.writer {
                wake();
            }
        }
        Ok(())
    }

    /// Who [`try_push`](Outbox::try_push) wakes when room appears.
    pub fn set_room_waker(&self, waker: Waker) {
        self.lock().room_waker = Some(waker);
    }

    /// Room appeared (lines taken, the connection gone, the outbox closed).
    fn made_room(&self, state: &mut State) {
        if state.waiting > 0 {
            self.room.notify_all();
        }
        if std::mem::take(&mut state.room_wanted) {
            if let Some(wake) = &state.room_waker {
                wake();
            }
        }
    }

    fn count_dropped(&self, state: &mut State, dropped: usize) {
        if dropped == 0 {
            return;
        }
        let before = state.dropped;
        state.dropped += dropped as u64;
        // Said at the first drop and then every 100, not per line.
        if before == 0 || before / 100 != state.dropped / 100 {
            log::warn!(
                "queue full while disconnected (--queue-size {}, --queue-bytes {}): {} message(s) dropped so far",
                self.max_lines,
                state.queue.max_bytes,
                state.dropped
            );
        }
    }

    /// A connection is up: `wake` is called when lines wait for it.
    pub fn attach(&self, wake: Waker) {
        let mut state = self.lock();
        state.woken = !state.queue.is_empty();
        if state.woken {
            wake();
        }
        state.writer = Some(wake);
    }

    /// The connection is gone: the bounds apply again (dropping the oldest lines)
    /// and waiting producers go on in drop-oldest mode. Drops the waker.
    pub fn detach(&self) {
        let mut state = self.lock();
        state.writer = None;
        state.woken = false;
        state.writing = 0;
        let dropped = state.queue.enforce_bounds();
        self.count_dropped(&mut state, dropped);
        self.room.notify_all();
        self.made_room(&mut state);
    }

    /// Refuses every later line and releases waiting producers (the client is stopping).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.room.notify_all();
        self.made_room(&mut state);
    }

    /// For the writer: the next lines to send, within `budget` bytes (at least
    /// one line). Empty means the queue ran dry; the next push wakes the writer again.
    pub fn take(&self, budget: usize) -> Vec<String> {
        let mut state = self.lock();
        if state.writer.is_none() {
            // Disconnected: lines stay for the next connection.
            state.woken = false;
            return Vec::new();
        }
        let taken = state.queue.take(budget);
        if taken.is_empty() {
            state.woken = false;
        } else {
            state.writing += 1;
            self.made_room(&mut state);
        }
        taken
    }

    /// For the writer: the batch from the last [`take`](Outbox::take) is written
    /// (`unsent` empty) or failed, and `unsent` go back to the front.
    pub fn taken_done(&self, unsent: Vec<String>) {
        let mut state = self.lock();
        state.writing = state.writing.saturating_sub(1);
        state.queue.put_back(unsent);
    }

    /// For the supervisor, after a connection died: lines sent on it that its peer
    /// never acknowledged go back to the front, in order, ahead of lines never
    /// sent. They count against the bounds like any other line (the oldest is
    /// dropped first, and counted). Returns how many stay queued.
    pub fn resend(&self, lines: Vec<String>) -> usize {
        let mut state = self.lock();
        let count = lines.len();
        state.queue.put_back(lines);
        let dropped = if state.writer.is_none() {
            state.queue.enforce_bounds()
        } else {
            0
        };
        self.count_dropped(&mut state, dropped);
        count.saturating_sub(dropped)
    }

    /// Nothing queued and no write in progress.
    pub fn is_idle(&self) -> bool {
        let state = self.lock();
        state.queue.is_empty() && state.writing == 0
    }

    /// Lines dropped from a full queue while disconnected, since start.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    #[cfg(test)]
    /// Lines queued now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn line(n: usize, len: usize) -> String {
        let mut s = format!("{n}:");
        while s.len() < len {
            s.push('x');
        }
        s
    }

    fn contents(queue: &mut LineQueue) -> Vec<String> {
        queue.take(usize::MAX)
    }

    #[test]
    fn disconnected_full_queue_drops_the_oldest_by_count() {
        let mut queue = LineQueue::new(3, usize::MAX);
        for n in 0..5 {
            queue.admit(n.to_string(), false).unwrap();
        }
        assert_eq!(contents(&mut queue), ["2", "3", "4"]);
    }

    #[test]
    fn disconnected_full_queue_drops_the_oldest_by_bytes() {
        // Whichever bound is reached first: here the bytes (3 lines of 400 > 1000).
        let mut queue = LineQueue::new(1000, 1000);
        assert_eq!(queue.admit(line(0, 400), false), Ok(0));
        assert_eq!(queue.admit(line(1, 400), false), Ok(0));
        assert_eq!(queue.admit(line(2, 400), false), Ok(1));
        assert_eq!((queue.len(), queue.bytes()), (2, 800));
        // One line over the whole bound is dropped itself.
        assert_eq!(queue.admit(line(3, 1001), false), Ok(3));
        assert!(queue.is_empty());
    }

    #[test]
    fn connected_full_queue_waits_instead_of_dropping() {
        let mut queue = LineQueue::new(2, 100);
        assert_eq!(queue.admit("a".into(), true), Ok(0));
        assert_eq!(queue.admit("b".into(), true), Ok(0));
        assert_eq!(queue.admit("c".into(), true), Err("c".to_string()));
        queue.take(1);
        assert_eq!(queue.admit("c".into(), true), Ok(0));
        // By bytes as well.
        let mut queue = LineQueue::new(100, 10);
        assert_eq!(queue.admit(line(0, 8), true), Ok(0));
        assert!(queue.admit(line(1, 8), true).is_err());
    }

    #[test]
    fn connected_empty_queue_takes_any_line() {
        // A line larger than --queue-bytes, or --queue-size 0, still goes out while connected.
        let mut queue = LineQueue::new(0, 4);
        assert_eq!(queue.admit(line(0, 50), true), Ok(0));
        assert!(queue.admit("x".into(), true).is_err());
        // Disconnected, the same bounds keep nothing.
        queue.take(usize::MAX);
        assert_eq!(queue.admit("x".into(), false), Ok(1));
    }

    #[test]
    fn take_respects_the_budget_but_always_takes_one() {
        let mut queue = LineQueue::new(100, usize::MAX);
        for n in 0..4 {
            queue.admit(line(n, 10), true).unwrap();
        }
        assert_eq!(queue.take(25).len(), 2);
        assert_eq!(queue.take(5).len(), 1);
        queue.put_back(vec![line(9, 10), line(8, 10)]);
        let rest = queue.take(usize::MAX);
        assert!(
            rest[0].starts_with("9:") && rest[1].starts_with("8:") && rest[2].starts_with("3:")
        );
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn a_connected_producer_waits_and_loses_nothing() {
        let outbox = Arc::new(Outbox::new(4, usize::MAX));
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&wakes);
        outbox.attach(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        let producer = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || {
                for n in 0..1000 {
                    assert!(outbox.push(n.to_string()));
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 1000 {
            let batch = outbox.take(usize::MAX);
            assert!(batch.len() <= 4);
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
            got.extend(batch);
            outbox.taken_done(Vec::new());
        }
        producer.join().unwrap();
        let expected: Vec<String> = (0..1000).map(|n| n.to_string()).collect();
        assert_eq!(got, expected);
        assert_eq!(outbox.dropped(), 0);
        assert!(wakes.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn detach_releases_a_waiting_producer_into_drop_oldest() {
        let outbox = Arc::new(Outbox::new(2, usize::MAX));
        outbox.attach(Box::new(|| {}));
        assert!(outbox.push("a".into()));
        assert!(outbox.push("b".into()));
        let producer = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || outbox.push("c".into()))
        };
        // The producer is blocked until the connection goes away.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(outbox.len(), 2);
        outbox.detach();
        assert!(producer.join().unwrap());
        // Disconnected, the writer gets nothing; the next connection gets the newest two.
        assert!(outbox.take(usize::MAX).is_empty());
        outbox.attach(Box::new(|| {}));
        assert_eq!(outbox.take(usize::MAX), ["b", "c"]);
        assert_eq!(outbox.dropped(), 1);
    }

    #[test]
    fn close_releases_a_waiting_producer() {
        let outbox = Arc::new(Outbox::new(1, usize::MAX));
        outbox.attach(Box::new(|| {}));
        assert!(outbox.push("a".into()));
        let producer = {
            let outbox = Arc::clone(&outbox);
            std::thread::spawn(move || outbox.push("b".into()))
        };
        std::thread::sleep(Duration::from_millis(50));
        outbox.close();
        assert!(!producer.join().unwrap());
    }

    #[test]
    fn try_push_gives_a_refused_line_back_and_wakes_its_producer_when_room_appears() {
        let outbox = Outbox::new(2, usize::MAX);
        let rooms = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&rooms);
        outbox.set_room_waker(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        outbox.attach(Box::new(|| {}));
        assert_eq!(outbox.try_push("a".into()), Ok(()));
        assert_eq!(outbox.try_push("b".into()), Ok(()));
        assert_eq!(outbox.try_push("c".into()), Err("c".to_string()));
        assert_eq!(rooms.load(Ordering::SeqCst), 0);
        assert_eq!(outbox.take(1), ["a"]);
        assert_eq!(rooms.load(Ordering::SeqCst), 1, "woken once room appears");
        assert_eq!(outbox.try_push("c".into()), Ok(()));
        // Taking more wakes nobody: no refused line waits.
        outbox.take(usize::MAX);
        assert_eq!(rooms.load(Ordering::SeqCst), 1);
        // Disconnected, drop-oldest: never refused.
        outbox.detach();
        for n in 0..5 {
            assert_eq!(outbox.try_push(n.to_string()), Ok(()));
        }
        assert_eq!(outbox.dropped(), 3);
    }

    #[test]
    fn the_writer_is_woken_once_per_burst() {
        let outbox = Outbox::new(100, usize::MAX);
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&wakes);
        outbox.attach(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        for n in 0..10 {
            outbox.push(n.to_string());
        }
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(outbox.take(usize::MAX).len(), 10);
        assert!(outbox.take(usize::MAX).is_empty());
        outbox.push("next".into());
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }
}
