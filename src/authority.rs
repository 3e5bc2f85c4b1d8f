//! The authority a request addresses (`Host`, `:authority`, an absolute-form target),
//! parsed once: routing, the route table and `X-Forwarded-Host` all use this one form, so
//! they cannot read the same bytes differently.
//!
//! Accepted: a reg-name of ASCII letters, digits, `-`, `_` and `.` (no empty label, at
//! most 253 characters once one trailing dot is removed), which covers IPv4 addresses, or
//! a bracketed IPv6 literal (no zone identifier); then optionally `:` and a port of 1 to 5
//! digits, 1..=65535. Refused: everything else, among it userinfo (`a@host`),
//! percent-encodings and the other RFC 3986 sub-delims, paths, queries, an empty host or
//! port. `_` is allowed: it is not a DNS hostname character, but it is in RFC 3986's
//! unreserved set, names are compared exactly, and container service names use it.
//!
//! Normalised: lower-case, one trailing dot removed, an IPv6 literal in its canonical text
//! (RFC 5952), the port without leading zeros.

use std::net::Ipv6Addr;

use http::{HeaderValue, Request, Version, header};

/// A parsed, normalised authority: `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// `host[:port]`, normalised: what `X-Forwarded-Host` carries.
    value: HeaderValue,
    host_len: usize,
    port: Option<u16>,
}

const MAX_HOST: usize = 253;

impl Authority {
    /// Parse a `Host` header value. When it is already in normal form (the usual case),
    /// the value is kept as is: no copy.
    pub fn from_header(value: &HeaderValue) -> Option<Authority> {
        let (host_len, port, normal) = Self::scan(value.as_bytes())?;
        if normal {
            return Some(Authority { value: value.clone(), host_len, port });
        }
        Self::parse(value.as_bytes())
    }

    /// Parse authority bytes from any source.
    pub fn parse(input: &[u8]) -> Option<Authority> {
        let (host_len, port, normal) = Self::scan(input)?;
        if normal {
            return Some(Authority { value: HeaderValue::from_bytes(input).ok()?, host_len, port });
        }
        let (host, _) = split(input)?;
        let out: Vec<u8> = {
            let mut h = if host.first() == Some(&b'[') {
                let inner = std::str::from_utf8(&host[1..host.len() - 1]).ok()?;
                let ip: Ipv6Addr = inner.parse().ok()?;
                format!("[{ip}]").into_bytes()
            } else {
                let h = host.strip_suffix(b".").unwrap_or(host);
                h.to_ascii_lowercase()
            };
            if let Some(p) = port {
                h.extend_from_slice(format!(":{p}").as_bytes());
            }
            h
        };
        let host_len = match port {
            Some(_) => out.iter().rposition(|b| *b == b':')?,
            None => out.len(),
        };
        let value = HeaderValue::from_bytes(&out).ok()?;
        Some(Authority { value, host_len, port })
    }

    /// Validate `input`: the length of its host part, its port, and whether it is already
    /// in normal form.
    fn scan(input: &[u8]) -> Option<(usize, Option<u16>, bool)> {
        let (host, port_text) = split(input)?;
        let mut normal = true;
        if host.first() == Some(&b'[') {
            let inner = host.strip_prefix(b"[")?.strip_suffix(b"]")?;
            // Hex digits, ':' and '.' (an embedded IPv4): no zone identifier, nothing else.
            if !inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.') {
                return None;
            }
            let text = std::str::from_utf8(inner).ok()?;
            let ip: Ipv6Addr = text.parse().ok()?;
            normal = ip.to_string() == text;
        } else {
            let name = match host.strip_suffix(b".") {
                Some(h) => {
                    normal = false;
                    h
                }
                None => host,
            };
            if name.is_empty() || name.len() > MAX_HOST {
                return None;
            }
            for label in name.split(|b| *b == b'.') {
                if label.is_empty() || label.len() > 63 {
                    return None;
                }
                for b in label {
                    match b {
                        b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
                        b'A'..=b'Z' => normal = false,
                        _ => return None,
                    }
                }
            }
        }
        let port = match port_text {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let n: u16 = std::str::from_utf8(p).ok()?.parse().ok()?;
                if n == 0 {
                    return None;
                }
                if p[0] == b'0' {
                    normal = false;
                }
                Some(n)
            }
        };
        Some((host.len(), port, normal))
    }

    /// The authority `req` addresses: `:authority` (HTTP/2) or an absolute-form target,
    /// else the Host header; `None` only for an HTTP/1.0 request that names none.
    /// Refused (the reason, for the log): a value that is not a valid authority, more than
    /// one Host header, none on HTTP/1.1 (RFC 9112 §3.2) or HTTP/2 (RFC 9113 §8.3.1), and
    /// a Host that names another host than the target (RFC 9113 §8.3.1, RFC 9112 §3.2.2),
    /// so that routing and `X-Forwarded-Host` cannot disagree.
    pub fn of_request<B>(req: &Request<B>) -> Result<Option<Authority>, &'static str> {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err("more than one Host header");
        }
        let from_header = match host {
            Some(h) => Some(Authority::from_header(h).ok_or("Host header is not a valid authority")?),
            None => None,
        };
        let from_uri = match req.uri().authority() {
            Some(a) => Some(Authority::parse(a.as_str().as_bytes()).ok_or("request target authority is not valid")?),
            None => None,
        };
        match (from_uri, from_header) {
            (Some(u), Some(h)) if u.host() != h.host() => Err("Host header differs from the request target"),
            (Some(u), _) => Ok(Some(u)),
            (None, Some(h)) => Ok(Some(h)),
            (None, None) if req.version() == Version::HTTP_10 || req.version() == Version::HTTP_09 => Ok(None),
            (None, None) => Err("no Host header or :authority"),
        }
    }

    /// The host, lower-case, without trailing dot or port (IPv6 with its brackets).
    pub fn host(&self) -> &str {
        // ASCII by construction.
        self.value.to_str().map(|s| &s[..self.host_len]).unwrap_or("")
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// `host[:port]` as header text, for `X-Forwarded-Host`.
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }
}

