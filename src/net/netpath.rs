//! The network path a connection takes, named for `--state-dir`: what the adaptive
//! heartbeat learned holds for one NAT, and moving to another network must start
//! afresh.
//!
//! The key is `INTERFACE[/GATEWAY[/GATEWAY-MAC]]`, from the live connection's local
//! address: the interface that holds it; the gateway of the route the kernel takes
//! towards the peer (longest prefix, then lowest metric, in `/proc/net/route` or
//! `/proc/net/ipv6_route`; none when the peer is on the link); and, for IPv4, the
//! gateway's hardware address from `/proc/net/arp`, which tells apart two home
//! routers that both call themselves 192.168.1.1. A modem's point-to-point interface
//! (`wwan0`, `ppp0`) has no gateway: its key is the interface alone. The Wi-Fi SSID or
//! the cellular carrier would take nl80211 or the modem's own protocol, not worth a
//! dependency: a SIM from another carrier in the same modem shares the entry, and a
//! stale entry costs what a timeout that drops costs anyway (a doubt, then a search).
//! Reading these files is cheap and done once per connect; anything unreadable just
//! makes the key shorter. Parsers are pure; [`path_of`] reads the files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::report::state_store::{MAX_KEY_LEN, PathKey};

/// Flags of `/proc/net/route` and `/proc/net/ipv6_route` (`RTF_*`).
const RTF_UP: u32 = 0x1;
const RTF_GATEWAY: u32 = 0x2;
const RTF_REJECT: u32 = 0x200;
/// Most bytes read of a `/proc` table (a device's tables are small).
const MAX_TABLE: u64 = 1 << 20;

/// The path of a connection from `local` to `peer` (the server or the proxy).
pub fn path_of(local: IpAddr, peer: IpAddr) -> PathKey {
    let Some(interface) = interface_name(local) else {
        return PathKey::new("unknown").expect("valid key");
    };
    let gateway = match peer {
        IpAddr::V4(peer) => read("/proc/net/route")
            .and_then(|table| gateway_v4(&table, &interface, peer))
            .map(IpAddr::V4),
        IpAddr::V6(peer) => read("/proc/net/ipv6_route")
            .and_then(|table| gateway_v6(&table, &interface, peer))
            .map(IpAddr::V6),
    };
    let mac = match gateway {
        Some(IpAddr::V4(gateway)) => {
            read("/proc/net/arp").and_then(|arp| neighbour(&arp, &interface, gateway))
        }
        _ => None,
    };
    key(&interface, gateway, mac.as_deref())
}

/// The key for these parts; odd bytes in an interface name become `_`.
pub fn key(interface: &str, gateway: Option<IpAddr>, mac: Option<&str>) -> PathKey {
    let mut key: String = interface
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '/' && c != '#' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Some(gateway) = gateway {
        key.push('/');
        key.push_str(&gateway.to_string());
        if let Some(mac) = mac {
            key.push('/');
            key.push_str(mac);
        }
    }
    key.truncate(MAX_KEY_LEN);
    PathKey::new(&key).unwrap_or_else(|| PathKey::new("unknown").expect("valid key"))
}

/// The gateway of the IPv4 route to `peer` through `interface` in `/proc/net/route`
/// text; `None` if the peer is on the link or no route matches.
pub fn gateway_v4(table: &str, interface: &str, peer: Ipv4Addr) -> Option<Ipv4Addr> {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask …; addresses are the
    // kernel's __be32 printed as a native integer.
    let address = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let peer = peer.octets();
    let mut best: Option<(u32, u32, Option<Ipv4Addr>)> = None;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [iface, dest, gateway, flags, _, _, metric, mask, ..] = fields[..] else {
            continue;
        };
        let (Some(dest), Some(gateway), Some(mask)) =
            (address(dest), address(gateway), address(mask))
        else {
            continue;
        };
        let (Ok(flags), Ok(metric)) = (u32::from_str_radix(flags, 16), metric.parse::<u32>())
        else {
            continue;
        };
        let matches = (0..4).all(|i| peer[i] & mask[i] == dest[i] & mask[i]);
        if iface != interface || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || !matches {
            continue;
        }
        let prefix = u32::from_be_bytes(mask).count_ones();
        let gateway = (flags & RTF_GATEWAY != 0).then(|| Ipv4Addr::from(gateway));
        if best.is_none_or(|(p, m, _)| prefix > p || (prefix == p && metric < m)) {
            best = Some((prefix, metric, gateway));
        }
    }
    best.and_then(|(_, _, gateway)| gateway)
}

