//! What the server does on a connection: the handshake, the answers to Pings, what it
//! sends and when. [`Behavior`] and its shortcuts.

use std::time::Duration;

/// A message the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// Bytes written as they are: a hand-made frame, valid or not (see [`super::frame()`]).
    Raw(Vec<u8>),
}

/// How the opening handshake goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Handshake {
    /// Upgrade, answering with the first requested subprotocol (if any).
    #[default]
    Accept,
    /// Answer the upgrade request with this status and extra headers (e.g. 503 + Retry-After).
    Reject {
        /// HTTP status.
        status: u16,
        /// Extra response headers.
        headers: Vec<(String, String)>,
    },
    /// Accept TCP and say nothing, not even TLS: a connect-timeout test (also for `wss://`,
    /// where the client's TLS handshake stalls).
    Stall,
    /// Complete TLS (if any), read the upgrade request, never answer it.
    StallUpgrade,
    /// Plain connections only: read the upgrade request, then answer with a 101 status line
    /// and a header line that never ends, one byte every [`TRICKLE`]: a slow-loris server whose
    /// every read returns something, so no socket timeout ever fires.
    Trickle,
}

/// The pace of [`Handshake::Trickle`].
pub const TRICKLE: Duration = Duration::from_millis(100);

/// How Pings from the client are answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pongs {
    /// A Pong with the same payload, at once.
    #[default]
    Normal,
    /// A Pong with a payload that differs from the Ping's.
    WrongPayload,
    /// No Pong at all (the Ping is still read and recorded).
    Never,
}

/// What the server does on a connection. Build with [`Behavior::default`] (accept, read and
/// record, answer pings, send nothing) or the shortcuts, then chain modifiers.
#[derive(Debug, Clone)]
pub struct Behavior {
    /// The opening handshake.
    pub handshake: Handshake,
    /// Answers to Pings.
    pub pongs: Pongs,
    /// Read frames after the handshake. `false` = never read: truly silent, nothing recorded,
    /// no Pongs, no disconnect noticed, and the client's writes eventually fill the buffers.
    pub read: bool,
    /// Send received text and binary messages back.
    pub echo: bool,
    /// Sent right after the handshake.
    pub on_connect: Vec<Msg>,
    /// Sent periodically, first one after one period.
    pub every: Option<(Duration, Msg)>,
    /// Server Pings at this period (payload `srv-<seq>`); their Pongs are recorded with latency.
    pub ping_every: Option<Duration>,
    /// Send a Close frame with this code and reason after this delay.
    pub close_after: Option<(Duration, u16, String)>,
    /// Shut the TCP connection down (no Close frame) after this delay.
    pub drop_after: Option<Duration>,
    /// Send text messages of this size back to back, as fast as the client takes them.
    pub flood: Option<usize>,
    /// Send 125-byte Pings back to back, as fast as the client takes them.
    pub ping_flood: bool,
    /// Text replies: when a text equal to `.0` arrives, send `.1` (e.g. `("ping", "pong")`).
    pub replies: Vec<(String, String)>,
    /// Plain connections: bytes (frames) written in the same `write()` call as the 101
    /// response, so they reach the client in the handshake's own segment.
    pub with_101: Vec<u8>,
    /// Extra headers on the 101 response (e.g. an extension the client never offered).
    pub response_headers: Vec<(String, String)>,
    /// Plain connections: stop reading once this many text messages have arrived, until
    /// [`super::Server::close_after_draining`] says to read what the kernel holds and close.
    pub stop_reading_after: Option<usize>,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            handshake: Handshake::Accept,
            pongs: Pongs::Normal,
            read: true,
            echo: false,
            on_connect: Vec::new(),
            every: None,
            ping_every: None,
            close_after: None,
            drop_after: None,
            flood: None,
            ping_flood: false,
            replies: Vec::new(),
            with_101: Vec::new(),
            response_headers: Vec::new(),
            stop_reading_after: None,
        }
    }
}

