//! Sender-constrained tokens: what a token is bound to, as the RFC 7800 `cnf` claim says.
//!
//! A bound token is honoured only from whoever proves possession of the key it names: the
//! client certificate of the connection (RFC 8705 §3, `x5t#S256`) or the DPoP key
//! (RFC 9449 §6, `jkt`). Parsing is strict and fails closed: a `cnf` this gateway cannot
//! read completely (an unknown or repeated member, both members, a thumbprint that is not
//! 32 bytes of base64url) refuses the token rather than let it pass as a bearer token.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The `cnf` member of a certificate-bound token (RFC 8705 §3.1).
pub const X5T_S256: &str = "x5t#S256";
/// The `cnf` member of a DPoP-bound token (RFC 9449 §6.1).
pub const JKT: &str = "jkt";

/// The key a token is bound to: a base64url (unpadded) SHA-256 thumbprint, of the client
/// certificate's DER or of the DPoP public key's RFC 7638 JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    Mtls { x5t_s256: Box<str> },
    Dpop { jkt: Box<str> },
}

/// Why a `cnf` claim was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CnfError {
    #[error("cnf is not an object with exactly one member x5t#S256 or jkt")]
    Shape,
    #[error("cnf thumbprint is not 32 bytes of unpadded base64url")]
    Thumbprint,
}

impl Binding {
    /// `mtls` or `dpop`: the metric label and the identity header value.
    pub fn kind(&self) -> &'static str {
        match self {
            Binding::Mtls { .. } => "mtls",
            Binding::Dpop { .. } => "dpop",
        }
    }

    /// Bound to the certificate whose DER is `der`.
    pub fn mtls_of_certificate(der: &[u8]) -> Binding {
        Binding::Mtls { x5t_s256: thumbprint(der).into() }
    }

    /// The certificate thumbprint, for a certificate-bound token.
    pub fn x5t_s256(&self) -> Option<&str> {
        match self {
            Binding::Mtls { x5t_s256 } => Some(x5t_s256),
            Binding::Dpop { .. } => None,
        }
    }

    /// The DPoP key thumbprint, for a DPoP-bound token.
    pub fn jkt(&self) -> Option<&str> {
        match self {
            Binding::Dpop { jkt } => Some(jkt),
            Binding::Mtls { .. } => None,
        }
    }

    /// Read a `cnf` claim already parsed as JSON (trusted issuers' tokens, introspection
    /// answers). The same rules as deserialising it; a member named twice must have been
    /// refused by the parser (both callers parse with `unique_object`).
    pub fn from_json(v: &serde_json::Value) -> Result<Binding, CnfError> {
        let serde_json::Value::Object(m) = v else { return Err(CnfError::Shape) };
        let mut members = m.iter();
        let (Some((name, value)), None) = (members.next(), members.next()) else { return Err(CnfError::Shape) };
        let serde_json::Value::String(value) = value else { return Err(CnfError::Shape) };
        Binding::from_member(name, value)
    }

    fn from_member(name: &str, value: &str) -> Result<Binding, CnfError> {
        if !is_thumbprint(value) {
            return Err(CnfError::Thumbprint);
        }
        match name {
            X5T_S256 => Ok(Binding::Mtls { x5t_s256: value.into() }),
            JKT => Ok(Binding::Dpop { jkt: value.into() }),
            _ => Err(CnfError::Shape),
        }
    }

    fn member(&self) -> (&'static str, &str) {
        match self {
            Binding::Mtls { x5t_s256 } => (X5T_S256, x5t_s256),
            Binding::Dpop { jkt } => (JKT, jkt),
        }
    }
}

/// The base64url (unpadded) SHA-256 of `bytes`: the form of both thumbprints.
pub fn thumbprint(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(super::sha256(bytes))
}

/// Exactly 43 base64url characters that decode to 32 bytes (so no stray trailing bits).
pub fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == s)
}

