//! Received messages on their way to the observer (stdout for the command line).
//!
//! The reader thread never writes to stdout itself: a stdout nobody reads would
//! stop it, and with it the Pongs, the Close handshake and dead detection. It
//! hands each drained batch to [`Delivery`], a buffer bounded by `--queue-bytes`,
//! and a delivery thread ([`run`]) passes the messages on. When the buffer is
//! full the reader waits for room: it stops reading the socket, so TCP's own
//! flow control reaches the server, and nothing received is dropped. While it
//! waits the heartbeat must not blame the server (the reader marks itself paused
//! in the connection's liveness); and a connection torn down meanwhile releases
//! it at once ([`Delivery::end_connection`]).
//!
//! At shutdown the supervisor closes the buffer and gives the delivery thread a
//! bounded time to empty it ([`Delivery::wait_drained`]); what is still
//! undelivered after that is discarded and counted ([`Delivery::discard`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::local::outbox::LineQueue;
use crate::sync;

struct State {
    /// The outbox's byte-bounded queue, used connected-style: full means wait.
    texts: LineQueue,
    /// Bumped when a connection ends, releasing its reader from a wait for room.
    generation: u64,
    closed: bool,
    /// The delivery thread holds a batch it has not finished passing on.
    delivering: bool,
    /// Readers waiting for room, and a shutdown waiting for the buffer to empty.
    waiting: usize,
}

/// The bounded buffer between the reader and the delivery thread.
pub struct Delivery {
    state: Mutex<State>,
    /// The delivery thread waits here for messages.
    ready: Condvar,
    /// Readers wait here for room; shutdown waits here for the buffer to empty.
    room: Condvar,
}

