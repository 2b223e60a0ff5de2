//! Every raw OS call the client makes, as safe functions: the only module that
//! allows `unsafe`, each block with the argument why it is sound.
//!
//! Descriptors come in as [`BorrowedFd`] (open for the call) and go out as
//! [`OwnedFd`] (owned by nobody else), so the callers never handle raw numbers
//! they could close twice. Errors are `io::Error`s; `EINTR` is retried where a
//! caller could do nothing else with it.

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A descriptor that a successful call has just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the call that returned `fd` created it; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pipe as (read end, write end), both close-on-exec, non-blocking if asked.
pub fn pipe(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    let flags = libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 };
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill in.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that we alone own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An eventfd, close-on-exec and non-blocking, counter at 0.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Runs `call` (a `read`/`write`-like call returning a count or -1) until it is
/// not interrupted by a signal.
fn retry_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        match usize::try_from(call()) {
            Ok(n) => return Ok(n),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// `write(2)`, retried on `EINTR`.
pub fn write(fd: BorrowedFd<'_>, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of its length; `fd` is open for the call.
    retry_interrupted(|| unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
}

/// `read(2)`, retried on `EINTR`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length; `fd` is open for the call.
    retry_interrupted(|| unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `recv(2)` with `MSG_DONTWAIT`: this one read does not wait, whatever the
/// socket's (shared) blocking flag says. Retried on `EINTR`.
pub fn recv_dontwait(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry_interrupted(|| {
        // SAFETY: `buf` is valid for writes of its length; `fd` is open for the call.
        unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    })
}

/// `poll(2)` on `fds` for at most `timeout` (`None`: no timeout), rounded up to
/// whole milliseconds so a wait never ends just before the instant it waits for.
/// `EINTR` is returned as an error of kind `Interrupted`.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let millis = match timeout {
        None => -1,
        Some(timeout) => libc::c_int::try_from(timeout.as_nanos().div_ceil(1_000_000))
            .unwrap_or(libc::c_int::MAX),
    };
    // SAFETY: the pointer and length describe `fds`, valid for the call.
    let n = check(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) })?;
    Ok(n as usize)
}

/// Waits until one of `fds` is ready, no timeout, retrying `EINTR`.
pub fn poll_forever(fds: &mut [libc::pollfd]) -> io::Result<()> {
    loop {
        match poll(fds, None) {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Waits until one of `fds` is readable (or hung up), no timeout, retrying
/// `EINTR`; the `revents` of each.
pub fn poll_readable<const N: usize>(fds: [BorrowedFd<'_>; N]) -> io::Result<[libc::c_short; N]> {
    let mut pollfds = fds.map(|fd| pollfd(fd, libc::POLLIN));
    poll_forever(&mut pollfds)?;
    Ok(pollfds.map(|p| p.revents))
}

/// An eventfd that one thread signals to end another's `poll(2)` wait: a connect
/// race (`transport::Abort`), and the stdin, signals, output and link-watch
/// threads at shutdown. Once signalled it stays readable, so a signal that comes
/// before the wait is not lost.
#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    /// A fresh, unsignalled wake.
    pub fn new() -> io::Result<Wake> {
        eventfd().map(Wake)
    }

    /// Ends every present and future wait on this wake.
    pub fn signal(&self) {
        // A full counter (EAGAIN) is already signalled, so the result needs no handling.
        let _ = write(self.0.as_fd(), &1u64.to_ne_bytes());
    }

    /// A `pollfd` waiting for the signal.
    pub fn pollfd(&self) -> libc::pollfd {
        pollfd(self.0.as_fd(), libc::POLLIN)
    }

    /// Takes the signals sent so far, so the next wait waits again (for a wake
    /// that is signalled over and over, as the local socket's is).
    pub fn clear(&self) {
        let mut counter = [0u8; 8];
        // EAGAIN: nothing was signalled; nothing to handle either way.
        let _ = read(self.0.as_fd(), &mut counter);
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A `pollfd` for `fd` and `events`.
pub fn pollfd(fd: BorrowedFd<'_>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// Clears `O_NONBLOCK` on `fd` (a flag of the open file, shared with its clones).
pub fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor open for the call; no pointers.
    let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

/// A non-blocking, close-on-exec TCP socket for `addr`'s family, and whether
/// `connect(2)` to `addr` completed at once (else it goes on in the background:
/// wait for writability, then ask [`socket_error`]).
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<(OwnedFd, bool)> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket takes no pointers.
    let socket = owned(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr_in or sockaddr_in6 of `len` bytes.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return Ok((socket, true));
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // EINTR: the connect goes on in the background, as with EINPROGRESS.
        Some(libc::EINPROGRESS | libc::EINTR) => Ok((socket, false)),
        _ => Err(err),
    }
}

/// `addr` as the C socket address `connect(2)` takes.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// How many bytes of this TCP connection's outgoing stream the peer's TCP has
/// acknowledged (`TCP_INFO`'s `tcpi_bytes_acked`, Linux 4.1 and later). `None`
/// where the kernel does not report it (an older kernel, an emulator that does not
/// pass the option through): the caller then cannot tell what arrived.
pub fn tcp_bytes_acked(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes given; the kernel
    // writes at most `len` bytes and reports how many.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    let reported = mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + mem::size_of::<u64>();
    (rc == 0 && len as usize >= reported).then_some(info.tcpi_bytes_acked)
}

/// Bytes written to this TCP socket that the peer has not acknowledged yet,
/// sent or not (`SIOCOUTQ`).
pub fn tcp_unacknowledged(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one int to the pointer given.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &raw mut queued) })?;
    Ok(u64::try_from(queued).unwrap_or(0))
}

/// The outcome of a non-blocking connect that `poll` reported on (`SO_ERROR`).
pub fn socket_error(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut error: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `error` and `len` are valid for writes of the sizes given.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut error).cast(),
            &raw mut len,
        )
    })?;
    match error {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The PID and UID of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(libc::pid_t, libc::uid_t)> {
    // SAFETY: ucred is plain old data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    })?;
    Ok((cred.pid, cred.uid))
}

/// `sendmsg(2)` of `parts` without waiting (`MSG_DONTWAIT`) and without `SIGPIPE`
/// for a peer that has gone (`MSG_NOSIGNAL`: `EPIPE` comes back as an error).
/// Retried on `EINTR`.
pub fn send_nowait(fd: BorrowedFd<'_>, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; all zeroes is a valid value (no name, no control).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; sendmsg only reads them.
    msg.msg_iov = parts.as_ptr().cast_mut().cast();
    msg.msg_iovlen = parts.len() as _;
    retry_interrupted(|| {
        // SAFETY: `msg` points to `parts`, valid for the call; `fd` is open for the call.
        unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &raw const msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        }
    })
}

