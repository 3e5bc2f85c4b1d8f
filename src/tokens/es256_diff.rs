//! The differential harness of [`super::es256`]: (key, message, signature) triples,
//! random and built for the edge cases, each judged by [`Es256Key::verify`] and by aws-lc.
//! Shared by the unit tests (tens of thousands of triples in the normal suite),
//! `examples/ecdsa_diff.rs` (tens of millions, release) and the `ecdsa_p256` fuzz target.
//! Compiled in every build so the release example needs no extra feature build; nothing
//! on the request path calls it.
//!
//! Edge cases are built with the `p256` crate's own point arithmetic (not ours) and with
//! known private keys: a valid signature, high s, r or s = 0, n−1, n, ≥ n, u₁·G + u₂·Q = O
//! (r = −e/d), u₁·G = u₂·Q (r = e/d, the doubling case), Q = ±G, x(R) ≥ n (the key chosen so
//! that R has such an x), wrong lengths, and keys that are not on the curve.

use std::collections::HashMap;

use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::{AffineCoordinates, DecompressPoint};
use p256::elliptic_curve::subtle::Choice;
use p256::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};

use super::es256::Es256Key;

/// aws-lc's verdict for `signature` over `message` under the SEC1 key `public`.
pub fn reference_verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public).verify(message, signature).is_ok()
}

/// A small deterministic generator (SplitMix64): a failing seed replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn scalar(&mut self) -> Scalar {
        loop {
            let mut b = [0u8; 32];
            self.bytes(&mut b);
            let s = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(b));
            if !bool::from(s.is_zero()) {
                return s;
            }
        }
    }
}

const N_BE: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7,
    0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

fn be(s: &Scalar) -> [u8; 32] {
    s.to_repr().into()
}

fn hash_scalar(message: &[u8]) -> Scalar {
    let d = super::sha256(message);
    <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(d))
}

fn sec1(p: &AffinePoint) -> Vec<u8> {
    let mut out = vec![0x04];
    out.extend_from_slice(&p.x());
    out.extend_from_slice(&p.y());
    out
}

fn sig(r: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
    let mut out = r.to_vec();
    out.extend_from_slice(s);
    out
}

/// A signing key known by its scalar.
struct Known {
    d: Scalar,
    public: Vec<u8>,
}

impl Known {
    fn new(d: Scalar) -> Known {
        Known { d, public: sec1(&(ProjectivePoint::GENERATOR * d).to_affine()) }
    }

    /// ECDSA with nonce k: (r, s), or None in the negligible zero cases.
    fn sign(&self, message: &[u8], k: &Scalar) -> Option<([u8; 32], [u8; 32])> {
        let big_r = (ProjectivePoint::GENERATOR * k).to_affine();
        let r = <Scalar as Reduce<FieldBytes>>::reduce(&big_r.x());
        let s = Option::<Scalar>::from(k.invert())? * (hash_scalar(message) + r * self.d);
        if bool::from(r.is_zero() | s.is_zero()) {
            return None;
        }
        Some((be(&r), be(&s)))
    }
}

/// One triple and what it is meant to exercise.
pub struct Case {
    pub kind: &'static str,
    pub public: Vec<u8>,
    pub message: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Makes cases; keeps the tables of the keys it uses (a table costs about a millisecond).
pub struct Cases {
    rng: Rng,
    known: Vec<Known>,
    tables: HashMap<Vec<u8>, Option<Es256Key>>,
    /// How many keys for the x(R) ≥ n case stay in `tables` (each is a new key).
    wrap_keys: usize,
}

/// What a comparison found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub total: u64,
    pub valid: u64,
    pub mismatches: u64,
}

impl Cases {
    pub fn new(seed: u64) -> Cases {
        let mut rng = Rng::new(seed);
        let mut known = vec![Known::new(Scalar::ONE), Known::new(-Scalar::ONE)];
        for _ in 0..6 {
            known.push(Known::new(rng.scalar()));
        }
        Cases { rng, known, tables: HashMap::new(), wrap_keys: 0 }
    }

