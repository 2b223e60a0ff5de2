//! The kernel's address, link and route changes, from rtnetlink (`AF_NETLINK`,
//! `NETLINK_ROUTE`), for SPEC "Network changes"; the supervisor turns them into the
//! machine's inputs (a live connection's address gone, or the network back).
//!
//! [`LinkWatch::spawn`] opens the socket on the caller's thread (so a system without
//! netlink, or a unit whose `RestrictAddressFamilies=` lacks `AF_NETLINK`, is an error
//! the caller can log once) and runs a thread that blocks in `poll(2)` on it and on a
//! wake eventfd: no timer, so nothing wakes while the network does not change. Each
//! datagram is parsed by [`parse`] (pure, tested on captured bytes) into [`LinkEvent`]s.
//!
//! The kernel announces an address again each time its lifetime is refreshed (a DHCP
//! renewal, every IPv6 router advertisement), and a default route each time an
//! advertisement refreshes it, in the same message that announces a new one. So the
//! watcher keeps what is [`Present`] (seeded from a dump of the addresses and routes
//! when it starts) and hands the callback only what changed it: a refresh is no news.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::net::eyeballs::Wake;
use crate::os;

/// What the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A usable address appeared on interface `index` (IPv6 addresses still in duplicate
    /// address detection are reported when they become usable, not before). [`parse`]
    /// also reports an address whose lifetime was only refreshed; [`LinkWatch`] passes
    /// on only one that was not [`Present`].
    AddressAdded {
        /// Interface index.
        index: u32,
        /// The local address.
        addr: IpAddr,
    },
    /// An address was removed from interface `index`.
    AddressRemoved {
        /// Interface index.
        index: u32,
        /// The local address.
        addr: IpAddr,
    },
    /// Interface `index` is down: administratively, without carrier, or removed. The
    /// kernel reports links on many changes, so the same state may be reported again.
    LinkDown {
        /// Interface index.
        index: u32,
        /// Interface name, when the message carried it.
        name: Option<String>,
    },
    /// Interface `index` is up and running (carrier present).
    LinkUp {
        /// Interface index.
        index: u32,
        /// Interface name, when the message carried it.
        name: Option<String>,
    },
    /// A default route (main table) was added. As with addresses, [`parse`] also reports
    /// one that was only refreshed, [`LinkWatch`] only a new one.
    DefaultRouteAdded {
        /// Its gateway, if it has one.
        gateway: Option<IpAddr>,
        /// Its output interface, if given.
        index: Option<u32>,
        /// An IPv6 route (else IPv4): tells apart routes without a gateway.
        ipv6: bool,
    },
    /// A default route (main table) was removed.
    DefaultRouteRemoved {
        /// Its gateway, if it has one.
        gateway: Option<IpAddr>,
        /// Its output interface, if given.
        index: Option<u32>,
        /// An IPv6 route (else IPv4).
        ipv6: bool,
    },
    /// The kernel dropped messages because the socket's buffer was full (`ENOBUFS`):
    /// anything may have changed.
    Overflow,
}

// Message types and attributes (linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_TENTATIVE: u32 = 0x40;
const IFA_F_DADFAILED: u32 = 0x08;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const IFF_RUNNING: u32 = 0x40;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The multicast groups watched.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// `n` rounded up to netlink's 4-byte alignment.
fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes (`rtattr`: length, type, value) in `buf`, as `(type, value)`; stops
/// at the first malformed one.
fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(buf, at)?);
        let kind = u16_at(buf, at + 2)?;
        let value = buf.get(at + 4..at + len.max(4))?;
        if len < 4 {
            return None;
        }
        at += align(len);
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits.
        Some((kind & 0x3fff, value))
    })
}

