//! DURATION values (`250ms`, `1.5s`, `20`, `5m`) and the `auto[:MIN..MAX]` form of
//! `--ping-interval`. Fuzzed (`fuzz/fuzz_targets/parse_duration.rs`).

use std::time::Duration;

use super::quote;

/// Longest DURATION accepted (100 days), so `Instant + duration` cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 24 * 60 * 60);

/// `auto` or `auto:MIN..MAX` (DURATIONs, `0 < MIN <= MAX`): the bounds of the adaptive heartbeat.
pub fn parse_auto(s: &str) -> Result<(Duration, Duration), String> {
    let hint = "use auto or auto:MIN..MAX, e.g. auto:15s..5m";
    let Some(rest) = s.strip_prefix("auto") else {
        return Err(format!("invalid value {} ({hint})", quote(s)));
    };
    if rest.is_empty() {
        return Ok((
            crate::rules::adaptive::DEFAULT_MIN,
            crate::rules::adaptive::DEFAULT_MAX,
        ));
    }
    let bounds = rest
        .strip_prefix(':')
        .and_then(|bounds| bounds.split_once(".."))
        .ok_or_else(|| format!("invalid value {} ({hint})", quote(s)))?;
    let min = parse_duration(bounds.0)?;
    let max = parse_duration(bounds.1)?;
    if min.is_zero() || min > max {
        return Err(format!(
            "invalid bounds {} (MIN must be above 0 and at most MAX)",
            quote(s)
        ));
    }
    Ok((min, max))
}

/// Parses a DURATION: a non-negative decimal number with an optional unit
/// `ms`, `s`, `m` or `h`; a bare number means seconds (`250ms`, `1.5s`, `20`, `5m`).
///
/// Surrounding blanks are ignored. Exact decimal arithmetic (no floats), rounded
/// down to whole nanoseconds. NaN, infinity, exponents, signs, empty input and
/// anything above [`MAX_DURATION`] are rejected. The error is a message
/// for a [`crate::error::UsageError`], e.g. `invalid duration '5x' (use e.g. 250ms, 1.5s, 20s, 5m)`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {} (use e.g. 250ms, 1.5s, 20s, 5m)",
            quote(s)
        )
    };
    let too_large = || format!("invalid duration {} (at most 100 days)", quote(s));
    let trimmed = s.trim_ascii();
    if trimmed.starts_with('-') {
        return Err(format!(
            "invalid duration {} (must not be negative)",
            quote(s)
        ));
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit_nanos: u128 = match unit {
        "" | "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // Both parts are ASCII digits only from here on.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return Err(too_large());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    // Digits past the 18th are below a nanosecond even for hours.
    let fraction = fraction.get(..fraction.len().min(18)).unwrap_or("");
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits: u128 = fraction.parse().map_err(|_| invalid())?;
        let scale = 10u128.pow(u32::try_from(fraction.len()).unwrap_or(18));
        digits * unit_nanos / scale
    };
    let nanos = whole
        .checked_mul(unit_nanos)
        .and_then(|n| n.checked_add(fraction_nanos))
        .ok_or_else(too_large)?;
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_large());
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ms, secs};

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0ms"), Duration::ZERO);
        assert_eq!(ok("250ms"), ms(250));
        assert_eq!(ok("1.5s"), ms(1500));
        assert_eq!(ok("20s"), secs(20));
        assert_eq!(ok("20"), secs(20));
        assert_eq!(ok("5m"), secs(300));
        assert_eq!(ok("2h"), secs(7200));
        assert_eq!(ok("0.5"), ms(500));
        assert_eq!(ok(".5s"), ms(500));
        assert_eq!(ok("5."), secs(5));
        assert_eq!(ok("007s"), secs(7));
        assert_eq!(ok(" 3s\t"), secs(3));
        assert_eq!(ok("0.1ms"), Duration::from_micros(100));
        assert_eq!(ok("1.0000000001s"), Duration::from_nanos(1_000_000_000));
        assert_eq!(ok("0.000000001"), Duration::from_nanos(1));
        assert_eq!(ok("0.0000000009"), Duration::ZERO);
        assert_eq!(ok("1.25h"), secs(4500));
        assert_eq!(ok("0.1m"), secs(6));
        assert_eq!(
            ok("0.33333333333333333333333333333333333h"),
            Duration::from_nanos(1_199_999_999_999)
        );
        assert_eq!(ok("2400h"), MAX_DURATION);
        assert_eq!(ok("144000m"), MAX_DURATION);
        assert_eq!(ok("8640000s"), MAX_DURATION);
        assert_eq!(ok("000000000000000000000000000000001s"), secs(1));

        let bad = |s: &str| parse_duration(s).unwrap_err();
        let usage = |s: &str| format!("invalid duration '{s}' (use e.g. 250ms, 1.5s, 20s, 5m)");
        for s in [
            "", " ", ".", "s", "ms", "5x", "5 s", "5S", "5sec", "1.2.3", "1e3", "+5", "NaN", "nan",
            "inf", "infinity", "5d", "5us", "1s2", "1s ms", "0x10", "1_000", "..5", "\u{661}s",
        ] {
            assert_eq!(bad(s), usage(s), "{s:?}");
        }
        assert_eq!(bad("-1"), "invalid duration '-1' (must not be negative)");
        assert_eq!(bad("-0"), "invalid duration '-0' (must not be negative)");
        assert_eq!(
            bad("-inf"),
            "invalid duration '-inf' (must not be negative)"
        );
        for s in [
            "2400.000001h",
            "8640000.000000001",
            "99999999999999999999999999999999999999999999",
            "340282366920938463463374607431768211456h",
            "18446744073709551616",
        ] {
            assert!(bad(s).ends_with("(at most 100 days)"), "{s}");
        }
        // Long or multi-line input is shortened and escaped in the message.
        let long = "9".repeat(200) + "x";
        let message = bad(&long);
        assert!(message.len() < 140 && message.contains("..."), "{message}");
        assert_eq!(
            bad("1\n2"),
            "invalid duration '1\\n2' (use e.g. 250ms, 1.5s, 20s, 5m)"
        );
    }
}
