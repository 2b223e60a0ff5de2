//! Extra handshake headers: `Name: value` from `--header`, `WSBEAT_HEADER` and
//! `--header-file`.
//!
//! Header values are often secrets (bearer tokens), so no error message built
//! here ever contains a value, nor a name that failed validation (a mistyped
//! line may be all secret). Only names that are valid HTTP tokens are echoed.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use tungstenite::http::{HeaderName, HeaderValue};

use crate::error::ConfigError;

/// Largest `--header-file` accepted; a header file holds a few tokens, not megabytes.
pub const MAX_HEADER_FILE_BYTES: u64 = 64 * 1024;

/// Characters an HTTP token (RFC 9110 `tchar`: header names, subprotocol names) may
/// hold besides letters and digits.
pub const TOKEN_PUNCTUATION: &str = "!#$%&'*+-.^_`|~";

/// Whether `c` may appear in an HTTP token.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || TOKEN_PUNCTUATION.contains(c)
}

/// Parses one `Name: value` header; the value is trimmed of surrounding blanks.
///
/// Returns the name as written and the trimmed value. Rejects names that are not
/// HTTP tokens, values with control or non-ASCII characters, and the headers the
/// WebSocket handshake sets itself (`Host`, `Upgrade`, `Connection`,
/// `Sec-WebSocket-*`, plus the body framing headers). The error never contains
/// the value, so it can be logged.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let Some((name, value)) = s.split_once(':') else {
        return Err("expected 'Name: value' (no ':' found)".into());
    };
    let name = name.trim_ascii();
    if name.is_empty() {
        return Err("expected 'Name: value' (empty header name)".into());
    }
    let header_name = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(header_name) => header_name,
        Err(_) => {
            // Do not echo the name: a line missing its ':' in the right place may be a token.
            let position = name
                .chars()
                .position(|c| !is_token_char(c))
                .map_or(1, |i| i + 1);
            return Err(format!(
                "invalid header name: character {position} is not allowed \
                 (use letters, digits and {TOKEN_PUNCTUATION})"
            ));
        }
    };
    if let Some(reason) = reserved(header_name.as_str()) {
        return Err(format!("header '{name}' {reason}"));
    }
    let value = value.trim_ascii();
    let valid_value = HeaderValue::from_str(value)
        .ok()
        .is_some_and(|header_value| header_value.to_str().is_ok());
    if !valid_value {
        return Err(format!(
            "invalid value for header '{name}' (only printable ASCII, spaces and tabs are allowed)"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// Why a (lowercase) header name cannot be set by the user, if it cannot.
fn reserved(lowercase_name: &str) -> Option<&'static str> {
    match lowercase_name {
        "sec-websocket-protocol" => Some("is set by the handshake; use --subprotocol instead"),
        "host"
        | "upgrade"
        | "connection"
        | "sec-websocket-key"
        | "sec-websocket-version"
        | "sec-websocket-extensions" => {
            Some("is set by the websocket handshake and cannot be given")
        }
        "content-length" | "transfer-encoding" => {
            Some("cannot be given (the upgrade request has no body)")
        }
        _ => None,
    }
}

/// Parses the text of a header file: one `Name: value` per line.
///
/// Blank lines and lines starting with `#` (after leading blanks) are ignored;
/// CRLF line ends and a leading UTF-8 byte-order mark are tolerated. An error
/// names the line number (`line 3: ...`) but never the header value.
pub fn parse_header_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut headers = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = parse_header(line).map_err(|err| format!("line {}: {err}", index + 1))?;
        headers.push(header);
    }
    Ok(headers)
}