/// An address attribute of `family`.
fn ip(family: u8, value: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

/// The events in one datagram read from the socket. Messages that are malformed or of
/// no interest are skipped; a truncated one ends the datagram.
pub fn parse(datagram: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(datagram, at), u16_at(datagram, at + 4)) {
        let len = len as usize;
        let Some(message) = datagram.get(at + NLMSG_HDRLEN..at + len.max(NLMSG_HDRLEN)) else {
            break;
        };
        if len < NLMSG_HDRLEN {
            break;
        }
        match kind {
            NLMSG_DONE | NLMSG_ERROR => break,
            NLMSG_OVERRUN => events.push(LinkEvent::Overflow),
            RTM_NEWLINK | RTM_DELLINK => events.extend(link(kind, message)),
            RTM_NEWADDR | RTM_DELADDR => events.extend(address(kind, message)),
            RTM_NEWROUTE | RTM_DELROUTE => events.extend(route(kind, message)),
            _ => {}
        }
        at += align(len);
    }
    events
}

/// `ifinfomsg` (family, pad, type u16, index i32, flags u32, change u32) + attributes.
fn link(kind: u16, message: &[u8]) -> Option<LinkEvent> {
    let index = u32_at(message, 4)?;
    let flags = u32_at(message, 8)?;
    let name = attributes(message.get(16..)?)
        .find(|(kind, _)| *kind == IFLA_IFNAME)
        .map(|(_, value)| {
            let value = value.split(|b| *b == 0).next().unwrap_or(value);
            String::from_utf8_lossy(value).into_owned()
        });
    let up = kind == RTM_NEWLINK && flags & IFF_UP != 0 && flags & IFF_RUNNING != 0;
    Some(if up {
        LinkEvent::LinkUp { index, name }
    } else {
        LinkEvent::LinkDown { index, name }
    })
}

/// `ifaddrmsg` (family, prefix length, flags u8, scope, index u32) + attributes.
fn address(kind: u16, message: &[u8]) -> Option<LinkEvent> {
    let family = *message.first()?;
    let mut flags = u32::from(*message.get(2)?);
    let index = u32_at(message, 4)?;
    let (mut local, mut address) = (None, None);
    for (attribute, value) in attributes(message.get(8..)?) {
        match attribute {
            IFA_LOCAL => local = ip(family, value),
            IFA_ADDRESS => address = ip(family, value),
            // The full flags; the header's byte holds only the low 8.
            IFA_FLAGS => flags = u32_at(value, 0).unwrap_or(flags),
            _ => {}
        }
    }
    // IFA_LOCAL is the local end on point-to-point links (IFA_ADDRESS is then the peer);
    // IPv6 usually sends only IFA_ADDRESS.
    let addr = local.or(address)?;
    if kind == RTM_DELADDR {
        return Some(LinkEvent::AddressRemoved { index, addr });
    }
    if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0 {
        return None;
    }
    Some(LinkEvent::AddressAdded { index, addr })
}

/// `rtmsg` (family, dst_len, src_len, tos, table, protocol, scope, type, flags u32) +
/// attributes: only default unicast routes of the main table.
fn route(kind: u16, message: &[u8]) -> Option<LinkEvent> {
    let family = *message.first()?;
    let dst_len = *message.get(1)?;
    let mut table = u32::from(*message.get(4)?);
    let route_type = *message.get(7)?;
    let (mut gateway, mut index) = (None, None);
    for (attribute, value) in attributes(message.get(12..)?) {
        match attribute {
            RTA_TABLE => table = u32_at(value, 0).unwrap_or(table),
            RTA_GATEWAY => gateway = ip(family, value),
            RTA_OIF => index = u32_at(value, 0),
            _ => {}
        }
    }
    if dst_len != 0 || route_type != RTN_UNICAST || table != RT_TABLE_MAIN {
        return None;
    }
    let ipv6 = family == AF_INET6;
    Some(if kind == RTM_DELROUTE {
        LinkEvent::DefaultRouteRemoved {
            gateway,
            index,
            ipv6,
        }
    } else {
        LinkEvent::DefaultRouteAdded {
            gateway,
            index,
            ipv6,
        }
    })
}

