//! The kernel's address, link and route changes, from rtnetlink (`AF_NETLINK`,
//! `NETLINK_ROUTE`): a standalone watcher for SPEC "Network changes", not yet wired
//! into the supervisor.
//!
//! [`LinkWatch::spawn`] opens the socket on the caller's thread (so a system without
//! netlink, or a unit whose `RestrictAddressFamilies=` lacks `AF_NETLINK`, is an error
//! the caller can log once) and runs a thread that blocks in `poll(2)` on it and on a
//! wake eventfd: no timer, so nothing wakes while the network does not change. Each
//! datagram is parsed by [`parse`] (pure, tested on captured bytes) into [`LinkEvent`]s
//! handed to the callback on that thread.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::dial::Wake;
use crate::os;

/// What the kernel reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A usable address appeared on interface `index` (IPv6 addresses still in duplicate
    /// address detection are reported when they become usable, not before).
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
    /// A default route (main table) was added.
    DefaultRouteAdded {
        /// Its gateway, if it has one.
        gateway: Option<IpAddr>,
        /// Its output interface, if given.
        index: Option<u32>,
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
const RTM_NEWROUTE: u16 = 24;
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
            RTM_NEWROUTE => events.extend(route(message)),
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
fn route(message: &[u8]) -> Option<LinkEvent> {
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
    (dst_len == 0 && route_type == RTN_UNICAST && table == RT_TABLE_MAIN)
        .then_some(LinkEvent::DefaultRouteAdded { gateway, index })
}

/// A running watcher; [`LinkWatch::stop`] (or drop) ends and joins its thread.
pub struct LinkWatch {
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Subscribes to the kernel's link, address and route changes (in the calling
    /// thread's network namespace) and calls `on_event` for each, on the watcher's own
    /// thread. An error means no netlink here (log it once and carry on without).
    pub fn spawn<F>(mut on_event: F) -> io::Result<LinkWatch>
    where
        F: FnMut(LinkEvent) + Send + 'static,
    {
        let socket = open()?;
        let wake = Arc::new(Wake::new()?);
        let stop = Arc::clone(&wake);
        let thread = thread::Builder::new()
            .name("wsbeat-netlink".into())
            .stack_size(128 * 1024)
            .spawn(move || watch(&socket, &stop, &mut on_event))?;
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
fn watch(socket: &OwnedFd, stop: &Wake, on_event: &mut dyn FnMut(LinkEvent)) {
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
                        continue;
                    }
                    _ => {
                        log::warn!("link watch: {err}; not following network changes any more");
                        return;
                    }
                },
            };
            for event in parse(&buf[..n]) {
                log::debug!("link watch: {event:?}");
                on_event(event);
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
        include_str!("../testdata/rtnetlink-veth.hex")
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
                    index: Some(2)
                },
                LinkEvent::DefaultRouteAdded {
                    gateway: Some(ip("fd00:231::2")),
                    index: Some(2)
                },
                LinkEvent::AddressRemoved {
                    index: 2,
                    addr: ip("10.231.0.1")
                },
                LinkEvent::LinkDown {
                    index: 2,
                    name: veth()
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
        assert_eq!(route(0, 254, RTN_UNICAST, &[gw, table(1000)]), []);
    }
}
