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
//! Pure, bounded in bytes; the kernel is read by the caller, and only when the
//! window is full (trim) or the connection has died (requeue), never per line.

use std::collections::VecDeque;

use tungstenite::Utf8Bytes;

/// Where a line's bytes end in the outgoing stream; `UNKNOWN` for a batch whose
/// write failed part-way.
pub const UNKNOWN: u64 = u64::MAX;

/// Sent lines waiting for the peer's acknowledgement. See the module documentation.
#[derive(Debug)]
pub struct SentWindow {
    lines: VecDeque<(Utf8Bytes, u64)>,
    bytes: usize,
    max_bytes: usize,
}

impl SentWindow {
    /// A window of at most `max_bytes` of lines (`--queue-bytes`).
    pub fn new(max_bytes: usize) -> SentWindow {
        SentWindow {
            lines: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// `line` went out in a batch that ended at stream offset `end`.
    pub fn sent(&mut self, line: Utf8Bytes, end: u64) {
        self.bytes += line.len();
        self.lines.push_back((line, end));
    }

    /// The peer acknowledged the stream up to `acked`: the lines it holds are forgotten.
    pub fn acknowledged(&mut self, acked: u64) {
        while let Some((line, end)) = self.lines.front() {
            if *end > acked {
                break;
            }
            self.bytes -= line.len();
            self.lines.pop_front();
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
        self.lines
            .into_iter()
            .map(|(line, _)| line.as_str().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_with(lines: &[(&str, u64)]) -> SentWindow {
        let mut window = SentWindow::new(1 << 20);
        for (line, end) in lines {
            window.sent(Utf8Bytes::from(line.to_string()), *end);
        }
        window
    }

    #[test]
    fn lines_the_peer_acknowledged_are_forgotten_the_rest_kept_in_order() {
        // Two batches: the handshake took 200 bytes, TLS records make each batch
        // longer than its lines; only the stream offsets count.
        let window = window_with(&[("a", 300), ("b", 300), ("c", 450), ("d", 450)]);
        assert_eq!(window.unacknowledged(Some(300)), ["c", "d"]);
        let window = window_with(&[("a", 300), ("b", 300), ("c", 450)]);
        assert_eq!(window.unacknowledged(Some(449)), ["c"]);
        let window = window_with(&[("a", 300), ("b", 300)]);
        assert!(window.unacknowledged(Some(10_000)).is_empty());
    }

    #[test]
    fn a_batch_that_failed_part_way_always_goes_back() {
        let window = window_with(&[("a", 300), ("b", UNKNOWN), ("c", UNKNOWN)]);
        assert_eq!(window.unacknowledged(Some(1_000_000)), ["b", "c"]);
    }

    #[test]
    fn without_the_kernels_count_everything_goes_back() {
        let window = window_with(&[("a", 300), ("b", 400)]);
        assert_eq!(window.unacknowledged(None), ["a", "b"]);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_and_trimmed_by_acknowledgements() {
        let mut window = SentWindow::new(10);
        window.sent(Utf8Bytes::from("12345".to_string()), 100);
        assert!(!window.is_full());
        window.sent(Utf8Bytes::from("67890".to_string()), 200);
        assert!(window.is_full());
        window.acknowledged(150);
        assert!(!window.is_full());
        assert_eq!(window.bytes(), 5);
        window.acknowledged(200);
        assert_eq!(window.bytes(), 0);
    }
}