/// The gateway of the IPv6 route to `peer` through `interface` in
/// `/proc/net/ipv6_route` text; `None` if the peer is on the link or no route matches.
pub fn gateway_v6(table: &str, interface: &str, peer: Ipv6Addr) -> Option<Ipv6Addr> {
    // dest dest_len src src_len next_hop metric refcnt use flags iface, in hex.
    let address = |hex: &str| {
        u128::from_str_radix(hex, 16)
            .ok()
            .filter(|_| hex.len() == 32)
    };
    let peer = u128::from(peer);
    let mut best: Option<(u32, u32, Option<Ipv6Addr>)> = None;
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [dest, prefix, _, _, next_hop, metric, _, _, flags, iface] = fields[..] else {
            continue;
        };
        let (Some(dest), Some(next_hop)) = (address(dest), address(next_hop)) else {
            continue;
        };
        let (Ok(prefix), Ok(metric), Ok(flags)) = (
            u32::from_str_radix(prefix, 16),
            u32::from_str_radix(metric, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        if prefix > 128 {
            continue;
        }
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        let matches = peer & mask == dest & mask;
        if iface != interface || flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || !matches {
            continue;
        }
        let gateway = (flags & RTF_GATEWAY != 0).then(|| Ipv6Addr::from(next_hop));
        if best.is_none_or(|(p, m, _)| prefix > p || (prefix == p && metric < m)) {
            best = Some((prefix, metric, gateway));
        }
    }
    best.and_then(|(_, _, gateway)| gateway)
}

/// The hardware address of `ip` on `interface` in `/proc/net/arp` text, if resolved.
pub fn neighbour(arp: &str, interface: &str, ip: Ipv4Addr) -> Option<String> {
    // IP address, HW type, Flags, HW address, Mask, Device.
    arp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [address, _, flags, mac, _, device] = fields[..] else {
            return None;
        };
        let resolved = flags != "0x0" && mac != "00:00:00:00:00:00";
        let valid = mac.len() <= 64 && mac.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (device == interface && address.parse() == Ok(ip) && resolved && valid)
            .then(|| mac.to_ascii_lowercase())
    })
}

/// The name of the interface that holds `local`.
fn interface_name(local: IpAddr) -> Option<String> {
    crate::os::interface_name(crate::os::interface_of(local)?)
}

