//! SIGTERM, SIGINT and SIGHUP, turned into calls on an ordinary thread.
//!
//! # Anatomy
//!
//! [`SignalListener::install`] creates a non-blocking self-pipe and installs
//! `sigaction` handlers that do only one async-signal-safe thing: `write(2)` one
//! byte (the signal number) to the pipe, keeping `errno` intact. A full pipe
//! drops the byte, which is harmless: a byte of the same kind is already waiting.
//! [`SignalListener::spawn`] starts a thread that blocks in `poll(2)` on the
//! pipe and on a private wake eventfd, with no timeout, and calls the callback for
//! each byte read. [`SignalThread::stop`] signals the wake and joins.
//!
//! # Ordering
//!
//! Call `install` in `main` before any other thread is spawned (signal-hook's
//! advice): a signal arriving between thread start and installation would
//! otherwise take the default action and kill the process. Signals arriving
//! after `install` but before `spawn` wait in the pipe and are delivered once
//! the thread runs.
//!
//! # Ignored signals
//!
//! SIGUSR1 and SIGUSR2 mean nothing to the client, but their default action ends
//! the process without a Close; log rotators and careless scripts send them. They
//! are set to `SIG_IGN` (not to a handler: an ignored signal interrupts no system
//! call, so no `EINTR` surfaces anywhere for a signal we do nothing with).
//!
//! # Limitations
//!
//! One listener per process: a second `install` takes the handlers over for the
//! new pipe. After [`SignalThread::stop`] the handled and the ignored signals get
//! their default action back (a later SIGTERM ends the process at once).
//!
//! The raw calls (`sigaction`, the handler itself, `pipe2`, `poll`) are in
//! [`crate::os`], the only module allowed `unsafe`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::os::{self, Disposition, Wake};

/// What a signal asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: close with 1001 and exit 0.
    Terminate,
    /// SIGHUP: re-read files, close with 1000, reconnect at once.
    Reload,
}

impl Signal {
    /// The meaning of signal number `signo`, if it is one we handle.
    pub fn from_raw(signo: i32) -> Option<Signal> {
        match signo {
            libc::SIGTERM | libc::SIGINT => Some(Signal::Terminate),
            libc::SIGHUP => Some(Signal::Reload),
            _ => None,
        }
    }
}

/// The signals we install handlers for.
const HANDLED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The signals we ignore (see the module docs).
const IGNORED: [libc::c_int; 2] = [libc::SIGUSR1, libc::SIGUSR2];

/// Reads what is available from non-blocking `fd` into `buf`; 0 means nothing.
fn read_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    match os::read(fd, buf) {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(0),
        other => other,
    }
}

/// Handlers installed, signals collected in a pipe, not yet delivered anywhere.
/// Dropping it without [`SignalListener::spawn`] restores the default actions.
#[derive(Debug)]
pub struct SignalListener {
    read: OwnedFd,
    installed: Installed,
}

/// Owns the self-pipe's write end while the handlers may write to it; on drop
/// restores the default actions first, then forgets the fd, then closes it.
#[derive(Debug)]
struct Installed {
    write: OwnedFd,
}

impl Drop for Installed {
    fn drop(&mut self) {
        for signo in HANDLED.into_iter().chain(IGNORED) {
            if let Err(err) = os::set_signal(signo, Disposition::Default) {
                log::debug!("signals: restoring default for {signo}: {err}");
            }
        }
        // Forget our fd only if it is still the current one (a later install wins).
        os::forget_signal_pipe(self.write.as_fd());
    }
}

impl SignalListener {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP, and ignores SIGUSR1 and
    /// SIGUSR2. Call before spawning any thread. Fails only if the pipe or `sigaction` fails (then exit: the
    /// service could not be stopped cleanly).
    pub fn install() -> io::Result<SignalListener> {
        let (read, write) = os::pipe(true)?;
        os::set_signal_pipe(Some(write.as_fd()));
        // From here on, an error drops `installed`, restoring the defaults.
        let installed = Installed { write };
        for signo in HANDLED {
            os::set_signal(signo, Disposition::ToPipe)?;
        }
        for signo in IGNORED {
            os::set_signal(signo, Disposition::Ignore)?;
        }
        Ok(SignalListener { read, installed })
    }

