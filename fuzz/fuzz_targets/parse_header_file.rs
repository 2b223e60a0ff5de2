//! `headers::parse_header_file` never panics; every header it accepts
//! round-trips through `parse_header` and is valid on the wire; every error
//! names a line and stays on one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tungstenite::http::{HeaderName, HeaderValue};
use wsbeat::headers::{parse_header, parse_header_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_header_file(text) {
        Ok(headers) => {
            for (name, value) in headers {
                assert!(HeaderName::from_bytes(name.as_bytes()).is_ok());
                let wire = HeaderValue::from_str(&value)
                    .ok()
                    .map(|v| v.to_str().is_ok());
                assert_eq!(wire, Some(true), "value not sendable");
                assert_eq!(value, value.trim_ascii());
                let line = format!("{name}: {value}");
                assert_eq!(parse_header(&line), Ok((name, value)));
            }
        }
        Err(message) => {
            assert!(message.starts_with("line "), "{message}");
            assert!(
                !message.contains(['\n', '\r']),
                "multi-line error: {message:?}"
            );
        }
    }
});
