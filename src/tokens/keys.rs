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

use crate::config::{Config, KeyAlgorithm, KeyConfig, StoreConfig};

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
    /// A missing file that may not be generated now: generating would put a new key under
    /// a `kid` that tokens may already carry (a path typo), or give replicas different keys.
    #[error("key {kid}: {path} does not exist; {why}")]
    NotGenerated { kid: String, path: String, why: String },
    /// A reload named other material for a `kid` in force: every outstanding token it
    /// signed would turn invalid at once.
    #[error(
        "key {kid}: {path} holds another key than the one in force under this id (or served under it since \
         start); a reload never replaces the key of an id in force: restore the file or path, or give the new key a new id (see \"Rotate signing keys\")"
    )]
    Replaced { kid: String, path: String },
}

impl KeyError {
    /// The `[[key]]` the error is about.
    pub fn kid(&self) -> &str {
        match self {
            KeyError::Read { kid, .. }
            | KeyError::Write { kid, .. }
            | KeyError::Invalid { kid, .. }
            | KeyError::Missing { kid, .. }
            | KeyError::NotGenerated { kid, .. }
            | KeyError::Replaced { kid, .. } => kid,
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
    /// SHA-256 of the algorithm and the key itself (the public key, or the HS256 secret),
    /// not of the file: a reload may re-encode a key in force, never replace it.
    material: [u8; 32],
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
    /// The material of every kid served since start, also of kids a reload removed since:
    /// tokens signed under an old kid may still be held, so a kid never gets new material
    /// without a restart (a reload that removes it and a second that re-adds it included).
    served: HashMap<String, [u8; 32]>,
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

/// When a missing key file may be generated.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// The process starts: only on the very first start (see [`generation_refused`]).
    Start,
    /// A reload: never; and the keys of ids in force must stay what they are.
    Reload(&'a KeySet),
    /// `portcullis check`: as at start, but nothing is written.
    Check,
}

impl KeySet {
    /// Load every configured key at start, generating a missing one only on the very first
    /// start (see [`generation_refused`]).
    pub fn load(config: &Config) -> Result<KeySet, KeyError> {
        Self::load_in(config, Mode::Start)?.ok_or_else(|| missing_signer(config))
    }

    /// Load the keys of a reloaded configuration. Nothing is generated, and an id in force
    /// keeps its key: a path typo must not swap the key every outstanding token was signed
    /// with (nor give each replica its own).
    pub fn reload(config: &Config, in_force: &KeySet) -> Result<KeySet, KeyError> {
        Self::load_in(config, Mode::Reload(in_force))?.ok_or_else(|| missing_signer(config))
    }

    /// What [`KeySet::load`] would refuse, without writing anything: every present file is
    /// read and parsed for its algorithm, and a missing one is checked against the
    /// generation rule.
    pub fn check(config: &Config) -> Result<(), KeyError> {
        Self::load_in(config, Mode::Check).map(|_| ())
    }

    fn load_in(config: &Config, mode: Mode<'_>) -> Result<Option<KeySet>, KeyError> {
        // Before any token is verified: jsonwebtoken's ES256 checks under our keys then use
        // their precomputed tables (see `super::es256`).
        super::es256::install();
        let mut by_kid = HashMap::new();
        let mut ordered = Vec::new();
        let mut signer = None;
        let mut complete = true;
        for kc in &config.keys {
            let Some(bytes) = read_or_generate(kc, config, mode)? else {
                complete = false;
                continue;
            };
            let key = Arc::new(load_key(kc, config, bytes, mode)?);
            if let Mode::Reload(in_force) = mode
                && let Some(old) = in_force.served.get(&kc.id)
                && *old != key.material
            {
                return Err(KeyError::Replaced { kid: kc.id.clone(), path: kc.file.display().to_string() });
            }
            if kc.active && signer.is_none() {
                signer = Some(key.clone());
            }
            by_kid.insert(kc.id.clone(), key.clone());
            ordered.push(key);
        }
        // Config validation guarantees at least one active key.
        let mut served = match mode {
            Mode::Reload(in_force) => in_force.served.clone(),
            Mode::Start | Mode::Check => HashMap::new(),
        };
        served.extend(ordered.iter().map(|k| (k.kid.clone(), k.material)));
        match signer {
            Some(signer) if complete => Ok(Some(KeySet { signer, by_kid, ordered, served })),
            _ if matches!(mode, Mode::Check) => Ok(None),
            _ => Err(missing_signer(config)),
        }
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

fn missing_signer(config: &Config) -> KeyError {
    KeyError::Missing { kid: "<active>".into(), path: config.source().display().to_string() }
}

/// Why a missing key file may not be generated now, if it may not. Generation happens
/// only on the very first start: a file missing later is far more likely a typo in its
/// path (or a lost volume) than a new key, and a new key under an id in use turns every
/// outstanding token invalid. The first start is told by the embedded store file not
/// existing yet; a shared (Redis) store means replicas, which must share one key file.
fn generation_refused(kc: &KeyConfig, config: &Config, mode: Mode<'_>) -> Option<String> {
    let create = format!("create it with `portcullis gen-key --out {}`", kc.file.display());
    if kc.algorithm == KeyAlgorithm::RS256 {
        return Some("RS256 keys are not generated: create the PEM file (e.g. openssl genpkey -algorithm RSA)".into());
    }
    if matches!(mode, Mode::Reload(_)) {
        return Some(format!(
            "a reload never generates a key (a typo in the path would replace the key tokens were signed with): \
             correct the path, or {create}"
        ));
    }
    match &config.store {
        StoreConfig::Embedded { path } if path.exists() => Some(format!(
            "keys are generated only on the very first start, and the store {} exists: correct the path, or {create}",
            path.display()
        )),
        StoreConfig::Embedded { .. } => None,
        StoreConfig::Redis { .. } => Some(format!(
            "with a shared store every replica would generate its own key: {create} once and give every replica that file"
        )),
    }
}

/// The key file's bytes; generated first where [`generation_refused`] allows it. `None`
/// for `check`, which writes nothing, when the file would be generated.
fn read_or_generate(kc: &KeyConfig, config: &Config, mode: Mode<'_>) -> Result<Option<Vec<u8>>, KeyError> {
    let path = kc.file.display().to_string();
    if !kc.file.exists() {
        if !kc.generate {
            return Err(KeyError::Missing { kid: kc.id.clone(), path });
        }
        if let Some(why) = generation_refused(kc, config, mode) {
            return Err(KeyError::NotGenerated { kid: kc.id.clone(), path, why });
        }
        if matches!(mode, Mode::Check) {
            return Ok(None);
        }
        let contents = generate(kc.algorithm).map_err(|reason| KeyError::Invalid {
            kid: kc.id.clone(),
            path: path.clone(),
            alg: kc.algorithm,
            reason,
        })?;
        write_private(&kc.file, contents.as_bytes()).map_err(|source| KeyError::Write {
            kid: kc.id.clone(),
            path: path.clone(),
            source,
        })?;
        tracing::warn!(kid = %kc.id, path = %path, alg = kc.algorithm.as_str(), "generated a new signing key (first start: no store file yet); tokens signed under this kid by any earlier key no longer verify");
    }
    std::fs::read(&kc.file).map(Some).map_err(|source| KeyError::Read { kid: kc.id.clone(), path, source })
}

fn load_key(kc: &KeyConfig, config: &Config, bytes: Vec<u8>, mode: Mode<'_>) -> Result<Key, KeyError> {
    let path = kc.file.display().to_string();
    let invalid =
        |reason: String| KeyError::Invalid { kid: kc.id.clone(), path: path.clone(), alg: kc.algorithm, reason };
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
        // The claims kept for route rules: a verdict cached before a rule named one lacks it.
        for c in config.rule_claims() {
            policy.push(1);
            policy.extend_from_slice(c.as_bytes());
        }
        super::sha256(&policy)
    };
    // `raw`: what identifies the key itself, whatever the file's encoding.
    let (signer, decoding, public, raw) = match kc.algorithm {
        KeyAlgorithm::HS256 => {
            let text = String::from_utf8(bytes).map_err(|_| invalid("HS256 key file must hold base64 text".into()))?;
            let secret =
                decode_b64(text.trim()).ok_or_else(|| invalid("HS256 key file must hold base64 text".into()))?;
            if secret.len() < 32 {
                return Err(invalid("HS256 secret must be at least 32 bytes".into()));
            }
            let signer = Signer::Hmac(Box::new(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret)));
            (signer, DecodingKey::from_secret(&secret), None, secret)
        }
        alg => {
            // The first private key in the file, of any encoding (PKCS#8, SEC1, PKCS#1): the
            // key constructors below refuse a kind that does not fit the algorithm.
            let key =
                PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| invalid(format!("not a PEM private key: {e}")))?;
            let der = key.secret_der();
            match alg {
                KeyAlgorithm::EdDSA => {
                    let kp = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map_err(|e| invalid(format!("not an Ed25519 key in PKCS#8 ({e})")))?;
                    let public = kp.public_key().as_ref();
                    let jwk = serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(public) });
                    let decoding = DecodingKey::from_ed_der(public);
                    let raw = public.to_vec();
                    (Signer::Ed25519(kp), decoding, Some(jwk), raw)
                }
                KeyAlgorithm::ES256 => {
                    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|e| {
                        invalid(format!(
                            "not a P-256 key in PKCS#8 ({e}); convert a SEC1 `EC PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt`"
                        ))
                    })?;
                    let public = kp.public_key().as_ref();
                    // SEC1 uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
                    let (x, y) = match public {
                        [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
                        _ => return Err(invalid("unexpected P-256 public key encoding".into())),
                    };
                    let jwk = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": b64url(x), "y": b64url(y) });
                    let decoding = DecodingKey::from_ec_der(public);
                    // Built once per distinct key (about a millisecond); a key that gets
                    // no table is verified by aws-lc as before.
                    if !matches!(mode, Mode::Check) && !super::es256::register(public) {
                        tracing::debug!(kid = %kc.id, "no precomputed ES256 table for this key; aws-lc verifies it");
                    }
                    let raw = public.to_vec();
                    (Signer::Ecdsa(kp), decoding, Some(jwk), raw)
                }
                _ => {
                    let kp = aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
                        .or_else(|_| aws_lc_rs::rsa::KeyPair::from_der(der))
                        .map_err(|e| invalid(format!("not an RSA key of 2048 to 8192 bits ({e})")))?;
                    let public = kp.public_key();
                    let jwk = serde_json::json!({
                        "kty": "RSA",
                        "n": b64url(public.modulus().big_endian_without_leading_zero()),
                        "e": b64url(public.exponent().big_endian_without_leading_zero()),
                    });
                    let decoding = DecodingKey::from_rsa_der(public.as_ref());
                    let raw = public.as_ref().to_vec();
                    (Signer::Rsa(kp), decoding, Some(jwk), raw)
                }
            }
        }
    };
    let material = {
        let mut m = alg_name(kc.algorithm).as_bytes().to_vec();
        m.push(0);
        m.extend_from_slice(&raw);
        super::sha256(&m)
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
        material,
        csrf_key,
    })
}

/// The longest access-token lifetime `config` can issue.
pub(crate) fn max_lifetime_secs(config: &Config) -> u64 {
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
