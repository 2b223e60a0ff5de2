//! Hostile and careless servers, driven by the scripted server's raw-frame behaviours: frames
//! that arrive in the handshake's own segment, frames that break RFC 6455, a 101 that selects
//! an extension or subprotocol the client never offered, and an upgrade answered so slowly that
//! the connect deadline, not a socket timeout, has to end it.

use std::time::Instant;

use crate::util::server::{
    Behavior, Event, FIN, Kind, Msg, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, Server,
    encode, frame,
};
use crate::util::{WAIT, Wsbeat, ms, scaled};

// ---------------------------------------------------------------------------------------------
// Frames in the same segment as the 101 response (SPEC "Data": handled at once)
// ---------------------------------------------------------------------------------------------

// `--ping-interval 0` in these tests: no heartbeat, so nothing the server sends later can wake
// a reader that left the frames buffered; what arrived with the 101 must be handled on its own.

#[test]
fn welcome_message_in_the_handshake_segment_is_printed_at_once() {
    let server = Server::start(Behavior::default().with_101(&encode(OP_TEXT, b"welcome")));
    let mut c = Wsbeat::new()
        .fast_with(&[("--ping-interval", "0")])
        .arg(server.url())
        .spawn();
    server.expect_upgrades(WAIT(), 1);
    c.expect_line(WAIT(), "'welcome'", |l| l == "welcome");
}

#[test]
fn ping_in_the_handshake_segment_is_answered_at_once() {
    let server = Server::start(Behavior::default().with_101(&encode(OP_PING, b"srv-hello")));
    let _c = Wsbeat::new()
        .fast_with(&[("--ping-interval", "0")])
        .arg(server.url())
        .spawn();
    server.expect(
        WAIT(),
        "the Pong for the Ping sent with the 101",
        |e| matches!(&e.kind, Kind::Pong { payload, .. } if payload == b"srv-hello"),
    );
}

#[test]
fn close_in_the_handshake_segment_is_answered_at_once() {
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"go away");
    let server = Server::start_first(Behavior::default().with_101(&encode(OP_CLOSE, &close)));
    let _c = Wsbeat::new()
        .fast_with(&[("--ping-interval", "0")])
        .arg(server.url())
        .spawn();
    let reply = server.expect(WAIT(), "the client's Close reply", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Close { .. })
    });
    assert!(
        matches!(
            reply.kind,
            Kind::Close {
                code: Some(4000),
                ..
            }
        ),
        "{reply:?}\n{}",
        server.dump()
    );
    server.expect_upgrades(WAIT(), 2);
}

// ---------------------------------------------------------------------------------------------
// Protocol errors (SPEC "Real networks" → Protocol errors; RFC 6455 §7.1.7)
// ---------------------------------------------------------------------------------------------

/// The server sends `bad` (one or more raw frames) after the handshake on its first
/// connection. The client must answer with a Close carrying `code` before it drops TCP, then
/// connect again.
fn fails_with_close(bad: Vec<u8>, code: u16) {
    let server = Server::start_first(Behavior::default().send_msg(Msg::Raw(bad)));
    let _c = Wsbeat::new().fast().arg(server.url()).spawn();
    // Whichever comes first: the client's Close, or the TCP connection ending without one.
    let first = server.expect(WAIT(), "a Close or the end of connection 0", |e| {
        e.conn == 0 && matches!(e.kind, Kind::Close { .. } | Kind::Disconnected)
    });
    assert!(
        matches!(&first.kind, Kind::Close { code: Some(c), .. } if *c == code),
        "expected a Close with {code} before the TCP connection ends, got {:?}\n{}",
        first.kind,
        server.dump()
    );
    server.expect_upgrades(WAIT(), 2);
}

#[test]
fn masked_server_frame_is_closed_with_1002() {
    fails_with_close(frame(FIN | OP_TEXT, Some([1, 2, 3, 4]), b"masked"), 1002);
}

#[test]
fn reserved_bit_is_closed_with_1002() {
    // RSV1: what a permessage-deflate server sets on a compressed frame.
    fails_with_close(frame(FIN | 0x40 | OP_TEXT, None, b"rsv1"), 1002);
}