/// A default route's identity, as far as telling a new one from a refresh goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Route {
    gateway: Option<IpAddr>,
    index: Option<u32>,
    ipv6: bool,
}

/// The addresses and default routes that exist, as far as the kernel's reports tell:
/// what lets [`Present::note`] tell a new address or route from one announced again.
#[derive(Debug, Default)]
pub struct Present {
    addresses: HashSet<(u32, IpAddr)>,
    routes: HashSet<Route>,
}

impl Present {
    /// What a dump (the reports of what exists now) says is present.
    pub fn from_dump(dump: &[LinkEvent]) -> Present {
        let mut present = Present::default();
        for event in dump {
            present.note(event);
        }
        present
    }

    /// Takes `event` into account; whether it is news (`false`: an address or default
    /// route that was present, announced again).
    pub fn note(&mut self, event: &LinkEvent) -> bool {
        match event {
            LinkEvent::AddressAdded { index, addr } => self.addresses.insert((*index, *addr)),
            LinkEvent::AddressRemoved { index, addr } => {
                self.addresses.remove(&(*index, *addr));
                // Losing an IPv4 address takes the routes through it away without a
                // word from the kernel (IPv6 reports each route it removes).
                if addr.is_ipv4() {
                    self.forget_routes(*index, Some(false));
                }
                true
            }
            LinkEvent::DefaultRouteAdded {
                gateway,
                index,
                ipv6,
            } => self.routes.insert(Route {
                gateway: *gateway,
                index: *index,
                ipv6: *ipv6,
            }),
            LinkEvent::DefaultRouteRemoved {
                gateway,
                index,
                ipv6,
            } => {
                self.routes.remove(&Route {
                    gateway: *gateway,
                    index: *index,
                    ipv6: *ipv6,
                });
                true
            }
            LinkEvent::LinkDown { index, .. } => {
                // An interface taken down loses its IPv4 routes silently too; a route
                // through it announced after it is back is news either way.
                self.forget_routes(*index, None);
                true
            }
            LinkEvent::LinkUp { .. } | LinkEvent::Overflow => true,
        }
    }

    /// Forgets the default routes through interface `index` (of one family, or both).
    fn forget_routes(&mut self, index: u32, ipv6: Option<bool>) {
        self.routes.retain(|route| {
            route.index != Some(index) || ipv6.is_some_and(|ipv6| ipv6 != route.ipv6)
        });
    }

    /// After messages were lost ([`LinkEvent::Overflow`]): brings the set up to date
    /// with a fresh `dump`, and returns what changed meanwhile (removals, then
    /// additions), as if it had been reported.
    pub fn resync(&mut self, dump: &[LinkEvent]) -> Vec<LinkEvent> {
        let now = Present::from_dump(dump);
        let mut changes = Vec::new();
        for &(index, addr) in self.addresses.difference(&now.addresses) {
            changes.push(LinkEvent::AddressRemoved { index, addr });
        }
        for route in self.routes.difference(&now.routes) {
            changes.push(LinkEvent::DefaultRouteRemoved {
                gateway: route.gateway,
                index: route.index,
                ipv6: route.ipv6,
            });
        }
        for &(index, addr) in now.addresses.difference(&self.addresses) {
            changes.push(LinkEvent::AddressAdded { index, addr });
        }
        for route in now.routes.difference(&self.routes) {
            changes.push(LinkEvent::DefaultRouteAdded {
                gateway: route.gateway,
                index: route.index,
                ipv6: route.ipv6,
            });
        }
        *self = now;
        changes
    }
}

