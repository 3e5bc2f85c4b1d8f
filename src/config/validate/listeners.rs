//! `[[listener]]`, `[tls]`, `[endpoints]` and `[admin]`: where the gateway listens and
//! which paths it answers itself.

use std::net::SocketAddr;

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{Admin, Listener, TlsFiles};
use crate::config::raw::{RawAdmin, RawEndpoints, RawListener, RawTls};

/// The paths of the gateway's own endpoints, each distinct.
pub(super) struct Endpoints {
    pub(super) token: String,
    pub(super) authorize: String,
    pub(super) revoke: String,
    pub(super) introspect: String,
    pub(super) metadata: String,
    pub(super) jwks: String,
}

impl Validator<'_> {
    pub(super) fn listeners(&self, raw: &[Spanned<RawListener>]) -> Result<Vec<Listener>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err_at(1, "no [[listener]]: at least one listener address is required"));
        }
        let mut listeners = Vec::new();
        for l in raw {
            let l = l.get_ref();
            let address: SocketAddr = l.address.get_ref().parse().map_err(|_| {
                self.err(
                    l.address.span(),
                    format!("bad listener address {:?}: write ip:port, e.g. \"127.0.0.1:8443\"", l.address.get_ref()),
                )
            })?;
            if let Some(other) = listeners.iter().find(|o: &&Listener| overlaps(o.address, address)) {
                return Err(self.err(
                    l.address.span(),
                    format!(
                        "listener {address} overlaps the listener {} on line {}: both cannot be bound",
                        other.address, other.line
                    ),
                ));
            }
            listeners.push(Listener {
                address,
                tls: l.tls.unwrap_or(true),
                line: self.line_of(l.address.span().start),
            });
        }
        Ok(listeners)
    }

    /// `[tls]`: the paths only. The files are read (or generated) once, by `crate::tls`.
    /// `loopback_issuer`: a local trial, where a dev certificate is expected.
    pub(super) fn tls(
        &self,
        raw: Option<&Spanned<RawTls>>,
        listeners: &[Spanned<RawListener>],
        loopback_issuer: bool,
    ) -> Result<Option<TlsFiles>, ConfigError> {
        let tls = match raw {
            None => None,
            Some(spanned) => {
                let t = spanned.get_ref();
                let (cert, key) = (self.path(&t.cert), self.path(&t.key));
                if t.dev_certificate && !loopback_issuer && (cert.exists() || key.exists()) {
                    self.warn(
                        spanned.span(),
                        "dev_certificate = true while the certificate files exist: should they go missing, a \
                         self-signed localhost certificate would silently replace them; set dev_certificate = false",
                    );
                }
                let client_certs = self.client_certs(t, listeners)?;
                Some(TlsFiles {
                    cert,
                    key,
                    dev_certificate: t.dev_certificate,
                    line: self.line_of(spanned.span().start),
                    hsts: self.hsts(t)?,
                    client_auth: client_certs.mode,
                    client_ca: client_certs.ca,
                    client_ca_line: client_certs.ca_line,
                })
            }
        };
        if tls.is_none()
            && let Some(l) = listeners.iter().find(|l| l.get_ref().tls.unwrap_or(true))
        {
            return Err(
                self.err(l.span(), "a TLS listener needs a [tls] section with cert and key (or set tls = false)")
            );
        }
        Ok(tls)
    }

    /// header would refuse the host once the self-signed certificate is not trusted.
    fn hsts(&self, t: &RawTls) -> Result<Option<http::HeaderValue>, ConfigError> {
        let Some(v) = &t.hsts else { return Ok(None) };
        let bad = |why: &str| {
            self.err(
                v.span(),
                format!("bad hsts {:?}: {why} (write e.g. \"max-age=31536000; includeSubDomains\")", v.get_ref()),
            )
        };
        let mut max_age = None;
        let mut seen = Vec::new();
        for part in v.get_ref().split(';').map(str::trim) {
            let name = part.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            if seen.contains(&name) {
                return Err(bad("a directive appears twice"));
            }
            match name.as_str() {
                "max-age" => {
                    let value = part.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
                    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(bad("max-age needs a number of seconds"));
                    }
                    max_age = Some(value.parse::<u64>().map_err(|_| bad("max-age is too large"))?);
                }
                "includesubdomains" | "preload" if !part.contains('=') => {}
                "" => return Err(bad("an empty directive")),
                _ => return Err(bad("directives are max-age, includeSubDomains and preload")),
            }
            seen.push(name);
        }
        if max_age.is_none() {
            return Err(bad("max-age is required"));
        }
        if t.dev_certificate {
            return Err(self.err(
                v.span(),
                "hsts cannot be used with dev_certificate = true: browsers would then refuse the \
                 self-signed certificate for max-age seconds; use a real certificate",
            ));
        }
        let value = http::HeaderValue::from_str(v.get_ref().trim()).map_err(|_| bad("not a valid header value"))?;
        Ok(Some(value))
    }

    pub(super) fn endpoints(&self, raw: &RawEndpoints) -> Result<Endpoints, ConfigError> {
        let e = Endpoints {
            token: self.endpoint(&raw.token, "/oauth/token")?,
            authorize: self.endpoint(&raw.authorize, "/oauth/authorize")?,
            revoke: self.endpoint(&raw.revoke, "/oauth/revoke")?,
            introspect: self.endpoint(&raw.introspect, "/oauth/introspect")?,
            metadata: self.endpoint(&raw.metadata, "/.well-known/oauth-authorization-server")?,
            jwks: self.endpoint(&raw.jwks, "/.well-known/jwks.json")?,
        };
        let named = [
            (&raw.token, &e.token),
            (&raw.authorize, &e.authorize),
            (&raw.revoke, &e.revoke),
            (&raw.introspect, &e.introspect),
            (&raw.metadata, &e.metadata),
            (&raw.jwks, &e.jwks),
        ];
        for (i, (raw_a, a)) in named.iter().enumerate() {
            if let Some((raw_b, b)) = named[i + 1..].iter().find(|(_, b)| b == a) {
                // At least one of the two was configured, or the defaults would differ.
                let line = raw_b.as_ref().or(raw_a.as_ref()).map(|p| self.line_of(p.span().start)).unwrap_or(1);
                return Err(self.err_at(line, format!("endpoint path {b:?} is used by two endpoints")));
            }
        }
        Ok(e)
    }

    /// An endpoint path: absolute, without query or fragment.
    fn endpoint(&self, v: &Option<Spanned<String>>, default: &str) -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_string()),
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#', ' ']) => {
                Err(self.err(p.span(), "endpoint paths start with '/' and have no query, fragment or spaces"))
            }
            Some(p) => Ok(p.get_ref().clone()),
        }
    }

    /// The admin listener: on 127.0.0.1:9901 unless moved or disabled; never shared
    /// with a gateway listener, since it is plaintext. `api_key_hash` turns the blocks
    /// API on; its key then travels in clear, so a non-loopback address is warned about.
    pub(super) fn admin(
        &self,
        raw: Option<&Spanned<RawAdmin>>,
        listeners: &[Listener],
    ) -> Result<Option<Admin>, ConfigError> {
        let default = SocketAddr::from(([127, 0, 0, 1], 9901));
        let Some(raw) = raw else { return Ok(Some(Admin { address: default, line: 0, api_key_hash: None })) };
        let a = raw.get_ref();
        if a.enabled == Some(false) {
            return Ok(None);
        }
        let api_key_hash = a.api_key_hash.as_ref().map(|h| self.argon2id(h, "api_key_hash")).transpose()?;
        let Some(addr) = &a.address else {
            return Ok(Some(Admin { address: default, line: self.line_of(raw.span().start), api_key_hash }));
        };
        let line = self.line_of(addr.span().start);
        let address: SocketAddr = addr.get_ref().parse().map_err(|_| {
            self.err(
                addr.span(),
                format!("bad admin address {:?}: write ip:port, e.g. \"127.0.0.1:9901\"", addr.get_ref()),
            )
        })?;
        if let Some(l) = listeners.iter().find(|l| overlaps(l.address, address)) {
            return Err(self.err(
                addr.span(),
                format!(
                    "the admin address must differ from every [[listener]] address: {address} overlaps {} on line {}",
                    l.address, l.line
                ),
            ));
        }
        if let Some(h) = &a.api_key_hash
            && !address.ip().is_loopback()
        {
            self.warn(
                h.span(),
                "api_key_hash on an admin listener that is not loopback: the admin listener is plaintext, so the \
                 key crosses the network in clear (keep it on a private network, or tunnel to it)",
            );
        }
        Ok(Some(Admin { address, line, api_key_hash }))
    }
}

/// Whether two listen addresses cannot both be bound: the same port (not 0, which picks a
/// free one) on the same address, or where one is a wildcard covering the other (`[::]`
/// covers IPv4 too, as Linux binds it dual-stack).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let (a, b) = (a.ip().to_canonical(), b.ip().to_canonical());
    let covers = |w: std::net::IpAddr, o: std::net::IpAddr| w.is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    a == b || covers(a, b) || covers(b, a)
}