/// An integer socket option of `fd` (`SOL_SOCKET`).
fn socket_option(fd: libc::c_int, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    })?;
    Ok(value)
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: libc::c_int = 3;

/// The listening socket systemd passed by socket activation, if the environment
/// says it is for this process (`LISTEN_PID` is our PID, `LISTEN_FDS=1`) and
/// descriptor 3 is a listening `AF_UNIX` stream socket; `Err` says why a passed
/// socket cannot be used. The descriptor is made close-on-exec, as
/// `sd_listen_fds(3)` does. The caller unsets the variables.
pub fn activated_unix_listener(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
) -> Result<Option<OwnedFd>, String> {
    let for_us = listen_pid
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    if !for_us {
        return Ok(None);
    }
    match listen_fds.map(str::trim) {
        Some("1") => {}
        Some(n) => return Err(format!("LISTEN_FDS={n}: expected one socket")),
        None => return Ok(None),
    }
    let fd = LISTEN_FDS_START;
    let describe = |err: io::Error| format!("descriptor {fd}: {err}");
    let domain = socket_option(fd, libc::SO_DOMAIN).map_err(describe)?;
    let kind = socket_option(fd, libc::SO_TYPE).map_err(describe)?;
    let listening = socket_option(fd, libc::SO_ACCEPTCONN).map_err(describe)?;
    if domain != libc::AF_UNIX || kind != libc::SOCK_STREAM || listening == 0 {
        return Err(format!(
            "descriptor {fd} is not a listening AF_UNIX stream socket"
        ));
    }
    // SAFETY: fcntl on a descriptor that is open (getsockopt succeeded); no pointers.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map_err(describe)?;
    // SAFETY: systemd passed descriptor 3 to this process (LISTEN_PID says so) and
    // nothing else in the process owns it: it is taken once, here.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// A non-blocking `NETLINK_ROUTE` socket bound to the multicast `groups`.
pub fn netlink_route(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers.
    let socket = owned(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value.
    let mut local: libc::sockaddr_nl = unsafe { mem::zeroed() };
    local.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    local.nl_groups = groups;
    // SAFETY: `local` is a sockaddr_nl of the length given.
    check(unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const local).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    })?;
    Ok(socket)
}

