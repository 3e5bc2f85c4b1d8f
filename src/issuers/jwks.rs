//! A JWK Set (RFC 7517 §5) from an identity provider, read strictly: only public
//! signature keys that fit the algorithms the operator configured are kept, each with the
//! exact algorithms it may verify; anything else is skipped with a reason (logged at WARN
//! by the caller). No configuration is read here, and nothing is fetched.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::config::JwsAlgorithm;

/// At most this many keys are looked at in one set; an IdP publishes a handful.
const MAX_KEYS: usize = 100;

/// Why a whole document was refused (the last good set then stays in force).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JSON object")]
    NotJson,
    #[error("no \"keys\" array")]
    NoKeys,
    #[error("no key usable with the configured algorithms")]
    NoUsableKeys,
}

/// The public half of an IdP signing key.
#[derive(Debug)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC1 point (0x04 || x || y).
    Ec(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// One usable key of a set.
#[derive(Debug)]
pub struct PublicKey {
    pub kid: Option<String>,
    /// The algorithms it verifies: the configured ones its type (and its `alg`, if the
    /// JWK names one) allows.
    pub algs: Vec<JwsAlgorithm>,
    material: Material,
    /// SHA-256 of the algorithms, the key and the caller's salt (the issuer's policy): a
    /// cached verdict is served only while a key with this fingerprint is still in the set.
    pub fingerprint: [u8; 32],
}

impl PublicKey {
    /// The RFC 7638 JWK SHA-256 thumbprint: the required members, in lexicographic order,
    /// without whitespace (the `jkt` of DPoP, RFC 9449 §6.1).
    pub fn thumbprint(&self) -> [u8; 32] {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let canonical = match &self.material {
            Material::Rsa { n, e } => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n)),
            Material::Ec(p) => {
                let (crv, len) = if p.len() == 65 { ("P-256", 32) } else { ("P-384", 48) };
                format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, b64(&p[1..1 + len]), b64(&p[1 + len..]))
            }
            Material::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x)),
        };
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    /// Does `signature` over `message` verify with this key under `alg`? `alg` must be
    /// one of [`PublicKey::algs`]; anything else is false.
    pub fn verify(&self, alg: JwsAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        if !self.algs.contains(&alg) {
            return false;
        }
        use JwsAlgorithm as A;
        match (&self.material, alg) {
            (Material::Rsa { n, e }, _) => {
                let params: &signature::RsaParameters = match alg {
                    A::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    A::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    A::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    A::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    A::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    A::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }.verify(params, message, sig).is_ok()
            }
            (Material::Ec(point), A::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(message, sig).is_ok()
            }
            (Material::Ec(point), A::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(message, sig).is_ok()
            }
            (Material::Ed25519(x), A::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok()
            }
            _ => false,
        }
    }
}

/// The keys of one fetched set, by `kid` (keys without one apart).
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<PublicKey>>,
    unnamed: Vec<Arc<PublicKey>>,
}

/// What looking a key up found.
pub enum Found<'a> {
    Key(&'a Arc<PublicKey>),
    /// The key exists but does not verify this algorithm: no refetch will change that.
    WrongAlgorithm,
    Unknown,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token's `kid` and `alg`. A token without `kid` may use the set's only
    /// key for its algorithm, never a guess among several.
    pub fn find(&self, kid: Option<&str>, alg: JwsAlgorithm) -> Found<'_> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut fit = self.by_kid.values().chain(self.unnamed.iter()).filter(|k| k.algs.contains(&alg));
                match (fit.next(), fit.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        };
        match key {
            Some(k) if k.algs.contains(&alg) => Found::Key(k),
            Some(_) => Found::WrongAlgorithm,
            None => Found::Unknown,
        }
    }

    /// Is the key that made a verdict (its `kid`, empty for a key without one, and its
    /// fingerprint) still in the set?
    pub fn holds(&self, kid: &str, fingerprint: &[u8; 32]) -> bool {
        if kid.is_empty() {
            return self.unnamed.iter().any(|k| &k.fingerprint == fingerprint);
        }
        self.by_kid.get(kid).is_some_and(|k| &k.fingerprint == fingerprint)
    }
}

/// One JWK (a DPoP proof's `jwk` header, RFC 9449 §4.2), held to the same rules as a
/// key of a set: a public signature key only (private members refused), of a type that
/// fits `allowed`.
pub fn parse_jwk(jwk: &Value, allowed: &[JwsAlgorithm]) -> Result<PublicKey, String> {
    key(jwk, allowed, &[0; 32])
}