/// A `/proc` table's text, if readable.
fn read(path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_TABLE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 address as `/proc/net/route` prints it.
    fn hex4(ip: &str) -> String {
        let ip: Ipv4Addr = ip.parse().unwrap();
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn route_table(routes: &[(&str, &str, &str, u32, u32, &str)]) -> String {
        let mut text = String::from(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
        );
        for (iface, dest, gateway, flags, metric, mask) in routes {
            text.push_str(&format!(
                "{iface}\t{}\t{}\t{flags:04X}\t0\t0\t{metric}\t{}\t0\t0\t0   \n",
                hex4(dest),
                hex4(gateway),
                hex4(mask)
            ));
        }
        text
    }

    #[test]
    fn the_ipv4_gateway_is_the_one_of_the_route_taken() {
        let table = route_table(&[
            ("wlan0", "0.0.0.0", "192.168.1.1", 3, 600, "0.0.0.0"),
            ("wlan0", "192.168.1.0", "0.0.0.0", 1, 600, "255.255.255.0"),
            ("wlan0", "10.8.0.0", "192.168.1.254", 3, 0, "255.255.0.0"),
            ("eth0", "0.0.0.0", "10.0.0.1", 3, 100, "0.0.0.0"),
            ("wwan0", "0.0.0.0", "0.0.0.0", 1, 700, "0.0.0.0"),
        ]);
        let gw = |iface, peer: &str| gateway_v4(&table, iface, peer.parse().unwrap());
        assert_eq!(
            gw("wlan0", "203.0.113.5"),
            Some("192.168.1.1".parse().unwrap())
        );
        // A more specific route wins.
        assert_eq!(
            gw("wlan0", "10.8.3.4"),
            Some("192.168.1.254".parse().unwrap())
        );
        // On the link: no gateway.
        assert_eq!(gw("wlan0", "192.168.1.20"), None);
        // Each interface its own routes.
        assert_eq!(gw("eth0", "203.0.113.5"), Some("10.0.0.1".parse().unwrap()));
        // A point-to-point modem: a default route without a gateway.
        assert_eq!(gw("wwan0", "203.0.113.5"), None);
        assert_eq!(gw("lo", "127.0.0.1"), None);
        assert_eq!(
            gateway_v4(
                "garbage\nmore garbage x y z\n",
                "wlan0",
                Ipv4Addr::LOCALHOST
            ),
            None
        );
    }

    #[test]
    fn with_two_default_routes_the_lower_metric_wins() {
        let table = route_table(&[
            ("eth0", "0.0.0.0", "10.0.0.2", 3, 200, "0.0.0.0"),
            ("eth0", "0.0.0.0", "10.0.0.1", 3, 100, "0.0.0.0"),
        ]);
        let gw = gateway_v4(&table, "eth0", "198.51.100.1".parse().unwrap());
        assert_eq!(gw, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_ipv6_gateway_is_the_one_of_the_route_taken() {
        let table = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000003 00000000 80200001       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        let gw = |iface, peer: &str| gateway_v6(table, iface, peer.parse().unwrap());
        assert_eq!(gw("eth0", "2001:db8::1"), Some("fe80::1".parse().unwrap()));
        assert_eq!(gw("eth0", "fd00::42"), None);
        // The unreachable default of `lo` is no route.
        assert_eq!(gw("lo", "2001:db8::1"), None);
    }

    #[test]
    fn the_gateway_mac_comes_from_the_arp_table() {
        let arp = "\
IP address       HW type     Flags       HW address            Mask     Device
192.168.1.1      0x1         0x2         AA:BB:cc:dd:ee:ff     *        wlan0
10.0.0.1         0x1         0x0         00:00:00:00:00:00     *        eth0
";
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(
            neighbour(arp, "wlan0", ip("192.168.1.1")).as_deref(),
            Some("aa:bb:cc:dd:ee:ff")
        );
        assert_eq!(neighbour(arp, "eth0", ip("192.168.1.1")), None);
        // Incomplete: not known.
        assert_eq!(neighbour(arp, "eth0", ip("10.0.0.1")), None);
    }

    #[test]
    fn keys_tell_networks_apart() {
        let gw: IpAddr = "192.168.1.1".parse().unwrap();
        let home = key("wlan0", Some(gw), Some("aa:bb:cc:dd:ee:ff"));
        let friend = key("wlan0", Some(gw), Some("11:22:33:44:55:66"));
        let cable = key("eth0", Some(gw), Some("aa:bb:cc:dd:ee:ff"));
        let modem = key("wwan0", None, None);
        assert_eq!(home.as_str(), "wlan0/192.168.1.1/aa:bb:cc:dd:ee:ff");
        assert_eq!(modem.as_str(), "wwan0");
        assert_ne!(home, friend);
        assert_ne!(home, cable);
        assert_eq!(
            key("eth0", Some("fe80::1".parse().unwrap()), None).as_str(),
            "eth0/fe80::1"
        );
        // An interface name with odd bytes still makes a valid key.
        assert_eq!(key("we ird/#", None, None).as_str(), "we_ird__");
        assert_eq!(key("", None, None).as_str(), "unknown");
        assert_eq!(
            key("x", None, Some("aa")).as_str(),
            "x",
            "no MAC without a gateway"
        );
    }

    #[test]
    fn the_loopback_path_is_found_on_this_machine() {
        let path = path_of(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        );
        assert_eq!(path.as_str(), "lo");
        let unknown = path_of(
            "192.0.2.77".parse().unwrap(),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        );
        assert_eq!(unknown.as_str(), "unknown");
    }
}