/// One datagram from a netlink socket, without waiting: its length and whether it
/// came from the kernel (port 0) rather than another process. `EINTR` is retried;
/// `EAGAIN` (nothing queued) and `ENOBUFS` (the kernel dropped messages) come
/// back as errors for the caller to tell apart.
pub fn netlink_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    loop {
        // SAFETY: sockaddr_nl is plain old data; all zeroes is a valid value.
        let mut from: libc::sockaddr_nl = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `buf` is writable for its length; `from` for `from_len` bytes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&raw mut from).cast(),
                &raw mut from_len,
            )
        };
        match usize::try_from(n) {
            Ok(n) => return Ok((n, from.nl_pid == 0)),
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

/// The index of the interface that holds `addr`, from `getifaddrs(3)`; `None` if
/// no interface has it (or the call fails).
pub fn interface_of(addr: IpAddr) -> Option<u32> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return None;
    }
    let mut found = None;
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: `entry` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*entry };
        entry = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let this = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET: the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6: the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
            }
            _ => continue,
        };
        if this == addr {
            // SAFETY: ifa_name is a NUL-terminated name owned by the list.
            let index = unsafe { libc::if_nametoindex(ifa.ifa_name) };
            found = (index != 0).then_some(index);
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The name of interface `index` (`if_indextoname(3)`); `None` if there is none.
pub fn interface_name(index: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(index, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success `name` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Write end of the signal self-pipe, or -1. Read by the handler, so it must be an
/// atomic (lock-free, async-signal-safe).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The handler of the signals we catch: writes the signal number to the
/// self-pipe, the one async-signal-safe thing it does, keeping `errno` intact.
extern "C" fn on_signal(signo: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let byte = signo as u8;
    // SAFETY: `__errno_location` returns this thread's errno slot, valid for the
    // thread's life; reading and restoring it keeps the interrupted code's errno.
    // `write(2)` is async-signal-safe; `byte` lives for the call; the fd is
    // non-blocking, so a full pipe fails with EAGAIN instead of hanging.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, (&raw const byte).cast(), 1);
        *errno = saved;
    }
}

/// What happens on a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The default action.
    Default,
    /// Ignored.
    Ignore,
    /// One byte, the signal number, written to the pipe given to [`set_signal_pipe`].
    ToPipe,
}

/// Where caught signals are written (`None`: nowhere). The descriptor must stay
/// open while any signal has [`Disposition::ToPipe`].
pub fn set_signal_pipe(fd: Option<BorrowedFd<'_>>) {
    SIGNAL_PIPE.store(fd.map_or(-1, |fd| fd.as_raw_fd()), Ordering::SeqCst);
}

#[cfg(test)]
/// Whether caught signals have a pipe to go to.
pub fn signal_pipe_set() -> bool {
    SIGNAL_PIPE.load(Ordering::SeqCst) >= 0
}

/// Forgets the signal pipe if it is still `fd` (a later [`set_signal_pipe`] wins).
pub fn forget_signal_pipe(fd: BorrowedFd<'_>) {
    let _ = SIGNAL_PIPE.compare_exchange(fd.as_raw_fd(), -1, Ordering::SeqCst, Ordering::SeqCst);
}

/// Sets what `signo` does (`sigaction`, with `SA_RESTART`).
pub fn set_signal(signo: libc::c_int, disposition: Disposition) -> io::Result<()> {
    let handler = match disposition {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
        Disposition::ToPipe => on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
    };
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags); we
    // then fill in the fields we need. `handler` is SIG_DFL, SIG_IGN or
    // `on_signal`, an `extern "C" fn(c_int)` that is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        check(libc::sigaction(signo, &action, std::ptr::null_mut()))?;
    }
    Ok(())
}

#[cfg(test)]
/// Sends `signo` to the calling thread (tests); `raise(3)`'s return value.
pub fn raise_raw(signo: libc::c_int) -> libc::c_int {
    // SAFETY: raise takes no pointers.
    unsafe { libc::raise(signo) }
}

/// How many threads this process has (from `/proc/self/task`); `None` if unknown.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|tasks| tasks.count())
}

/// glibc gives every thread that allocates its own arena; a client that moves a
/// few messages a second gains nothing from that and pays for each arena in
/// resident memory. Only while the process has one thread; returns whether it did.
pub fn limit_malloc_arenas() -> bool {
    if thread_count() != Some(1) {
        return false;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator parameters; no other thread exists
    // (checked above) to allocate meanwhile.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    true
}

/// Sets environment variables, only while the process has one thread (checked:
/// `setenv` races with any other thread reading the environment); returns whether
/// it did.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub fn set_env_single_threaded(vars: &[(&str, &OsStr)]) -> bool {
    if thread_count() != Some(1) {
        return false;
    }
    for (key, value) in vars {
        // SAFETY: the process has one thread (checked above), so nothing reads or
        // writes the environment concurrently.
        unsafe { std::env::set_var(key, value) };
    }
    true
}

/// Removes environment variables, only while the process has one thread (as
/// [`set_env_single_threaded`]); returns whether it did.
pub fn remove_env_single_threaded(keys: &[&str]) -> bool {
    if thread_count() != Some(1) {
        return false;
    }
    for key in keys {
        // SAFETY: the process has one thread (checked above), so nothing reads or
        // writes the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_pipe_carries_bytes_and_poll_sees_them() {
        let (read_end, write_end) = pipe(true).unwrap();
        let mut fds = [pollfd(read_end.as_fd(), libc::POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 0);
        assert_eq!(write(write_end.as_fd(), b"hi").unwrap(), 2);
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(1))).unwrap(), 1);
        let mut buf = [0u8; 8];
        assert_eq!(read(read_end.as_fd(), &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        let err = read(read_end.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn loopback_is_found_on_its_interface() {
        let index = interface_of(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(index.is_some_and(|i| i > 0), "{index:?}");
        assert_eq!(interface_of("192.0.2.77".parse().unwrap()), None);
    }

    #[test]
    fn environment_is_not_touched_once_threads_run() {
        // The test harness runs this on a thread of its own: more than one thread.
        assert!(!set_env_single_threaded(&[(
            "WSBEAT_OS_TEST",
            OsStr::new("x")
        )]));
        assert!(std::env::var_os("WSBEAT_OS_TEST").is_none());
        assert!(!limit_malloc_arenas());
    }
}