/// For an optional `cnf` member: present means a binding, `null` included (refused), where
/// serde would read `null` as absent.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Binding>, D::Error> {
    Binding::deserialize(d).map(Some)
}

impl Serialize for Binding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (name, value) = self.member();
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(name, value)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Binding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Binding, D::Error> {
        struct Cnf;
        impl<'de> Visitor<'de> for Cnf {
            type Value = Binding;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a cnf object with one member, x5t#S256 or jkt")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Binding, A::Error> {
                let mut found = None;
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    // A second member (repeated, or the other kind, or unknown): refused.
                    if found.is_some() {
                        return Err(de::Error::custom(CnfError::Shape));
                    }
                    let value = map.next_value::<std::borrow::Cow<'de, str>>()?;
                    found = Some(Binding::from_member(&name, &value).map_err(de::Error::custom)?);
                }
                found.ok_or_else(|| de::Error::custom(CnfError::Shape))
            }
        }
        d.deserialize_map(Cnf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `thumbprint(b"cert")`.
    const T: &str = "BimEMugGayniIjvMI6qVBLVq5Qj6vzQ1UIhpucMZDiI";

    #[test]
    fn round_trip_and_kind() {
        for b in [Binding::Mtls { x5t_s256: T.into() }, Binding::Dpop { jkt: T.into() }] {
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(serde_json::from_str::<Binding>(&json).unwrap(), b);
            assert_eq!(Binding::from_json(&serde_json::from_str(&json).unwrap()).unwrap(), b);
        }
        let m = Binding::Mtls { x5t_s256: T.into() };
        assert_eq!(serde_json::to_string(&m).unwrap(), format!(r#"{{"x5t#S256":"{T}"}}"#));
        assert_eq!((m.kind(), m.x5t_s256(), m.jkt()), ("mtls", Some(T), None));
        let d = Binding::Dpop { jkt: T.into() };
        assert_eq!((d.kind(), d.jkt(), d.x5t_s256()), ("dpop", Some(T), None));
        assert_eq!(thumbprint(b"cert"), T);
        assert!(is_thumbprint(T));
    }

    #[test]
    fn anything_else_is_refused() {
        let short = &T[..42];
        let bad = [
            "{}".to_string(),
            "[]".into(),
            "null".into(),
            r#""x""#.into(),
            format!(r#"{{"x5t#S256":"{T}","x5t#S256":"{T}"}}"#),
            format!(r#"{{"x5t#S256":"{T}","jkt":"{T}"}}"#),
            format!(r#"{{"jkt":"{T}","kid":"a"}}"#),
            format!(r#"{{"kid":"a","jkt":"{T}"}}"#),
            format!(r#"{{"x5t":"{T}"}}"#),
            format!(r#"{{"X5T#S256":"{T}"}}"#),
            r#"{"jwk":{"kty":"EC"}}"#.into(),
            format!(r#"{{"jkt":"{short}"}}"#),
            format!(r#"{{"jkt":"{T}A"}}"#),
            format!(r#"{{"jkt":"{T}="}}"#),
            // 43 characters whose last one carries bits past the 32 bytes.
            format!(r#"{{"jkt":"{}3"}}"#, &T[..42]),
            format!(r#"{{"jkt":"/{}"}}"#, &T[1..]),
            r#"{"jkt":5}"#.into(),
            r#"{"jkt":["a"]}"#.into(),
            r#"{"jkt":null}"#.into(),
        ];
        for s in &bad {
            assert!(serde_json::from_str::<Binding>(s).is_err(), "{s}");
            // serde_json's Value keeps one of two same-named members: the callers of
            // `from_json` read payloads with a parser that refuses duplicates first.
            let duplicate = s.matches(X5T_S256).count() > 1;
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(s)
                && !duplicate
            {
                assert!(Binding::from_json(&v).is_err(), "{s}");
            }
        }
    }
}
