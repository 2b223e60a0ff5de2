//! The reader thread: waits for the socket outside the lock, drains under it, and
//! hands what arrived on: answers to the shared liveness, messages to the delivery
//! buffer (waiting there, paused, when stdout does not keep up). See
//! [`super::socket`] for the lock discipline.

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use super::socket::{Drain, SharedSocket};
use crate::events::{ConnId, Event, Input, Observer};
use crate::local::delivery::{BATCH_BYTES, Delivery};
use crate::report::traffic::Traffic;
use crate::rules::liveness::{self, Proof, SharedLiveness};

/// Most messages drained per lock acquisition, so waiting writers get their turn;
/// also at most [`BATCH_BYTES`] of text, so the reader holds little beyond the
/// output buffer's bound.
pub const BATCH: usize = 32;

/// How the reader thread ended.
#[derive(Debug)]
enum Ending {
    /// The server sent a Close frame (already answered).
    Closed(Option<CloseFrame>),
    /// The peer dropped the TCP connection (FIN or RST, no Close frame).
    Dropped(String),
    /// Anything else that makes the connection unusable.
    Dead(String),
}

/// Everything the reader thread needs.
pub struct Reader {
    /// Connection this reader serves; tags every event.
    pub conn: ConnId,
    /// The shared WebSocket.
    pub socket: Arc<SharedSocket>,
    /// A clone of the TCP socket to wait on outside the lock.
    pub wait_on: TcpStream,
    /// In text heartbeat mode, the reply that is a heartbeat answer and not printed.
    pub pong_text: Option<String>,
    /// Where answers to heartbeats are recorded.
    pub liveness: SharedLiveness,
    /// Told each heartbeat round trip.
    pub observer: Arc<dyn Observer>,
    /// Where received text messages wait for the observer (stdout).
    pub delivery: Arc<Delivery>,
    /// This connection's generation in `delivery`.
    pub generation: u64,
    /// The supervisor's channel.
    pub events: Sender<Event>,
    /// Received messages are counted here.
    pub traffic: Arc<Traffic>,
}

impl Reader {
    /// Body of the reader thread: runs until the connection ends, reports how.
    pub fn run(self) {
        let ending = self.read_until_end();
        let input = match ending {
            Ending::Closed(frame) => Input::Closed {
                conn: self.conn,
                code: frame.as_ref().map(|f| u16::from(f.code)),
                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            },
            Ending::Dead(reason) => Input::Dead {
                conn: self.conn,
                reason,
                idle: None,
            },
            Ending::Dropped(reason) => {
                // How long the connection had been quiet when the peer (or a proxy or
                // NAT on the way) dropped it: an idle timeout shows up here.
                let live = liveness::lock(&self.liveness);
                let quiet_since = live.last_proof().unwrap_or(live.base());
                Input::Dead {
                    conn: self.conn,
                    reason,
                    idle: Some(Instant::now().saturating_duration_since(quiet_since)),
                }
            }
        };
        let _ = self.events.send(Event::Input(input));
    }

    fn read_until_end(&self) -> Ending {
        let mut texts = Vec::new();
        let mut proofs = Vec::new();
        // Drain first: frames that came in the same read as the handshake response
        // already sit in tungstenite's buffer, and the socket may never become
        // readable again for them (a welcome message, a Ping, a Close).
        let mut must_wait = false;
        loop {
            if must_wait {
                match self.wait_on.peek(&mut [0u8; 1]) {
                    // Data or EOF: the drain below tells which.
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(err) => return Ending::Dead(format!("read: {err}")),
                }
            }
            let (drained, ending) = self.drain(&mut texts, &mut proofs);
            must_wait = drained;
            if !proofs.is_empty() {
                self.record(&mut proofs);
            }
            if !texts.is_empty() {
                self.deliver(&mut texts);
            }
            if let Some(ending) = ending {
                return ending;
            }
        }
    }

    /// Hands messages to the delivery thread, outside the socket lock. With the
    /// output buffer full this waits, and reading stops: TCP flow control then
    /// slows the server down. Meanwhile the heartbeat must not count unread
    /// answers as missing, so the liveness is paused for the wait.
    fn deliver(&self, texts: &mut Vec<String>) {
        Traffic::add(&self.traffic.messages_received, texts.len() as u64);
        let waited = self.delivery.push(texts, self.generation, || {
            log::debug!("output buffer full: reading paused until stdout catches up");
            liveness::lock(&self.liveness).pause();
        });
        if waited {
            liveness::lock(&self.liveness).resume(Instant::now());
        }
    }

