//! The byte stream under a WebSocket: the TCP socket (and TLS over it), counting
//! its bytes for the status file and its outgoing stream as the kernel counts
//! acknowledgements, reading without waiting while the reader drains, and
//! remembering a write that ran into the write timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;

#[cfg(feature = "tls")]
use native_tls::TlsStream;
use tungstenite::WebSocket;

use crate::os;
use crate::report::traffic::Traffic;

/// The TCP socket under the WebSocket (and under TLS). It stays blocking; while the
/// reader drains, each read is made non-blocking on its own (`MSG_DONTWAIT`) instead of
/// toggling `O_NONBLOCK`, a flag shared with every clone of the socket, with two
/// syscalls per wake-up.
pub struct Socket {
    tcp: TcpStream,
    draining: bool,
    /// A write ran into the socket's write timeout: the peer stopped reading. Kept
    /// here because tungstenite swallows that error when it flushes a Pong inside `read`.
    write_stalled: bool,
    /// Bytes on the wire, for the status and metrics files.
    traffic: Arc<Traffic>,
    /// Bytes of the connection's outgoing stream so far, counted as the kernel counts
    /// its acknowledgements (what went before this socket existed, a proxy's
    /// CONNECT, included); `None` where the kernel does not report them.
    written: Option<u64>,
}

impl Socket {
    pub(super) fn new(tcp: TcpStream, traffic: Arc<Traffic>, written: Option<u64>) -> Socket {
        Socket {
            tcp,
            draining: false,
            write_stalled: false,
            traffic,
            written,
        }
    }

    fn count_read(&self, read: io::Result<usize>) -> io::Result<usize> {
        if let Ok(n) = read {
            Traffic::add(&self.traffic.bytes_received, n as u64);
        }
        read
    }

    fn read_draining(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        os::recv_dontwait(self.tcp.as_fd(), buf)
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = if self.draining {
            self.read_draining(buf)
        } else {
            self.tcp.read(buf)
        };
        self.count_read(read)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.tcp.write(buf);
        match &written {
            Ok(n) => {
                Traffic::add(&self.traffic.bytes_sent, *n as u64);
                self.written = self.written.map(|before| before + *n as u64);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.write_stalled = true;
            }
            Err(_) => {}
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A plain or TLS TCP stream.
pub enum Stream {
    /// `ws://`
    Plain(Socket),
    /// `wss://`
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<Socket>>),
}

impl Stream {
    /// Reads return `WouldBlock` instead of waiting while `on`; writes still block
    /// (bounded by the write timeout).
    pub fn set_draining(&mut self, on: bool) {
        match self {
            Stream::Plain(socket) => socket.draining = on,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.get_mut().draining = on,
        }
    }

    /// The outgoing stream's length so far, in the kernel's count (see
    /// [`crate::rules::unacked`]); `None` where the kernel does not report
    /// acknowledgements.
    pub fn written(&self) -> Option<u64> {
        match self {
            Stream::Plain(socket) => socket.written,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.get_ref().written,
        }
    }

    /// A write has run into the write timeout since the connection opened.
    pub fn write_stalled(&self) -> bool {
        match self {
            Stream::Plain(socket) => socket.write_stalled,
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.get_ref().write_stalled,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// An upgraded connection.
pub struct Connection {
    /// The WebSocket, with the socket back in blocking mode and the write timeout set.
    pub ws: WebSocket<Stream>,
    /// A second handle on the TCP socket: to wait for readability and to shut it down.
    pub tcp: TcpStream,
    /// The subprotocol the server chose, if any.
    pub subprotocol: Option<String>,
}

/// How many bytes have been written to `tcp` so far, as the kernel counts them:
/// acknowledged plus not yet acknowledged (read in that order reversed, so a late
/// acknowledgement can only make the sum too large, which resends, never too small,
/// which would lose). `None`, said once at info, where the kernel does not report
/// acknowledgements: lines written to a link that then dies are lost there.
pub fn stream_length(tcp: &TcpStream) -> Option<u64> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let unacknowledged = os::tcp_unacknowledged(tcp.as_fd()).ok();
    let length = unacknowledged.zip(os::tcp_bytes_acked(tcp.as_fd()));
    if length.is_none() {
        SAID.call_once(|| {
            log::info!(
                "the kernel does not report TCP acknowledgements (TCP_INFO): lines written \
                 to a connection that then dies silently are not sent again"
            );
        });
    }
    length.map(|(unacknowledged, acked)| unacknowledged + acked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The socket's count of the outgoing stream matches the kernel's count of what
    /// the peer acknowledged, bytes written before the socket existed (a proxy's
    /// CONNECT) included: the offsets the sent-lines window compares.
    #[test]
    fn the_stream_length_is_counted_as_the_kernel_acknowledges_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"CONNECT").unwrap();
        let mut buf = [0u8; 64];
        server.read_exact(&mut buf[..7]).unwrap();
        let Some(before) = stream_length(&client) else {
            // qemu-user passes every TCP option through as an int, so TCP_INFO comes
            // back 4 bytes long: the documented fallback, which the emulated ARM run
            // checks instead. A native Linux (4.1 and later) always reports.
            assert!(
                std::env::var_os("WSBEAT_TEST_RUNNER").is_some(),
                "this kernel reports no TCP_INFO acknowledgements"
            );
            let traffic = Arc::new(Traffic::default());
            let mut socket = Socket::new(client.try_clone().unwrap(), traffic, None);
            socket.write_all(b"hello").unwrap();
            // Nothing counted, so the writer keeps no window: lines written to a
            // connection that then dies are not sent again, as before.
            assert_eq!(socket.written, None);
            return;
        };
        // Linux counts the SYN as one acknowledged byte; both sides of every
        // comparison count from the same origin, so only consistency matters.
        assert!((7..=8).contains(&before), "{before}");
        let traffic = Arc::new(Traffic::default());
        let mut socket = Socket::new(client.try_clone().unwrap(), traffic, Some(before));
        socket.write_all(b"hello, world").unwrap();
        server.read_exact(&mut buf[..12]).unwrap();
        assert_eq!(socket.written, Some(before + 12));
        let deadline = Instant::now() + Duration::from_secs(5);
        while os::tcp_bytes_acked(client.as_fd()) != socket.written {
            assert!(Instant::now() < deadline, "the acknowledgement never came");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
