//! Opening a connection: resolve, TCP (Happy Eyeballs, [`crate::net::eyeballs`]), the HTTP
//! proxy's tunnel if any ([`crate::net::tunnel`]), TLS, WebSocket upgrade, all under one
//! deadline (`--connect-timeout`), and classifying why an attempt failed.
//!
//! tungstenite's own `connect`/`client_tls*` have no overall timeout and panic when
//! a stalled TLS handshake meets a socket read timeout (upstream issue #450), so
//! the TLS handshake is driven here with native-tls and only the upgrade is left
//! to `client_with_config`. Each blocking step gets the socket timeouts set to the
//! time left, and an interrupted step is resumed until the deadline passes.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(feature = "tls")]
use native_tls::{HandshakeError as TlsHandshakeError, TlsStream};
use tungstenite::WebSocket;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::{HeaderName, HeaderValue};
use tungstenite::protocol::WebSocketConfig;

use crate::config::Target;
use crate::config::proxy::Proxy;
use crate::error::{ConnectError, Stage};
use crate::net::eyeballs::{self, Wake};
use crate::net::stream::{Connection, Socket, Stream, stream_length};
use crate::net::tls::Connector;
use crate::net::tunnel;
use crate::report::traffic::Traffic;
use crate::sync;

/// What one connection attempt needs.
pub struct AttemptPlan<'a> {
    /// Where to.
    pub target: &'a Target,
    /// Extra handshake headers.
    pub headers: &'a [(String, String)],
    /// Subprotocols to offer.
    pub subprotocols: &'a [String],
    /// Present for `wss://`.
    pub tls: Option<&'a Connector>,
    /// tungstenite buffers and limits.
    pub ws_config: WebSocketConfig,
    /// Bound on each later write (heartbeat, data, close).
    pub write_timeout: Duration,
    /// HTTP CONNECT proxy to tunnel through, if any.
    pub proxy: Option<&'a Proxy>,
    /// Where the connection's bytes are counted.
    pub traffic: &'a Arc<Traffic>,
}

/// Lets the supervisor cut short an attempt it no longer wants (stop, reload, past its
/// deadline): once the TCP socket exists, shutting it down fails the TLS handshake or
/// upgrade at once, so the attempt's thread ends and is joined instead of running on to
/// its deadline. TCP connects in flight end at once too (the armed [`Wake`]); DNS cannot
/// be cut short and ends by the deadline. It also tells which stage the attempt is in, so
/// a supervisor that gives up on it can say what ran out of time.
#[derive(Default)]
pub struct Abort(Mutex<AbortState>);

#[derive(Default)]
struct AbortState {
    /// Signalled by [`Abort::abort`]: ends a wait on TCP connects in flight (Happy Eyeballs).
    wake: Option<Arc<Wake>>,
    aborted: bool,
    /// A second handle on the attempt's socket, for [`Abort::abort`].
    socket: Option<TcpStream>,
    /// The step under way.
    stage: Stage,
}

impl Abort {
    /// Ends the attempt's I/O now, or makes it stop as soon as its socket exists.
    pub fn abort(&self) {
        let mut state = sync::lock(&self.0);
        state.aborted = true;
        if let Some(wake) = &state.wake {
            wake.signal();
        }
        if let Some(socket) = state.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// The step the attempt is in (or was in when it ended).
    pub fn stage(&self) -> Stage {
        sync::lock(&self.0).stage
    }

    fn enter(&self, stage: Stage) {
        sync::lock(&self.0).stage = stage;
    }

    fn watch(&self, socket: &TcpStream) -> Result<(), ConnectError> {
        let mut state = sync::lock(&self.0);
        if state.aborted {
            return Err(ConnectError::Tcp(io::Error::new(
                io::ErrorKind::Interrupted,
                "attempt abandoned",
            )));
        }
        state.socket = Some(socket.try_clone().map_err(ConnectError::Tcp)?);
        Ok(())
    }
}

/// Opens and upgrades a connection before `deadline`, unless `abort` says stop first.
pub fn connect(
    dial: &AttemptPlan<'_>,
    deadline: Instant,
    abort: &Abort,
) -> Result<Connection, ConnectError> {
    let addrs = resolve(dial)?;
    if Instant::now() >= deadline {
        return Err(ConnectError::Timeout(Stage::Resolve));
    }
    abort.enter(Stage::Tcp);
    let tcp = connect_tcp(&addrs, deadline, abort, dial.proxy)?;
    abort.watch(&tcp)?;
    if let Some(through) = dial.proxy {
        abort.enter(Stage::Proxy);
        tunnel::tunnel(&tcp, through, dial.target, deadline)?;
    }
    let control = tcp.try_clone().map_err(ConnectError::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let written = stream_length(&tcp);
    let stream = match dial.tls {
        #[cfg(feature = "tls")]
        Some(connector) => Stream::Tls(Box::new(handshake_tls(
            abort,
            connector,
            &dial.target.host,
            Socket::new(tcp, Arc::clone(dial.traffic), written),
            &control,
            deadline,
        )?)),
        #[cfg(not(feature = "tls"))]
        Some(connector) => match *connector {},
        None => Stream::Plain(Socket::new(tcp, Arc::clone(dial.traffic), written)),
    };
    abort.enter(Stage::Upgrade);
    let (ws, subprotocol) = upgrade(dial, stream, &control, deadline)?;
    control.set_read_timeout(None).map_err(ConnectError::Tcp)?;
    control
        .set_write_timeout(Some(dial.write_timeout.max(Duration::from_millis(1))))
        .map_err(ConnectError::Tcp)?;
    Ok(Connection {
        ws,
        tcp: control,
        subprotocol,
    })
}

/// The addresses of the target, or of the proxy when there is one (the proxy resolves
/// the target).
fn resolve(dial: &AttemptPlan<'_>) -> Result<Vec<SocketAddr>, ConnectError> {
    let (host, port, whose) = match dial.proxy {
        Some(proxy) => (proxy.host.as_str(), proxy.port, "proxy "),
        None => (dial.target.host.as_str(), dial.target.port, ""),
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| ConnectError::Resolve(format!("{whose}{host}: {err}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::Resolve(format!(
            "{whose}{host}: no addresses"
        )));
    }
    Ok(addrs)
}

/// Time left before `deadline`, or the timeout error for `stage`. Never zero,
/// because a zero socket timeout is rejected by std.
fn remaining(deadline: Instant, stage: Stage) -> Result<Duration, ConnectError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ConnectError::Timeout(stage))
    } else {
        Ok(left.max(Duration::from_millis(1)))
    }
}