    /// Starts the thread that calls `on_signal` for every signal received, in
    /// order. The callback runs on that thread; it should only hand the signal
    /// on (e.g. send an event on a channel) and must not block for long.
    pub fn spawn(
        self,
        mut on_signal: impl FnMut(Signal) + Send + 'static,
    ) -> io::Result<SignalThread> {
        let wake = Arc::new(Wake::new()?);
        let stop = Arc::clone(&wake);
        let SignalListener { read, installed } = self;
        let handle = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut buf = [0u8; 64];
                loop {
                    let revents = match os::poll_readable([read.as_fd(), stop.as_fd()]) {
                        Ok(revents) => revents,
                        Err(err) => {
                            log::error!("signals: poll: {err}");
                            return;
                        }
                    };
                    if revents[0] != 0 {
                        loop {
                            match read_nonblocking(read.as_fd(), &mut buf) {
                                Ok(0) => break,
                                Ok(n) => buf[..n]
                                    .iter()
                                    .filter_map(|&b| Signal::from_raw(i32::from(b)))
                                    .for_each(&mut on_signal),
                                Err(err) => {
                                    log::error!("signals: read: {err}");
                                    return;
                                }
                            }
                        }
                    }
                    if revents[1] != 0 {
                        return;
                    }
                }
            })?;
        Ok(SignalThread {
            handle,
            wake,
            installed,
        })
    }
}

/// The running signals thread.
#[derive(Debug)]
pub struct SignalThread {
    handle: JoinHandle<()>,
    wake: Arc<Wake>,
    installed: Installed,
}

impl SignalThread {
    /// Restores the default action for the three signals, wakes the thread and
    /// joins it. Signals not yet read when `stop` is called may be lost.
    pub fn stop(self) {
        let SignalThread {
            handle,
            wake,
            installed,
        } = self;
        drop(installed);
        wake.signal();
        if handle.join().is_err() {
            log::error!("signals: thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// The only test in this crate's unit tests that touches process-wide
    /// signal dispositions. `raise` delivers to the calling thread, and the
    /// handler only writes to the pipe, so other test threads are unaffected.
    #[test]
    fn raised_signals_reach_the_callback() {
        let listener = SignalListener::install().expect("install");
        // A signal before spawn waits in the pipe.
        assert_eq!(os::raise_raw(libc::SIGHUP), 0);
        let (tx, rx) = mpsc::channel();
        let thread = listener
            .spawn(move |signal| {
                let _ = tx.send(signal);
            })
            .expect("spawn");
        let wait = || {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("signal within 5 s")
        };
        assert_eq!(wait(), Signal::Reload);
        // Ignored: the process lives on and the callback hears nothing of them.
        assert_eq!(os::raise_raw(libc::SIGUSR1), 0);
        assert_eq!(os::raise_raw(libc::SIGUSR2), 0);
        assert_eq!(os::raise_raw(libc::SIGINT), 0);
        assert_eq!(wait(), Signal::Terminate);
        assert_eq!(os::raise_raw(libc::SIGTERM), 0);
        assert_eq!(wait(), Signal::Terminate);
        assert_eq!(os::raise_raw(libc::SIGHUP), 0);
        assert_eq!(wait(), Signal::Reload);
        thread.stop();
        assert!(!os::signal_pipe_set());
    }

    #[test]
    fn signal_numbers() {
        assert_eq!(Signal::from_raw(libc::SIGTERM), Some(Signal::Terminate));
        assert_eq!(Signal::from_raw(libc::SIGINT), Some(Signal::Terminate));
        assert_eq!(Signal::from_raw(libc::SIGHUP), Some(Signal::Reload));
        assert_eq!(Signal::from_raw(libc::SIGUSR1), None);
    }
}
