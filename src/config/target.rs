//! The server URL → [`Target`]. Fuzzed through `fuzz/fuzz_targets/parse_args.rs`.

use tungstenite::http::Uri;

use super::{parse_number, quote};
use crate::error::UsageError;

/// Where to connect: the URL as given plus the parts the transport needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as the user gave it (scheme lowercased, `/` added before a bare
    /// `?query`); used for the handshake request only: everything else shows
    /// [`Target::shown`], which masks the query's values.
    pub url: String,
    /// `wss://`.
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// Explicit port, or 80/443 from the scheme.
    pub port: u16,
}

impl Target {
    /// Stands in for the target while the options are read: the URL is checked after
    /// them, so that its error comes after theirs. Never leaves [`super::parse`].
    pub(super) fn unset() -> Target {
        Target {
            url: String::new(),
            tls: false,
            host: String::new(),
            port: 0,
        }
    }
}

impl Target {
    /// The URL as logs, the status file and systemd's `STATUS=` show it: each value of its
    /// query masked (`?token=…&debug`), since devices that cannot set headers authenticate
    /// with one. Only the handshake request carries [`Target::url`] itself.
    pub fn shown(&self) -> String {
        mask_query(&self.url).into_owned()
    }
}

/// `url` with the value of each `name=value` pair of its query replaced by `…` (an empty
/// value stays empty, a name without `=` stays as it is), found by text alone so that
/// URLs that fail to parse are covered too.
fn mask_query(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find('?').map(|i| i + 1) else {
        return url.into();
    };
    let end = url[start..].find('#').map_or(url.len(), |i| start + i);
    let query = &url[start..end];
    if !query
        .split('&')
        .any(|pair| pair.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
    {
        return url.into();
    }
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() => format!("{name}=…"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}{}{}", &url[..start], masked.join("&"), &url[end..]).into()
}

/// Why a TLS option is refused by a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
pub(super) const WITHOUT_TLS: &str =
    "this wsbeat was built without TLS (cargo feature \"tls\"); only ws:// works";

/// `url` with the userinfo of its authority (`user:password@`, or a token before `@`)
/// replaced by `***`, found by text alone so that URLs that fail to parse are covered too.
fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
}

/// `url` as a message may show it, parsed or not: without its userinfo and with its query
/// values masked, since either may be a password or a token.
pub(super) fn shown_url(url: &str) -> String {
    mask_query(&without_userinfo(url)).into_owned()
}