/// A request to dump every object of `kind` (`RTM_GETADDR`, `RTM_GETROUTE`), all families.
fn dump_request(kind: u16, seq: u32) -> Vec<u8> {
    // The header, then a zeroed ifaddrmsg (8 bytes) or rtmsg (12 bytes): AF_UNSPEC, no filter.
    let body = if kind == RTM_GETADDR { 8 } else { 12 };
    let len = NLMSG_HDRLEN + body;
    let mut out = Vec::with_capacity(len);
    out.extend((len as u32).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.resize(len, 0);
    out
}

/// Whether `datagram` ends a dump: `Some(Ok)` at its `NLMSG_DONE`, `Some(Err)` at an
/// `NLMSG_ERROR` (the kernel refused the request), `None` while more is to come.
fn dump_end(datagram: &[u8]) -> Option<io::Result<()>> {
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(datagram, at), u16_at(datagram, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > datagram.len() - at {
            return None;
        }
        match kind {
            NLMSG_DONE => return Some(Ok(())),
            NLMSG_ERROR => {
                let errno = u32_at(datagram, at + NLMSG_HDRLEN).map_or(0, |e| e as i32);
                return Some(Err(match errno {
                    0 => io::Error::other("netlink error"),
                    errno => io::Error::from_raw_os_error(errno.saturating_neg()),
                }));
            }
            _ => at += align(len),
        }
    }
    None
}

/// How long the kernel may take to answer a dump (it answers at once in practice).
const DUMP_TIMEOUT: Duration = Duration::from_secs(1);

/// The addresses and default routes there are now, as reports, from dump requests on a
/// socket of their own (in the calling thread's network namespace).
fn dump() -> io::Result<Vec<LinkEvent>> {
    let socket = os::netlink_route(0)?;
    let mut buf = vec![0u8; 32 * 1024];
    let mut events = Vec::new();
    // One dump at a time per socket: addresses, then routes.
    for (seq, kind) in [(1, RTM_GETADDR), (2, RTM_GETROUTE)] {
        os::write(socket.as_fd(), &dump_request(kind, seq))?;
        let deadline = Instant::now() + DUMP_TIMEOUT;
        loop {
            let n = match os::netlink_recv(socket.as_fd(), &mut buf) {
                Ok((_, false)) => continue,
                Ok((n, true)) => n,
                Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    let mut fds = [os::pollfd(socket.as_fd(), libc::POLLIN)];
                    match os::poll(&mut fds, Some(left)) {
                        Err(err) if err.kind() != io::ErrorKind::Interrupted => return Err(err),
                        _ => continue,
                    }
                }
                Err(err) => return Err(err),
            };
            let datagram = &buf[..n];
            events.extend(parse(datagram));
            if let Some(end) = dump_end(datagram) {
                end?;
                break;
            }
        }
    }
    Ok(events)
}

