//! HTTP CONNECT proxies, as configuration: which one a target goes through
//! (`--proxy`, `WSBEAT_PROXY`, then the usual `https_proxy`/`http_proxy`/`all_proxy`
//! and `no_proxy` variables). Opening the tunnel is `net::tunnel`'s.
//!
//! The credentials of a proxy URL become a `Proxy-Authorization: Basic` value at once
//! and are never shown again: [`Proxy`]'s `Display` and `Debug` print `http://host:port`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use crate::config::Target;
use crate::error::UsageError;

/// An HTTP proxy to send `CONNECT` to.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// Port (80 when the URL has none).
    pub port: u16,
    /// `Basic <base64(user:password)>`, when the URL had userinfo. Never printed.
    authorization: Option<String>,
}

impl Proxy {
    /// Parses `http://[user:password@]host[:port]` (a trailing `/` is allowed; the
    /// scheme is case-insensitive); `flag` names the flag or variable in errors.
    /// Messages never echo the URL, which may hold a password.
    pub fn parse(url: &str, flag: &str) -> Result<Proxy, UsageError> {
        const FORM: &str = "use http://[user:password@]host[:port]";
        let error = |message: String| UsageError::new(flag, message);
        // Said first: a stray space (a quoting slip in a unit file or a shell profile)
        // would otherwise surface as a baffling "invalid port" or "unsupported scheme".
        if url.trim() != url {
            return Err(error(format!(
                "proxy URL has leading or trailing whitespace ({FORM})"
            )));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(error(format!("proxy URL without a scheme ({FORM})")));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            let scheme: String = scheme
                .chars()
                .take(16)
                .filter(char::is_ascii_graphic)
                .collect();
            return Err(error(format!(
                "unsupported proxy scheme '{scheme}' (only HTTP CONNECT proxies: {FORM}, or none)"
            )));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(error(format!("a proxy URL has no path or query ({FORM})")));
        }
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
            let Some((host, after)) = bracketed.split_once(']') else {
                return Err(error(format!(
                    "invalid IPv6 address in the proxy URL ({FORM})"
                )));
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(error(format!(
                    "invalid IPv6 address in the proxy URL ({FORM})"
                )));
            }
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(error(format!("invalid proxy URL ({FORM})"))),
                },
            }
        } else {
            match host_port.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(error(format!("missing host in the proxy URL ({FORM})")));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
        {
            return Err(error(format!("invalid host in the proxy URL ({FORM})")));
        }
        let port = match port {
            None | Some("") => 80,
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => {
                    let shown: String = text
                        .chars()
                        .take(16)
                        .filter(char::is_ascii_graphic)
                        .collect();
                    return Err(error(format!(
                        "invalid port '{shown}' in the proxy URL (use 1 to 65535)"
                    )));
                }
            },
        };
        let authorization = match userinfo {
            None | Some("") => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let (Some(user), Some(password)) = (percent_decode(user), percent_decode(password))
                else {
                    return Err(error(
                        "invalid %-escape in the proxy URL's user or password".into(),
                    ));
                };
                let mut credentials = user;
                credentials.push(b':');
                credentials.extend(password);
                Some(format!("Basic {}", base64(&credentials)))
            }
        };
        Ok(Proxy {
            host: host.to_ascii_lowercase(),
            port,
            authorization,
        })
    }

    /// Whether `CONNECT` carries `Proxy-Authorization`.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// The `Proxy-Authorization` value, for the tunnel's request only.
    pub(crate) fn authorization(&self) -> Option<&str> {
        self.authorization.as_deref()
    }
}

/// `http://host:port`, never the credentials.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", authority(&self.host, self.port))
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("url", &self.to_string())
            .field("credentials", &self.has_credentials())
            .finish()
    }
}

