//! Server messages to stdout, one line each, without ever blocking for good.
//!
//! A plain `write(2)` to a pipe nobody reads blocks until the reader of the pipe
//! reads, which may be never (`wsbeat URL | sleep 1000`). [`StdoutLines`] runs on
//! the delivery thread, so such a wait only pauses reading from the server (see
//! [`crate::local::delivery`]); but at shutdown the thread must be joined. So every
//! write to a pipe, terminal or socket first waits in `poll(2)` for room, together
//! with a private wake that [`Observer::interrupt`] signals, and writes at
//! most `PIPE_BUF` bytes, which a pipe reported writable takes without blocking.
//! A regular file never blocks and is written in one go.
//!
//! A failing stdout (EPIPE, a journald restart) does not stop the client: the
//! connection matters more than the copy of its messages. It is said once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::events::Observer;
use crate::os::{self, Wake};

/// Largest write that a pipe reported writable accepts without blocking.
const CHUNK: usize = libc::PIPE_BUF;

/// Writes each server text message to stdout as one line; see the module docs.
pub struct StdoutLines {
    /// A duplicate of stdout (same open file).
    fd: OwnedFd,
    /// Stdout is a regular file (or /dev/null): writes never block.
    regular: bool,
    /// Signalled by [`Observer::interrupt`].
    wake: Wake,
    interrupted: AtomicBool,
    warned: AtomicBool,
    /// One buffer, reused for every batch.
    buffer: Mutex<Vec<u8>>,
}

impl StdoutLines {
    /// Writes to the process's stdout.
    pub fn new() -> io::Result<StdoutLines> {
        Self::for_fd(io::stdout().as_fd())
    }

    /// Writes to a duplicate of `fd` (tests pass a pipe).
    pub fn for_fd(fd: BorrowedFd<'_>) -> io::Result<StdoutLines> {
        let fd = fd.try_clone_to_owned()?;
        let regular = fd
            .try_clone()
            .map(std::fs::File::from)
            .and_then(|file| file.metadata())
            .is_ok_and(|meta| meta.file_type().is_file() || is_dev_null(&meta));
        let wake = Wake::new()?;
        Ok(StdoutLines {
            fd,
            regular,
            wake,
            interrupted: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            buffer: Mutex::new(Vec::new()),
        })
    }

    fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.interrupted.load(Ordering::SeqCst) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
            }
            let chunk = if self.regular {
                data
            } else {
                self.wait_writable()?;
                &data[..data.len().min(CHUNK)]
            };
            match os::write(self.fd.as_fd(), chunk) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Waits until stdout takes a write, or [`Observer::interrupt`] is called.
    fn wait_writable(&self) -> io::Result<()> {
        let mut fds = [
            os::pollfd(self.fd.as_fd(), libc::POLLOUT),
            self.wake.pollfd(),
        ];
        os::poll_forever(&mut fds)?;
        if fds[1].revents != 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopping"));
        }
        // POLLERR/POLLHUP: the write below reports the error (EPIPE) itself.
        Ok(())
    }

    fn report(&self, result: io::Result<()>) {
        match result {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if !self.warned.swap(true, Ordering::Relaxed) => {
                log::warn!("stdout: {err}; server messages are discarded while it fails");
            }
            Err(err) => log::debug!("stdout: {err}"),
            Ok(()) => {}
        }
    }
}

fn is_dev_null(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // /dev/null is character device 1:3 and never blocks.
    meta.file_type().is_char_device() && meta.rdev() == libc::makedev(1, 3)
}

impl Observer for StdoutLines {
    fn message(&self, text: &str) {
        self.messages(&[text.to_owned()]);
    }

    /// One write for the whole batch: "flushed per message" as seen from outside,
    /// since every message of the batch had already arrived.
    fn messages(&self, texts: &[String]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        buffer.clear();
        for text in texts {
            buffer.extend_from_slice(text.as_bytes());
            buffer.push(b'\n');
        }
        let result = self.write_all(&buffer);
        // Give back the memory of an unusually large batch.
        if buffer.capacity() > 256 * 1024 {
            *buffer = Vec::new();
        }
        drop(buffer);
        self.report(result);
    }

    fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.wake.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn lines_go_out_in_order() {
        let (read, write) = os::pipe(false).unwrap();
        let out = StdoutLines::for_fd(write.as_fd()).unwrap();
        out.messages(&["a".into(), "".into(), "héllo".into()]);
        out.message("last");
        drop(out);
        drop(write);
        let mut got = String::new();
        std::fs::File::from(read).read_to_string(&mut got).unwrap();
        assert_eq!(got, "a\n\nhéllo\nlast\n");
    }

    #[test]
    fn a_write_to_a_full_pipe_returns_when_interrupted() {
        let (read, write) = os::pipe(false).unwrap();
        let out = Arc::new(StdoutLines::for_fd(write.as_fd()).unwrap());
        let writer = {
            let out = Arc::clone(&out);
            // Far more than a pipe holds (64 KiB by default), and nobody reads.
            std::thread::spawn(move || out.messages(&["x".repeat(1 << 20)]))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "the pipe is full: the write waits");
        out.interrupt();
        writer.join().unwrap();
        drop(read);
    }
}