    /// Feeds what arrived into the shared liveness state. Only the first proof of
    /// life wakes the supervisor (it resets the backoff); later ones just update
    /// the state the writer thread reads at its next wake-up.
    fn record(&self, proofs: &mut Vec<(Proof, Instant)>) {
        let mut live = liveness::lock(&self.liveness);
        let was_proven = live.proven();
        let mut rtt = None;
        for (proof, at) in proofs.drain(..) {
            if let Some(measured) = live.on_frame(&proof, at) {
                self.observer.heartbeat(measured);
                rtt = Some(measured);
            }
        }
        if live.proven() && !was_proven {
            drop(live);
            let _ = self.events.send(Event::Input(Input::Proven {
                conn: self.conn,
                rtt,
            }));
        }
    }

    /// One turn with the lock. Returns whether the socket ran dry, and the ending if any.
    fn drain(
        &self,
        texts: &mut Vec<String>,
        proofs: &mut Vec<(Proof, Instant)>,
    ) -> (bool, Option<Ending>) {
        let before = Traffic::get(&self.traffic.bytes_received);
        let turn = {
            let mut ws = self.socket.lock_for_read();
            drain(&mut ws, self.pong_text.as_deref(), texts, proofs)
        };
        // Bytes of a frame still arriving prove the path alive too: on a slow link a
        // large message can take longer than --pong-timeout, and a Pong can only
        // come after it.
        if Traffic::get(&self.traffic.bytes_received) > before {
            proofs.push((Proof::Other, Instant::now()));
        }
        turn
    }
}

/// Reads what has arrived, without waiting: at most [`BATCH`] messages or
/// [`BATCH_BYTES`] of text. Returns whether the stream ran dry, and the ending if any.
fn drain<S: Drain>(
    ws: &mut WebSocket<S>,
    pong_text: Option<&str>,
    texts: &mut Vec<String>,
    proofs: &mut Vec<(Proof, Instant)>,
) -> (bool, Option<Ending>) {
    {
        ws.get_mut().set_draining(true);
        let mut drained = false;
        let mut ending = None;
        let mut other_at = None;
        let mut text_bytes = 0usize;
        for _ in 0..BATCH {
            // A write that ran into the write timeout (a Pong flushed here, or inside
            // tungstenite's read, which swallows the error) means the server stopped
            // reading: the connection is dead, whatever it still sends. Checked per
            // message, or every Ping of the turn would wait out the timeout in turn.
            if ws.get_ref().write_stalled() || text_bytes >= BATCH_BYTES {
                break;
            }
            let message = match ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(err))
                    if err.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    drained = true;
                    break;
                }
                Err(err) => {
                    ending = Some(fail(ws, err));
                    break;
                }
            };
            let at = Instant::now();
            match message {
                Message::Text(text) => {
                    if pong_text == Some(text.as_str()) {
                        proofs.push((Proof::TextPong, at));
                    } else {
                        text_bytes += text.len();
                        texts.push(text.to_string());
                        other_at = Some(at);
                    }
                }
                Message::Binary(data) => {
                    log::debug!("binary message of {} bytes not printed", data.len());
                    other_at = Some(at);
                }
                Message::Ping(_) => {
                    // tungstenite only queued the Pong; the server's clock is running.
                    let _ = ws.flush();
                    other_at = Some(at);
                }
                Message::Pong(payload) => proofs.push((Proof::Pong(payload), at)),
                Message::Close(frame) => {
                    ending = Some(Ending::Closed(frame));
                    break;
                }
                Message::Frame(_) => {}
            }
        }
        if let Some(at) = other_at {
            proofs.push((Proof::Other, at));
        }
        ws.get_mut().set_draining(false);
        // Whatever tungstenite still holds (a Pong, our Close reply, a 1009 Close) goes
        // out now, bounded by the write timeout, unless a write already timed out.
        if !ws.get_ref().write_stalled() {
            let _ = ws.flush();
        }
        if ending.is_none() && ws.get_ref().write_stalled() {
            ending = Some(Ending::Dead(
                "write timed out: the server stopped reading".into(),
            ));
        }
        (drained, ending)
    }
}