/// `host:port`, with an IPv6 literal in brackets.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The proxy for `target`: `explicit` (`--proxy` or `WSBEAT_PROXY` as `(where, value)`)
/// if given (`none`: no proxy, variables ignored); else the first variable set of
/// `https_proxy`, `HTTPS_PROXY` (`wss://`) or `http_proxy`, `HTTP_PROXY` (`ws://`), then
/// `all_proxy`, `ALL_PROXY`, unless `no_proxy` (or else `NO_PROXY`) lists the target's
/// host. Empty variables count as unset. A URL that is not `http://` is a usage error
/// naming where it came from.
pub fn select(
    explicit: Option<(String, String)>,
    target: &Target,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, UsageError> {
    if let Some((flag, value)) = explicit {
        if value == "none" {
            return Ok(None);
        }
        if value.is_empty() {
            return Err(UsageError::new(
                flag,
                "empty proxy URL (use http://[user:password@]host[:port] or none)",
            ));
        }
        return Proxy::parse(&value, &flag).map(Some);
    }
    let set = |name: &str| env(name).filter(|value| !value.is_empty());
    let names: [&str; 4] = if target.tls {
        ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
    } else {
        ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
    };
    let Some((name, url)) = names
        .iter()
        .find_map(|name| set(name).map(|value| (*name, value)))
    else {
        return Ok(None);
    };
    let no_proxy = set("no_proxy").or_else(|| set("NO_PROXY"));
    if no_proxy.is_some_and(|list| bypasses(&list, &target.host, target.port)) {
        return Ok(None);
    }
    Proxy::parse(&url, name).map(Some)
}

/// Whether `no_proxy` (comma-separated) sends `host` on `port` direct: `*` matches every
/// host, a name matches itself and its subdomains (a leading `.` is optional, case does
/// not matter), an IP address matches the same address only. An entry with a port
/// (`host:8080`, `10.0.0.1:8080`, `[::1]:8080`) matches on that port only; an entry whose
/// port is not a number matches nothing.
pub fn bypasses(no_proxy: &str, host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let Some((entry, entry_port)) = split_port(entry) else {
            return false;
        };
        if entry_port.is_some_and(|entry_port| entry_port != port) {
            return false;
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return host_ip == Some(ip);
        }
        let name = entry.strip_prefix('.').unwrap_or(entry);
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || host_ip.is_some() {
            return false;
        }
        host == name
            || host
                .strip_suffix(&name)
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// A `no_proxy` entry as host (brackets removed) and port, if it has one; `None` when the
/// port is not a number. A bare IPv6 address (`::1`, `fd00::8080`) has no port: its last
/// group is part of the address, so a port needs the brackets.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let port = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(bracketed) = entry.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(port(after.strip_prefix(':')?)?))),
        };
    }
    match entry.split_once(':') {
        Some((host, text)) if !text.contains(':') => Some((host, Some(port(text)?))),
        _ => Some((entry, None)),
    }
}