/// Reads and parses `--header-file` (at most [`MAX_HEADER_FILE_BYTES`]).
///
/// Call it at start-up (a failure is exit 78) and again before every connect
/// and on SIGHUP, so rotated tokens are picked up. Only regular files are
/// accepted: a pipe could be read once only, and opening a FIFO could block.
pub fn read_header_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let error = |message: String| ConfigError {
        path: path.to_path_buf(),
        flag: "--header-file",
        message,
    };
    let metadata = std::fs::metadata(path).map_err(|err| error(format!("cannot read: {err}")))?;
    if !metadata.is_file() {
        return Err(error("not a regular file".into()));
    }
    let file = File::open(path).map_err(|err| error(format!("cannot read: {err}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_HEADER_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| error(format!("cannot read: {err}")))?;
    if bytes.len() as u64 > MAX_HEADER_FILE_BYTES {
        return Err(error(format!(
            "larger than {} KiB",
            MAX_HEADER_FILE_BYTES / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|err| {
        error(format!(
            "not valid UTF-8 (at byte {})",
            err.utf8_error().valid_up_to()
        ))
    })?;
    parse_header_file(&text).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn parses_name_and_trimmed_value() {
        assert_eq!(
            parse_header("Authorization: Bearer abc").unwrap(),
            pair("Authorization", "Bearer abc")
        );
        assert_eq!(parse_header("X-A:b").unwrap(), pair("X-A", "b"));
        assert_eq!(
            parse_header("  X-A \t:\t b c  ").unwrap(),
            pair("X-A", "b c")
        );
        assert_eq!(parse_header("X-Empty:").unwrap(), pair("X-Empty", ""));
        // Only the first ':' separates: values may hold colons (URLs, times).
        assert_eq!(
            parse_header("X-Url: http://a:1/b").unwrap(),
            pair("X-Url", "http://a:1/b")
        );
        assert_eq!(
            parse_header("x-odd_!#$%&'*+.^`|~: v").unwrap().0,
            "x-odd_!#$%&'*+.^`|~"
        );
    }

    #[test]
    fn rejects_malformed_headers_without_echoing_them() {
        assert_eq!(
            parse_header("Bearer secret").unwrap_err(),
            "expected 'Name: value' (no ':' found)"
        );
        assert_eq!(
            parse_header(": secret").unwrap_err(),
            "expected 'Name: value' (empty header name)"
        );
        let err = parse_header("Authorization Bearer secret: x").unwrap_err();
        assert_eq!(
            err,
            "invalid header name: character 14 is not allowed \
             (use letters, digits and !#$%&'*+-.^_`|~)"
        );
        assert!(!err.contains("secret"));
        let err = parse_header("X-Token: sec\u{1}ret").unwrap_err();
        assert_eq!(
            err,
            "invalid value for header 'X-Token' (only printable ASCII, spaces and tabs are allowed)"
        );
        assert!(parse_header("X-Token: caf\u{e9}").is_err());
        assert!(parse_header("X-Token: a\r\nHost: evil").is_err());
        assert!(parse_header("X-Token: a\u{7f}").is_err());
        assert!(parse_header("X\u{e9}: a").is_err());
    }

    #[test]
    fn rejects_headers_the_handshake_owns() {
        for name in [
            "Host",
            "upgrade",
            "CONNECTION",
            "Sec-WebSocket-Key",
            "sec-websocket-version",
            "Sec-WebSocket-Extensions",
        ] {
            assert_eq!(
                parse_header(&format!("{name}: x")).unwrap_err(),
                format!("header '{name}' is set by the websocket handshake and cannot be given")
            );
        }
        assert_eq!(
            parse_header("Sec-WebSocket-Protocol: chat").unwrap_err(),
            "header 'Sec-WebSocket-Protocol' is set by the handshake; use --subprotocol instead"
        );
        assert!(parse_header("Content-Length: 5").is_err());
        assert!(parse_header("Transfer-Encoding: chunked").is_err());
        // Close relatives are fine.
        assert!(parse_header("Sec-WebSocket-Foo: x").is_ok());
        assert!(parse_header("Hostname: x").is_ok());
    }

    #[test]
    fn header_file_skips_comments_and_blank_lines() {
        let text = "\u{feff}# token rotated by cron\r\n\
                    Authorization: Bearer abc\r\n\
                    \r\n\
                    \t  # indented comment\n\
                    X-Device:  board-7  \n\
                    X-Device: board-8";
        assert_eq!(
            parse_header_file(text).unwrap(),
            vec![
                pair("Authorization", "Bearer abc"),
                pair("X-Device", "board-7"),
                pair("X-Device", "board-8"),
            ]
        );
        assert_eq!(parse_header_file("").unwrap(), vec![]);
        assert_eq!(parse_header_file("\n\n# only comments\n").unwrap(), vec![]);
    }

    #[test]
    fn header_file_errors_name_the_line_not_the_value() {
        let err = parse_header_file("# c\nX-A: 1\nBearer hunter2\n").unwrap_err();
        assert_eq!(err, "line 3: expected 'Name: value' (no ':' found)");
        let err = parse_header_file("X-A: 1\r\nX-B: hunter2\u{0}\r\n").unwrap_err();
        assert!(
            err.starts_with("line 2: invalid value for header 'X-B'"),
            "{err}"
        );
        assert!(!err.contains("hunter2"));
        let err = parse_header_file("Host: example.com").unwrap_err();
        assert!(err.starts_with("line 1: header 'Host'"), "{err}");
    }

    #[test]
    fn reads_header_files_with_bounded_size() {
        let dir = std::env::temp_dir().join(format!("wsbeat-headers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "Authorization: Bearer abc\n").unwrap();
        assert_eq!(
            read_header_file(&good).unwrap(),
            vec![pair("Authorization", "Bearer abc")]
        );

        let bad = dir.join("bad");
        std::fs::write(&bad, "X-A: 1\nnot a header hunter2\n").unwrap();
        let err = read_header_file(&bad).unwrap_err();
        assert_eq!(err.flag, "--header-file");
        assert_eq!(err.path, bad);
        assert_eq!(err.message, "line 2: expected 'Name: value' (no ':' found)");
        assert!(!err.to_string().contains("hunter2"));

        let big = dir.join("big");
        std::fs::write(&big, "#".repeat(MAX_HEADER_FILE_BYTES as usize + 1)).unwrap();
        assert_eq!(
            read_header_file(&big).unwrap_err().message,
            "larger than 64 KiB"
        );
        let just_fits = dir.join("just-fits");
        std::fs::write(&just_fits, "#".repeat(MAX_HEADER_FILE_BYTES as usize)).unwrap();
        assert_eq!(read_header_file(&just_fits).unwrap(), vec![]);

        let binary = dir.join("binary");
        std::fs::write(&binary, b"X-A: \xff\n").unwrap();
        assert_eq!(
            read_header_file(&binary).unwrap_err().message,
            "not valid UTF-8 (at byte 5)"
        );

        let missing = dir.join("missing");
        let err = read_header_file(&missing).unwrap_err();
        assert!(err.message.starts_with("cannot read: "), "{err}");
        assert_eq!(
            read_header_file(&dir).unwrap_err().message,
            "not a regular file"
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