/// The connection's ending for a read error. Errors that break RFC 6455 are answered
/// with the Close its §7.1.7 asks for (1002, 1007 for invalid UTF-8, 1009 for a message
/// over `--max-message-size`) before the TCP connection is dropped.
fn fail<S: Drain>(ws: &mut WebSocket<S>, err: tungstenite::Error) -> Ending {
    use tungstenite::error::ProtocolError;
    let (code, reason, why) = match err {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            return Ending::Dropped("connection closed by server".into());
        }
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            // A server restart or a proxy's idle cut: FIN without a Close frame.
            return Ending::Dropped(
                "server closed the TCP connection without a Close frame".into(),
            );
        }
        tungstenite::Error::Io(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ) =>
        {
            // Also what a heartbeat meets when a NAT on the way has forgotten the flow.
            return Ending::Dropped(format!("read: {err}"));
        }
        tungstenite::Error::Io(err) => return Ending::Dead(format!("read: {err}")),
        tungstenite::Error::Capacity(err) => (
            CloseCode::Size,
            "message too big",
            format!("incoming message over --max-message-size ({err}), closed with 1009"),
        ),
        tungstenite::Error::Utf8(err) => (
            CloseCode::Invalid,
            "invalid UTF-8",
            format!("invalid UTF-8 in a text message ({err}), closed with 1007"),
        ),
        tungstenite::Error::Protocol(err) => (
            CloseCode::Protocol,
            "protocol error",
            format!("protocol error: {err}, closed with 1002"),
        ),
        other => return Ending::Dead(format!("read: {other}")),
    };
    // `close` queues the frame and flushes it, bounded by the write timeout.
    let _ = ws.close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    Ending::Dead(why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Read, Write};
    use tungstenite::protocol::{Role, WebSocketConfig};

    /// A stream that holds what the server sent and records what the client wrote.
    #[derive(Default)]
    struct Mock {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
        draining: bool,
        /// Writes time out (the peer stopped reading) ...
        refuse_writes: bool,
        /// ... and one has.
        stalled: bool,
        write_attempts: usize,
        /// Once the input is read, reads fail like this instead of `WouldBlock`.
        read_error: Option<io::ErrorKind>,
    }

    impl Read for Mock {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.input.read(buf)?;
            if let Some(kind) = self.read_error.filter(|_| n == 0) {
                return Err(kind.into());
            }
            if n == 0 && self.draining && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
    }

    impl Write for Mock {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_attempts += 1;
            if self.refuse_writes {
                self.stalled = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Drain for Mock {
        fn set_draining(&mut self, on: bool) {
            self.draining = on;
        }

        fn write_stalled(&self) -> bool {
            self.stalled
        }
    }

    /// An unmasked server frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut f = vec![first, payload.len() as u8];
        f.extend_from_slice(payload);
        f
    }

    fn client(input: Vec<u8>) -> WebSocket<Mock> {
        let mock = Mock {
            input: io::Cursor::new(input),
            ..Mock::default()
        };
        WebSocket::from_raw_socket(mock, Role::Client, Some(WebSocketConfig::default()))
    }

    /// The client's frames (masked): opcode and unmasked payload of each.
    fn written(ws: &WebSocket<Mock>) -> Vec<(u8, Vec<u8>)> {
        let mut out = ws.get_ref().output.as_slice();
        let mut frames = Vec::new();
        while out.len() >= 6 {
            let opcode = out[0] & 0x0f;
            let len = usize::from(out[1] & 0x7f);
            assert!(len < 126, "short frames only");
            let mask = [out[2], out[3], out[4], out[5]];
            let payload = out[6..6 + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            frames.push((opcode, payload));
            out = &out[6 + len..];
        }
        frames
    }

    fn run(ws: &mut WebSocket<Mock>) -> (bool, Option<Ending>, Vec<String>, usize) {
        let (mut texts, mut proofs) = (Vec::new(), Vec::new());
        let (drained, ending) = drain(ws, Some("pong"), &mut texts, &mut proofs);
        (drained, ending, texts, proofs.len())
    }

    fn close_code(ws: &WebSocket<Mock>) -> Option<u16> {
        written(ws)
            .into_iter()
            .find(|(opcode, _)| *opcode == 0x8)
            .map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]))
    }

    #[test]
    fn buffered_frames_are_handled_without_waiting_for_the_socket() {
        // A welcome message, a Ping and a Close that came with the handshake response.
        let mut input = frame(0x81, b"welcome");
        input.extend(frame(0x89, b"srv"));
        input.extend(frame(0x88, &1000u16.to_be_bytes()));
        let mut ws = client(input);
        let (_, ending, texts, _) = run(&mut ws);
        assert_eq!(texts, ["welcome"]);
        assert!(matches!(ending, Some(Ending::Closed(_))), "{ending:?}");
        let frames = written(&ws);
        assert_eq!(frames[0], (0xA, b"srv".to_vec()), "the Ping is answered");
        assert_eq!(close_code(&ws), Some(1000), "the Close is answered");
    }

    #[test]
    fn a_text_pong_is_a_proof_not_a_message() {
        let mut ws = client(frame(0x81, b"pong"));
        let (drained, ending, texts, proofs) = run(&mut ws);
        assert!(drained && ending.is_none() && texts.is_empty());
        assert_eq!(proofs, 1);
    }

    #[test]
    fn a_turn_takes_at_most_a_batch() {
        let input = (0..BATCH + 5).flat_map(|_| frame(0x81, b"x")).collect();
        let mut ws = client(input);
        let (drained, _, texts, _) = run(&mut ws);
        assert_eq!((drained, texts.len()), (false, BATCH));
        let (drained, _, texts, _) = run(&mut ws);
        assert_eq!((drained, texts.len()), (true, 5));
    }

    #[test]
    fn protocol_errors_are_answered_with_1002_before_the_end() {
        let mut masked = vec![0x81, 0x82, 1, 2, 3, 4];
        masked.extend([b'h' ^ 1, b'i' ^ 2]);
        let cases: [(&str, Vec<u8>); 5] = [
            ("masked server frame", masked),
            ("reserved bits", frame(0xC1, b"x")),
            ("reserved opcode", frame(0x83, b"x")),
            ("orphan continuation", frame(0x80, b"x")),
            ("fragmented control frame", frame(0x09, b"x")),
        ];
        for (what, input) in cases {
            let mut ws = client(input);
            let (_, ending, _, _) = run(&mut ws);
            assert!(
                matches!(&ending, Some(Ending::Dead(reason)) if reason.contains("1002")),
                "{what}: {ending:?}"
            );
            assert_eq!(close_code(&ws), Some(1002), "{what}");
        }
    }

    #[test]
    fn invalid_utf8_is_answered_with_1007() {
        let mut ws = client(frame(0x81, &[0xff, 0xfe]));
        let (_, ending, texts, _) = run(&mut ws);
        assert!(texts.is_empty());
        assert!(
            matches!(&ending, Some(Ending::Dead(reason)) if reason.contains("1007")),
            "{ending:?}"
        );
        assert_eq!(close_code(&ws), Some(1007));
    }

    #[test]
    fn a_stalled_write_ends_the_connection_although_frames_keep_coming() {
        let input = (0..3).flat_map(|_| frame(0x89, b"p")).collect();
        let mut ws = client(input);
        ws.get_mut().refuse_writes = true;
        let (_, ending, _, proofs) = run(&mut ws);
        assert_eq!(proofs, 1, "the Ping still counts as a frame");
        // The first blocked Pong ends the turn: the other Pings do not wait in turn.
        assert_eq!(ws.get_ref().write_attempts, 1, "wrote on after the stall");
        assert!(
            matches!(&ending, Some(Ending::Dead(reason)) if reason.contains("write timed out")),
            "{ending:?}"
        );
    }

    #[test]
    fn a_reset_is_the_peer_dropping_the_connection() {
        // What a heartbeat meets when a NAT has forgotten the flow: an RST. It ends the
        // connection as dropped by the peer (evidence for --ping-interval auto), not as
        // an unexplained read error.
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
        ] {
            let mut ws = client(Vec::new());
            ws.get_mut().read_error = Some(kind);
            let (_, ending, _, _) = run(&mut ws);
            assert!(
                matches!(ending, Some(Ending::Dropped(_))),
                "{kind:?}: {ending:?}"
            );
        }
        let mut ws = client(Vec::new());
        ws.get_mut().read_error = Some(io::ErrorKind::PermissionDenied);
        let (_, ending, _, _) = run(&mut ws);
        assert!(matches!(ending, Some(Ending::Dead(_))), "{ending:?}");
    }
}