/// Percent-decodes `s` (`%XX` → byte); `None` for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (RFC 4648 §4), for `Basic` credentials.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        crate::config::parse_target(url, "url").unwrap()
    }

    fn env(vars: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        let vars = vars.to_vec();
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn shown(proxy: &Option<Proxy>) -> Option<String> {
        proxy.as_ref().map(Proxy::to_string)
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), output, "{input}");
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd, 0xfc]), "//79/A==");
    }

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("http://proxy.example:3128", "--proxy").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        assert!(!p.has_credentials());
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        let p = Proxy::parse("HTTP://Proxy.Example/", "--proxy").unwrap();
        assert_eq!(p.to_string(), "http://proxy.example:80");
        let p = Proxy::parse("http://[::1]:8080", "--proxy").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 8080));
        assert_eq!(p.to_string(), "http://[::1]:8080");
        assert_eq!(Proxy::parse("http://[fd00::2]", "x").unwrap().port, 80);
        assert_eq!(Proxy::parse("http://10.0.0.1:1", "x").unwrap().port, 1);
    }

    #[test]
    fn proxy_credentials_are_percent_decoded_and_never_shown() {
        let p = Proxy::parse("http://Aladdin:open%20sesame@proxy:3128", "--proxy").unwrap();
        assert_eq!(
            p.authorization.as_deref(),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );
        assert_eq!(p.to_string(), "http://proxy:3128");
        let debug = format!("{p:?}");
        assert!(
            !debug.contains("QWxh") && !debug.contains("sesame"),
            "{debug}"
        );
        // '@' and ':' inside user or password arrive escaped; the last '@' ends userinfo.
        let p = Proxy::parse("http://us%3Aer:p%40ss:w@rd@h", "x").unwrap();
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Basic {}", base64(b"us:er:p@ss:w@rd")).as_str())
        );
        assert_eq!(p.host, "h");
        let p = Proxy::parse("http://user@h:1", "x").unwrap();
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Basic {}", base64(b"user:")).as_str())
        );
        let err = Proxy::parse("http://u:s3cr%zzet@h", "--proxy").unwrap_err();
        assert!(!err.to_string().contains("s3cr"), "{err}");
    }

    #[test]
    fn bad_proxy_urls_name_the_flag_and_never_echo_credentials() {
        for (url, expected) in [
            ("socks5://h:1080", "unsupported proxy scheme 'socks5'"),
            ("https://user:secret@h", "unsupported proxy scheme 'https'"),
            ("proxy:3128", "without a scheme"),
            ("http://", "missing host"),
            ("http://user:secret@", "missing host"),
            ("http://h:0", "invalid port '0'"),
            ("http://h:65536", "invalid port '65536'"),
            ("http://h:+80", "invalid port"),
            ("http://h:80/path", "no path"),
            ("http://h?x", "no path"),
            ("http://[::1", "invalid IPv6"),
            ("http://[nope]:1", "invalid IPv6"),
            ("http://[::1]x", "invalid proxy URL"),
            ("http://h h", "invalid host"),
            ("http://::1", "missing host"),
        ] {
            let err = Proxy::parse(url, "https_proxy").unwrap_err().to_string();
            assert!(err.starts_with("https_proxy: "), "{url}: {err}");
            assert!(err.contains(expected), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }

    #[test]
    fn explicit_proxy_or_none_wins_over_variables() {
        let vars = env(&[("http_proxy", "http://from-env:1"), ("no_proxy", "*")]);
        let ws = target("ws://server.example/");
        let explicit = |v: &str| Some(("--proxy".to_string(), v.to_string()));
        assert_eq!(
            shown(&select(explicit("http://p:2"), &ws, &vars).unwrap()),
            Some("http://p:2".into()),
            "no_proxy applies to the variables only"
        );
        assert_eq!(select(explicit("none"), &ws, &vars).unwrap(), None);
        let err = select(explicit(""), &ws, &vars).unwrap_err();
        assert!(
            err.to_string().starts_with("--proxy: empty proxy URL"),
            "{err}"
        );
        let err = select(
            Some(("WSBEAT_PROXY".into(), "socks5://p".into())),
            &ws,
            &vars,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("WSBEAT_PROXY: unsupported"),
            "{err}"
        );
    }

    #[test]
    fn variables_by_scheme_lower_case_first_then_all_proxy() {
        let ws = target("ws://server.example/");
        let wss = target("wss://server.example/");
        let pick = |t: &Target, vars: &[(&'static str, &'static str)]| {
            shown(&select(None, t, &env(vars)).unwrap())
        };
        let both = [
            ("http_proxy", "http://plain:1"),
            ("https_proxy", "http://secure:1"),
        ];
        assert_eq!(pick(&ws, &both), Some("http://plain:1".into()));
        assert_eq!(pick(&wss, &both), Some("http://secure:1".into()));
        assert_eq!(pick(&wss, &[("http_proxy", "http://plain:1")]), None);
        assert_eq!(pick(&ws, &[("https_proxy", "http://secure:1")]), None);
        let cases = [
            ("HTTP_PROXY", "http://upper:1"),
            ("http_proxy", "http://lower:1"),
        ];
        assert_eq!(pick(&ws, &cases), Some("http://lower:1".into()));
        assert_eq!(pick(&ws, &cases[..1]), Some("http://upper:1".into()));
        let all = [
            ("ALL_PROXY", "http://all-upper:1"),
            ("all_proxy", "http://all:1"),
        ];
        assert_eq!(pick(&ws, &all), Some("http://all:1".into()));
        assert_eq!(pick(&wss, &all[..1]), Some("http://all-upper:1".into()));
        let scheme_first = [
            ("all_proxy", "http://all:1"),
            ("HTTPS_PROXY", "http://secure:1"),
        ];
        assert_eq!(pick(&wss, &scheme_first), Some("http://secure:1".into()));
        // Empty counts as unset.
        let empty = [("http_proxy", ""), ("all_proxy", "http://all:1")];
        assert_eq!(pick(&ws, &empty), Some("http://all:1".into()));
        assert_eq!(pick(&ws, &[]), None);
    }

    #[test]
    fn a_bad_variable_names_itself_unless_unused() {
        let wss = target("wss://server.example/");
        let err = select(None, &wss, &env(&[("HTTPS_PROXY", "socks5://p:1")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("HTTPS_PROXY: unsupported proxy scheme"),
            "{err}"
        );
        let err = select(None, &wss, &env(&[("all_proxy", "https://p:1")])).unwrap_err();
        assert!(err.to_string().starts_with("all_proxy: "), "{err}");
        // The variable of the other scheme is not read, nor one for a host that goes direct.
        assert_eq!(
            select(None, &wss, &env(&[("http_proxy", "socks5://p")])).unwrap(),
            None
        );
        let direct = [("https_proxy", "socks5://p"), ("no_proxy", "example")];
        assert_eq!(select(None, &wss, &env(&direct)).unwrap(), None);
    }

    #[test]
    fn no_proxy_variables() {
        let ws = target("ws://server.example:8080/");
        let pick =
            |vars: &[(&'static str, &'static str)]| shown(&select(None, &ws, &env(vars)).unwrap());
        let proxy = ("http_proxy", "http://p:1");
        assert_eq!(pick(&[proxy, ("no_proxy", "example")]), None);
        assert_eq!(pick(&[proxy, ("NO_PROXY", "example")]), None);
        assert_eq!(
            pick(&[proxy, ("no_proxy", "other"), ("NO_PROXY", "example")]),
            Some("http://p:1".into()),
            "lower case wins"
        );
        assert_eq!(
            pick(&[proxy, ("no_proxy", ""), ("NO_PROXY", "example")]),
            None,
            "an empty variable counts as unset"
        );
    }

    #[test]
    fn no_proxy_matching() {
        let cases = [
            ("example.com", "example.com", true),
            ("example.com", "api.example.com", true),
            ("example.com", "a.b.example.com", true),
            (".example.com", "api.example.com", true),
            (".example.com", "example.com", true),
            ("example.com", "badexample.com", false),
            ("example.com", "example.com.evil", false),
            ("api.example.com", "example.com", false),
            ("EXAMPLE.com", "Api.Example.COM", true),
            ("example.com.", "example.com", true),
            ("example.com", "example.com.", true),
            ("other, example.com ,x", "example.com", true),
            ("*", "anything", true),
            ("*", "10.0.0.1", true),
            ("*.example.com", "api.example.com", false),
            ("10.0.0.1", "10.0.0.1", true),
            ("10.0.0.1", "10.0.0.10", false),
            ("0.0.1", "10.0.0.1", false),
            ("::1", "::1", true),
            ("[::1]", "::1", true),
            ("0:0::1", "::1", true),
            ("fd00::1", "fd00::2", false),
            ("localhost", "127.0.0.1", false),
            ("", "example.com", false),
            (",,", "example.com", false),
            (".", "example.com", false),
        ];
        for (list, host, expected) in cases {
            assert_eq!(
                bypasses(list, host, 443),
                expected,
                "no_proxy={list:?} host={host}"
            );
        }
    }

    #[test]
    fn no_proxy_entries_with_a_port_match_that_port_only() {
        let cases = [
            ("example.com:8080", "example.com", 8080, true),
            ("example.com:8080", "example.com", 443, false),
            ("example.com:8080", "api.example.com", 8080, true),
            (".example.com:8080", "api.example.com", 8080, true),
            ("EXAMPLE.com:8080", "example.com", 8080, true),
            ("10.0.0.1:8080", "10.0.0.1", 8080, true),
            ("10.0.0.1:8080", "10.0.0.1", 80, false),
            ("[::1]:8080", "::1", 8080, true),
            ("[::1]:8080", "::1", 8081, false),
            ("[fd00::2]:8080", "fd00::2", 8080, true),
            ("other:1, example.com:8080", "example.com", 8080, true),
            // A bare IPv6 address has no port: its last group is part of the address.
            ("fd00::8080", "fd00::8080", 443, true),
            ("fd00::8080", "fd00::", 8080, false),
            // A port that is not a number makes the entry match nothing.
            ("example.com:http", "example.com", 80, false),
            ("example.com:", "example.com", 443, false),
            ("example.com:99999", "example.com", 443, false),
            ("example.com:+80", "example.com", 80, false),
            ("[::1]x", "::1", 443, false),
            ("[::1", "::1", 443, false),
        ];
        for (list, host, port, expected) in cases {
            assert_eq!(
                bypasses(list, host, port),
                expected,
                "no_proxy={list:?} host={host} port={port}"
            );
        }
        let direct = [
            ("https_proxy", "http://p:1"),
            ("no_proxy", "server.example:8443"),
        ];
        assert_eq!(
            select(None, &target("wss://server.example:8443/"), &env(&direct)).unwrap(),
            None
        );
        assert_eq!(
            shown(&select(None, &target("wss://server.example/"), &env(&direct)).unwrap()),
            Some("http://p:1".into())
        );
    }

    #[test]
    fn a_proxy_url_with_stray_whitespace_says_so() {
        for url in [
            " http://p:3128",
            "http://p:3128 ",
            "http://p:1\t",
            "\nhttp://p",
        ] {
            let err = Proxy::parse(url, "http_proxy").unwrap_err().to_string();
            assert_eq!(
                err,
                "http_proxy: proxy URL has leading or trailing whitespace \
                 (use http://[user:password@]host[:port])",
                "{url:?}"
            );
        }
        let err = select(
            Some(("--proxy".into(), " http://p:3128".into())),
            &target("ws://h/"),
            &env(&[]),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--proxy: proxy URL has leading"),
            "{err}"
        );
    }
}