/// A set of the one key in a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) file: RSA, EC P-256
/// or Ed25519, read into its JWK form and held to the rules of [`parse`].
pub fn from_spki_pem(pem: &[u8], allowed: &[JwsAlgorithm], salt: &[u8; 32]) -> Result<KeySet, String> {
    use rustls_pki_types::SubjectPublicKeyInfoDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey as Spki;

    let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| format!("not a PEM public key: {e}"))?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref())
        .map_err(|_| "not a SubjectPublicKeyInfo".to_string())?;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let oid = spki.algorithm.algorithm.to_id_string();
    let jwk = match (oid.as_str(), spki.parsed()) {
        (_, Ok(Spki::RSA(rsa))) => {
            let n: Vec<u8> = rsa.modulus.iter().copied().skip_while(|b| *b == 0).collect();
            let e: Vec<u8> = rsa.exponent.iter().copied().skip_while(|b| *b == 0).collect();
            serde_json::json!({"kty": "RSA", "n": b64(&n), "e": b64(&e)})
        }
        (_, Ok(Spki::EC(point))) => {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
            let data = point.data();
            if curve.as_deref() != Some("1.2.840.10045.3.1.7") || data.len() != 65 || data[0] != 4 {
                return Err("an EC key other than an uncompressed P-256 point".into());
            }
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&data[1..33]), "y": b64(&data[33..])})
        }
        ("1.3.101.112", _) => {
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&spki.subject_public_key.data)})
        }
        _ => return Err(format!("key type {oid} not supported (RSA, EC P-256, Ed25519)")),
    };
    let k = key(&jwk, allowed, salt)?;
    Ok(KeySet { by_kid: HashMap::new(), unnamed: vec![Arc::new(k)] })
}

/// Parse a JWK Set document. Returns the usable keys and, for each key skipped, why
/// (to be logged). A document that is not a JSON object with a `keys` array, or that
/// leaves no usable key, is refused as a whole.
/// `salt` goes into every key's fingerprint (the caller's policy: see [`PublicKey::fingerprint`]).
pub fn parse(body: &[u8], allowed: &[JwsAlgorithm], salt: &[u8; 32]) -> Result<(KeySet, Vec<String>), JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| JwksError::NotJson)?;
    let keys = doc.as_object().ok_or(JwksError::NotJson)?.get("keys").and_then(Value::as_array);
    let keys = keys.ok_or(JwksError::NoKeys)?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    if keys.len() > MAX_KEYS {
        skipped.push(format!("{} keys beyond the first {MAX_KEYS} ignored", keys.len() - MAX_KEYS));
    }
    for (i, jwk) in keys.iter().take(MAX_KEYS).enumerate() {
        match key(jwk, allowed, salt) {
            Ok(k) => match &k.kid {
                Some(kid) if set.by_kid.contains_key(kid) => skipped.push(format!("key {kid:?}: kid repeated")),
                Some(kid) => {
                    set.by_kid.insert(kid.clone(), Arc::new(k));
                }
                None => set.unnamed.push(Arc::new(k)),
            },
            Err(why) => {
                let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("-");
                // Only printable, short: a hostile document must not forge log lines.
                let kid: String = kid.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
                skipped.push(format!("key #{i} (kid {kid:?}): {why}"));
            }
        }
    }
    if set.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok((set, skipped))
}

