//! TCP connect to a host's addresses with Happy Eyeballs (RFC 8305, sections 4 and 5).
//!
//! Attempts alternate between address families, starting with the family of the
//! resolver's first address (getaddrinfo has already sorted them by RFC 6724). A new
//! attempt starts [`ATTEMPT_DELAY`] after the previous one, or at once when that one has
//! failed; attempts already started keep running, and the first to connect wins (the
//! others are closed). So a silently dropping IPv6 path costs one delay, not the whole
//! `--connect-timeout`.
//!
//! The decision (which address next, and when) is [`Schedule`], pure and tested in
//! virtual time. [`connect`] runs it: non-blocking sockets, one `poll(2)` on all of them
//! plus a [`Wake`] that `transport::Abort` signals, so a stop or reload cuts every
//! attempt in flight at once. Nothing polls on a timer: the wait ends on a socket event,
//! the abort, the next attempt's start or the deadline.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{ConnectError, Stage};
use crate::os;

/// RFC 8305's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The order in which to try `addrs` (resolver order): families alternate, starting
/// with the family of the first address; within a family the resolver's order is kept.
/// Duplicates are dropped.
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !unique.contains(addr) {
            unique.push(*addr);
        }
    }
    let (mut preferred, mut other): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) = unique
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first.is_ipv6());
    let mut order = Vec::with_capacity(addrs.len());
    loop {
        match (preferred.pop_front(), other.pop_front()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// Which attempt to start next, and when: the Happy Eyeballs decision, without I/O.
///
/// Time is passed in, so tests run it in virtual time. The caller starts what
/// [`Schedule::start`] returns, reports failures with [`Schedule::failed`], and waits
/// until [`Schedule::next_at`] (or an event on the sockets) before asking again.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Addresses not tried yet, in attempt order.
    pending: VecDeque<SocketAddr>,
    delay: Duration,
    /// The attempt started last and when, while it is still in flight: the next one
    /// waits `delay` after it. `None` once it has failed (the next may start at once).
    latest: Option<(usize, Instant)>,
    started: usize,
    in_flight: usize,
}

impl Schedule {
    /// A schedule over `addrs` in resolver order (see [`interleave`]), attempts `delay` apart.
    pub fn new(addrs: &[SocketAddr], delay: Duration) -> Schedule {
        Schedule {
            pending: interleave(addrs).into(),
            delay,
            latest: None,
            started: 0,
            in_flight: 0,
        }
    }

    /// The attempt to start at `now`, if one is due: its number (from 0) and address.
    /// Call again after starting one; it returns `None` until the next is due.
    pub fn start(&mut self, now: Instant) -> Option<(usize, SocketAddr)> {
        if let Some((_, at)) = self.latest {
            if now < at + self.delay {
                return None;
            }
        }
        let addr = self.pending.pop_front()?;
        let id = self.started;
        self.started += 1;
        self.in_flight += 1;
        self.latest = Some((id, now));
        Some((id, addr))
    }

    /// Attempt `id` (in flight) failed: if it was the latest, the next may start at once.
    pub fn failed(&mut self, id: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.latest.is_some_and(|(latest, _)| latest == id) {
            self.latest = None;
        }
    }

    /// When the next attempt is due, if one is left and it is not due already.
    pub fn next_at(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        self.latest.map(|(_, at)| at + self.delay)
    }

    /// Every address has been tried and every attempt has failed.
    pub fn exhausted(&self) -> bool {
        self.pending.is_empty() && self.in_flight == 0
    }
}

pub use crate::os::Wake;

/// Connects to one of `addrs` (resolver order) with Happy Eyeballs before `deadline`.
/// Returns the first socket to connect, blocking again; the others are closed. A
/// signalled `wake` ends it at once with an "attempt abandoned" error.
pub fn connect(
    addrs: &[SocketAddr],
    deadline: Instant,
    wake: &Wake,
) -> Result<TcpStream, ConnectError> {
    let mut schedule = Schedule::new(addrs, ATTEMPT_DELAY);
    // In flight: attempt number, address, socket.
    let mut attempts: Vec<(usize, SocketAddr, OwnedFd)> = Vec::new();
    let mut last_error = None;
    let mut fds = vec![wake.pollfd()];
    poll(&mut fds, Duration::ZERO)?;
    if fds[0].revents != 0 {
        return Err(abandoned());
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ConnectError::Timeout(Stage::Tcp));
        }
        while let Some((id, addr)) = schedule.start(now) {
            log::debug!("tcp: trying {addr}");
            match start_attempt(addr) {
                Ok((socket, false)) => attempts.push((id, addr, socket)),
                Ok((socket, true)) => return into_stream(socket, addr),
                Err(err) => {
                    log::debug!("tcp: {addr}: {err}");
                    schedule.failed(id);
                    last_error = Some(err);
                }
            }
        }
        if schedule.exhausted() {
            return Err(ConnectError::Tcp(last_error.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address to connect to")
            })));
        }
        let until = schedule.next_at().map_or(deadline, |at| at.min(deadline));
        fds.clear();
        fds.push(wake.pollfd());
        fds.extend(attempts.iter().map(|(_, _, socket)| libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }));
        poll(&mut fds, until.saturating_duration_since(now))?;
        if fds[0].revents != 0 {
            return Err(abandoned());
        }
        // Walk back so removing an attempt keeps the indices of those not seen yet.
        for index in (0..attempts.len()).rev() {
            if fds[index + 1].revents == 0 {
                continue;
            }
            let (id, addr, socket) = attempts.swap_remove(index);
            match socket_error(&socket) {
                Ok(()) => return into_stream(socket, addr),
                Err(err) => {
                    log::debug!("tcp: {addr}: {err}");
                    schedule.failed(id);
                    last_error = Some(err);
                }
            }
        }
    }
}