#[test]
fn reserved_data_opcode_is_closed_with_1002() {
    fails_with_close(frame(FIN | 0x3, None, b"op3"), 1002);
}

#[test]
fn reserved_control_opcode_is_closed_with_1002() {
    fails_with_close(frame(FIN | 0xB, None, b"op11"), 1002);
}

#[test]
fn continuation_without_a_start_is_closed_with_1002() {
    fails_with_close(frame(FIN | OP_CONT, None, b"orphan"), 1002);
}

#[test]
fn new_message_inside_a_fragmented_one_is_closed_with_1002() {
    let mut bad = frame(OP_TEXT, None, b"first half");
    bad.extend(frame(FIN | OP_BINARY, None, b"not a continuation"));
    fails_with_close(bad, 1002);
}

#[test]
fn oversized_control_frame_is_closed_with_1002() {
    fails_with_close(frame(FIN | OP_PING, None, &[b'p'; 126]), 1002);
}

#[test]
fn fragmented_control_frame_is_closed_with_1002() {
    fails_with_close(frame(OP_PING, None, b"no fin"), 1002);
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    fails_with_close(frame(FIN | OP_TEXT, None, b"bad \xc3\x28 text"), 1007);
}

#[test]
fn invalid_utf8_across_fragments_is_closed_with_1007() {
    // "€" is E2 82 AC; the continuation breaks it off after its first byte.
    let mut bad = frame(OP_TEXT, None, b"euro \xe2");
    bad.extend(frame(FIN | OP_CONT, None, b"\x28\xac"));
    fails_with_close(bad, 1007);
}

// ---------------------------------------------------------------------------------------------
// Handshake responses the client must refuse (RFC 6455 §4.1)
// ---------------------------------------------------------------------------------------------

/// A 101 selecting an extension the client never offered fails the attempt; the attempt is
/// an ordinary failed one (backoff, `--max-retries`) and the log names the extension.
#[test]
fn unrequested_extension_fails_the_handshake() {
    let server = Server::start(Behavior::default().response_header(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits=15",
    ));
    let out = Wsbeat::new()
        .fast()
        .args(["--max-retries", "2"])
        .arg(server.url())
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    let naming = out
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("permessage-deflate"))
        .count();
    // One warning per failed attempt, then the final reason.
    assert!(naming >= 3, "the extension is not named\n{}", out.dump());
    assert!(
        out.stderr.contains("reconnecting in"),
        "no backoff\n{}",
        out.dump()
    );
    assert_eq!(server.upgrades(), 2, "{}", server.dump());
}

/// Kept as it was: a subprotocol the client did not offer fails the attempt too.
#[test]
fn unrequested_subprotocol_fails_the_handshake() {
    let server =
        Server::start(Behavior::default().response_header("Sec-WebSocket-Protocol", "chat.evil"));
    let out = Wsbeat::new()
        .fast()
        .args(["--max-retries", "1"])
        .arg(server.url())
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stderr.to_lowercase().contains("subprotocol"),
        "{}",
        out.dump()
    );
}

// ---------------------------------------------------------------------------------------------
// The connect deadline names the stage that ran out
// ---------------------------------------------------------------------------------------------

/// A server that answers the upgrade one byte at a time keeps every socket read busy, so only
/// the overall `--connect-timeout` ends the attempt; the failure names the upgrade, the stage
/// that ran out, not name resolution.
#[test]
fn trickled_upgrade_times_out_naming_the_upgrade() {
    let server = Server::start(Behavior::trickle());
    let started = Instant::now();
    let out = Wsbeat::new()
        .fast()
        .args(["--connect-timeout", "1s", "--max-retries", "1"])
        .arg(server.url())
        .run(WAIT());
    assert_eq!(out.code, Some(1), "{}", out.dump());
    assert!(
        out.stderr
            .contains("connect timeout during websocket upgrade"),
        "{}",
        out.dump()
    );
    assert!(!out.stderr.contains("during resolve"), "{}", out.dump());
    // Bounded by the deadline plus the supervisor's slack, not by the server's patience.
    let took = started.elapsed();
    assert!(took < ms(1000) + scaled(ms(3000)), "took {took:?}");
    assert!(server.count(Event::is_accepted) >= 1);
}
