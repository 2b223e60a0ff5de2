//! The stdin thread: lines in, callbacks out, bounded memory, stoppable.
//!
//! [`spawn_reader`] duplicates the given descriptor (usually stdin) and reads it
//! on its own thread, which blocks in `poll(2)` on that descriptor and on a
//! private wake (an eventfd), with no timeout. [`StdinReader::stop`] signals the
//! wake and joins, so shutdown never waits for the user to type something.
//!
//! Reads go to the raw duplicate, never through `std::io::Stdin`'s buffer, so
//! "poll says readable" and "data is available" always agree. The descriptor is
//! left in blocking mode (its flags are shared with the parent shell); a read
//! after poll reported it readable does not block.
//!
//! Lines are split on `\n`; the newline and a `\r` before it are removed,
//! invalid UTF-8 is replaced lossily. A line longer than `max_line` bytes is
//! dropped with a warning while it is read, so memory stays bounded by
//! `max_line` plus one read buffer. A final line without a newline is still
//! delivered at EOF. EOF (as with `/dev/null` under systemd) calls `on_eof` and
//! ends the thread; it never ends the client.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::os::{self, Wake};

/// Size of one `read(2)`.
const READ_CHUNK: usize = 64 * 1024;

/// The running stdin thread.
#[derive(Debug)]
pub struct StdinReader {
    handle: JoinHandle<()>,
    wake: Arc<Wake>,
}

impl StdinReader {
    /// Wakes the thread and joins it; `on_eof` is not called. Returns at once
    /// if the thread has already ended at EOF. Lines still unread are lost.
    pub fn stop(self) {
        self.wake.signal();
        if self.handle.join().is_err() {
            log::error!("stdin: thread panicked");
        }
    }
}

/// Starts reading lines from `input` (pass `std::io::stdin()`; tests pass one
/// end of a pipe or socket pair). `input` is duplicated, so the caller may drop
/// its handle. `on_line` gets every line in order; `on_eof` is called once at
/// end of input or after a read error (logged at warn). Both run on the reader
/// thread and should only hand the data on (e.g. over a channel).
///
/// Fails if the descriptor cannot be duplicated (e.g. stdin is closed: treat
/// that as EOF) or the thread cannot be started.
pub fn spawn_reader(
    input: impl AsFd,
    max_line: usize,
    mut on_line: impl FnMut(String) + Send + 'static,
    on_eof: impl FnOnce() + Send + 'static,
) -> io::Result<StdinReader> {
    let input = std::fs::File::from(input.as_fd().try_clone_to_owned()?);
    let wake = Arc::new(Wake::new()?);
    let stop = Arc::clone(&wake);
    let handle = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut lines = LineSplitter::new(max_line);
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                let revents = match os::poll_readable([input.as_fd(), stop.as_fd()]) {
                    Ok(revents) => revents,
                    Err(err) => {
                        log::warn!("stdin: poll: {err}");
                        break;
                    }
                };
                if revents[1] != 0 {
                    return; // stop(): no on_eof
                }
                if revents[0] & libc::POLLNVAL != 0 {
                    log::warn!("stdin: descriptor is not open");
                    break;
                }
                if revents[0] == 0 {
                    continue;
                }
                match io::Read::read(&mut &input, &mut buf) {
                    Ok(0) => {
                        lines.finish(&mut on_line);
                        break;
                    }
                    Ok(n) => lines.push(&buf[..n], &mut on_line),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => {
                        log::warn!("stdin: read: {err}");
                        lines.finish(&mut on_line);
                        break;
                    }
                }
            }
            log::debug!("stdin: end of input");
            on_eof();
        })?;
    Ok(StdinReader { handle, wake })
}

/// Splits a byte stream into lines of at most `max_line` bytes. Pure.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    line: Vec<u8>,
    /// The current line grew past `max_line`; skip to the next newline.
    dropping: bool,
    /// Where the lines come from, for the warning about a dropped line.
    source: String,
}

impl LineSplitter {
    /// A splitter that drops lines longer than `max_line` bytes (without newline).
    pub fn new(max_line: usize) -> LineSplitter {
        Self::named(max_line, "stdin")
    }

    /// A splitter whose warnings name `source` (a local client and its PID).
    pub fn named(max_line: usize, source: impl Into<String>) -> LineSplitter {
        LineSplitter {
            max_line,
            line: Vec::new(),
            dropping: false,
            source: source.into(),
        }
    }

