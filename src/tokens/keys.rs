//! Signing keys: loaded from PEM files (or generated on first start), the first active
//! key signs, every listed key verifies. The verifier allows only the algorithm of the
//! key named by `kid`, never the token header's `alg` on its own.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::Serialize;

use crate::config::{Config, KeyAlgorithm, KeyConfig};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {kid}: cannot read {path}: {source}")]
    Read { kid: String, path: String, source: std::io::Error },
    #[error("key {kid}: cannot write {path}: {source}")]
    Write { kid: String, path: String, source: std::io::Error },
    #[error("key {kid}: {path} is not a usable {alg:?} key: {reason}")]
    Invalid { kid: String, path: String, alg: KeyAlgorithm, reason: String },
    #[error("key {kid}: {path} does not exist and generate = false")]
    Missing { kid: String, path: String },
}

impl KeyError {
    /// The `[[key]]` the error is about.
    pub fn kid(&self) -> &str {
        match self {
            KeyError::Read { kid, .. }
            | KeyError::Write { kid, .. }
            | KeyError::Invalid { kid, .. }
            | KeyError::Missing { kid, .. } => kid,
        }
    }
}

/// The private half, parsed once: signing a token is then one signature, not a key
/// parse (PKCS#8 decoding and public-key derivation) plus a signature.
pub(crate) enum Signer {
    Ed25519(Ed25519KeyPair),
    Ecdsa(EcdsaKeyPair),
    Rsa(aws_lc_rs::rsa::KeyPair),
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

#[derive(Debug, thiserror::Error)]
#[error("signing failed")]
pub struct SignError;

impl Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            Signer::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
            // The fixed encoding is JWS's r || s (RFC 7518 §3.4).
            Signer::Ecdsa(kp) => kp.sign(&rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| SignError),
            Signer::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, message, &mut sig).map_err(|_| SignError)?;
                Ok(sig)
            }
            Signer::Hmac(key) => Ok(aws_lc_rs::hmac::sign(key, message).as_ref().to_vec()),
        }
    }
}

/// One usable key: verifies; the set's first active key also signs.
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    signer: Signer,
    /// The encoded JOSE header every token this key signs carries (`typ`, `alg`, `kid`).
    header_b64: String,
    pub(crate) decoding: DecodingKey,
    /// Pre-built so the hot path does not rebuild it: this key's algorithm only, iss, aud.
    pub(crate) validation: Validation,
    /// The public half as a JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037); `None` for HS256,
    /// whose key is a shared secret and never published.
    pub jwk: Option<serde_json::Value>,
    /// SHA-256 of the key file and of the issuer and audience `validation` checks: a
    /// cached verdict reached under another fingerprint proves nothing under this one.
    pub(crate) fingerprint: [u8; 32],
    /// The longest access-token lifetime the configuration can issue (the default and every
    /// client's): a token claiming a longer `exp - iat` was not minted under it.
    pub(crate) max_lifetime_secs: u64,
    /// A key for the login form's CSRF tokens, derived from this key's file: every replica
    /// loading the same key files derives the same one, and nobody without the file can.
    csrf_key: aws_lc_rs::hmac::Key,
}

/// The keys in force for one configuration.
pub struct KeySet {
    signer: Arc<Key>,
    by_kid: HashMap<String, Arc<Key>>,
    /// In config order, for the JWK Set.
    ordered: Vec<Arc<Key>>,
}

impl Key {
    /// A raw signature over `message` with this key (for tests and fuzzing fixtures).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.signer.sign(message)
    }

    /// A compact JWS (RFC 7515 §7.1) of `claims` under this key.
    pub fn sign_jwt<T: Serialize>(&self, claims: &T) -> Result<String, SignError> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = serde_json::to_vec(claims).map_err(|_| SignError)?;
        let mut jws = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 700);
        jws.push_str(&self.header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jws);
        let signature = self.signer.sign(jws.as_bytes())?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&signature, &mut jws);
        Ok(jws)
    }
}