    /// Our verdict (a key that does not parse refuses everything) and aws-lc's.
    pub fn judge(&mut self, case: &Case) -> (bool, bool) {
        let reference = reference_verify(&case.public, &case.message, &case.signature);
        if self.tables.len() > 64 {
            self.tables.clear();
        }
        let key = self.tables.entry(case.public.clone()).or_insert_with(|| Es256Key::new(&case.public));
        let ours = key.as_ref().is_some_and(|k| k.verify(&case.message, &case.signature));
        (ours, reference)
    }

    /// Judge `case`, counting it; a mismatch is reported through `on_mismatch`.
    pub fn check(&mut self, case: &Case, tally: &mut Tally, on_mismatch: &mut dyn FnMut(&Case, bool, bool)) {
        let (ours, reference) = self.judge(case);
        tally.total += 1;
        tally.valid += u64::from(reference);
        if ours != reference {
            tally.mismatches += 1;
            on_mismatch(case, ours, reference);
        }
    }

    fn message(&mut self) -> Vec<u8> {
        let mut m = vec![0u8; self.rng.below(200) as usize];
        self.rng.bytes(&mut m);
        m
    }

    /// The next batch of cases: every kind once (about 20 triples).
    pub fn batch(&mut self) -> Vec<Case> {
        let mut out = Vec::with_capacity(24);
        let ki = self.rng.below(self.known.len() as u64) as usize;
        let (d, public) = (self.known[ki].d, self.known[ki].public.clone());
        let message = self.message();
        let e = hash_scalar(&message);
        let mut case = |kind, public: &[u8], message: &[u8], signature: Vec<u8>| {
            out.push(Case { kind, public: public.to_vec(), message: message.to_vec(), signature })
        };
        let k = self.rng.scalar();
        if let Some((r, s)) = self.known[ki].sign(&message, &k) {
            case("valid", &public, &message, sig(&r, &s));
            let high = be(&-Option::<Scalar>::from(Scalar::from_repr(s.into())).unwrap_or(Scalar::ONE));
            case("high-s", &public, &message, sig(&r, &high));
            let mut other = message.clone();
            other.push(1);
            case("other message", &public, &other, sig(&r, &s));
            let mut flipped = sig(&r, &s);
            let bit = self.rng.below(512) as usize;
            flipped[bit / 8] ^= 1 << (bit % 8);
            case("bit flip", &public, &message, flipped);
            // r or s at and around the bounds.
            let n_minus_1 = be(&-Scalar::ONE);
            let mut n_plus_1 = N_BE;
            n_plus_1[31] += 1;
            let mut big = [0u8; 32];
            self.rng.bytes(&mut big);
            big[0] = 0xff;
            big[4] |= 0x01;
            for (name, v) in [("0", [0u8; 32]), ("n-1", n_minus_1), ("n", N_BE), ("n+1", n_plus_1), ("≥n", big)] {
                let _ = name;
                case("r bound", &public, &message, sig(&v, &s));
                case("s bound", &public, &message, sig(&r, &v));
            }
            // Wrong lengths: short, long, and a DER-looking encoding.
            let full = sig(&r, &s);
            case("length 63", &public, &message, full[..63].to_vec());
            let mut long = full.clone();
            long.push(0);
            case("length 65", &public, &message, long);
            let mut der = vec![0x30, 0x44, 0x02, 0x20];
            der.extend_from_slice(&r);
            der.extend_from_slice(&[0x02, 0x20]);
            der.extend_from_slice(&s);
            case("DER", &public, &message, der);
            case("empty", &public, &message, Vec::new());
        }
        // More valid signatures (other nonces) and their high-s twins: "valid" must be
        // exercised as much as "refused" (over a fifth of all triples).
        for _ in 0..2 {
            let k = self.rng.scalar();
            if let Some((r, s)) = self.known[ki].sign(&message, &k) {
                case("valid", &public, &message, sig(&r, &s));
                let high = be(&-Option::<Scalar>::from(Scalar::from_repr(s.into())).unwrap_or(Scalar::ONE));
                case("high-s", &public, &message, sig(&r, &high));
            }
        }
        // u₁·G + u₂·Q = O: (e + r·d)/s = 0, i.e. r = −e/d.
        if let Some(dinv) = Option::<Scalar>::from(d.invert()) {
            let s = self.rng.scalar();
            let r = -(e * dinv);
            if !bool::from(r.is_zero()) {
                case("infinity", &public, &message, sig(&be(&r), &be(&s)));
            }
            // u₁·G = u₂·Q: e = r·d, the sum doubles one point.
            let r = e * dinv;
            if !bool::from(r.is_zero()) {
                case("doubling", &public, &message, sig(&be(&r), &be(&s)));
            }
        }
        // Random garbage signatures; and garbage under the key.
        let mut garbage = vec![0u8; 64];
        self.rng.bytes(&mut garbage);
        case("garbage", &public, &message, garbage);
        // A key not on the curve (x and y random), with an otherwise valid signature.
        let mut off = vec![0x04; 65];
        self.rng.bytes(&mut off[1..]);
        if let Some((r, s)) = self.known[ki].sign(&message, &k) {
            case("key off curve", &off, &message, sig(&r, &s));
            let mut shifted = public.clone();
            shifted[64] ^= 1;
            case("key y+1", &shifted, &message, sig(&r, &s));
        }
        out
    }