/// Happy Eyeballs over `addrs` (see [`dial`]), cut short by `abort`. A failure to reach
/// a proxy names it.
fn connect_tcp(
    addrs: &[SocketAddr],
    deadline: Instant,
    abort: &Abort,
    through: Option<&Proxy>,
) -> Result<TcpStream, ConnectError> {
    let wake = Arc::new(Wake::new().map_err(ConnectError::Tcp)?);
    abort.arm(Some(Arc::clone(&wake)))?;
    let result = eyeballs::connect(addrs, deadline, &wake);
    let _ = abort.arm(None);
    match (result, through) {
        (Err(ConnectError::Tcp(err)), Some(proxy)) if err.kind() != io::ErrorKind::Interrupted => {
            Err(ConnectError::Tcp(io::Error::new(
                err.kind(),
                format!("proxy {proxy}: {err}"),
            )))
        }
        (result, _) => result,
    }
}

impl Abort {
    /// Makes [`Abort::abort`] signal `wake` (`None`: nothing); an attempt aborted already
    /// is an error at once.
    fn arm(&self, wake: Option<Arc<Wake>>) -> Result<(), ConnectError> {
        let mut state = sync::lock(&self.0);
        if state.aborted && wake.is_some() {
            return Err(ConnectError::Tcp(io::Error::new(
                io::ErrorKind::Interrupted,
                "attempt abandoned",
            )));
        }
        state.wake = wake;
        Ok(())
    }
}

fn set_timeouts(control: &TcpStream, deadline: Instant, stage: Stage) -> Result<(), ConnectError> {
    let left = remaining(deadline, stage)?;
    control
        .set_read_timeout(Some(left))
        .and_then(|()| control.set_write_timeout(Some(left)))
        .map_err(ConnectError::Tcp)
}

#[cfg(feature = "tls")]
fn handshake_tls(
    abort: &Abort,
    connector: &Connector,
    host: &str,
    socket: Socket,
    control: &TcpStream,
    deadline: Instant,
) -> Result<TlsStream<Socket>, ConnectError> {
    abort.enter(Stage::Tls);
    set_timeouts(control, deadline, Stage::Tls)?;
    let mut attempt = connector.connect(host, socket);
    loop {
        match attempt {
            Ok(stream) => {
                connector
                    .check_host_names(&stream, host)
                    .map_err(ConnectError::Tls)?;
                return Ok(stream);
            }
            Err(TlsHandshakeError::WouldBlock(mid)) => {
                // A socket timeout fired mid-handshake; resume with whatever time is left.
                set_timeouts(control, deadline, Stage::Tls)?;
                attempt = mid.handshake();
            }
            Err(TlsHandshakeError::Failure(err)) => return Err(ConnectError::Tls(err.to_string())),
        }
    }
}

