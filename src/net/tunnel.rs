//! Opening an HTTP CONNECT proxy's tunnel (RFC 9110 §9.3.6), through which TLS and
//! the upgrade then run. Which proxy, if any, is configuration
//! ([`crate::config::proxy`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::config::Target;
use crate::config::proxy::{Proxy, authority};
use crate::error::{ConnectError, Stage};

/// Longest proxy response head read (status line and headers); a proxy that sends more
/// fails the attempt instead of growing memory.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Longest status line shown in logs.
const MAX_SHOWN_STATUS: usize = 200;

/// The `CONNECT` request for `target` (its name: the proxy resolves it).
fn request(proxy: &Proxy, target: &Target) -> String {
    let authority = authority(&target.host, target.port);
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(credentials) = proxy.authorization() {
        request.push_str("Proxy-Authorization: ");
        request.push_str(credentials);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// The status code and the status line (made printable, shortened) of a response head.
fn parse_status(head: &[u8]) -> Result<(u16, String), String> {
    let end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]);
    let line: String = String::from_utf8_lossy(line)
        .chars()
        .take(MAX_SHOWN_STATUS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(1..))
        .and_then(|rest| rest.strip_prefix(' '))
        .and_then(|rest| rest.get(..3))
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(status) if line.len() == 12 || line.as_bytes().get(12) == Some(&b' ') => {
            Ok((status, line))
        }
        _ => Err(format!("not an HTTP response to CONNECT: '{line}'")),
    }
}

/// Time left before `deadline` as a socket timeout, or the proxy stage's timeout error.
fn left(deadline: Instant) -> Result<Duration, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ConnectError::Timeout(Stage::Proxy))
    } else {
        Ok(left.max(Duration::from_millis(1)))
    }
}

/// Asks the proxy on `tcp` to open a tunnel to `target`, before `deadline`. On success
/// the socket carries the target's bytes from the next one on: the response head is read
/// exactly (peeked first), never past its end.
pub fn tunnel(
    tcp: &TcpStream,
    proxy: &Proxy,
    target: &Target,
    deadline: Instant,
) -> Result<(), ConnectError> {
    let failed = |detail: String| ConnectError::Proxy {
        proxy: proxy.to_string(),
        status: None,
        detail,
    };
    let io_error = |err: io::Error| match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnectError::Timeout(Stage::Proxy),
        _ => failed(err.to_string()),
    };
    log::debug!(
        "proxy {proxy}: CONNECT {}",
        authority(&target.host, target.port)
    );
    tcp.set_write_timeout(Some(left(deadline)?))
        .map_err(ConnectError::Tcp)?;
    (&mut &*tcp)
        .write_all(request(proxy, target).as_bytes())
        .map_err(io_error)?;
    // Interim 1xx responses (`100 Continue`, `103 Early Hints`) precede the final one
    // (RFC 9110 §15.2) and are skipped; all heads together stay within the bound.
    let mut budget = MAX_RESPONSE_HEAD;
    loop {
        let head = read_head(tcp, deadline, budget, &failed, &io_error)?;
        budget -= head.len();
        let (status, line) = parse_status(&head).map_err(failed)?;
        // 101 switches protocols: no final response follows, so it is not skipped.
        if (100..200).contains(&status) && status != 101 {
            log::debug!("proxy {proxy}: {line} (interim, skipped)");
            continue;
        }
        if (200..300).contains(&status) {
            log::debug!("proxy {proxy}: {line}");
            return Ok(());
        }
        return Err(ConnectError::Proxy {
            proxy: proxy.to_string(),
            status: Some(status),
            detail: line,
        });
    }
}