impl KeySet {
    /// Load every configured key, generating missing ones where the config allows it.
    pub fn load(config: &Config) -> Result<KeySet, KeyError> {
        let mut by_kid = HashMap::new();
        let mut ordered = Vec::new();
        let mut signer = None;
        for kc in &config.keys {
            let key = Arc::new(load_key(kc, config)?);
            if kc.active && signer.is_none() {
                signer = Some(key.clone());
            }
            by_kid.insert(kc.id.clone(), key.clone());
            ordered.push(key);
        }
        // Config validation guarantees at least one active key.
        let signer = signer.ok_or_else(|| KeyError::Missing { kid: "<active>".into(), path: "-".into() })?;
        Ok(KeySet { signer, by_kid, ordered })
    }

    /// The JWK Set (RFC 7517 §5) of every listed asymmetric key, signing or verify-only.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.ordered.iter().filter_map(|k| k.jwk.clone()).collect();
        serde_json::json!({ "keys": keys })
    }

    pub fn signer(&self) -> &Key {
        &self.signer
    }

    /// The HMAC key binding /authorize CSRF tokens to a login session (or a pre-login
    /// nonce); derived from the signing key's file, so shared by replicas with the same keys
    /// and rotated with the signing key.
    pub fn csrf_key(&self) -> &aws_lc_rs::hmac::Key {
        &self.signer.csrf_key
    }

    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.by_kid.get(kid).map(|k| k.as_ref())
    }
}

fn alg_of(a: KeyAlgorithm) -> Algorithm {
    match a {
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::HS256 => Algorithm::HS256,
    }
}

fn load_key(kc: &KeyConfig, config: &Config) -> Result<Key, KeyError> {
    let path = kc.file.display().to_string();
    let invalid =
        |reason: String| KeyError::Invalid { kid: kc.id.clone(), path: path.clone(), alg: kc.algorithm, reason };
    if !kc.file.exists() {
        if !kc.generate {
            return Err(KeyError::Missing { kid: kc.id.clone(), path });
        }
        let contents = generate(kc.algorithm).map_err(invalid)?;
        write_private(&kc.file, contents.as_bytes()).map_err(|source| KeyError::Write {
            kid: kc.id.clone(),
            path: path.clone(),
            source,
        })?;
        tracing::info!(kid = %kc.id, path = %path, alg = ?kc.algorithm, "generated a new signing key");
    }
    let bytes =
        std::fs::read(&kc.file).map_err(|source| KeyError::Read { kid: kc.id.clone(), path: path.clone(), source })?;
    let max_lifetime_secs = max_lifetime_secs(config);
    // HKDF-extract style: HMAC of the secret file bytes under a fixed, public label.
    let csrf_key = {
        let label = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"portcullis authorize csrf v1");
        let prk = aws_lc_rs::hmac::sign(&label, &bytes);
        aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, prk.as_ref())
    };
    let fingerprint = {
        let mut policy = bytes.clone();
        // Every audience a token may carry (the default and each route's): an audience
        // dropped by a reload must void the cached verdicts of its tokens.
        for part in std::iter::once(config.issuer()).chain(config.audiences()) {
            policy.push(0);
            policy.extend_from_slice(part.as_bytes());
        }
        // A shorter ceiling after a reload must reach cached verdicts too.
        policy.push(0);
        policy.extend_from_slice(&max_lifetime_secs.to_be_bytes());
        super::sha256(&policy)
    };
    let (signer, decoding, public) = match kc.algorithm {
        KeyAlgorithm::HS256 => {
            let text = String::from_utf8(bytes).map_err(|_| invalid("HS256 key file must hold base64 text".into()))?;
            let secret =
                decode_b64(text.trim()).ok_or_else(|| invalid("HS256 key file must hold base64 text".into()))?;
            if secret.len() < 32 {
                return Err(invalid("HS256 secret must be at least 32 bytes".into()));
            }
            let signer = Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret)));
            (signer, DecodingKey::from_secret(&secret), None)
        }
        alg => {
            // The first private key in the file, of any encoding (PKCS#8, SEC1, PKCS#1): the
            // key constructors below refuse a kind that does not fit the algorithm.
            let key =
                PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| invalid(format!("not a PEM private key: {e}")))?;
            let der = key.secret_der();
            match alg {
                KeyAlgorithm::EdDSA => {
                    let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| invalid(e.to_string()))?;
                    let public = kp.public_key().as_ref();
                    let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(public) });
                    let decoding = DecodingKey::from_ed_der(public);
                    (Signer::Ed25519(kp), decoding, Some(jwk))
                }
                KeyAlgorithm::ES256 => {
                    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                        .map_err(|e| invalid(e.to_string()))?;
                    let public = kp.public_key().as_ref();
                    // SEC1 uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
                    let (x, y) = match public {
                        [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
                        _ => return Err(invalid("unexpected P-256 public key encoding".into())),
                    };
                    let jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y) });
                    let decoding = DecodingKey::from_ec_der(public);
                    (Signer::Ecdsa(kp), decoding, Some(jwk))
                }
                _ => {
                    let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
                        .or_else(|_| aws_lc_rs::rsa::KeyPair::from_der(der))
                        .map_err(|e| invalid(e.to_string()))?;
                    let public = kp.public_key();
                    let jwk = serde_json::json!({
                        "kty": "RSA",
                        "n": b64url(public.modulus().big_endian_without_leading_zero()),
                        "e": b64url(public.exponent().big_endian_without_leading_zero()),
                    });
                    let decoding = DecodingKey::from_rsa_der(public.as_ref());
                    (Signer::Rsa(kp), decoding, Some(jwk))
                }
            }
        }
    };
    let alg = alg_of(kc.algorithm);
    let jwk = public.map(|mut jwk| {
        jwk["kid"] = serde_json::Value::from(kc.id.as_str());
        jwk["alg"] = serde_json::Value::from(alg_name(kc.algorithm));
        jwk["use"] = serde_json::Value::from("sig");
        jwk
    });
    let mut validation = Validation::new(alg);
    validation.leeway = super::LEEWAY_SECS;
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&config.audiences());
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    // RFC 9068 §2.1: typ at+jwt; the verifier picks the key by kid.
    let header = serde_json::json!({ "typ": "at+jwt", "alg": alg_name(kc.algorithm), "kid": kc.id });
    let header_b64 = b64url(header.to_string().as_bytes());
    Ok(Key {
        kid: kc.id.clone(),
        alg,
        signer,
        header_b64,
        decoding,
        validation,
        jwk,
        fingerprint,
        max_lifetime_secs,
        csrf_key,
    })
}