/// The error of an attempt ended by its wake.
fn abandoned() -> ConnectError {
    ConnectError::Tcp(io::Error::new(
        io::ErrorKind::Interrupted,
        "attempt abandoned",
    ))
}

/// Waits on `fds` for at most `timeout`; an interrupted wait just returns.
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> Result<(), ConnectError> {
    match os::poll(fds, Some(timeout)) {
        Err(err) if err.kind() != io::ErrorKind::Interrupted => Err(ConnectError::Tcp(err)),
        _ => Ok(()),
    }
}

/// A non-blocking socket connecting to `addr`, and whether it is connected already.
fn start_attempt(addr: SocketAddr) -> io::Result<(OwnedFd, bool)> {
    os::connect_nonblocking(addr)
}

/// The outcome of a non-blocking connect that `poll` reported on (`SO_ERROR`).
fn socket_error(socket: &OwnedFd) -> io::Result<()> {
    os::socket_error(socket.as_fd())
}

/// The winning socket as a blocking `TcpStream`.
fn into_stream(socket: OwnedFd, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    os::set_blocking(socket.as_fd()).map_err(ConnectError::Tcp)?;
    log::debug!("tcp: connected to {addr}");
    Ok(TcpStream::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ms;
    use std::net::TcpListener;

    fn v4(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 443))
    }

    fn v6(last: u16) -> SocketAddr {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, last], 443))
    }

    #[test]
    fn families_alternate_starting_with_the_resolvers_first() {
        assert_eq!(
            interleave(&[v6(1), v6(2), v6(3), v4(1), v4(2)]),
            [v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(interleave(&[v4(1), v4(2), v6(1)]), [v4(1), v6(1), v4(2)]);
        assert_eq!(
            interleave(&[v4(1), v6(1), v4(2), v6(2)]),
            [v4(1), v6(1), v4(2), v6(2)]
        );
        assert_eq!(interleave(&[v4(1), v4(2)]), [v4(1), v4(2)]);
        assert_eq!(interleave(&[v6(1), v4(1), v6(1)]), [v6(1), v4(1)]);
        assert_eq!(interleave(&[]), []);
    }

    #[test]
    fn next_attempt_waits_the_delay_while_the_previous_is_in_flight() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[v6(1), v6(2), v4(1)], ATTEMPT_DELAY);
        assert_eq!(s.start(t0), Some((0, v6(1))));
        assert_eq!(s.start(t0), None, "one attempt at a time");
        assert_eq!(s.next_at(), Some(t0 + ms(250)));
        assert_eq!(s.start(t0 + ms(249)), None);
        assert_eq!(s.start(t0 + ms(250)), Some((1, v4(1))));
        assert_eq!(s.next_at(), Some(t0 + ms(500)));
        assert_eq!(s.start(t0 + ms(500)), Some((2, v6(2))));
        assert_eq!(s.next_at(), None, "nothing left to start");
        assert!(!s.exhausted(), "three in flight");
        s.failed(0);
        s.failed(2);
        assert!(!s.exhausted());
        s.failed(1);
        assert!(s.exhausted());
    }

    #[test]
    fn a_failed_attempt_lets_the_next_start_at_once() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[v6(1), v4(1), v4(2)], ATTEMPT_DELAY);
        assert_eq!(s.start(t0), Some((0, v6(1))));
        s.failed(0); // refused after 1 ms
        assert_eq!(s.next_at(), None, "due now, not later");
        assert_eq!(s.start(t0 + ms(1)), Some((1, v4(1))));
        assert_eq!(s.next_at(), Some(t0 + ms(251)));
    }

    #[test]
    fn only_the_latest_attempt_failing_advances_the_next() {
        let t0 = Instant::now();
        let mut s = Schedule::new(&[v6(1), v4(1), v6(2)], ATTEMPT_DELAY);
        s.start(t0);
        s.start(t0 + ms(250));
        s.failed(0); // an older attempt fails: the latest is still pending
        assert_eq!(s.start(t0 + ms(300)), None);
        assert_eq!(s.next_at(), Some(t0 + ms(500)));
        s.failed(1);
        assert_eq!(s.start(t0 + ms(301)), Some((2, v6(2))));
    }

    /// What happens on the wire for one address, in virtual time.
    #[derive(Clone, Copy)]
    enum Path {
        /// Connects this long after the attempt starts.
        ConnectsAfter(u64),
        /// Fails (refused, unreachable) this long after the attempt starts.
        FailsAfter(u64),
        /// Never answers (silently dropped).
        Silent,
    }

    /// The winner and when it connected (ms), and each attempt's start (ms) and address.
    type Outcome = (Option<(SocketAddr, u64)>, Vec<(u64, SocketAddr)>);

    /// Drives a [`Schedule`] the way [`connect`] does, in virtual time: the winner and
    /// when it connected, or `None` if every attempt failed or `timeout` passed.
    fn simulate(addrs: &[(SocketAddr, Path)], timeout: u64) -> Outcome {
        let t0 = Instant::now();
        let at = |t: u64| t0 + ms(t);
        let mut schedule = Schedule::new(
            &addrs.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            ATTEMPT_DELAY,
        );
        let path = |addr: SocketAddr| addrs.iter().find(|(a, _)| *a == addr).unwrap().1;
        let mut started = Vec::new();
        let mut in_flight: Vec<(usize, SocketAddr, u64)> = Vec::new();
        let mut now = 0;
        loop {
            while let Some((id, addr)) = schedule.start(at(now)) {
                started.push((now, addr));
                in_flight.push((id, addr, now));
            }
            if schedule.exhausted() {
                return (None, started);
            }
            // The next event: an outcome on the wire, the next start, or the deadline.
            let outcome = |(_, addr, since): &(usize, SocketAddr, u64)| match path(*addr) {
                Path::ConnectsAfter(d) | Path::FailsAfter(d) => Some(since + d),
                Path::Silent => None,
            };
            let next_start = schedule
                .next_at()
                .map(|t| u64::try_from(t.duration_since(t0).as_millis()).unwrap());
            let next = in_flight
                .iter()
                .filter_map(outcome)
                .chain(next_start)
                .min()
                .unwrap_or(timeout)
                .min(timeout);
            if next >= timeout {
                return (None, started);
            }
            now = next;
            let mut index = 0;
            while index < in_flight.len() {
                if outcome(&in_flight[index]) == Some(now) {
                    let (id, addr, _) = in_flight.remove(index);
                    match path(addr) {
                        Path::ConnectsAfter(_) => return (Some((addr, now)), started),
                        _ => schedule.failed(id),
                    }
                } else {
                    index += 1;
                }
            }
        }
    }

    #[test]
    fn a_silent_ipv6_path_costs_one_attempt_delay() {
        let (winner, started) = simulate(
            &[(v6(1), Path::Silent), (v4(1), Path::ConnectsAfter(20))],
            10_000,
        );
        assert_eq!(winner, Some((v4(1), 270)));
        assert_eq!(started, [(0, v6(1)), (250, v4(1))]);
    }

    #[test]
    fn a_refused_ipv6_path_costs_nothing_more() {
        let (winner, started) = simulate(
            &[
                (v6(1), Path::FailsAfter(1)),
                (v4(1), Path::ConnectsAfter(1)),
            ],
            10_000,
        );
        assert_eq!(winner, Some((v4(1), 2)));
        assert_eq!(started, [(0, v6(1)), (1, v4(1))]);
    }

    #[test]
    fn a_slow_first_attempt_still_wins_if_it_connects_first() {
        // IPv6 answers after 300 ms, IPv4 (started at 250 ms) would take 100 ms more.
        let (winner, _) = simulate(
            &[
                (v6(1), Path::ConnectsAfter(300)),
                (v4(1), Path::ConnectsAfter(100)),
            ],
            10_000,
        );
        assert_eq!(winner, Some((v6(1), 300)));
    }

    #[test]
    fn every_address_is_tried_before_giving_up() {
        let addrs = [
            (v6(1), Path::Silent),
            (v6(2), Path::FailsAfter(5)),
            (v4(1), Path::Silent),
            (v4(2), Path::ConnectsAfter(10)),
        ];
        let (winner, started) = simulate(&addrs, 10_000);
        // v6(1) at 0, v4(1) at 250, v6(2) at 500 fails at 505, so v4(2) starts at once.
        assert_eq!(
            started,
            [(0, v6(1)), (250, v4(1)), (500, v6(2)), (505, v4(2))]
        );
        assert_eq!(winner, Some((v4(2), 515)));
        let all_silent = [(v6(1), Path::Silent), (v4(1), Path::Silent)];
        assert_eq!(simulate(&all_silent, 1000).0, None, "ends at the deadline");
        let all_fail = [(v6(1), Path::FailsAfter(3)), (v4(1), Path::FailsAfter(3))];
        assert_eq!(
            simulate(&all_fail, 1000),
            (None, vec![(0, v6(1)), (3, v4(1))])
        );
    }

    #[test]
    fn connects_to_a_listener_and_reports_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let wake = Wake::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = connect(&[refused, open], deadline, &wake).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        // Blocking again: a read waits (bounded here by a timeout) instead of WouldBlock.
        stream.set_read_timeout(Some(ms(20))).unwrap();
        let err = std::io::Read::read(&mut &stream, &mut [0; 1]).unwrap_err();
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        match connect(&[refused], deadline, &wake) {
            Err(ConnectError::Tcp(err)) => {
                assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused)
            }
            other => panic!("expected refused, got {other:?}"),
        }
    }

    #[test]
    fn a_signalled_wake_ends_the_attempt_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let wake = Wake::new().unwrap();
        wake.signal();
        wake.signal();
        let started = Instant::now();
        let result = connect(
            &[listener.local_addr().unwrap()],
            started + Duration::from_secs(5),
            &wake,
        );
        match result {
            Err(err) => assert!(err.to_string().contains("abandoned"), "{err}"),
            Ok(_) => panic!("connected despite the wake"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
