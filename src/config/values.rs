//! Parsers of option values that need more than one line in the table: paths, bounded
//! numbers, the socket file's mode, subprotocol lists. Each returns the message
//! for a usage error naming the flag or variable.

use std::path::PathBuf;

use super::{Config, parse_number, quote};
use crate::config::headers::{TOKEN_PUNCTUATION, is_token_char};

/// A path; empty is an error (an empty variable counts as unset before this).
pub(super) fn path(value: &str) -> Result<Option<PathBuf>, String> {
    if value.is_empty() {
        return Err("empty path".into());
    }
    Ok(Some(PathBuf::from(value)))
}

/// An unsigned whole number within `min..=max`; `hint` says what is allowed.
pub(super) fn number<T>(value: &str, min: T, max: T, hint: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd,
{
    match parse_number::<T>(value) {
        Some(n) if n >= min && n <= max => Ok(n),
        _ => Err(format!("invalid number {} (use {hint})", quote(value))),
    }
}

/// Octal permission bits for the socket file (`660`, `0600`): at most `0777`.
pub(super) fn socket_mode(value: &str) -> Result<u32, String> {
    let octal =
        !value.is_empty() && value.len() <= 4 && value.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(value, 8) {
        Ok(mode) if octal && mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "invalid mode {} (use octal digits such as 0660)",
            quote(value)
        )),
    }
}

/// Whether `s` is an HTTP token (RFC 9110 `token`), as subprotocol names must be.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

/// Adds the comma-separated subprotocol names in `value`, each a token, none twice.
pub(super) fn subprotocols(config: &mut Config, value: &str) -> Result<(), String> {
    let mut any = false;
    for name in value
        .split(',')
        .map(str::trim_ascii)
        .filter(|n| !n.is_empty())
    {
        any = true;
        if !is_token(name) {
            return Err(format!(
                "invalid subprotocol {} (use letters, digits and {TOKEN_PUNCTUATION})",
                quote(name)
            ));
        }
        if config.subprotocols.iter().any(|known| known == name) {
            return Err(format!("subprotocol {} given twice", quote(name)));
        }
        config.subprotocols.push(name.to_owned());
    }
    if !any {
        return Err("empty subprotocol name".into());
    }
    Ok(())
}
