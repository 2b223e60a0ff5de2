//! Network namespaces for tests on the kernel's own networking: [`Netns`] (`ip netns add`,
//! deleted with its `/etc/netns/<name>/` files on drop, also when the test fails), a veth
//! pair between two of them ([`Pair`]), names through `/etc/netns/<name>/hosts`, nftables
//! rules inside a namespace, and listeners bound inside one from this process.
//!
//! Nothing here touches the host's own interfaces, routes, firewall or `/etc/hosts`: the veth
//! pair is created inside the first namespace with its peer moved straight into the second,
//! and every address is private (10.231.0.0/24, fd00:231::/64) and exists only there.
//!
//! These tests need root, `ip` (iproute2) and `nft` (nftables). Without them they skip with
//! the reason printed, unless `WSBEAT_TEST_REQUIRE_REAL_NET` is set (as CI does): then a
//! missing prerequisite fails the test instead. Under an emulator (`WSBEAT_TEST_RUNNER`)
//! they skip: they fork helpers from the test binary, a qemu-user hazard.

use std::ffi::OsStr;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The device side of a [`Pair`].
pub const DEV4: &str = "10.231.0.1";
/// The server side of a [`Pair`].
pub const SRV4: &str = "10.231.0.2";
/// The device side of a [`Pair`], IPv6 (unique local).
pub const DEV6: &str = "fd00:231::1";
/// The server side of a [`Pair`], IPv6 (unique local).
pub const SRV6: &str = "fd00:231::2";

/// Set (to anything) where the real-network tests must run: a missing prerequisite fails.
const REQUIRE: &str = "WSBEAT_TEST_REQUIRE_REAL_NET";

/// `Ok` when `programs` are installed (and, if `root`, we are root); else why not.
fn prerequisites(root: bool, programs: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if root && euid != 0 {
        return Err("not root".into());
    }
    for program in programs {
        let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
            .iter()
            .any(|dir| PathBuf::from(dir).join(program).exists());
        if !found {
            return Err(format!("{program} is not installed"));
        }
    }
    Ok(())
}

/// Whether `test` can run: with `root` and `programs`. If not, prints why and returns false,
/// or panics when [`REQUIRE`] is set.
pub fn can_run(test: &str, root: bool, programs: &[&str]) -> bool {
    if !super::runner_prefix().is_empty() {
        // Not a missing prerequisite but a choice: these tests fork `ip`, `nft` and
        // `tinyproxy` from the test binary, which under qemu-user can deadlock before exec.
        // What they test (the kernel's networking, the client's logic) is the same natively.
        eprintln!("skipping {test}: under an emulator (WSBEAT_TEST_RUNNER)");
        return false;
    }
    match prerequisites(root, programs) {
        Ok(()) => true,
        Err(reason) if std::env::var_os(REQUIRE).is_some() => {
            panic!("{test}: {reason}, and {REQUIRE} says this test must run")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason}");
            false
        }
    }
}

/// Namespace tests: root, `ip`, `nft`.
pub fn netns_available(test: &str) -> bool {
    can_run(test, true, &["ip", "nft"])
}

/// Runs `program args`, panicking with its stderr if it fails.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) {
    run_with_input(program, args, None);
}

fn run_with_input<S: AsRef<OsStr>>(program: &str, args: &[S], input: Option<&str>) {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Per-namespace files for `ip netns exec`.
const ETC_NETNS: &str = "/etc/netns";

/// Set when these tests created [`ETC_NETNS`], so the last guard removes it again.
static CREATED_ETC_NETNS: AtomicBool = AtomicBool::new(false);

/// Prefix of every namespace these tests create; followed by the test process's pid.
const PREFIX: &str = "wsbeat-t";

/// Deletes namespaces (and their `/etc/netns` files) left by test processes that no longer
/// exist (killed before their guards ran). Only names with [`PREFIX`] are touched.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from(ETC_NETNS).join(name));
        }
    }
}