impl Delivery {
    /// A buffer holding at most `max_bytes` of message text (one message more
    /// when it is empty, so any message up to `--max-message-size` passes).
    pub fn new(max_bytes: usize) -> Delivery {
        Delivery {
            state: Mutex::new(State {
                texts: LineQueue::new(usize::MAX, max_bytes),
                generation: 0,
                closed: false,
                delivering: false,
                waiting: 0,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        sync::lock(&self.state)
    }

    /// The current connection's generation, for [`push`](Delivery::push).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Hands `texts` over, in order, waiting for room while the buffer is full.
    /// `on_full` is called once before the first wait (the reader marks itself
    /// paused). A wait ends early when the connection of `generation` has ended;
    /// the rest is then taken over the bound (at most one drained batch) so
    /// nothing received is lost. Returns whether it waited.
    pub fn push(&self, texts: &mut Vec<String>, generation: u64, on_full: impl FnOnce()) -> bool {
        let mut on_full = Some(on_full);
        let mut state = self.lock();
        for mut text in texts.drain(..) {
            loop {
                if state.closed {
                    break; // stopping: nobody will deliver it
                }
                if state.generation != generation {
                    state.texts.push_over_bound(text);
                    break;
                }
                match state.texts.admit(text, true) {
                    Ok(_) => break,
                    Err(refused) => text = refused,
                }
                if let Some(on_full) = on_full.take() {
                    on_full();
                }
                // What this call queued so far must reach an idle delivery thread
                // now, or both would wait for each other (a batch over the bound).
                self.ready.notify_one();
                state = sync::wait_counted(&self.room, state, |s| &mut s.waiting, None);
            }
        }
        self.ready.notify_one();
        on_full.is_none()
    }

    /// The connection ended: a reader waiting for room goes on.
    pub fn end_connection(&self) {
        let mut state = self.lock();
        state.generation += 1;
        if state.waiting > 0 {
            self.room.notify_all();
        }
    }

    /// For the delivery thread: waits for messages and takes them, up to `budget`
    /// bytes (at least one). `None` once closed and empty.
    pub fn next_batch(&self, budget: usize) -> Option<Vec<String>> {
        let mut state = self.lock();
        state.delivering = false;
        if state.waiting > 0 {
            self.room.notify_all();
        }
        while state.texts.is_empty() {
            if state.closed {
                return None;
            }
            state = sync::wait(&self.ready, state);
        }
        let batch = state.texts.take(budget);
        state.delivering = true;
        if state.waiting > 0 {
            self.room.notify_all();
        }
        Some(batch)
    }

    /// No more messages are accepted; the delivery thread ends once it has passed
    /// on what is buffered.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }

    /// Waits until everything buffered has been passed on, or `deadline`.
    /// Returns whether it was.
    pub fn wait_drained(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        loop {
            if state.texts.is_empty() && !state.delivering {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = sync::wait_counted(&self.room, state, |s| &mut s.waiting, Some(left));
        }
    }

    /// Drops what is still buffered (shutdown, with an output that does not
    /// keep up); returns how many messages that was.
    pub fn discard(&self) -> usize {
        let mut state = self.lock();
        let lost = state.texts.take(usize::MAX).len();
        self.ready.notify_all();
        lost
    }

    #[cfg(test)]
    /// Bytes of message text waiting now.
    pub fn bytes(&self) -> usize {
        self.lock().texts.bytes()
    }
}

/// Most bytes passed to the observer at once.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Body of the delivery thread: passes batches to `deliver` until the buffer is
/// closed and empty.
pub fn run(delivery: &Delivery, mut deliver: impl FnMut(&[String])) {
    while let Some(batch) = delivery.next_batch(BATCH_BYTES) {
        deliver(&batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_full_buffer_pauses_the_reader_and_loses_nothing() {
        let delivery = Arc::new(Delivery::new(10));
        let generation = delivery.generation();
        let paused = Arc::new(AtomicBool::new(false));
        let reader = {
            let delivery = Arc::clone(&delivery);
            let paused = Arc::clone(&paused);
            std::thread::spawn(move || {
                for n in 0..100 {
                    let mut batch = vec![format!("{n:04}"), format!("{n:04}")];
                    delivery.push(&mut batch, generation, || {
                        paused.store(true, Ordering::SeqCst)
                    });
                }
                delivery.close();
            })
        };
        let mut got = Vec::new();
        while let Some(batch) = delivery.next_batch(6) {
            assert!(delivery.bytes() <= 10);
            got.extend(batch);
        }
        reader.join().unwrap();
        assert_eq!(got.len(), 200);
        assert_eq!(got[0], "0000");
        assert_eq!(got[199], "0099");
        assert!(paused.load(Ordering::SeqCst), "the reader had to wait");
    }

    #[test]
    fn one_batch_larger_than_the_buffer_reaches_an_idle_delivery_thread() {
        let delivery = Arc::new(Delivery::new(10));
        let worker = {
            let delivery = Arc::clone(&delivery);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                run(&delivery, |batch| got.extend_from_slice(batch));
                got
            })
        };
        // The delivery thread is asleep waiting for messages when the batch comes.
        std::thread::sleep(Duration::from_millis(50));
        let (done, pushed) = std::sync::mpsc::channel();
        {
            let delivery = Arc::clone(&delivery);
            std::thread::spawn(move || {
                let mut batch: Vec<String> = (0..10).map(|n| format!("m{n:04}")).collect();
                delivery.push(&mut batch, delivery.generation(), || {});
                let _ = done.send(());
            });
        }
        assert!(
            pushed.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the reader and the delivery thread wait for each other"
        );
        assert!(delivery.wait_drained(Instant::now() + Duration::from_secs(5)));
        delivery.close();
        assert_eq!(worker.join().unwrap().len(), 10);
    }

    #[test]
    fn an_empty_buffer_takes_one_message_over_the_bound() {
        let delivery = Delivery::new(4);
        let waited = delivery.push(&mut texts(&["much longer than four"]), 0, || {});
        assert!(!waited);
        assert_eq!(
            delivery.next_batch(1),
            Some(texts(&["much longer than four"]))
        );
    }

    #[test]
    fn ending_the_connection_releases_a_waiting_reader() {
        let delivery = Arc::new(Delivery::new(4));
        let generation = delivery.generation();
        delivery.push(&mut texts(&["full"]), generation, || {});
        let reader = {
            let delivery = Arc::clone(&delivery);
            std::thread::spawn(move || delivery.push(&mut texts(&["more"]), generation, || {}))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished());
        delivery.end_connection();
        assert!(reader.join().unwrap(), "it waited, then went on");
        // Nothing received was dropped.
        assert_eq!(delivery.next_batch(100), Some(texts(&["full", "more"])));
    }

    #[test]
    fn shutdown_waits_for_delivery_within_a_bound() {
        let delivery = Delivery::new(100);
        delivery.push(&mut texts(&["a", "b"]), 0, || {});
        delivery.close();
        // Nobody delivers: the wait ends at its deadline, and the rest is discarded.
        assert!(!delivery.wait_drained(Instant::now() + Duration::from_millis(20)));
        assert_eq!(delivery.discard(), 2);
        assert_eq!(delivery.next_batch(100), None);
        // After close, nothing more is accepted.
        delivery.push(&mut texts(&["late"]), 0, || {});
        assert_eq!(delivery.next_batch(100), None);
    }

    #[test]
    fn the_delivery_thread_passes_everything_on_in_order() {
        let delivery = Arc::new(Delivery::new(1000));
        let worker = {
            let delivery = Arc::clone(&delivery);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                run(&delivery, |batch| got.extend_from_slice(batch));
                got
            })
        };
        for n in 0..50 {
            delivery.push(&mut vec![n.to_string()], 0, || {});
        }
        assert!(delivery.wait_drained(Instant::now() + Duration::from_secs(5)));
        delivery.close();
        let got = worker.join().unwrap();
        assert_eq!(got, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
    }
}