    /// Feeds `data`, calling `on_line` for each complete line.
    pub fn push(&mut self, mut data: &[u8], on_line: &mut impl FnMut(String)) {
        while !data.is_empty() {
            let (part, rest, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if !self.dropping {
                // Allow one byte over for a `\r` that may precede the newline.
                if self.line.len() + part.len() > self.max_line.saturating_add(1) {
                    self.drop_line();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if complete {
                self.end_line(on_line);
            }
        }
    }

    /// End of input: delivers a final line that had no newline.
    pub fn finish(&mut self, on_line: &mut impl FnMut(String)) {
        if !self.line.is_empty() || self.dropping {
            self.end_line(on_line);
        }
    }

    fn drop_line(&mut self) {
        log::warn!(
            "{}: dropping a line longer than {} bytes",
            self.source,
            self.max_line
        );
        self.dropping = true;
        self.line = Vec::new(); // give the memory back
    }

    fn end_line(&mut self, on_line: &mut impl FnMut(String)) {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        if !self.dropping && self.line.len() > self.max_line {
            self.drop_line();
        }
        if !self.dropping {
            // The line's own buffer becomes the String (no second copy); only invalid
            // UTF-8 is copied, with replacement characters.
            let line = std::mem::take(&mut self.line);
            let text = String::from_utf8(line)
                .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned());
            on_line(text);
        }
        self.line.clear();
        self.dropping = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::time::Duration;

    fn split(max_line: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::new(max_line);
        let mut out = Vec::new();
        for chunk in chunks {
            splitter.push(chunk, &mut |line| out.push(line));
        }
        splitter.finish(&mut |line| out.push(line));
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        assert_eq!(
            split(100, &[b"a\nb", b"c\n", b"\n", b"d"]),
            ["a", "bc", "", "d"]
        );
        assert_eq!(
            split(100, &[b"crlf\r\n", b"x\r", b"\ny"]),
            ["crlf", "x", "y"]
        );
        assert_eq!(split(100, &[b""]), Vec::<String>::new());
        assert_eq!(split(100, &[b"\n"]), [""]);
    }

    #[test]
    fn long_lines_are_dropped_whole() {
        assert_eq!(split(3, &[b"abc\nabcd\nxy\n"]), ["abc", "xy"]);
        assert_eq!(split(3, &[b"ab", b"cd", b"ef\nok\n"]), ["ok"]);
        assert_eq!(split(3, &[b"abc\r\n"]), ["abc"]);
        assert_eq!(split(3, &[b"abcd\r\n"]), Vec::<String>::new());
        assert_eq!(split(3, &[b"ok\nabcdef"]), ["ok"]);
        assert_eq!(split(0, &[b"\nx\n\n"]), ["", ""]);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut splitter = LineSplitter::new(10);
        let chunk = [b'x'; 4096];
        for _ in 0..100 {
            splitter.push(&chunk, &mut |_| panic!("no line expected"));
            assert!(splitter.line.capacity() <= 4096 + 11);
        }
        let mut out = Vec::new();
        splitter.push(b"\nfine\n", &mut |line| out.push(line));
        assert_eq!(out, ["fine"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(split(100, &[b"a\xffb\n"]), ["a\u{fffd}b"]);
    }

    enum Got {
        Line(String),
        Eof,
    }

    fn start(max_line: usize) -> (UnixStream, StdinReader, mpsc::Receiver<Got>) {
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        let (tx, rx) = mpsc::channel();
        let eof_tx = tx.clone();
        let reader = spawn_reader(
            &theirs,
            max_line,
            move |line| {
                let _ = tx.send(Got::Line(line));
            },
            move || {
                let _ = eof_tx.send(Got::Eof);
            },
        )
        .expect("spawn");
        drop(theirs); // the reader holds its own duplicate
        (ours, reader, rx)
    }

    fn next(rx: &mpsc::Receiver<Got>) -> Got {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("event within 5 s")
    }

    fn line(rx: &mpsc::Receiver<Got>) -> String {
        match next(rx) {
            Got::Line(line) => line,
            Got::Eof => panic!("unexpected eof"),
        }
    }

    #[test]
    fn reads_lines_then_eof() {
        let (mut input, reader, rx) = start(8);
        input.write_all(b"hello\nwor").expect("write");
        assert_eq!(line(&rx), "hello");
        input.write_all(b"ld\n").expect("write");
        assert_eq!(line(&rx), "world");
        input.write_all(b"much too long\nok\nlast").expect("write");
        assert_eq!(line(&rx), "ok");
        drop(input);
        assert_eq!(line(&rx), "last");
        assert!(matches!(next(&rx), Got::Eof));
        reader.stop(); // already ended: returns at once
    }

    #[test]
    fn stop_wakes_a_blocked_reader() {
        let (input, reader, rx) = start(8);
        reader.stop();
        drop(input);
        // Stopped, not at EOF: on_eof was not called, and the senders are gone.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn dev_null_is_immediate_eof() {
        let null = std::fs::File::open("/dev/null").expect("open /dev/null");
        let (tx, rx) = mpsc::channel();
        let reader = spawn_reader(
            null,
            8,
            |_| panic!("no line"),
            move || {
                let _ = tx.send(());
            },
        )
        .expect("spawn");
        rx.recv_timeout(Duration::from_secs(5)).expect("eof");
        reader.stop();
    }
}
