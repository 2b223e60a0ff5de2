//! The opening handshake on the server side: tungstenite's `accept_hdr` with a callback
//! that records the request and applies [`super::Handshake`], and the hand-made
//! misbehaviours (a 101 that never ends, frames in the 101's own segment).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderName, HeaderValue, StatusCode};

use super::conn::Io;
use super::{Behavior, Handshake, Kind, Shared, TRICKLE};

/// Bound for the TLS and upgrade handshake on the server side.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A plain connection through the opening handshake (or the misbehaviour `b` asks for):
/// its reading and writing halves once upgraded, `None` when the connection is over.
pub(super) fn plain(sh: &Arc<Shared>, id: usize, tcp: TcpStream, b: &Behavior) -> Option<Io> {
    let (Ok(r), Ok(w)) = (tcp.try_clone(), tcp.try_clone()) else {
        return None;
    };
    if b.handshake == Handshake::StallUpgrade {
        drain(&mut &r);
        sh.emit(id, Kind::Disconnected);
        return None;
    }
    if b.handshake == Handshake::Trickle {
        trickle(sh, &tcp);
        sh.emit(id, Kind::Disconnected);
        return None;
    }
    upgrade(sh, id, tcp, b)?;
    Some(Io::Plain {
        read: r,
        write: Mutex::new(w),
    })
}

/// [`Handshake::Trickle`]: reads the request up to its blank line, then writes a 101 status
/// line and an endless header one byte at a time until the peer goes or the server stops.
fn trickle(sh: &Shared, tcp: &TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match (&*tcp).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if (&*tcp)
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nX-Slow: ")
        .is_err()
    {
        return;
    }
    while !sh.stopping.load(Ordering::SeqCst) && (&*tcp).write_all(b"a").is_ok() {
        thread::sleep(TRICKLE);
    }
}

/// Holds what tungstenite's server handshake writes, so that [`Behavior::with_101`] frames go
/// out in the same `write()` call as the 101 response. Whatever is still held when it is
/// dropped (a rejection) is written then.
struct HoldWrites {
    tcp: TcpStream,
    held: Vec<u8>,
}

impl Read for HoldWrites {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for HoldWrites {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.held.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for HoldWrites {
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.tcp.write_all(&self.held);
        }
    }
}

/// Reads and discards until EOF, an error, or the handshake timeout.
pub(super) fn drain(r: &mut impl Read) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

// tungstenite's callback signature fixes the large `ErrorResponse` error type.
#[allow(clippy::result_large_err)]
pub(super) fn callback(
    sh: &Arc<Shared>,
    id: usize,
    b: &Behavior,
    cn: Option<String>,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> {
    let sh = Arc::clone(sh);
    let handshake = b.handshake.clone();
    let extra = b.response_headers.clone();
    move |req: &Request, mut resp: Response| {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let subprotocols: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if let Handshake::Reject { status, headers } = handshake {
            sh.emit(id, Kind::Rejected { status });
            let mut r = ErrorResponse::new(Some(format!("rejected with {status}")));
            *r.status_mut() = StatusCode::from_u16(status).expect("valid status");
            for (k, v) in headers {
                r.headers_mut().append(
                    HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                    HeaderValue::from_str(&v).expect("header value"),
                );
            }
            return Err(r);
        }
        if let Some(first) = subprotocols.first() {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(first).expect("subprotocol value"),
            );
        }
        for (k, v) in extra {
            resp.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                HeaderValue::from_str(&v).expect("header value"),
            );
        }
        sh.emit(
            id,
            Kind::Upgraded {
                path,
                headers,
                subprotocols,
                client_cert_cn: cn,
            },
        );
        Ok(resp)
    }
}

/// The opening handshake over plain TCP, with [`Behavior::with_101`] frames if any.
fn upgrade(sh: &Arc<Shared>, id: usize, tcp: TcpStream, b: &Behavior) -> Option<TcpStream> {
    if !b.with_101.is_empty() {
        let hold = HoldWrites {
            tcp,
            held: Vec::new(),
        };
        return match tungstenite::accept_hdr_with_config(hold, callback(sh, id, b, None), None) {
            Ok(ws) => {
                let mut hold = ws.into_inner();
                let mut out = std::mem::take(&mut hold.held);
                out.extend_from_slice(&b.with_101);
                // One write() with TCP_NODELAY: the response and the frames share a segment.
                let sent = (&hold.tcp).write_all(&out);
                let tcp = hold.tcp.try_clone().ok();
                match (sent, tcp) {
                    (Ok(()), Some(tcp)) => Some(tcp),
                    _ => {
                        sh.emit(id, Kind::Disconnected);
                        None
                    }
                }
            }
            Err(_) => {
                sh.emit(id, Kind::Disconnected);
                None
            }
        };
    }
    match tungstenite::accept_hdr_with_config(tcp, callback(sh, id, b, None), None) {
        Ok(ws) => Some(ws.into_inner()),
        Err(_) => {
            sh.emit(id, Kind::Disconnected);
            None
        }
    }
}