/// `host` and the text after its `:`, if any. A reg-name holds no `:`, an IPv6 literal
/// ends at its `]`.
/// The URL a client addressed, without query, as a DPoP proof's `htu` names it (RFC 9449
/// §4.3): the scheme and authority the client saw — behind a trusted proxy (`trusted`) the
/// last item of its one `X-Forwarded-Proto` and `X-Forwarded-Host` lines (the one the
/// trusted proxy appended; items before it are the client's to write), else the
/// connection's and the request's own — then the request path. `Forwarded` is not read:
/// the gateway never vouches for a caller's `Forwarded` (it rebuilds it for upstreams). `None` when no authority
/// is known or a forwarded value is not valid (a proof then cannot match: fail closed).
pub fn public_url(
    headers: &http::HeaderMap,
    tls: bool,
    trusted: bool,
    own: Option<&Authority>,
    path: &str,
) -> Option<String> {
    let last = |name: &str| -> Result<Option<&[u8]>, ()> {
        let mut lines = headers.get_all(name).iter();
        match (lines.next(), lines.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(v.as_bytes().rsplit(|b| *b == b',').next().map(crate::cookies::trim)),
            _ => Err(()),
        }
    };
    let mut scheme = if tls { "https" } else { "http" };
    let mut authority = own.and_then(|a| a.header_value().to_str().ok().map(str::to_string));
    if trusted {
        match last("x-forwarded-proto").ok()? {
            None => {}
            Some(p) if p.eq_ignore_ascii_case(b"https") => scheme = "https",
            Some(p) if p.eq_ignore_ascii_case(b"http") => scheme = "http",
            Some(_) => return None,
        }
        if let Some(h) = last("x-forwarded-host").ok()? {
            let a = Authority::parse(h)?;
            authority = a.header_value().to_str().ok().map(str::to_string);
        }
    }
    Some(format!("{scheme}://{}{path}", authority?))
}

fn split(input: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    if input.first() == Some(&b'[') {
        let close = input.iter().position(|b| *b == b']')?;
        let (host, rest) = input.split_at(close + 1);
        return match rest {
            [] => Some((host, None)),
            [b':', port @ ..] => Some((host, Some(port))),
            _ => None,
        };
    }
    match input.iter().position(|b| *b == b':') {
        Some(i) => Some((&input[..i], Some(&input[i + 1..]))),
        None => Some((input, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &[u8]) -> Option<(String, Option<u16>, String)> {
        Authority::parse(s).map(|a| (a.host().to_string(), a.port(), a.header_value().to_str().unwrap().to_string()))
    }

    #[test]
    fn hosts_are_normalised() {
        let cases: [(&[u8], &str, Option<u16>, &str); 10] = [
            (b"example.com", "example.com", None, "example.com"),
            (b"Example.COM.", "example.com", None, "example.com"),
            (b"example.com.:8443", "example.com", Some(8443), "example.com:8443"),
            (b"example.com:0080", "example.com", Some(80), "example.com:80"),
            (b"127.0.0.1:1", "127.0.0.1", Some(1), "127.0.0.1:1"),
            (b"[::1]", "[::1]", None, "[::1]"),
            (b"[0:0::1]:65535", "[::1]", Some(65535), "[::1]:65535"),
            (b"[FE80::A]", "[fe80::a]", None, "[fe80::a]"),
            (b"svc_name", "svc_name", None, "svc_name"),
            (b"a-b.c", "a-b.c", None, "a-b.c"),
        ];
        for (input, host, port, value) in cases {
            assert_eq!(norm(input), Some((host.to_string(), port, value.to_string())), "{input:?}");
            let from_header = Authority::from_header(&HeaderValue::from_bytes(input).unwrap()).unwrap();
            assert_eq!(from_header, Authority::parse(input).unwrap());
        }
    }

    #[test]
    fn attacker_authorities_are_refused() {
        let long = format!("{}.com", "a".repeat(250));
        let label = format!("{}.com", "a".repeat(64));
        for input in [
            &b""[..],
            b".",
            b":80",
            b"a@example.com",
            b"user:pass@example.com",
            b"example.com@evil",
            b"evil.com/x?y",
            b"evil.com?x",
            b"evil.com#x",
            b"example.com..",
            b".example.com",
            b"a..b",
            b"example.com:",
            b"example.com:0",
            b"example.com:65536",
            b"example.com:99999",
            b"example.com:123456",
            b"example.com:8o",
            b"example.com:+80",
            b"example.com:80:80",
            b"exa%6dple.com",
            b"exa mple.com",
            b"example.com\\x",
            b"example.com\t",
            b"ex!ample.com",
            b"ex~ample.com",
            b"ex\xc3\xa9mple.com",
            b"\xff",
            b"[::1",
            b"[::1]x",
            b"[::1]:",
            b"[fe80::1%25eth0]",
            b"[fe80::1%eth0]",
            b"[not-an-ip]",
            b"[127.0.0.1]",
            b"[]",
            b"::1",
            long.as_bytes(),
            label.as_bytes(),
        ] {
            assert_eq!(norm(input), None, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn a_normal_header_value_is_shared_not_copied() {
        let v = HeaderValue::from_static("example.com:8443");
        let a = Authority::from_header(&v).unwrap();
        assert_eq!(a.header_value().as_bytes().as_ptr(), v.as_bytes().as_ptr());
        assert_eq!(a.host(), "example.com");
    }
}