/// Parses `url` into a [`Target`]; `flag` names where it came from in errors
/// (`url` for the argument, `WSBEAT_URL` for the environment).
///
/// The scheme must be `ws` or `wss` (any case; it is lowercased in
/// [`Target::url`]), a host must be present, and the port, when given, must be
/// 1 to 65535. Credentials (`user:pass@`) and `#fragment`s are rejected: the
/// first would leak into logs and never be sent, the second is forbidden by RFC 6455.
pub fn parse_target(url: &str, flag: &str) -> Result<Target, UsageError> {
    let error = |message: String| UsageError::new(flag, message);
    let shown = quote(&shown_url(url));
    if url.contains('#') {
        return Err(error(format!(
            "{shown} has a #fragment, which a websocket URL cannot have"
        )));
    }
    let uri: Uri = url.parse().map_err(|err| {
        error(format!(
            "invalid URL {shown} ({err}; use ws://host[:port]/path or wss://host[:port]/path)"
        ))
    })?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    let tls = match scheme.as_deref() {
        Some("ws") => false,
        #[cfg(not(feature = "tls"))]
        Some("wss") => return Err(error(WITHOUT_TLS.into())),
        #[cfg(feature = "tls")]
        Some("wss") => true,
        Some(other) => {
            return Err(error(format!(
                "unsupported scheme {} in {shown} (use ws:// or wss://)",
                quote(other)
            )));
        }
        None => {
            return Err(error(format!(
                "{shown} has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
            )));
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(error(format!("missing host in {shown}")));
    };
    if authority.as_str().contains('@') {
        return Err(error(format!(
            "credentials in {shown} are not supported (send them with --header or --header-file)"
        )));
    }
    let raw_host = uri.host().unwrap_or("");
    let after_host = authority.as_str().strip_prefix(raw_host).unwrap_or("");
    let host = raw_host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(raw_host);
    if host.is_empty() {
        return Err(error(format!("missing host in {shown}")));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = match after_host.strip_prefix(':') {
        None | Some("") => default_port,
        Some(port) => match parse_number::<u16>(port) {
            Some(port) if port != 0 => port,
            _ => {
                return Err(error(format!(
                    "invalid port {} in {shown} (use 1 to 65535)",
                    quote(port)
                )));
            }
        },
    };
    // tungstenite needs the scheme in lower case and a path before a query.
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = if uri.scheme_str() == scheme.as_deref() && !path_and_query.starts_with('?') {
        url.to_owned()
    } else {
        let slash = if path_and_query.starts_with('?') {
            "/"
        } else {
            ""
        };
        format!(
            "{}://{}{slash}{path_and_query}",
            scheme.as_deref().unwrap_or("ws"),
            authority.as_str()
        )
    };
    Ok(Target {
        url,
        tls,
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let target = |url: &str| parse_target(url, "url").unwrap();
        let t = target("ws://example.com/ws");
        assert_eq!((t.tls, t.host.as_str(), t.port), (false, "example.com", 80));
        assert_eq!(t.url, "ws://example.com/ws");
        let t = target("wss://example.com");
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "example.com", 443));
        assert_eq!(t.url, "wss://example.com");
        let t = target("wss://example.com:8443/a/b?c=d&e");
        assert_eq!((t.tls, t.port), (true, 8443));
        assert_eq!(t.url, "wss://example.com:8443/a/b?c=d&e");
        let t = target("ws://[::1]:9001/ws");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9001));
        assert_eq!(t.url, "ws://[::1]:9001/ws");
        let t = target("wss://[2001:db8::1]/");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("2001:db8::1", 443, true));
        let t = target("ws://127.0.0.1:65535");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 65535));
        // An empty port means the default one (RFC 3986).
        assert_eq!(target("ws://h:/").port, 80);
        // Normalised for tungstenite: lower-case scheme, '/' before a bare query.
        let t = target("WSS://Example.com:444/P");
        assert_eq!(
            (t.url.as_str(), t.tls, t.port),
            ("wss://Example.com:444/P", true, 444)
        );
        assert_eq!(target("ws://h?token=1").url, "ws://h/?token=1");
    }

    #[test]
    fn query_values_are_masked_where_the_url_is_shown() {
        let shown = |url: &str| parse_target(url, "url").unwrap().shown();
        assert_eq!(shown("wss://h/ws?token=s3cr3t"), "wss://h/ws?token=…");
        assert_eq!(
            shown("wss://h:8443/ws?token=s3cr3t&x=1&debug&empty=&a=b=c"),
            "wss://h:8443/ws?token=…&x=…&debug&empty=&a=…"
        );
        assert_eq!(shown("ws://h?token=1"), "ws://h/?token=…");
        assert_eq!(shown("ws://h/p?"), "ws://h/p?");
        assert_eq!(shown("ws://h/p"), "ws://h/p");
        assert_eq!(shown("ws://[::1]:9/p=q?k=v"), "ws://[::1]:9/p=q?k=…");
        // The request itself still carries the real values.
        let t = parse_target("wss://h/ws?token=s3cr3t", "url").unwrap();
        assert_eq!(t.url, "wss://h/ws?token=s3cr3t");
        // Usage errors mask them too, whatever else is wrong with the URL.
        for url in [
            "ws://h:99999/?token=s3cr3t",
            "ws://h h/?token=s3cr3t",
            "http://h/?token=s3cr3t",
            "ws://h/?token=s3cr3t#top",
            "ws://u:pw@h/?token=s3cr3t",
        ] {
            let message = parse_target(url, "url").unwrap_err().to_string();
            assert!(!message.contains("s3cr3t"), "{message}");
            assert!(message.contains("token=…"), "{message}");
        }
        // So does the complaint about a second URL argument, about both.
        let args = ["ws://u:pw@h/?token=s3cr3t", "ws://h/?token=s3cr3t"].map(Into::into);
        let message = match crate::config::parse(args, &|_| None) {
            Err(err) => err.to_string(),
            Ok(_) => panic!("two URLs accepted"),
        };
        assert_eq!(
            message,
            "url: unexpected second argument 'ws://h/?token=…' after 'ws://***@h/?token=…' \
             (only one URL may be given)"
        );
    }

    #[test]
    fn bad_targets() {
        let error = |url: &str| parse_target(url, "WSBEAT_URL").unwrap_err().to_string();
        assert_eq!(
            error("http://example.com/"),
            "WSBEAT_URL: unsupported scheme 'http' in 'http://example.com/' (use ws:// or wss://)"
        );
        assert_eq!(
            error("example.com"),
            "WSBEAT_URL: 'example.com' has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("/ws"),
            "WSBEAT_URL: '/ws' has no scheme (use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("ws:///ws"),
            "WSBEAT_URL: invalid URL 'ws:///ws' (invalid format; use ws://host[:port]/path or wss://host[:port]/path)"
        );
        assert_eq!(
            error("ws://:80/"),
            "WSBEAT_URL: missing host in 'ws://:80/'"
        );
        assert_eq!(
            error("ws://h:0/"),
            "WSBEAT_URL: invalid port '0' in 'ws://h:0/' (use 1 to 65535)"
        );
        assert_eq!(
            error("ws://h:65536/"),
            "WSBEAT_URL: invalid port '65536' in 'ws://h:65536/' (use 1 to 65535)"
        );
        assert_eq!(
            error("ws://h/#top"),
            "WSBEAT_URL: 'ws://h/#top' has a #fragment, which a websocket URL cannot have"
        );
        assert_eq!(
            error("wss://user:pw@h/"),
            "WSBEAT_URL: credentials in 'wss://***@h/' are not supported (send them with --header or --header-file)"
        );
        // Never echoed, whatever else is wrong with the URL.
        for url in [
            "ws://user:pw@h/#top",
            "ws://user:pw@h h/",
            "http://user:pw@h/",
            "ws://token@h:99999/",
            "user:pw@h/ws",
        ] {
            let message = error(url);
            assert!(
                !message.contains("pw") && !message.contains("token"),
                "{message}"
            );
        }
        assert_eq!(
            without_userinfo("ws://a:b@c@h:1/p@q?x@y"),
            "ws://***@h:1/p@q?x@y"
        );
        assert_eq!(without_userinfo("ws://h/p@q"), "ws://h/p@q");
        assert!(error("ws://h h/").starts_with("WSBEAT_URL: invalid URL 'ws://h h/'"));
        assert!(error("ws://[::1/").starts_with("WSBEAT_URL: invalid URL"));
        assert!(error("").starts_with("WSBEAT_URL: invalid URL ''"));
        // Messages stay on one line whatever the input.
        let message = error("ws://a\nb/");
        assert!(!message.contains('\n'), "{message}");
    }
}
