//! The RFC 6455 frame codec the server speaks after the handshake: unmasked frames out
//! ([`encode`], or any bytes at all with [`frame`]), masked client frames in.

use std::io;

/// Continuation frame opcode.
pub const OP_CONT: u8 = 0;
/// Text frame opcode.
pub const OP_TEXT: u8 = 1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 8;
/// Ping frame opcode.
pub const OP_PING: u8 = 9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 10;
/// FIN bit of a frame's first byte.
pub const FIN: u8 = 0x80;

/// Largest message the server accepts from a client (protects the test from a runaway client).
const MAX_INCOMING: u64 = 64 << 20;

/// An unmasked server frame with FIN set.
pub fn encode(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(FIN | opcode, None, payload)
}

/// A frame with any first byte (FIN, RSV bits, opcode: valid or not), masked with `mask` if
/// given (which a server must never do): the raw material of protocol-error tests.
pub fn frame(first: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 14);
    v.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        v.push(mask_bit | n as u8);
    } else if n <= 0xffff {
        v.push(mask_bit | 126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(mask_bit | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            v.extend_from_slice(&m);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

/// A parsed frame: (fin, opcode, unmasked payload, bytes used).
pub(super) type Decoded = (bool, u8, Vec<u8>, usize);

/// One frame parsed from the front of `buf`: (fin, opcode, unmasked payload, bytes used).
/// `Ok(None)` if incomplete.
pub(super) fn decode(buf: &[u8]) -> io::Result<Option<Decoded>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut pos = 2;
    let mut len = u64::from(buf[1] & 0x7f);
    if len == 126 {
        if buf.len() < 4 {
            return Ok(None);
        }
        len = u64::from(u16::from_be_bytes([buf[2], buf[3]]));
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return Ok(None);
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[2..10]);
        len = u64::from_be_bytes(b);
        pos = 10;
    }
    if len > MAX_INCOMING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    if !masked {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "client frame not masked (RFC 6455 5.1)",
        ));
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let end = pos + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = buf[pos..end]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    Ok(Some((fin, opcode, payload, end)))
}