/// A running watcher; [`LinkWatch::stop`] (or drop) ends and joins its thread.
pub struct LinkWatch {
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Subscribes to the kernel's link, address and route changes (in the calling
    /// thread's network namespace) and calls `on_event` for each that is news (not a
    /// refresh of what was [`Present`]), on the watcher's own thread. What is present is
    /// read first, on the calling thread (the kernel answers at once; bounded by
    /// [`DUMP_TIMEOUT`] per request). An error means no netlink here (log it once and
    /// carry on without).
    pub fn spawn<F>(mut on_event: F) -> io::Result<LinkWatch>
    where
        F: FnMut(LinkEvent) + Send + 'static,
    {
        // Subscribed first, so that nothing that changes after the dump is missed.
        let socket = open()?;
        let mut present = match dump() {
            Ok(dump) => Present::from_dump(&dump),
            Err(err) => {
                log::info!(
                    "link watch: cannot list the present addresses ({err}); \
                     the first refresh of each counts as new"
                );
                Present::default()
            }
        };
        let wake = Arc::new(Wake::new()?);
        let stop = Arc::clone(&wake);
        let thread = thread::Builder::new()
            .name("wsbeat-netlink".into())
            .stack_size(128 * 1024)
            .spawn(move || watch(&socket, &stop, &mut present, &mut on_event))?;
        Ok(LinkWatch {
            wake,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.wake.signal();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.shut();
    }
}

/// A non-blocking `NETLINK_ROUTE` socket bound to [`GROUPS`].
fn open() -> io::Result<OwnedFd> {
    os::netlink_route(GROUPS)
}

/// The watcher's loop: block until the kernel says something or `stop` is signalled.
fn watch(
    socket: &OwnedFd,
    stop: &Wake,
    present: &mut Present,
    on_event: &mut dyn FnMut(LinkEvent),
) {
    // Large enough for any rtnetlink datagram (one page of messages at most).
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [os::pollfd(socket.as_fd(), libc::POLLIN), stop.pollfd()];
        // No timeout: only an event wakes us.
        if let Err(err) = os::poll_forever(&mut fds) {
            log::warn!("link watch: poll: {err}; not following network changes any more");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // Drain what is queued, then wait again.
        loop {
            let n = match os::netlink_recv(socket.as_fd(), &mut buf) {
                // Only the kernel (port 0) speaks for the network.
                Ok((_, false)) => continue,
                Ok((n, true)) => n,
                Err(err) => match err.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) => {
                        on_event(LinkEvent::Overflow);
                        // What the lost messages said, learned from a fresh dump.
                        match dump() {
                            Ok(dump) => {
                                for change in present.resync(&dump) {
                                    log::debug!("link watch: {change:?} (seen in a new dump)");
                                    on_event(change);
                                }
                            }
                            Err(err) => log::debug!("link watch: dump after overflow: {err}"),
                        }
                        continue;
                    }
                    _ => {
                        log::warn!("link watch: {err}; not following network changes any more");
                        return;
                    }
                },
            };
            for event in parse(&buf[..n]) {
                if present.note(&event) {
                    log::debug!("link watch: {event:?}");
                    on_event(event);
                } else {
                    log::debug!("link watch: refreshed, no news: {event:?}");
                }
            }
        }
    }
}

/// The index of the interface that holds `addr`; `None` if no interface has it.
pub use crate::os::interface_of;

#[cfg(test)]
mod tests {
    use super::*;

