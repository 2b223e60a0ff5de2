//! `config::parse_duration` never panics, never returns more than
//! `MAX_DURATION`, and agrees with a floating-point reference parser.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use wsbeat::config::{MAX_DURATION, parse_duration};

/// The DURATION grammar, evaluated with `f64`: seconds, or `None` if invalid.
fn reference(input: &str) -> Option<f64> {
    let text = input.trim_ascii();
    let (number, unit) = [("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
        .iter()
        .find_map(|&(suffix, scale)| text.strip_suffix(suffix).map(|n| (n, scale)))
        .unwrap_or((text, 1.0));
    let well_formed = number.bytes().any(|b| b.is_ascii_digit())
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|&b| b == b'.').count() <= 1;
    if !well_formed {
        return None;
    }
    number.parse::<f64>().ok().map(|value| value * unit)
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let max = MAX_DURATION.as_secs_f64();
    match (parse_duration(input), reference(input)) {
        (Ok(duration), Some(expected)) => {
            assert!(duration <= MAX_DURATION);
            assert!(Instant::now().checked_add(duration).is_some());
            let got = duration.as_secs_f64();
            let tolerance = 1e-8 + expected * 1e-12;
            assert!(
                (got - expected).abs() <= tolerance,
                "{input:?}: parsed {got} s, reference {expected} s"
            );
        }
        (Ok(duration), None) => panic!("{input:?} accepted as {duration:?} but is not a DURATION"),
        (Err(message), Some(expected)) => assert!(
            expected >= max * (1.0 - 1e-12),
            "{input:?} ({expected} s) rejected: {message}"
        ),
        (Err(message), None) => {
            assert!(message.starts_with("invalid duration "), "{message}");
            assert!(
                !message.contains(['\n', '\r']),
                "multi-line error: {message:?}"
            );
        }
    }
});