fn upgrade(
    dial: &AttemptPlan<'_>,
    stream: Stream,
    control: &TcpStream,
    deadline: Instant,
) -> Result<(WebSocket<Stream>, Option<String>), ConnectError> {
    let mut request = dial
        .target
        .url
        .as_str()
        .into_client_request()
        .map_err(|err| ConnectError::Handshake(err.to_string()))?;
    let headers = request.headers_mut();
    for (name, value) in dial.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError::Handshake(format!("invalid header name {name}")))?;
        // Never echo the value: it is often a secret.
        let value = HeaderValue::from_str(value)
            .map_err(|_| ConnectError::Handshake(format!("invalid value for header {name}")))?;
        headers.append(name, value);
    }
    if !dial.subprotocols.is_empty() {
        let offered = dial.subprotocols.join(", ");
        let value = HeaderValue::from_str(&offered)
            .map_err(|_| ConnectError::Handshake(format!("invalid subprotocol {offered}")))?;
        headers.insert("Sec-WebSocket-Protocol", value);
    }
    set_timeouts(control, deadline, Stage::Upgrade)?;
    let mut attempt =
        tungstenite::client::client_with_config(request, stream, Some(dial.ws_config));
    loop {
        match attempt {
            Ok((ws, response)) => {
                // We offer no extension, so any the server selects was not offered, and its
                // frames (RSV bits, compressed payloads) would fail every read. RFC 6455 §4.1:
                // the client must fail the connection. tungstenite checks subprotocols only.
                if let Some(names) = extension_names(response.headers()) {
                    return Err(ConnectError::Handshake(format!(
                        "the server selected extension {names}, which was not offered"
                    )));
                }
                let subprotocol = response
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                return Ok((ws, subprotocol));
            }
            Err(HandshakeError::Interrupted(mid)) => {
                set_timeouts(control, deadline, Stage::Upgrade)?;
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(err)) => return Err(classify(err)),
        }
    }
}

/// The extensions named by `Sec-WebSocket-Extensions` (each name without its parameters,
/// comma-separated), or `None` if there are none. Names are reduced to token characters and
/// shortened, since they come from the server and go to the log.
fn extension_names(headers: &tungstenite::http::HeaderMap) -> Option<String> {
    let names: Vec<String> = headers
        .get_all("Sec-WebSocket-Extensions")
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|item| {
                    let name = item.split(';').next().unwrap_or("").trim();
                    name.chars()
                        .filter(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c))
                        .take(64)
                        .collect::<String>()
                })
                .filter(|name| !name.is_empty())
                .collect::<Vec<_>>()
        })
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn classify(err: tungstenite::Error) -> ConnectError {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let retry_after = if status == 429 || status == 503 {
                response
                    .headers()
                    .get("Retry-After")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()))
            } else {
                None
            };
            ConnectError::Rejected {
                status,
                retry_after,
            }
        }
        tungstenite::Error::Io(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            ConnectError::Timeout(Stage::Upgrade)
        }
        other => ConnectError::Handshake(other.to_string()),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date, relative to `now`.
/// A date in the past means "now"; anything unparseable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an HTTP-date in any of the three forms RFC 9110 §5.6.7
/// requires a recipient to accept:
/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate), `Sunday, 06-Nov-94 08:49:37 GMT`
/// (obsolete RFC 850) and `Sun Nov  6 08:49:37 1994` (obsolete asctime).
fn parse_http_date(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let (day, month, year, clock): (u64, &str, u64, &str) = match parts.as_slice() {
        [weekday, day, month, year, clock, "GMT"] if weekday.ends_with(',') => {
            (day.parse().ok()?, *month, year.parse().ok()?, *clock)
        }
        [weekday, date, clock, "GMT"] if weekday.ends_with(',') => {
            let mut fields = date.split('-');
            let (day, month, year) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || year.len() != 2 {
                return None;
            }
            // Two-digit years: the pivot RFC 9110 asks for ("more than 50 years in the
            // future" means the past century) gives the same answer as 70 until 2046.
            let year: u64 = year.parse().ok()?;
            let year = if year < 70 { 2000 + year } else { 1900 + year };
            (day.parse().ok()?, month, year, *clock)
        }
        [_weekday, month, day, clock, year] => {
            (day.parse().ok()?, *month, year.parse().ok()?, *clock)
        }
        _ => return None,
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut clock = clock.split(':').map(|n| n.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days from civil (Howard Hinnant), for years from 1970.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_names_are_named_without_parameters() {
        let mut headers = tungstenite::http::HeaderMap::new();
        assert_eq!(extension_names(&headers), None);
        headers.append("Sec-WebSocket-Extensions", "".parse().unwrap());
        assert_eq!(extension_names(&headers), None);
        headers.append(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits=15, x-webkit-deflate-frame"
                .parse()
                .unwrap(),
        );
        headers.append(
            "Sec-WebSocket-Extensions",
            "evil\tname; a=b".parse().unwrap(),
        );
        assert_eq!(
            extension_names(&headers).as_deref(),
            Some("permessage-deflate, x-webkit-deflate-frame, evilname")
        );
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert!(parse_retry_after("99999999999999999999999", now).is_some());
    }

    #[test]
    fn retry_after_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Wed, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37:01 GMT"), None);
    }

    #[test]
    fn retry_after_obsolete_http_dates() {
        let fixdate = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fixdate, Some(784_111_777));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), fixdate);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), fixdate);
        assert_eq!(
            parse_http_date("Thursday, 26-Nov-26 12:00:00 GMT"),
            Some(1_795_694_400)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-1994 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 UTC"), None);
        assert_eq!(parse_http_date("Sun Nov  6 08:49:37"), None);
    }
}