/// A network namespace of its own, with `lo` up; deleted on drop with `/etc/netns/<name>/`.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace named `wsbeat-t<pid>-<n>-<role>`.
    pub fn new(role: &str) -> Netns {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // From here the guard owns it: a failure below still deletes it.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <name> args…`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Loads an nftables ruleset (`nft -f -`) inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        run_with_input(
            "ip",
            &["netns", "exec", self.name.as_str(), "nft", "-f", "-"],
            Some(ruleset),
        );
    }

    /// Silently drops every TCP segment this namespace sends to `addrs` (a blackhole).
    pub fn drop_tcp_to(&self, addrs: &[&str]) {
        let rules: String = addrs
            .iter()
            .map(|addr| {
                let family = if addr.contains(':') { "ip6" } else { "ip" };
                format!("\t\t{family} daddr {addr} meta l4proto tcp drop\n")
            })
            .collect();
        self.nft(&format!(
            "table inet wsbeat_drop {{\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             {rules}\
             \t}}\n\
             }}\n"
        ));
    }

    /// The namespace's TCP sockets connected to `remote` (any state but LISTEN), from
    /// `/proc/thread-self/net/tcp{,6}` read by a thread inside it.
    pub fn tcp_flows_to(&self, remote: SocketAddr) -> Vec<TcpFlow> {
        self.within(move || {
            let table = if remote.is_ipv4() { "tcp" } else { "tcp6" };
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{table}"))
                .expect("read /proc/thread-self/net/tcp");
            text.lines()
                .skip(1)
                .filter_map(TcpFlow::parse)
                .filter(|flow| flow.remote == remote && flow.state != TCP_LISTEN)
                .collect()
        })
    }

    /// The one established TCP connection from this namespace to `remote`; panics unless
    /// there is exactly one.
    pub fn established_to(&self, remote: SocketAddr) -> TcpFlow {
        let flows: Vec<TcpFlow> = self
            .tcp_flows_to(remote)
            .into_iter()
            .filter(|flow| flow.state == TCP_ESTABLISHED)
            .collect();
        match flows.as_slice() {
            [flow] => *flow,
            _ => panic!("expected one established connection to {remote}, found {flows:?}"),
        }
    }

    /// Silently drops the segments of one TCP flow, `local` ↔ `remote`, as seen from this
    /// namespace: what it sends, and what it receives too unless `outbound_only`. No FIN,
    /// no RST, nothing for either end to notice; other flows between the same hosts (a
    /// reconnect) pass. The rules live in the nftables table `table`, removed with
    /// [`Netns::delete_table`] (or with the namespace).
    pub fn blackhole_flow(
        &self,
        table: &str,
        local: SocketAddr,
        remote: SocketAddr,
        outbound_only: bool,
    ) {
        let family = if remote.is_ipv4() { "ip" } else { "ip6" };
        let (raddr, rport, lport) = (remote.ip(), remote.port(), local.port());
        let inbound = if outbound_only {
            String::new()
        } else {
            format!(
                "\tchain input {{\n\
                 \t\ttype filter hook input priority 0; policy accept;\n\
                 \t\t{family} saddr {raddr} tcp sport {rport} tcp dport {lport} drop\n\
                 \t}}\n"
            )
        };
        self.nft(&format!(
            "table inet {table} {{\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\t{family} daddr {raddr} tcp dport {rport} tcp sport {lport} drop\n\
             \t}}\n\
             {inbound}\
             }}\n"
        ));
    }

    /// Removes the nftables table `table` (e.g. a [`Netns::blackhole_flow`]).
    pub fn delete_table(&self, table: &str) {
        self.nft(&format!("delete table inet {table}\n"));
    }

    /// `/etc/netns/<name>/hosts`, which `ip netns exec` mounts over `/etc/hosts`.
    pub fn hosts(&self, entries: &[(&str, &str)]) {
        let etc = PathBuf::from(ETC_NETNS);
        if !etc.exists() {
            CREATED_ETC_NETNS.store(true, Ordering::Relaxed);
        }
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (addr, name) in entries {
            text.push_str(&format!("{addr} {name}\n"));
        }
        let dir = etc.join(&self.name);
        // Another test's guard may remove an empty /etc/netns at the same moment: retry.
        let mut tries = 0;
        while let Err(err) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(dir.join("hosts"), &text))
        {
            tries += 1;
            assert!(tries < 5, "write {}/hosts: {err}", dir.display());
        }
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns with a descriptor we own; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }

    /// Waits until a TCP connect from this namespace to each of `addrs` (port 9, where
    /// nothing listens) is answered, refused or not: a fresh veth link loses the first IPv6
    /// segments for a while, which would look like a silent path.
    pub fn wait_answered(&self, addrs: &[&str]) {
        let addrs: Vec<SocketAddr> = addrs
            .iter()
            .map(|a| SocketAddr::new(a.parse().expect("an IP address"), 9))
            .collect();
        self.within(move || {
            for addr in addrs {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match TcpStream::connect_timeout(&addr, Duration::from_millis(50)) {
                        Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {
                            assert!(Instant::now() < deadline, "{addr} never answers");
                        }
                        _ => break,
                    }
                }
            }
        });
    }

    /// A listener bound to `addr` inside the namespace (by a thread that enters it; the
    /// socket stays in the namespace it was made in).
    pub fn bind(&self, addr: SocketAddr) -> TcpListener {
        self.within(move || {
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in the namespace: {e}"))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from(ETC_NETNS).join(&self.name));
        if CREATED_ETC_NETNS.load(Ordering::Relaxed) {
            // Only if empty: other tests' namespaces may still use it.
            let _ = std::fs::remove_dir(ETC_NETNS);
        }
    }
}

/// `st` of a listening socket in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;
/// `st` of an established connection in `/proc/net/tcp`.
pub const TCP_ESTABLISHED: u8 = 0x01;

/// One line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlow {
    /// Our end.
    pub local: SocketAddr,
    /// The peer.
    pub remote: SocketAddr,
    /// The kernel's state number (`TCP_ESTABLISHED`…).
    pub state: u8,
    /// Bytes written but not yet acknowledged by the peer (sent or not).
    pub tx_queue: u64,
}