    /// The datagrams of `testdata/rtnetlink-veth.hex` (captured from a real kernel).
    fn captured() -> Vec<Vec<u8>> {
        include_str!("../../testdata/rtnetlink-veth.hex")
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                (0..line.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_captured_session_gives_the_expected_events() {
        let events: Vec<LinkEvent> = captured().iter().flat_map(|d| parse(d)).collect();
        let veth = || Some("veth0".to_string());
        assert_eq!(
            events,
            [
                // Created (down); its addresses; up without carrier (peer down), then running.
                LinkEvent::LinkDown {
                    index: 2,
                    name: veth()
                },
                LinkEvent::AddressAdded {
                    index: 2,
                    addr: ip("10.231.0.1")
                },
                LinkEvent::AddressAdded {
                    index: 2,
                    addr: ip("fd00:231::1")
                },
                LinkEvent::LinkDown {
                    index: 2,
                    name: veth()
                },
                LinkEvent::LinkUp {
                    index: 2,
                    name: veth()
                },
                // Default routes (the subnet, local and multicast routes are not reported).
                LinkEvent::DefaultRouteAdded {
                    gateway: Some(ip("10.231.0.2")),
                    index: Some(2),
                    ipv6: false,
                },
                LinkEvent::DefaultRouteAdded {
                    gateway: Some(ip("fd00:231::2")),
                    index: Some(2),
                    ipv6: true,
                },
                LinkEvent::AddressRemoved {
                    index: 2,
                    addr: ip("10.231.0.1")
                },
                LinkEvent::LinkDown {
                    index: 2,
                    name: veth()
                },
                // IPv6 reports the default route it drops with the link; IPv4 dropped its
                // own with the address above, without a word.
                LinkEvent::DefaultRouteRemoved {
                    gateway: Some(ip("fd00:231::2")),
                    index: Some(2),
                    ipv6: true,
                },
                LinkEvent::AddressRemoved {
                    index: 2,
                    addr: ip("fd00:231::1")
                },
                // The link-local address (still tentative), removed with the link going down.
                LinkEvent::AddressRemoved {
                    index: 2,
                    addr: ip("fe80::54c6:e3ff:fef3:2696")
                },
            ]
        );
    }

    /// One netlink message: header (no flags, seq 0, port 0) + `body`, padded.
    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + body.len();
        let mut out = Vec::new();
        out.extend((len as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend([0u8; 10]);
        out.extend(body);
        out.resize(align(out.len()), 0);
        out
    }

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((4 + value.len()) as u16).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(value);
        out.resize(align(out.len()), 0);
        out
    }

    fn ifaddr(family: u8, flags: u8, index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, 64, flags, 0];
        body.extend(index.to_ne_bytes());
        body.extend(attrs.concat());
        body
    }

    #[test]
    fn tentative_addresses_wait_until_usable() {
        let addr: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let tentative = message(
            RTM_NEWADDR,
            &ifaddr(AF_INET6, 0x40, 3, &[attribute(IFA_ADDRESS, &addr.octets())]),
        );
        assert_eq!(parse(&tentative), []);
        // The full flags attribute wins over the header's byte.
        let by_attribute = message(
            RTM_NEWADDR,
            &ifaddr(
                AF_INET6,
                0,
                3,
                &[
                    attribute(IFA_ADDRESS, &addr.octets()),
                    attribute(IFA_FLAGS, &IFA_F_TENTATIVE.to_ne_bytes()),
                ],
            ),
        );
        assert_eq!(parse(&by_attribute), []);
        let usable = message(
            RTM_NEWADDR,
            &ifaddr(AF_INET6, 0x80, 3, &[attribute(IFA_ADDRESS, &addr.octets())]),
        );
        assert_eq!(
            parse(&usable),
            [LinkEvent::AddressAdded {
                index: 3,
                addr: IpAddr::V6(addr)
            }]
        );
    }

    #[test]
    fn point_to_point_addresses_use_the_local_end() {
        let body = ifaddr(
            AF_INET,
            0,
            7,
            &[
                attribute(IFA_ADDRESS, &[10, 64, 64, 64]),
                attribute(IFA_LOCAL, &[100, 64, 0, 9]),
            ],
        );
        assert_eq!(
            parse(&message(RTM_DELADDR, &body)),
            [LinkEvent::AddressRemoved {
                index: 7,
                addr: ip("100.64.0.9")
            }]
        );
    }

    #[test]
    fn several_messages_per_datagram_and_malformed_input() {
        let mut link = vec![0u8, 0, 1, 0];
        link.extend(4u32.to_ne_bytes());
        link.extend((IFF_UP | IFF_RUNNING).to_ne_bytes());
        link.extend(0u32.to_ne_bytes());
        link.extend(attribute(IFLA_IFNAME, b"wwan0\0"));
        let mut datagram = message(RTM_NEWLINK, &link);
        datagram.extend(message(RTM_DELLINK, &link));
        assert_eq!(
            parse(&datagram),
            [
                LinkEvent::LinkUp {
                    index: 4,
                    name: Some("wwan0".into())
                },
                LinkEvent::LinkDown {
                    index: 4,
                    name: Some("wwan0".into())
                },
            ]
        );
        // Truncated anywhere, or lying about lengths: no panic, nothing invented.
        for cut in 0..datagram.len() {
            let events = parse(&datagram[..cut]);
            assert!(events.len() <= 1, "{cut}: {events:?}");
        }
        let mut lying = datagram.clone();
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse(&lying), []);
        lying[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse(&lying), []);
        let mut bad_attribute = message(RTM_NEWLINK, &link);
        // The name attribute claims more bytes than there are: the name is dropped.
        let name_at = NLMSG_HDRLEN + 16;
        bad_attribute[name_at..name_at + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(
            parse(&bad_attribute),
            [LinkEvent::LinkUp {
                index: 4,
                name: None
            }]
        );
        assert_eq!(parse(&message(NLMSG_OVERRUN, &[])), [LinkEvent::Overflow]);
        assert_eq!(parse(&[]), []);
    }

    #[test]
    fn only_default_unicast_routes_of_the_main_table() {
        let route = |dst_len: u8, table: u8, route_type: u8, attrs: &[Vec<u8>]| {
            let mut body = vec![AF_INET, dst_len, 0, 0, table, 3, 0, route_type];
            body.extend(0u32.to_ne_bytes());
            body.extend(attrs.concat());
            parse(&message(RTM_NEWROUTE, &body))
        };
        let gw = attribute(RTA_GATEWAY, &[192, 168, 8, 1]);
        let expected = [LinkEvent::DefaultRouteAdded {
            gateway: Some(ip("192.168.8.1")),
            index: None,
            ipv6: false,
        }];
        assert_eq!(
            route(0, 254, RTN_UNICAST, std::slice::from_ref(&gw)),
            expected
        );
        assert_eq!(route(24, 254, RTN_UNICAST, std::slice::from_ref(&gw)), []);
        assert_eq!(route(0, 255, RTN_UNICAST, std::slice::from_ref(&gw)), []);
        assert_eq!(route(0, 254, 6, std::slice::from_ref(&gw)), [], "blackhole");
        // A table number above 255 comes as RTA_TABLE, the header saying RT_TABLE_COMPAT.
        let table = |n: u32| attribute(RTA_TABLE, &n.to_ne_bytes());
        assert_eq!(
            route(0, 252, RTN_UNICAST, &[gw.clone(), table(254)]),
            expected
        );
        assert_eq!(route(0, 254, RTN_UNICAST, &[gw.clone(), table(1000)]), []);
        // Removed: reported as such.
        let mut body = vec![AF_INET, 0, 0, 0, 254, 3, 0, RTN_UNICAST];
        body.extend(0u32.to_ne_bytes());
        body.extend(gw);
        assert_eq!(
            parse(&message(RTM_DELROUTE, &body)),
            [LinkEvent::DefaultRouteRemoved {
                gateway: Some(ip("192.168.8.1")),
                index: None,
                ipv6: false,
            }]
        );
    }

    fn added(index: u32, addr: &str) -> LinkEvent {
        LinkEvent::AddressAdded {
            index,
            addr: ip(addr),
        }
    }

    fn removed(index: u32, addr: &str) -> LinkEvent {
        LinkEvent::AddressRemoved {
            index,
            addr: ip(addr),
        }
    }

    fn default_route(gateway: Option<&str>, index: u32, ipv6: bool) -> LinkEvent {
        LinkEvent::DefaultRouteAdded {
            gateway: gateway.map(ip),
            index: Some(index),
            ipv6,
        }
    }

    #[test]
    fn a_lifetime_refresh_of_a_present_address_is_no_news() {
        // What the dump at start found: a DHCP lease and a SLAAC address.
        let mut present = Present::from_dump(&[added(2, "192.168.8.20"), added(2, "2001:db8::20")]);
        // DHCP renewals and router advertisements announce them again.
        for _ in 0..3 {
            assert!(!present.note(&added(2, "192.168.8.20")));
            assert!(!present.note(&added(2, "2001:db8::20")));
        }
        // A new address is news, once; so is the same address on another interface.
        assert!(present.note(&added(3, "10.0.0.5")));
        assert!(!present.note(&added(3, "10.0.0.5")));
        assert!(present.note(&added(2, "10.0.0.5")));
        // Removed and added back: new again, every time (a flapping address).
        for _ in 0..3 {
            assert!(present.note(&removed(3, "10.0.0.5")));
            assert!(present.note(&added(3, "10.0.0.5")));
        }
    }

    #[test]
    fn a_refreshed_default_route_is_no_news_until_it_was_gone() {
        let router = default_route(Some("fe80::1"), 2, true);
        let mut present = Present::from_dump(std::slice::from_ref(&router));
        // Each router advertisement refreshes it.
        assert!(!present.note(&router));
        // Without a gateway, the family tells routes apart.
        assert!(present.note(&default_route(None, 5, false)));
        assert!(present.note(&default_route(None, 5, true)));
        assert!(!present.note(&default_route(None, 5, false)));
        // Reported gone, then back: news.
        assert!(present.note(&LinkEvent::DefaultRouteRemoved {
            gateway: Some(ip("fe80::1")),
            index: Some(2),
            ipv6: true,
        }));
        assert!(present.note(&router));
    }

    #[test]
    fn routes_the_kernel_drops_silently_are_forgotten() {
        let v4 = default_route(Some("192.168.8.1"), 2, false);
        let v6 = default_route(Some("fe80::1"), 2, true);
        let other = default_route(Some("10.0.0.1"), 3, false);
        let mut present = Present::from_dump(&[
            added(2, "192.168.8.20"),
            v4.clone(),
            v6.clone(),
            other.clone(),
        ]);
        // The IPv4 address goes and takes the IPv4 route through it along, unreported.
        assert!(present.note(&removed(2, "192.168.8.20")));
        assert!(present.note(&v4), "the route came back: news");
        assert!(!present.note(&v6), "the IPv6 route was not touched");
        assert!(
            !present.note(&other),
            "another interface's route was not touched"
        );
        // The interface goes down: all its routes may be gone.
        assert!(present.note(&LinkEvent::LinkDown {
            index: 2,
            name: None
        }));
        assert!(present.note(&v4));
        assert!(present.note(&v6));
        assert!(!present.note(&other));
    }

    #[test]
    fn after_an_overflow_a_fresh_dump_tells_what_changed() {
        let route = default_route(Some("192.168.8.1"), 2, false);
        let mut present = Present::from_dump(&[
            added(2, "192.168.8.20"),
            added(3, "10.0.0.5"),
            route.clone(),
        ]);
        let changes = present.resync(&[added(2, "192.168.8.20"), added(4, "10.9.0.1"), route]);
        assert_eq!(changes, [removed(3, "10.0.0.5"), added(4, "10.9.0.1")]);
        // The set is the dump's now.
        assert!(!present.note(&added(4, "10.9.0.1")));
        assert!(present.note(&added(3, "10.0.0.5")));
    }

    #[test]
    fn a_dump_is_requested_and_its_end_recognised() {
        let request = dump_request(RTM_GETADDR, 7);
        assert_eq!(request.len(), NLMSG_HDRLEN + 8);
        assert_eq!(u32_at(&request, 0), Some(request.len() as u32));
        assert_eq!(u16_at(&request, 4), Some(RTM_GETADDR));
        assert_eq!(u16_at(&request, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&request, 8), Some(7));
        assert_eq!(dump_request(RTM_GETROUTE, 8).len(), NLMSG_HDRLEN + 12);

        let entry = message(
            RTM_NEWADDR,
            &ifaddr(AF_INET, 0, 2, &[attribute(IFA_LOCAL, &[10, 0, 0, 5])]),
        );
        assert!(dump_end(&entry).is_none());
        let mut last = entry.clone();
        last.extend(message(NLMSG_DONE, &0u32.to_ne_bytes()));
        assert!(matches!(dump_end(&last), Some(Ok(()))));
        assert_eq!(parse(&last), [added(2, "10.0.0.5")]);
        let refused = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let err = dump_end(&refused).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        // Malformed: no end claimed, no panic.
        for cut in 0..last.len() {
            let _ = dump_end(&last[..cut]);
        }
        assert!(dump_end(&[0xff; 3]).is_none());
    }
}