    /// A signature whose R has x(R) ≥ n (so r = x(R) − n), valid under a key chosen for
    /// it: R is fixed, s random, and Q = u₂⁻¹·(R − u₁·G). Also r = x(R) itself (≥ n,
    /// refused) and a tampered s. A new key each time: its table is built (slow in debug).
    pub fn wrap_batch(&mut self) -> Vec<Case> {
        let mut out = Vec::new();
        let Some((big_r, x_be)) = self.point_with_x_above_n() else {
            return out;
        };
        let message = self.message();
        let e = hash_scalar(&message);
        let s = self.rng.scalar();
        let r = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(x_be));
        let Some(w) = Option::<Scalar>::from(s.invert()) else {
            return out;
        };
        let (u1, u2) = (e * w, r * w);
        let Some(u2inv) = Option::<Scalar>::from(u2.invert()) else {
            return out;
        };
        let q = ((ProjectivePoint::from(big_r) - ProjectivePoint::GENERATOR * u1) * u2inv).to_affine();
        let public = sec1(&q);
        out.push(Case {
            kind: "x(R) ≥ n",
            public: public.clone(),
            message: message.clone(),
            signature: sig(&be(&r), &be(&s)),
        });
        out.push(Case {
            kind: "r = x(R) ≥ n",
            public: public.clone(),
            message: message.clone(),
            signature: sig(&x_be, &be(&s)),
        });
        let s2 = be(&(s + Scalar::ONE));
        out.push(Case { kind: "x(R) ≥ n, s+1", public: public.clone(), message, signature: sig(&be(&r), &s2) });
        self.wrap_keys += 1;
        out
    }

    /// A point whose x is n + t for a random small t (x < p), and that x.
    fn point_with_x_above_n(&mut self) -> Option<(AffinePoint, [u8; 32])> {
        for _ in 0..64 {
            let mut x = N_BE;
            let t = self.rng.below(1 << 40);
            // n's low 8 bytes plus t: no carry past byte 16 for t < 2^40 (n's byte 24..
            // is 0xf3b9cac2fc632551, far from overflowing 2^64 by 2^40).
            let low = u64::from_be_bytes([x[24], x[25], x[26], x[27], x[28], x[29], x[30], x[31]]);
            let (sum, carry) = low.overflowing_add(t);
            if carry {
                continue;
            }
            x[24..].copy_from_slice(&sum.to_be_bytes());
            let odd = Choice::from((self.rng.next_u64() & 1) as u8);
            if let Some(p) = Option::<AffinePoint>::from(AffinePoint::decompress(&FieldBytes::from(x), odd)) {
                return Some((p, x));
            }
        }
        None
    }
}