impl TcpFlow {
    /// `sl local rem st tx_queue:rx_queue …`, addresses as the kernel prints them: the
    /// network-order words of the address in hex as native integers, the port in hex.
    fn parse(line: &str) -> Option<TcpFlow> {
        let mut fields = line.split_whitespace().skip(1);
        let local = parse_addr(fields.next()?)?;
        let remote = parse_addr(fields.next()?)?;
        let state = u8::from_str_radix(fields.next()?, 16).ok()?;
        let tx_queue = u64::from_str_radix(fields.next()?.split(':').next()?, 16).ok()?;
        Some(TcpFlow {
            local,
            remote,
            state,
            tx_queue,
        })
    }
}

fn parse_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).map(u32::to_ne_bytes))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip: std::net::IpAddr = match words.as_slice() {
        [w] => std::net::Ipv4Addr::from(*w).into(),
        [a, b, c, d] => {
            let mut octets = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                octets[i * 4..i * 4 + 4].copy_from_slice(&w[..]);
            }
            std::net::Ipv6Addr::from(octets).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Two namespaces joined by a veth pair: `dev` (10.231.0.1, fd00:231::1) and `srv`
/// (10.231.0.2, fd00:231::2).
#[derive(Debug)]
pub struct Pair {
    /// Where the client runs.
    pub dev: Netns,
    /// Where the servers listen.
    pub srv: Netns,
}

impl Pair {
    /// Creates both namespaces and the link between them.
    pub fn new() -> Pair {
        let dev = Netns::new("dev");
        let srv = Netns::new("srv");
        // Made inside `dev`, the peer moved straight into `srv`: never in the host's namespace.
        dev.ip(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &srv.name,
        ]);
        for (ns, dev_name, v4, v6) in [(&dev, "veth0", DEV4, DEV6), (&srv, "veth1", SRV4, SRV6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev_name]);
            // nodad: usable at once instead of after duplicate address detection.
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev_name, "nodad"]);
            ns.ip(&["link", "set", dev_name, "up"]);
        }
        dev.wait_answered(&[SRV6, SRV4]);
        Pair { dev, srv }
    }
}

/// The device side of a [`Nat`].
pub const NAT_DEV4: &str = "10.231.1.1";
/// The router's address towards the device (the device's default gateway).
pub const NAT_GW4: &str = "10.231.1.254";
/// The router's address towards the server: what the server sees as the device's.
pub const NAT_OUT4: &str = "10.231.2.254";
/// The server side of a [`Nat`].
pub const NAT_SRV4: &str = "10.231.2.2";

