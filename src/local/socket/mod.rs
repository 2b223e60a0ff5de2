//! The local socket: the device's programs share the connection (`--socket`).
//!
//! - `listener`: the listening socket, from systemd or created at `--socket PATH`;
//! - `fanout`: who gets which received message (pure, unit-tested);
//! - `server`: the one thread that serves every client.
//!
//! Lines from the clients go to the server through the same [`Outbox`] as stdin;
//! received messages go to the clients instead of stdout, through the
//! [`ToClients`](server::ToClients) observer on the output thread, which never
//! waits for a client.

mod fanout;
mod listener;
mod server;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::ConfigError;
use crate::events::Observer;
use crate::local::outbox::Outbox;
use crate::report::status_file::LocalCounts;

use self::listener::Listener;
use self::server::{Server, Shared, ToClients};

/// The local socket, opened but not yet served.
pub struct Local {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Local {
    /// The socket systemd passed, else one at `path` (`--socket`), else `None`.
    /// `queue_bytes` bounds the received messages waiting for clients. Call while
    /// the process has one thread.
    pub fn open(
        path: Option<&Path>,
        mode: u32,
        queue_bytes: usize,
    ) -> Result<Option<Local>, ConfigError> {
        let Some(listener) = Listener::open(path, mode)? else {
            return Ok(None);
        };
        let shared = Shared::new(queue_bytes).map_err(|err| ConfigError {
            path: path.unwrap_or(Path::new("LISTEN_FDS")).to_path_buf(),
            flag: "--socket",
            message: err.to_string(),
        })?;
        Ok(Some(Local {
            listener,
            shared: Arc::new(shared),
        }))
    }

    /// The observer that passes received messages to the clients.
    pub fn observer(&self) -> Arc<dyn Observer> {
        Arc::new(ToClients(Arc::clone(&self.shared)))
    }

    /// Reads the counts the status file shows.
    pub fn counts(&self) -> impl Fn() -> LocalCounts + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.counts()
    }

    /// Starts serving: client lines into `outbox` (lines at most `max_line`
    /// bytes), at most `max_clients` at once; `report` is called when the counts
    /// changed.
    pub fn spawn(
        self,
        outbox: Arc<Outbox>,
        max_line: usize,
        max_clients: usize,
        report: impl Fn() + Send + 'static,
    ) -> io::Result<LocalThread> {
        let Local { listener, shared } = self;
        let room = Arc::clone(&shared);
        outbox.set_room_waker(Box::new(move || room.wake()));
        let socket = listener.socket.try_clone()?;
        let server = Server {
            listener: socket,
            shared: Arc::clone(&shared),
            outbox,
            report: Box::new(report),
            max_clients,
            max_line,
        };
        let thread = std::thread::Builder::new()
            .name("wsbeat-local".into())
            .stack_size(256 * 1024)
            .spawn(move || server.run())?;
        Ok(LocalThread {
            thread,
            shared,
            _listener: listener,
        })
    }
}

/// The running socket thread.
pub struct LocalThread {
    thread: JoinHandle<()>,
    shared: Arc<Shared>,
    /// Removes the socket file (if wsbeat created it) when dropped, after the join.
    _listener: Listener,
}

impl LocalThread {
    /// Gives each client what it can take at once, closes them, joins the
    /// thread and removes the socket file wsbeat created.
    pub fn stop(self) {
        self.shared.stop();
        if self.thread.join().is_err() {
            log::error!("local socket: thread panicked");
        }
    }
}
