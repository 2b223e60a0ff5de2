//! Lines sent but not yet acknowledged by the peer's TCP, so that a link that dies
//! silently loses none of them (SPEC "Nothing lost to a dead link").
//!
//! Each line is kept with the offset in the connection's outgoing byte stream
//! where the batch that carried it ended (handshake and TLS records included, as
//! the kernel counts them). The kernel tells how much of that stream the peer
//! acknowledged (`tcpi_bytes_acked`); a line ending at or before that is with the
//! peer's TCP and is forgotten, the rest go back to the queue when the connection
//! dies. A line whose batch failed half-way has no known end and always goes back.
//! Delivery is therefore at least once: a line can arrive twice when only its
//! acknowledgement was lost with the link.
//!
//! Lines are copied into one buffer per batch as they are framed: one allocation
//! a batch instead of one a line, which matters at millions of small lines a
//! second.
//!
//! Pure, bounded in bytes; the kernel is read by the caller, and only when the
//! window is full (trim) or the connection has died (requeue), never per line.

use std::collections::VecDeque;

/// Where a line's bytes end in the outgoing stream; `UNKNOWN` for a batch whose
/// write failed part-way.
pub const UNKNOWN: u64 = u64::MAX;

/// The lines of one batch, copied into one buffer as they are framed (one
/// allocation a batch, not one a line), and where the batch ended in the stream.
#[derive(Debug, Default)]
pub struct Batch {
    text: String,
    /// Where each line ends in `text`.
    ends: Vec<usize>,
}

impl Batch {
    /// An empty batch with room for `bytes` of lines.
    pub fn with_capacity(bytes: usize) -> Batch {
        Batch {
            text: String::with_capacity(bytes),
            ends: Vec::new(),
        }
    }

    /// Keeps a copy of `line`.
    pub fn push(&mut self, line: &str) {
        self.text.push_str(line);
        self.ends.push(self.text.len());
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| &self.text[start..end])
    }
}

/// Sent lines waiting for the peer's acknowledgement. See the module documentation.
#[derive(Debug)]
pub struct SentWindow {
    batches: VecDeque<(Batch, u64)>,
    bytes: usize,
    max_bytes: usize,
}

impl SentWindow {
    /// A window of at most `max_bytes` of lines (`--queue-bytes`).
    pub fn new(max_bytes: usize) -> SentWindow {
        SentWindow {
            batches: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// `batch` went out, ending at stream offset `end`.
    pub fn sent(&mut self, batch: Batch, end: u64) {
        if batch.ends.is_empty() {
            return;
        }
        self.bytes += batch.text.len();
        self.batches.push_back((batch, end));
    }

    /// The peer acknowledged the stream up to `acked`: the lines it holds are forgotten.
    pub fn acknowledged(&mut self, acked: u64) {
        while let Some((batch, end)) = self.batches.front() {
            if *end > acked {
                break;
            }
            self.bytes -= batch.text.len();
            self.batches.pop_front();
        }
    }

    /// More is unacknowledged than the window may hold: take no more lines until
    /// acknowledgements arrive (backpressure from the real network).
    pub fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// Bytes of lines held.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The connection died with the stream acknowledged up to `acked` (`None`: not
    /// known, so nothing is): the lines the peer did not acknowledge, in the order
    /// they were sent, for the front of the queue.
    pub fn unacknowledged(mut self, acked: Option<u64>) -> Vec<String> {
        if let Some(acked) = acked {
            self.acknowledged(acked);
        }
        self.batches
            .iter()
            .flat_map(|(batch, _)| batch.lines().map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window of batches, each a list of lines and where the batch ended.
    fn window_with(batches: &[(&[&str], u64)]) -> SentWindow {
        let mut window = SentWindow::new(1 << 20);
        for (lines, end) in batches {
            window.sent(batch(lines), *end);
        }
        window
    }

    fn batch(lines: &[&str]) -> Batch {
        let mut batch = Batch::with_capacity(16);
        for line in lines {
            batch.push(line);
        }
        batch
    }

    #[test]
    fn lines_the_peer_acknowledged_are_forgotten_the_rest_kept_in_order() {
        // Two batches: the handshake took 200 bytes, TLS records make each batch
        // longer than its lines; only the stream offsets count.
        let window = window_with(&[(&["a", "b"], 300), (&["c", "d"], 450)]);
        assert_eq!(window.unacknowledged(Some(300)), ["c", "d"]);
        let window = window_with(&[(&["a", "b"], 300), (&["c"], 450)]);
        assert_eq!(window.unacknowledged(Some(449)), ["c"]);
        let window = window_with(&[(&["a", "b"], 300)]);
        assert!(window.unacknowledged(Some(10_000)).is_empty());
        // Empty lines and lines with a newline inside (an embedder's) stay whole.
        let window = window_with(&[(&["", "x\ny", ""], 300)]);
        assert_eq!(window.unacknowledged(Some(0)), ["", "x\ny", ""]);
    }

    #[test]
    fn a_batch_that_failed_part_way_always_goes_back() {
        let window = window_with(&[(&["a"], 300), (&["b", "c"], UNKNOWN)]);
        assert_eq!(window.unacknowledged(Some(1_000_000)), ["b", "c"]);
    }

    #[test]
    fn without_the_kernels_count_everything_goes_back() {
        let window = window_with(&[(&["a"], 300), (&["b"], 400)]);
        assert_eq!(window.unacknowledged(None), ["a", "b"]);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_and_trimmed_by_acknowledgements() {
        let mut window = SentWindow::new(10);
        window.sent(batch(&["12345"]), 100);
        assert!(!window.is_full());
        window.sent(batch(&["67890"]), 200);
        assert!(window.is_full());
        window.acknowledged(150);
        assert!(!window.is_full());
        assert_eq!(window.bytes(), 5);
        window.acknowledged(200);
        assert_eq!(window.bytes(), 0);
    }
}