/// The `ecdsa_p256` fuzz target's body: one input, judged by both verifiers; panics on a
/// mismatch. The first byte picks the case:
/// - 0: a fixed key (its table built once), message and signature from the input
///   (`msg_len` byte, message, the rest the signature);
/// - 1: a valid signature of the fixed key over the message, then the input's remaining
///   bytes XORed into it (an empty rest leaves it valid): near-valid signatures;
/// - 2: the same, then r or s replaced by the remaining bytes (right-aligned);
/// - other: a key from the input (65 bytes), then a message and signature as for 0.
pub fn fuzz_one(data: &[u8]) {
    static FIXED: std::sync::OnceLock<(Known, Es256Key)> = std::sync::OnceLock::new();
    let (known, table) = FIXED.get_or_init(|| {
        let k = Known::new(Rng::new(0xf0).scalar());
        let t = Es256Key::new(&k.public).unwrap_or_else(|| unreachable!("a valid key builds a table"));
        (k, t)
    });
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let split = |rest: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let Some((&len, rest)) = rest.split_first() else {
            return (Vec::new(), Vec::new());
        };
        let len = (len as usize).min(rest.len());
        (rest[..len].to_vec(), rest[len..].to_vec())
    };
    let (public, ours, message, signature) = match mode {
        0 => {
            let (m, sg) = split(rest);
            (known.public.clone(), table.verify(&m, &sg), m, sg)
        }
        1 | 2 => {
            let (m, tweak) = split(rest);
            let mut nonce = [0u8; 8];
            nonce.iter_mut().zip(&m).for_each(|(n, b)| *n = *b);
            let k = Rng::new(u64::from_le_bytes(nonce)).scalar();
            let Some((r, s)) = known.sign(&m, &k) else { return };
            let mut sg = sig(&r, &s);
            if mode == 1 {
                sg.iter_mut().zip(&tweak).for_each(|(b, t)| *b ^= t);
                sg.extend_from_slice(tweak.get(64..).unwrap_or_default());
            } else if let Some((&which, v)) = tweak.split_first() {
                let v = &v[..v.len().min(32)];
                let at = if which & 1 == 0 { 0 } else { 32 };
                sg[at..at + 32].fill(0);
                sg[at + 32 - v.len()..at + 32].copy_from_slice(v);
            }
            (known.public.clone(), table.verify(&m, &sg), m, sg)
        }
        _ => {
            if rest.len() < 65 {
                return;
            }
            let (key, rest) = rest.split_at(65);
            let (m, sg) = split(rest);
            let ours = Es256Key::new(key).is_some_and(|t| t.verify(&m, &sg));
            (key.to_vec(), ours, m, sg)
        }
    };
    let reference = reference_verify(&public, &message, &signature);
    assert_eq!(
        ours, reference,
        "ES256 mismatch: ours {ours}, aws-lc {reference}; key {public:02x?} message {message:02x?} signature {signature:02x?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ≥ 20,000 triples against aws-lc in the normal (debug) suite, every edge kind
    /// included; each kind meant to be valid is also checked to BE valid, so a broken
    /// generator cannot pass by making only refusals.
    #[test]
    fn table_verifier_equals_aws_lc() {
        let seed = 0x0005_eede_5256;
        let mut cases = Cases::new(seed);
        let mut tally = Tally::default();
        let mut report = |c: &Case, ours: bool, reference: bool| {
            panic!(
                "mismatch ({}): ours {ours}, aws-lc {reference}; key {:02x?} message {:02x?} signature {:02x?}",
                c.kind, c.public, c.message, c.signature
            )
        };
        let mut kinds: HashMap<&'static str, (u64, u64)> = HashMap::new();
        while tally.total < 20_000 {
            for case in cases.batch() {
                cases.check(&case, &mut tally, &mut report);
                let (ours, _) = cases.judge(&case);
                let k = kinds.entry(case.kind).or_default();
                k.0 += 1;
                k.1 += u64::from(ours);
            }
        }
        for _ in 0..12 {
            for case in cases.wrap_batch() {
                cases.check(&case, &mut tally, &mut report);
                let (ours, _) = cases.judge(&case);
                let k = kinds.entry(case.kind).or_default();
                k.0 += 1;
                k.1 += u64::from(ours);
            }
        }
        assert_eq!(tally.mismatches, 0);
        // The valid kinds are valid every time; the refused kinds never.
        for (kind, (n, valid)) in &kinds {
            match *kind {
                "valid" | "high-s" | "x(R) ≥ n" => assert_eq!(valid, n, "{kind}"),
                "doubling" => {}
                _ => assert_eq!(*valid, 0, "{kind}"),
            }
        }
        assert!(kinds.get("x(R) ≥ n").is_some_and(|k| k.0 >= 10), "{kinds:?}");
        assert!(kinds.get("infinity").is_some_and(|k| k.0 >= 500));
        assert!(tally.valid * 5 >= tally.total, "{tally:?}");
    }

    /// jsonwebtoken's ES256 verification of a registered key is the table's, and keeps
    /// its verdicts: valid, high-s valid, tampered refused; an unregistered key still works.
    #[test]
    fn jsonwebtoken_verifies_through_the_table() {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
        use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
        assert!(super::super::es256::install(), "the provider must be in force before any decode");
        let mut rng = Rng::new(7);
        let key = Known::new(rng.scalar());
        let unregistered = Known::new(rng.scalar());
        assert!(super::super::es256::register(&key.public));
        let signing_input = format!(
            "{}.{}",
            B64.encode(r#"{"alg":"ES256","typ":"JWT"}"#),
            B64.encode(r#"{"sub":"a","exp":4000000000}"#)
        );
        let token = |k: &Known, high: bool| {
            let (r, s) = k.sign(signing_input.as_bytes(), &rng_scalar(9)).unwrap_or(([1; 32], [1; 32]));
            let s =
                if high { be(&-Option::<Scalar>::from(Scalar::from_repr(s.into())).unwrap_or(Scalar::ONE)) } else { s };
            format!("{signing_input}.{}", B64.encode(sig(&r, &s)))
        };
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = false;
        let decoding = DecodingKey::from_ec_der(&key.public);
        let before = super::super::es256::table_verifications();
        let claims = |t: &str, d: &DecodingKey| {
            decode::<serde_json::Value>(t, d, &validation).map(|_| ()).map_err(|e| e.into_kind())
        };
        assert!(claims(&token(&key, false), &decoding).is_ok());
        assert!(claims(&token(&key, true), &decoding).is_ok());
        let mut tampered = token(&key, false);
        tampered.replace_range(signing_input.len() + 2..signing_input.len() + 3, "A");
        tampered.replace_range(signing_input.len() + 3..signing_input.len() + 4, "B");
        assert!(matches!(claims(&tampered, &decoding), Err(jsonwebtoken::errors::ErrorKind::InvalidSignature)));
        assert!(super::super::es256::table_verifications() >= before + 3);
        let other = DecodingKey::from_ec_der(&unregistered.public);
        assert!(claims(&token(&unregistered, false), &other).is_ok());
        assert!(claims(&token(&key, false), &other).is_err());
    }

    fn rng_scalar(seed: u64) -> Scalar {
        Rng::new(seed).scalar()
    }

    /// The fuzz target's body on a spread of inputs (each mode, valid and tweaked).
    #[test]
    fn fuzz_entry_agrees() {
        let mut rng = Rng::new(3);
        for i in 0..600u64 {
            let mut data = vec![(i % 4) as u8, rng.below(80) as u8];
            let mut tail = vec![0u8; rng.below(140) as usize];
            rng.bytes(&mut tail);
            if i % 4 == 3 {
                data.truncate(1);
                data.extend_from_slice(&Known::new(rng.scalar()).public);
                data.push(10);
            }
            if i % 8 == 1 {
                tail.clear(); // mode 1 with no tweak: a valid signature
            }
            data.extend_from_slice(&tail);
            fuzz_one(&data);
        }
    }

    #[test]
    fn refuses_keys_that_are_not_points() {
        let g = Known::new(Scalar::ONE).public;
        assert!(Es256Key::new(&g).is_some());
        assert!(Es256Key::new(&g[..64]).is_none());
        let mut compressed = vec![0x02 | (g[64] & 1)];
        compressed.extend_from_slice(&g[1..33]);
        assert!(Es256Key::new(&compressed).is_none(), "only the uncompressed form is ours");
        let mut bad = g.clone();
        bad[0] = 0x05;
        assert!(Es256Key::new(&bad).is_none());
        // x = p (not a field element), and the all-zero "point".
        let mut xp = g.clone();
        xp[1..33].copy_from_slice(&[
            0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff,
        ]);
        assert!(Es256Key::new(&xp).is_none());
        let zero = [&[0x04u8][..], &[0u8; 64]].concat();
        assert!(Es256Key::new(&zero).is_none());
        assert!(Es256Key::new(&[0u8]).is_none(), "the point at infinity");
    }
}