/// `/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established`.
const CT_ESTABLISHED: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";

/// A kernel NAT between a device and a server, as a carrier's or a home router's: `dev`
/// (10.231.1.1, default route via the router) — `router` (forwarding, nftables masquerade out
/// of `veth2`, conntrack with `nf_conntrack_tcp_loose=0`, invalid state dropped) — `srv`
/// (10.231.2.2, with no route back to the device's network: only the masquerade makes
/// connections work). With an idle timeout `T`, the router's conntrack forgets an established
/// TCP flow after `T` without a segment, and the device's next segment is dropped as invalid:
/// the silent loss of a carrier NAT.
#[derive(Debug)]
pub struct Nat {
    /// Where the client runs.
    pub dev: Netns,
    /// The NAT box.
    pub router: Netns,
    /// Where the server listens.
    pub srv: Netns,
}

impl Nat {
    /// The three namespaces and links; `idle_timeout` sets the router's
    /// `nf_conntrack_tcp_timeout_established` (whole seconds; `None` keeps the kernel's 5 days).
    pub fn new(idle_timeout: Option<Duration>) -> Nat {
        let dev = Netns::new("dev");
        let router = Netns::new("rtr");
        let srv = Netns::new("srv");
        dev.ip(&[
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &router.name,
        ]);
        router.ip(&[
            "link", "add", "veth2", "type", "veth", "peer", "name", "veth3", "netns", &srv.name,
        ]);
        for (ns, link, addr) in [
            (&dev, "veth0", NAT_DEV4),
            (&router, "veth1", NAT_GW4),
            (&router, "veth2", NAT_OUT4),
            (&srv, "veth3", NAT_SRV4),
        ] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", link]);
            ns.ip(&["link", "set", link, "up"]);
        }
        dev.ip(&["route", "add", "default", "via", NAT_GW4]);
        // The first rule that names conntrack makes sure it is set up in this namespace.
        router.nft(
            "table ip wsbeat_nat {\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tct state invalid counter drop\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\toifname \"veth2\" masquerade\n\
             \t}\n\
             }\n",
        );
        let host_timeout = std::fs::read_to_string(CT_ESTABLISHED).ok();
        let timeout = idle_timeout.map(|t| t.as_secs().max(1).to_string());
        let written = router.within(move || {
            let mut settings = vec![
                ("/proc/sys/net/ipv4/ip_forward", "1".to_string()),
                ("/proc/sys/net/netfilter/nf_conntrack_tcp_loose", "0".into()),
            ];
            if let Some(timeout) = timeout {
                settings.push((CT_ESTABLISHED, timeout));
            }
            for (path, value) in &settings {
                std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))?;
                let now = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                if now.trim() != value {
                    return Err(format!("{path} reads {now:?} after writing {value}"));
                }
            }
            Ok::<(), String>(())
        });
        // The conntrack timeouts are per network namespace on every kernel this runs on; a
        // kernel where they were global would have just changed the host's NAT behaviour.
        let host_after = std::fs::read_to_string(CT_ESTABLISHED).ok();
        if host_after != host_timeout {
            if let Some(before) = &host_timeout {
                let _ = std::fs::write(CT_ESTABLISHED, before);
            }
            panic!(
                "nf_conntrack_tcp_timeout_established is not per namespace on this kernel \
                 (the host's changed from {host_timeout:?}; restored)"
            );
        }
        if let Err(err) = written {
            panic!("router sysctls: {err}");
        }
        // Refused (nothing on port 9) once the whole path, NAT included, forwards.
        dev.wait_answered(&[NAT_SRV4]);
        Nat { dev, router, srv }
    }
}

impl Nat {
    /// Segments the router dropped as invalid: those of flows its conntrack had forgotten.
    pub fn invalid_dropped(&self) -> u64 {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.router.name, "nft", "list", "chain"])
            .args(["ip", "wsbeat_nat", "forward"])
            .stdin(Stdio::null())
            .output()
            .expect("nft list chain");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split("counter packets ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no drop counter in:\n{text}"))
    }
}