/// The longest access-token lifetime `config` can issue.
fn max_lifetime_secs(config: &Config) -> u64 {
    config.clients.values().map(|c| c.token_lifetime.as_secs()).fold(config.token_lifetime.as_secs(), u64::max)
}

/// The JOSE `alg` name (RFC 7518 §3.1, RFC 8037 §3.1).
fn alg_name(a: KeyAlgorithm) -> &'static str {
    match a {
        KeyAlgorithm::EdDSA => "EdDSA",
        KeyAlgorithm::ES256 => "ES256",
        KeyAlgorithm::RS256 => "RS256",
        KeyAlgorithm::HS256 => "HS256",
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    STANDARD.decode(s).ok().or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
}

/// A fresh private key in the file format `load_key` reads.
fn generate(alg: KeyAlgorithm) -> Result<String, String> {
    // PEM-encoded by rcgen (which the dev certificate needs anyway); the DER stays ours.
    let pkcs8 = |der: &[u8], alg| {
        rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), alg)
            .map(|kp| kp.serialize_pem())
            .map_err(|e| e.to_string())
    };
    match alg {
        KeyAlgorithm::EdDSA => {
            let kp = Ed25519KeyPair::generate().map_err(|e| e.to_string())?;
            let doc = kp.to_pkcs8v1().map_err(|e| e.to_string())?;
            pkcs8(doc.as_ref(), &rcgen::PKCS_ED25519)
        }
        KeyAlgorithm::ES256 => {
            let kp = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|e| e.to_string())?;
            let doc = kp.to_pkcs8v1().map_err(|e| e.to_string())?;
            pkcs8(doc.as_ref(), &rcgen::PKCS_ECDSA_P256_SHA256)
        }
        KeyAlgorithm::HS256 => {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).map_err(|e| e.to_string())?;
            Ok(format!("{}\n", base64::engine::general_purpose::STANDARD.encode(secret)))
        }
        KeyAlgorithm::RS256 => Err("RS256 keys are not generated; provide a PEM file".into()),
    }
}

/// Write a secret file readable by the owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// `portcullis gen-key`: a new Ed25519 private key as PKCS#8 PEM.
pub fn generate_ed25519_pem() -> Result<String, String> {
    generate(KeyAlgorithm::EdDSA)
}