fn key(jwk: &Value, allowed: &[JwsAlgorithm], salt: &[u8; 32]) -> Result<PublicKey, String> {
    let obj = jwk.as_object().ok_or("not an object")?;
    let text = |name: &str| -> Result<Option<&str>, String> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("{name} is not a string")),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let s = text(name)?.ok_or_else(|| format!("no {name}"))?;
        URL_SAFE_NO_PAD.decode(s).map_err(|_| format!("{name} is not base64url"))
    };
    if let Some(u) = text("use")?
        && u != "sig"
    {
        return Err(format!("use {u:?} is not \"sig\""));
    }
    if let Some(ops) = obj.get("key_ops") {
        let verify = ops.as_array().is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("key_ops does not allow \"verify\"".into());
        }
    }
    // A private key in a public document is a leak at the IdP; never use it.
    if obj.contains_key("d") {
        return Err("holds private key material".into());
    }
    let kid = text("kid")?.map(str::to_string);
    let kty = text("kty")?.ok_or("no kty")?;
    use JwsAlgorithm as A;
    let (family, material): (&[JwsAlgorithm], Material) = match kty {
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let n_bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if !(2048..=8192).contains(&n_bits) {
                return Err(format!("RSA modulus of about {n_bits} bits (2048 to 8192 accepted)"));
            }
            (&[A::RS256, A::RS384, A::RS512, A::PS256, A::PS384, A::PS512], Material::Rsa { n, e })
        }
        "EC" => {
            let (alg, len) = match text("crv")? {
                Some("P-256") => (A::ES256, 32),
                Some("P-384") => (A::ES384, 48),
                other => return Err(format!("curve {other:?} not supported (P-256, P-384)")),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != len || y.len() != len {
                return Err("coordinates of the wrong length for the curve".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (if alg == A::ES256 { &[A::ES256] } else { &[A::ES384] }, Material::Ec(point))
        }
        "OKP" => {
            if text("crv")? != Some("Ed25519") {
                return Err("OKP curve other than Ed25519".into());
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("Ed25519 key of the wrong length".into());
            }
            (&[A::EdDSA], Material::Ed25519(x))
        }
        "oct" => return Err("symmetric key (kty oct) in a public key set".into()),
        other => return Err(format!("key type {other:?} not supported")),
    };
    let jwk_alg = match text("alg")? {
        None => None,
        Some(a) => Some(JwsAlgorithm::parse(a).ok_or_else(|| format!("alg {a:?} not accepted from a trusted issuer"))?),
    };
    let algs: Vec<JwsAlgorithm> =
        family.iter().copied().filter(|a| allowed.contains(a) && jwk_alg.is_none_or(|j| j == *a)).collect();
    if algs.is_empty() {
        let named = jwk_alg.map_or_else(|| format!("kty {kty}"), |a| format!("alg {}", a.as_str()));
        return Err(format!("{named} does not fit the configured algorithms"));
    }
    let fingerprint = {
        let mut m = Vec::new();
        for a in &algs {
            m.extend_from_slice(a.as_str().as_bytes());
            m.push(0);
        }
        match &material {
            Material::Rsa { n, e } => {
                m.extend_from_slice(n);
                m.push(0);
                m.extend_from_slice(e);
            }
            Material::Ec(p) | Material::Ed25519(p) => m.extend_from_slice(p),
        }
        m.push(0);
        m.extend_from_slice(salt);
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &m);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    };
    Ok(PublicKey { kid, algs, material, fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ec_key(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])})
    }

    #[test]
    fn refuses_garbage_and_keeps_only_fitting_keys() {
        assert_eq!(parse(b"<html>", &[JwsAlgorithm::ES256], &[0; 32]).unwrap_err(), JwksError::NotJson);
        assert_eq!(parse(b"[]", &[JwsAlgorithm::ES256], &[0; 32]).unwrap_err(), JwksError::NotJson);
        assert_eq!(parse(b"{}", &[JwsAlgorithm::ES256], &[0; 32]).unwrap_err(), JwksError::NoKeys);
        let doc = json!({"keys": [
            ec_key("a"),
            with(ec_key("b"), "alg", json!("ES384")),
            with(ec_key("c"), "use", json!("enc")),
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "h"}),
            with(ec_key("d"), "d", json!("AAAA")),
            ec_key("a"),
        ]});
        let (set, skipped) = parse(doc.to_string().as_bytes(), &[JwsAlgorithm::ES256], &[0; 32]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        assert!(matches!(set.find(Some("a"), JwsAlgorithm::ES256), Found::Key(_)));
        assert!(matches!(set.find(Some("a"), JwsAlgorithm::RS256), Found::WrongAlgorithm));
        assert!(matches!(set.find(Some("zz"), JwsAlgorithm::ES256), Found::Unknown));
        // Without kid, the only key for the algorithm.
        assert!(matches!(set.find(None, JwsAlgorithm::ES256), Found::Key(_)));
        // An EC key never verifies RS256, whatever the token says.
        assert_eq!(
            parse(json!({"keys": [ec_key("a")]}).to_string().as_bytes(), &[JwsAlgorithm::RS256], &[0; 32]).unwrap_err(),
            JwksError::NoUsableKeys
        );
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        v[k] = x;
        v
    }
}