/// Reads one response head (status line and headers, up to and including the empty line)
/// from `tcp`, at most `budget` bytes, and nothing past its end: bytes are peeked first
/// and only the head's are consumed. Lines may end in CRLF or, as lenient HTTP parsers
/// accept (RFC 9112 §2.2), a bare LF.
fn read_head(
    tcp: &TcpStream,
    deadline: Instant,
    budget: usize,
    failed: &dyn Fn(String) -> ConnectError,
    io_error: &dyn Fn(io::Error) -> ConnectError,
) -> Result<Vec<u8>, ConnectError> {
    let mut head: Vec<u8> = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        if head.len() >= budget {
            return Err(failed(format!(
                "response to CONNECT longer than {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        tcp.set_read_timeout(Some(left(deadline)?))
            .map_err(ConnectError::Tcp)?;
        let room = (budget - head.len()).min(chunk.len());
        let peeked = match tcp.peek(&mut chunk[..room]) {
            Ok(0) => {
                return Err(failed(
                    "closed the connection before answering CONNECT".into(),
                ));
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_error(err)),
        };
        let known = head.len();
        head.extend_from_slice(&chunk[..peeked]);
        // The empty line may straddle what was read before and what is peeked now.
        let end = head_end(&head, known.saturating_sub(2));
        let take = end.map_or(peeked, |end| end - known);
        head.truncate(known + take);
        (&mut &*tcp)
            .read_exact(&mut chunk[..take])
            .map_err(io_error)?;
        if end.is_some() {
            return Ok(head);
        }
    }
}

/// The length of the head in `bytes` (through the empty line that ends it: `\n\n` or
/// `\n\r\n`), searching from `from` on; `None` while it is incomplete.
fn head_end(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find_map(|at| {
        if bytes[at] != b'\n' {
            return None;
        }
        match &bytes[at + 1..] {
            [b'\n', ..] => Some(at + 2),
            [b'\r', b'\n', ..] => Some(at + 3),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::proxy::base64;
    use std::net::TcpListener;
    use std::thread;

    fn target(url: &str) -> Target {
        crate::config::parse_target(url, "url").unwrap()
    }

    #[test]
    fn connect_request() {
        let proxy = Proxy::parse("http://alice:pw@p:3128", "x").unwrap();
        assert_eq!(
            request(&proxy, &target("wss://[::1]:9443/ws")),
            format!(
                "CONNECT [::1]:9443 HTTP/1.1\r\nHost: [::1]:9443\r\nProxy-Authorization: Basic {}\r\n\r\n",
                base64(b"alice:pw")
            )
        );
        let proxy = Proxy::parse("http://p:3128", "x").unwrap();
        assert_eq!(
            request(&proxy, &target("ws://server.example/x")),
            "CONNECT server.example:80 HTTP/1.1\r\nHost: server.example:80\r\n\r\n"
        );
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Ok((200, "HTTP/1.1 200 Connection established".into()))
        );
        assert_eq!(
            parse_status(b"HTTP/1.0 407 Proxy Authentication Required\r\nX: y\r\n\r\n")
                .map(|s| s.0),
            Ok(407)
        );
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n\r\n").map(|s| s.0), Ok(204));
        assert_eq!(
            parse_status(b"HTTP/1.1 502 Bad\x1bGateway\r\n\r\n").map(|s| s.1),
            Ok("HTTP/1.1 502 Bad?Gateway".into())
        );
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert!(
                parse_status(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A one-shot proxy on loopback that reads the request head, answers `response` (in
    /// pieces of `piece` bytes), then sends `after` (the target's first bytes).
    fn fake_proxy(
        response: Vec<u8>,
        piece: usize,
        after: &'static [u8],
    ) -> (TcpStream, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap() == 1 {
                request.push(byte[0]);
            }
            for part in response.chunks(piece.max(1)) {
                if conn.write_all(part).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(1));
            }
            let _ = conn.write_all(after);
            // Wait for the client to finish before closing.
            let _ = conn.read(&mut byte);
            request
        });
        (TcpStream::connect(addr).unwrap(), server)
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn tunnel_reads_exactly_the_response_head() {
        let proxy = Proxy::parse("http://u:p@127.0.0.1:1", "x").unwrap();
        let response = b"HTTP/1.1 200 Connection established\r\nVia: test\r\n\r\n".to_vec();
        for piece in [1, 3, 1000] {
            let (tcp, server) = fake_proxy(response.clone(), piece, b"TARGET");
            tunnel(&tcp, &proxy, &target("ws://example.org:81/"), deadline()).unwrap();
            let mut first = [0u8; 6];
            (&mut &tcp).read_exact(&mut first).unwrap();
            assert_eq!(&first, b"TARGET", "pieces of {piece}");
            drop(tcp);
            let request = String::from_utf8(server.join().unwrap()).unwrap();
            assert!(
                request.starts_with("CONNECT example.org:81 HTTP/1.1\r\n"),
                "{request}"
            );
            assert!(
                request.contains("\r\nProxy-Authorization: Basic dTpw\r\n"),
                "{request}"
            );
        }
    }

    #[test]
    fn tunnel_skips_interim_responses() {
        let proxy = Proxy::parse("http://127.0.0.1:1", "x").unwrap();
        let response = b"HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
            HTTP/1.1 200 Connection established\r\n\r\n"
            .to_vec();
        for piece in [1, 5, 1000] {
            let (tcp, _server) = fake_proxy(response.clone(), piece, b"TARGET");
            tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline())
                .unwrap_or_else(|err| panic!("pieces of {piece}: {err}"));
            let mut first = [0u8; 6];
            (&mut &tcp).read_exact(&mut first).unwrap();
            assert_eq!(&first, b"TARGET", "pieces of {piece}");
        }
        // The final response after interim ones decides: a refusal is still one.
        let (tcp, _server) = fake_proxy(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\n\r\n".to_vec(),
            1000,
            b"",
        );
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "proxy http://127.0.0.1:1 refused CONNECT: HTTP/1.1 403 Forbidden"
        );
        // 101 ends the HTTP exchange: no final response follows, so it is no interim one.
        let (tcp, _server) = fake_proxy(
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
            1000,
            b"",
        );
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert!(
            matches!(
                err,
                ConnectError::Proxy {
                    status: Some(101),
                    ..
                }
            ),
            "{err:?}"
        );
        // Endless interim responses are bounded like one long head.
        let (tcp, _server) = fake_proxy(b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000), 4096, b"");
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert!(err.to_string().contains("longer than 8192 bytes"), "{err}");
    }

    #[test]
    fn tunnel_accepts_bare_lf_line_endings_at_once() {
        let proxy = Proxy::parse("http://127.0.0.1:1", "x").unwrap();
        for response in [
            &b"HTTP/1.1 200 OK\n\n"[..],
            b"HTTP/1.1 200 Connection established\nVia: test\n\n",
            b"HTTP/1.1 200 OK\r\nVia: test\n\r\n",
            b"HTTP/1.0 100 Continue\n\nHTTP/1.0 200 OK\n\n",
        ] {
            for piece in [1, 1000] {
                let (tcp, _server) = fake_proxy(response.to_vec(), piece, b"TARGET");
                let started = Instant::now();
                tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline())
                    .unwrap_or_else(|err| panic!("{:?}: {err}", String::from_utf8_lossy(response)));
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "waited for the deadline"
                );
                let mut first = [0u8; 6];
                (&mut &tcp).read_exact(&mut first).unwrap();
                assert_eq!(&first, b"TARGET", "{:?}", String::from_utf8_lossy(response));
            }
        }
        let (tcp, _server) = fake_proxy(b"HTTP/1.1 502 Bad Gateway\n\n".to_vec(), 1000, b"");
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "proxy http://127.0.0.1:1 refused CONNECT: HTTP/1.1 502 Bad Gateway"
        );
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r\nrest", 0), Some(19));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nrest", 0), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\n\r", 0), None);
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nX: y\r\n", 0), None);
        assert_eq!(head_end(b"\r\r\r", 0), None);
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"\n", 5), None);
    }

    #[test]
    fn tunnel_refusals_carry_the_status_line() {
        let proxy = Proxy::parse("http://127.0.0.1:1", "x").unwrap();
        let (tcp, _server) = fake_proxy(
            b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n<html>".to_vec(),
            1000,
            b"",
        );
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert!(
            matches!(
                err,
                ConnectError::Proxy {
                    status: Some(407),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "proxy http://127.0.0.1:1 refused CONNECT: HTTP/1.0 407 Proxy Authentication Required"
        );
    }

    #[test]
    fn tunnel_bounds_what_it_reads() {
        let proxy = Proxy::parse("http://127.0.0.1:1", "x").unwrap();
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(1000));
        let (tcp, _server) = fake_proxy(endless, 4096, b"");
        let err = tunnel(&tcp, &proxy, &target("ws://example.org/"), deadline()).unwrap_err();
        assert!(err.to_string().contains("longer than 8192 bytes"), "{err}");
        let (tcp, _server) = fake_proxy(b"HTTP/1.1 200 OK\r\n".to_vec(), 100, b"");
        let err = tunnel(
            &tcp,
            &proxy,
            &target("ws://example.org/"),
            Instant::now() + Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(
            matches!(err, ConnectError::Timeout(Stage::Proxy)),
            "{err:?}"
        );
    }
}
