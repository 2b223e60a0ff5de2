//! The local socket's thread: one thread blocked in `poll(2)` on the listener,
//! every client and a wake, with no timeout. Idle clients cost no wake-ups and no
//! thread; memory grows with them only by a few hundred bytes each.
//!
//! Up: each client's bytes are split into lines ([`LineSplitter`]) and offered to
//! the outbox without waiting ([`Outbox::try_push`]). A refused line (connected,
//! queue full) is held, and then nobody's socket is read until the outbox says
//! there is room: the programs feel the backpressure through their own socket
//! buffers. One read per client per round, so lines of several clients
//! interleave, whole.
//!
//! Down: received messages are in the [`Fanout`] log; each client is written
//! what it has not been given, with `sendmsg` straight from the log (no copy
//! per client), never waiting: a partial write is remembered as an offset into
//! its next line and finished when `poll` says the socket takes more.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::fanout::{ClientId, Fanout};
use crate::local::outbox::Outbox;
use crate::local::stdin::LineSplitter;
use crate::os::{self, Wake};
use crate::report::observer::Observer;
use crate::report::status_file::LocalCounts;
use crate::sync;

/// Size of one read from a client (one buffer for all of them).
const READ_CHUNK: usize = 64 * 1024;
/// Most lines given to one `sendmsg`, two slices each (`IOV_MAX` is 1024)...
const WRITE_LINES: usize = 512;
/// ...and most bytes: about what a Unix socket's send buffer holds.
const WRITE_BYTES: usize = 256 * 1024;
/// Counts that changed are reported at most this often (the contract: within 1 s).
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// What the socket thread shares with the output thread and the supervisor.
pub struct Shared {
    fanout: Mutex<Fanout>,
    /// Wakes the socket thread: messages arrived, room in the outbox, stop.
    wake: Wake,
    stopping: AtomicBool,
    /// The counts as last reported.
    counts: Mutex<LocalCounts>,
}

impl Shared {
    /// Shared state for a log of `max_bytes` (`--queue-bytes`).
    pub fn new(max_bytes: usize) -> io::Result<Shared> {
        Ok(Shared {
            fanout: Mutex::new(Fanout::new(max_bytes)),
            wake: Wake::new()?,
            stopping: AtomicBool::new(false),
            counts: Mutex::new(LocalCounts::default()),
        })
    }

    fn fanout(&self) -> MutexGuard<'_, Fanout> {
        sync::lock(&self.fanout)
    }

    /// The counts for the status file, as last reported.
    pub fn counts(&self) -> LocalCounts {
        *sync::lock(&self.counts)
    }

    /// Ends the socket thread's loop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.signal();
    }

    /// Wakes the socket thread (the outbox has room).
    pub fn wake(&self) {
        self.wake.signal();
    }
}

/// Received messages go to the fanout log instead of stdout. Never waits for a
/// client: one that falls behind is cut off by the log's bound.
pub struct ToClients(pub Arc<Shared>);

impl Observer for ToClients {
    fn message(&self, text: &str) {
        self.0.fanout().push(text);
        self.0.wake.signal();
    }

    fn messages(&self, texts: &[String]) {
        let mut fanout = self.0.fanout();
        for text in texts {
            fanout.push(text);
        }
        drop(fanout);
        self.0.wake.signal();
    }
}

/// One connected program.
struct Client {
    id: ClientId,
    stream: UnixStream,
    pid: libc::pid_t,
    uid: libc::uid_t,
    lines: LineSplitter,
    /// Lines split but not yet taken by the outbox, in order.
    held: VecDeque<String>,
    /// Its writing side is open.
    reading: bool,
    /// It hung up while reading was paused: not polled until reading resumes.
    hung_up: bool,
    /// It still receives messages.
    receiving: bool,
    /// Bytes of its next line (text and newline) already written.
    offset: usize,
}

/// The socket thread's state.
pub struct Server {
    pub(super) listener: UnixListener,
    pub(super) shared: Arc<Shared>,
    pub(super) outbox: Arc<Outbox>,
    /// Tells the supervisor the counts changed.
    pub(super) report: Box<dyn Fn() + Send>,
    pub(super) max_clients: usize,
    pub(super) max_line: usize,
}