impl Behavior {
    /// Accept and echo texts and binaries; Pings answered.
    pub fn echo() -> Behavior {
        Behavior {
            echo: true,
            ..Behavior::default()
        }
    }

    /// Accept, then never read or write again (alive TCP, dead peer).
    pub fn silent() -> Behavior {
        Behavior {
            read: false,
            ..Behavior::default()
        }
    }

    /// Reject the upgrade with `status` and `headers`.
    pub fn reject(status: u16, headers: &[(&str, &str)]) -> Behavior {
        Behavior {
            handshake: Handshake::Reject {
                status,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            ..Behavior::default()
        }
    }

    /// Accept TCP and say nothing (see [`Handshake::Stall`]).
    pub fn stall() -> Behavior {
        Behavior {
            handshake: Handshake::Stall,
            ..Behavior::default()
        }
    }

    /// Complete TLS, never answer the upgrade (see [`Handshake::StallUpgrade`]).
    pub fn stall_upgrade() -> Behavior {
        Behavior {
            handshake: Handshake::StallUpgrade,
            ..Behavior::default()
        }
    }

    /// Answers the upgrade request slowly, never finishing (see [`Handshake::Trickle`]).
    pub fn trickle() -> Behavior {
        Behavior {
            handshake: Handshake::Trickle,
            ..Behavior::default()
        }
    }

    /// Appends `frames` (see [`super::encode`], [`super::frame()`]) to the 101 response, in
    /// the same write.
    pub fn with_101(mut self, frames: &[u8]) -> Behavior {
        self.with_101.extend_from_slice(frames);
        self
    }

    /// Adds the header `name: value` to the 101 response.
    pub fn response_header(mut self, name: &str, value: &str) -> Behavior {
        self.response_headers.push((name.into(), value.into()));
        self
    }

    /// Sets how Pings are answered.
    pub fn pongs(mut self, p: Pongs) -> Behavior {
        self.pongs = p;
        self
    }

    /// Sends `text` right after the handshake.
    pub fn send(mut self, text: &str) -> Behavior {
        self.on_connect.push(Msg::Text(text.into()));
        self
    }

    /// Sends `msg` right after the handshake.
    pub fn send_msg(mut self, msg: Msg) -> Behavior {
        self.on_connect.push(msg);
        self
    }

    /// Sends `text` every `period`.
    pub fn send_every(mut self, period: Duration, text: &str) -> Behavior {
        self.every = Some((period, Msg::Text(text.into())));
        self
    }

    /// Sends a server Ping every `period`.
    pub fn ping_every(mut self, period: Duration) -> Behavior {
        self.ping_every = Some(period);
        self
    }

    /// Sends Close(`code`, `reason`) after `delay`.
    pub fn close_after(mut self, delay: Duration, code: u16, reason: &str) -> Behavior {
        self.close_after = Some((delay, code, reason.into()));
        self
    }

    /// Drops TCP (FIN, no Close frame) after `delay`.
    pub fn drop_after(mut self, delay: Duration) -> Behavior {
        self.drop_after = Some(delay);
        self
    }

    /// Answers a text equal to `on` with the text `with`.
    pub fn reply(mut self, on: &str, with: &str) -> Behavior {
        self.replies.push((on.into(), with.into()));
        self
    }

    /// Floods the largest Pings a control frame allows (with [`Behavior::silent`]: a peer
    /// that stops reading but keeps talking, so every Pong the client owes piles up).
    pub fn ping_flood(mut self) -> Behavior {
        self.ping_flood = true;
        self
    }

    /// Stops reading after `texts` text messages (see the field of the same name).
    pub fn stop_reading_after(mut self, texts: usize) -> Behavior {
        self.stop_reading_after = Some(texts);
        self
    }

    /// Floods `size`-byte text messages.
    pub fn flood(mut self, size: usize) -> Behavior {
        self.flood = Some(size);
        self
    }
}