struct Running {
    server: Server,
    clients: Vec<Client>,
    next_id: ClientId,
    buf: Vec<u8>,
    /// The outbox refused a line: no client is read until it has room.
    paused: bool,
    last_report: Option<Instant>,
}

impl Server {
    /// The thread's body: serves until [`Shared::stop`], then gives each client
    /// what it can take without waiting and closes them all.
    pub fn run(self) {
        let mut running = Running {
            server: self,
            clients: Vec::new(),
            next_id: 0,
            buf: vec![0u8; READ_CHUNK],
            paused: false,
            last_report: None,
        };
        running.serve();
    }
}

impl Running {
    fn serve(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            let timeout = self.report_counts();
            self.poll_set(&mut fds);
            match os::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::error!("local socket: poll: {err}");
                    break;
                }
            }
            if fds[0].revents != 0 {
                self.server.shared.wake.clear();
                if self.server.shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
            }
            if self.paused {
                self.offer_held();
            }
            // Clients first (the poll set's order), then new ones.
            for (index, pollfd) in fds[2..].iter().enumerate() {
                self.serve_client(index, pollfd.revents);
            }
            self.write_all_pending();
            self.close_lagging();
            self.clients.retain(|client| {
                let open = client.reading || client.receiving;
                if !open {
                    log_leave(client, "left");
                }
                open
            });
            if fds[1].revents != 0 {
                self.accept();
            }
        }
        self.shut_down();
    }

    /// The wake, the listener and every client, each with what it waits for.
    fn poll_set(&mut self, fds: &mut Vec<libc::pollfd>) {
        fds.clear();
        fds.push(self.server.shared.wake.pollfd());
        fds.push(os::pollfd(self.server.listener.as_fd(), libc::POLLIN));
        let fanout = self.server.shared.fanout();
        for client in &self.clients {
            let mut events = 0;
            if client.reading && !self.paused {
                events |= libc::POLLIN;
            }
            if client.receiving && (client.offset > 0 || fanout.has_pending(client.id)) {
                events |= libc::POLLOUT;
            }
            let mut pollfd = os::pollfd(client.stream.as_fd(), events);
            if client.reading && self.paused && client.hung_up {
                // POLLHUP would be reported at once, over and over; its data is read
                // once reading resumes.
                pollfd.fd = -1;
            }
            fds.push(pollfd);
        }
    }

    fn serve_client(&mut self, index: usize, revents: libc::c_short) {
        let hangup = revents & (libc::POLLHUP | libc::POLLERR) != 0;
        let client = &mut self.clients[index];
        if client.reading {
            if self.paused {
                client.hung_up |= hangup;
            } else if revents & libc::POLLIN != 0 || hangup {
                self.read_client(index);
            }
        }
        let client = &mut self.clients[index];
        if hangup && !client.reading && client.receiving {
            // Gone for good: nothing to read, nobody to write to.
            client.receiving = false;
            self.server.shared.fanout().leave(client.id);
        }
    }

    fn read_client(&mut self, index: usize) {
        let Running { clients, buf, .. } = self;
        let client = &mut clients[index];
        let mut held = std::mem::take(&mut client.held);
        match os::recv_dontwait(client.stream.as_fd(), buf) {
            Ok(0) => {
                client.lines.finish(&mut |line| held.push_back(line));
                client.reading = false;
            }
            Ok(n) => client
                .lines
                .push(&buf[..n], &mut |line| held.push_back(line)),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => {
                log::debug!("local client pid {}: read: {err}", client.pid);
                client.lines.finish(&mut |line| held.push_back(line));
                client.reading = false;
            }
        }
        client.held = held;
        if !self.offer(index) {
            self.paused = true;
        }
    }

    /// Offers `index`'s held lines to the outbox, in order; whether all were taken.
    fn offer(&mut self, index: usize) -> bool {
        let client = &mut self.clients[index];
        while let Some(line) = client.held.pop_front() {
            if let Err(line) = self.server.outbox.try_push(line) {
                client.held.push_front(line);
                return false;
            }
        }
        if client.held.capacity() > 1024 {
            client.held = VecDeque::new();
        }
        true
    }

    /// The outbox may have room: offers what every client holds; reading resumes
    /// once all of it is taken.
    fn offer_held(&mut self) {
        for index in 0..self.clients.len() {
            if !self.offer(index) {
                return;
            }
        }
        self.paused = false;
        for client in &mut self.clients {
            client.hung_up = false;
        }
    }

    fn write_all_pending(&mut self) {
        for index in 0..self.clients.len() {
            self.write_client(index);
        }
    }

    /// Writes what `index` has not been given until its socket is full.
    fn write_client(&mut self, index: usize) {
        let shared = Arc::clone(&self.server.shared);
        let client = &mut self.clients[index];
        while client.receiving {
            let lines = shared.fanout().pending(client.id, WRITE_LINES);
            if lines.is_empty() {
                return;
            }
            // Each line and its newline; the first from where the last write stopped.
            let mut parts: Vec<IoSlice<'_>> = Vec::with_capacity(2 * lines.len());
            let mut bytes = 0;
            for (index, line) in lines.iter().enumerate() {
                if bytes >= WRITE_BYTES {
                    break;
                }
                let skip = if index == 0 { client.offset } else { 0 };
                let text = &line.as_bytes()[skip.min(line.len())..];
                if !text.is_empty() {
                    parts.push(IoSlice::new(text));
                }
                parts.push(IoSlice::new(b"\n"));
                bytes += text.len() + 1;
            }
            match os::send_nowait(client.stream.as_fd(), &parts) {
                Ok(written) => {
                    let mut left = written + client.offset;
                    let mut done = 0;
                    for line in &lines {
                        if left < line.len() + 1 {
                            break;
                        }
                        left -= line.len() + 1;
                        done += 1;
                    }
                    client.offset = left;
                    shared.fanout().advance(client.id, done);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    log::debug!("local client pid {}: write: {err}", client.pid);
                    client.receiving = false;
                    shared.fanout().leave(client.id);
                }
            }
        }
    }

    /// Clients the log cut off for falling behind: disconnected, with a warning.
    fn close_lagging(&mut self) {
        let lagging = self.server.shared.fanout().take_lagging();
        if lagging.is_empty() {
            return;
        }
        self.clients.retain(|client| {
            if !lagging.contains(&client.id) {
                return true;
            }
            log::warn!(
                "local client pid {} uid {} disconnected: it fell more than --queue-bytes behind",
                client.pid,
                client.uid
            );
            false
        });
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.server.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // ECONNABORTED, EMFILE...: the next round tries again.
                    log::warn!("local socket: accept: {err}");
                    return;
                }
            };
            let (pid, uid) = os::peer_cred(stream.as_fd()).unwrap_or((0, u32::MAX));
            if self.clients.len() >= self.server.max_clients {
                log::warn!(
                    "local client pid {pid} uid {uid} refused: --socket-max-clients {} connected",
                    self.server.max_clients
                );
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.server.shared.fanout().join(id);
            log::info!(
                "local client pid {pid} uid {uid} connected ({} connected)",
                self.clients.len() + 1
            );
            self.clients.push(Client {
                id,
                stream,
                pid,
                uid,
                lines: LineSplitter::named(self.server.max_line, format!("local client pid {pid}")),
                held: VecDeque::new(),
                reading: true,
                hung_up: false,
                receiving: true,
                offset: 0,
            });
        }
    }

    /// Tells the supervisor when the counts changed, at most every
    /// [`REPORT_EVERY`]; the time until the next report is due, if one is.
    fn report_counts(&mut self) -> Option<Duration> {
        let fanout_counts = self.server.shared.fanout().counts();
        let counts = LocalCounts {
            clients: self.clients.len() as u64,
            ..fanout_counts
        };
        if counts == self.server.shared.counts() {
            return None;
        }
        let now = Instant::now();
        if let Some(last) = self.last_report {
            let due = last + REPORT_EVERY;
            if due > now {
                return Some(due - now);
            }
        }
        *sync::lock(&self.server.shared.counts) = counts;
        self.last_report = Some(now);
        (self.server.report)();
        None
    }

    /// Gives each client what it takes without waiting, then closes them all.
    fn shut_down(&mut self) {
        self.write_all_pending();
        for client in self.clients.drain(..) {
            log_leave(&client, "closed");
        }
    }
}

fn log_leave(client: &Client, how: &str) {
    log::info!("local client pid {} uid {} {how}", client.pid, client.uid);
}
