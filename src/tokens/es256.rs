//! ES256 (ECDSA P-256 with SHA-256, JOSE's 64-byte `r || s`) verification against a fixed,
//! known public key, with a precomputed table per key.
//!
//! A general verifier computes `u₁·G + u₂·Q` with a table for the generator `G` but must
//! build one for `Q` on every call (hundreds of doublings). The gateway verifies its own
//! tokens against a handful of keys known at load time, so each key gets a table of
//! multiples built once ([`Es256Key::new`]); a verification is then about 70 additions of
//! table entries, no doubling. Everything here is public data, so nothing needs to be
//! constant-time; what matters is that the answer is exactly aws-lc's (a wrong "valid"
//! is a forged token): the differential tests in this module, `examples/ecdsa_diff.rs`
//! and the `ecdsa_p256` fuzz target compare the two.
//!
//! Arithmetic: the field is fiat-crypto's (formally verified Montgomery arithmetic mod p);
//! scalars mod n are the `p256` crate's. The point formulas are Renes–Costello–Batina's
//! complete ones for `a = -3` (the same as `primeorder`'s): no exceptional case (doubling,
//! a point plus its negation, the identity) needs a branch of its own.
//!
//! [`install`] puts the tables behind jsonwebtoken's verification: a custom
//! `CryptoProvider` whose ES256 verifier for a registered key is this one, and aws-lc's
//! for anything else; every other check (claims, algorithm, key) stays jsonwebtoken's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use fiat_crypto::p256_64 as fp;
use p256::Scalar;
use p256::elliptic_curve::ff::{Field, PrimeField};
use p256::elliptic_curve::ops::Reduce;

/// Bits per signed window: 37 windows of 64 entries (150 KB of affine points) per table.
const W: usize = 7;
/// Entries per window: the multiples 1..=2^(W-1) (a negative digit negates `y`).
const HALF: usize = 1 << (W - 1);
/// Windows per scalar: enough for 256 bits plus the carry of the signed recoding.
const WINDOWS: usize = 256 / W + 1;

/// How many keys get a table (about 150 KB each); others are verified by aws-lc.
const MAX_TABLES: usize = 64;

// Big-endian constants of P-256 (SEC 2 §2.4.2).
const P_BE: [u8; 32] = hex32("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
const N_BE: [u8; 32] = hex32("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
const B_BE: [u8; 32] = hex32("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");
const GX_BE: [u8; 32] = hex32("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
const GY_BE: [u8; 32] = hex32("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not hex"),
    }
}

/// Little-endian 64-bit limbs of a big-endian 32-byte number.
fn limbs(be: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, limb) in out.iter_mut().enumerate() {
        let start = 32 - 8 * (i + 1);
        let mut word = [0u8; 8];
        word.copy_from_slice(&be[start..start + 8]);
        *limb = u64::from_be_bytes(word);
    }
    out
}

/// `a < b` for little-endian limbs.
fn lt(a: &[u64; 4], b: &[u64; 4]) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

/// An element of GF(p) in fiat-crypto's Montgomery form (always fully reduced).
#[derive(Clone, Copy)]
struct Fe(fp::fiat_p256_montgomery_domain_field_element);

impl Fe {
    const ZERO: Fe = Fe(fp::fiat_p256_montgomery_domain_field_element([0; 4]));

    fn one() -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_set_one(&mut out.0);
        out
    }

    /// A big-endian number below p; `None` otherwise (fiat's precondition).
    fn from_be(be: &[u8; 32]) -> Option<Fe> {
        let n = limbs(be);
        if !lt(&n, &limbs(&P_BE)) {
            return None;
        }
        let mut out = Fe::ZERO;
        fp::fiat_p256_to_montgomery(&mut out.0, &fp::fiat_p256_non_montgomery_domain_field_element(n));
        Some(out)
    }

    fn is_zero(&self) -> bool {
        let mut nz = 0u64;
        fp::fiat_p256_nonzero(&mut nz, &self.0.0);
        nz == 0
    }

    fn eq(&self, other: &Fe) -> bool {
        (*self - *other).is_zero()
    }

    fn square(&self) -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_square(&mut out.0, &self.0);
        out
    }

    fn double(&self) -> Fe {
        *self + *self
    }

    fn neg(&self) -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_opp(&mut out.0, &self.0);
        out
    }

    /// `self^(p-2)`, the inverse of a non-zero element (Fermat); used only when a table
    /// is built, so plain square-and-multiply.
    fn invert(&self) -> Fe {
        let mut e = P_BE;
        e[31] -= 2; // p ends in 0xff: no borrow.
        let mut acc = Fe::one();
        for byte in e {
            for bit in (0..8).rev() {
                acc = acc.square();
                if (byte >> bit) & 1 == 1 {
                    acc = acc * *self;
                }
            }
        }
        acc
    }
}

impl std::ops::Add for Fe {
    type Output = Fe;
    fn add(self, rhs: Fe) -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_add(&mut out.0, &self.0, &rhs.0);
        out
    }
}

impl std::ops::Sub for Fe {
    type Output = Fe;
    fn sub(self, rhs: Fe) -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_sub(&mut out.0, &self.0, &rhs.0);
        out
    }
}

impl std::ops::Mul for Fe {
    type Output = Fe;
    fn mul(self, rhs: Fe) -> Fe {
        let mut out = Fe::ZERO;
        fp::fiat_p256_mul(&mut out.0, &self.0, &rhs.0);
        out
    }
}

/// A finite point (never the identity: table entries are k·P with 0 < k mod n).
#[derive(Clone, Copy)]
struct Affine {
    x: Fe,
    y: Fe,
}

/// Homogeneous projective coordinates: (X : Y : Z) is (X/Z, Y/Z); the identity is (0 : 1 : 0).
#[derive(Clone, Copy)]
struct Proj {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Proj {
    fn identity() -> Proj {
        Proj { x: Fe::ZERO, y: Fe::one(), z: Fe::ZERO }
    }

    fn from_affine(p: &Affine) -> Proj {
        Proj { x: p.x, y: p.y, z: Fe::one() }
    }

    /// Complete addition, Renes–Costello–Batina 2015 Algorithm 4 (a = -3): correct for
    /// every pair of inputs, the identity and equal points included.
    fn add(&self, rhs: &Proj, b: Fe) -> Proj {
        let xx = self.x * rhs.x;
        let yy = self.y * rhs.y;
        let zz = self.z * rhs.z;
        let xy_pairs = ((self.x + self.y) * (rhs.x + rhs.y)) - (xx + yy);
        let yz_pairs = ((self.y + self.z) * (rhs.y + rhs.z)) - (yy + zz);
        let xz_pairs = ((self.x + self.z) * (rhs.x + rhs.z)) - (xx + zz);
        let bzz_part = xz_pairs - (b * zz);
        let bzz3_part = bzz_part.double() + bzz_part;
        let yy_m_bzz3 = yy - bzz3_part;
        let yy_p_bzz3 = yy + bzz3_part;
        let zz3 = zz.double() + zz;
        let bxz_part = (b * xz_pairs) - (zz3 + xx);
        let bxz3_part = bxz_part.double() + bxz_part;
        let xx3_m_zz3 = xx.double() + xx - zz3;
        Proj {
            x: (yy_p_bzz3 * xy_pairs) - (yz_pairs * bxz3_part),
            y: (yy_p_bzz3 * yy_m_bzz3) + (xx3_m_zz3 * bxz3_part),
            z: (yy_m_bzz3 * yz_pairs) + (xy_pairs * xx3_m_zz3),
        }
    }

    /// Complete mixed addition, Algorithm 5 (a = -3): `rhs` is a finite affine point;
    /// `self` may be anything, the identity and `±rhs` included.
    fn add_affine(&self, rhs: &Affine, b: Fe) -> Proj {
        let xx = self.x * rhs.x;
        let yy = self.y * rhs.y;
        let xy_pairs = ((self.x + self.y) * (rhs.x + rhs.y)) - (xx + yy);
        let yz_pairs = (rhs.y * self.z) + self.y;
        let xz_pairs = (rhs.x * self.z) + self.x;
        let bz_part = xz_pairs - (b * self.z);
        let bz3_part = bz_part.double() + bz_part;
        let yy_m_bzz3 = yy - bz3_part;
        let yy_p_bzz3 = yy + bz3_part;
        let z3 = self.z.double() + self.z;
        let bxz_part = (b * xz_pairs) - (z3 + xx);
        let bxz3_part = bxz_part.double() + bxz_part;
        let xx3_m_zz3 = xx.double() + xx - z3;
        Proj {
            x: (yy_p_bzz3 * xy_pairs) - (yz_pairs * bxz3_part),
            y: (yy_p_bzz3 * yy_m_bzz3) + (xx3_m_zz3 * bxz3_part),
            z: (yy_m_bzz3 * yz_pairs) + (xy_pairs * xx3_m_zz3),
        }
    }
}

/// The multiples d·2^(W·i)·P for every window i and 1 ≤ d ≤ 2^(W-1), affine.
struct Table(Box<[Affine]>);

impl Table {
    /// `None` if an entry came out as the identity, which cannot happen for a point of
    /// order n (every multiple used is below n, or a product of factors below the prime n):
    /// refusing is the fail-closed answer to an impossible state.
    fn build(p: &Affine, b: Fe) -> Option<Table> {
        let mut proj = Vec::with_capacity(WINDOWS * HALF);
        let mut base = Proj::from_affine(p);
        for _ in 0..WINDOWS {
            let mut acc = base;
            proj.push(acc);
            for _ in 1..HALF {
                acc = acc.add(&base, b);
                proj.push(acc);
            }
            // 2^W · base = 2 · (2^(W-1) · base).
            base = acc.add(&acc, b);
        }
        // Montgomery's trick: one inversion for every Z.
        let mut prefix = Vec::with_capacity(proj.len());
        let mut running = Fe::one();
        for q in &proj {
            if q.z.is_zero() {
                return None;
            }
            running = running * q.z;
            prefix.push(running);
        }
        let mut inv = running.invert();
        let mut out = vec![Affine { x: Fe::ZERO, y: Fe::ZERO }; proj.len()];
        for i in (0..proj.len()).rev() {
            let zinv = if i == 0 { inv } else { inv * prefix[i - 1] };
            inv = inv * proj[i].z;
            out[i] = Affine { x: proj[i].x * zinv, y: proj[i].y * zinv };
        }
        Some(Table(out.into_boxed_slice()))
    }

    /// acc + k·P, for k given as big-endian bytes (below n).
    fn add_multiple(&self, mut acc: Proj, k: &[u8; 32], b: Fe) -> Proj {
        let k = limbs(k);
        let mut carry = 0u64;
        for i in 0..WINDOWS {
            let v = window(&k, i * W) + carry;
            // Signed digit in [-2^(W-1), 2^(W-1)].
            let (digit, negative) = if v > HALF as u64 {
                carry = 1;
                ((1u64 << W) - v, true)
            } else {
                carry = 0;
                (v, false)
            };
            if digit == 0 {
                continue;
            }
            let entry = &self.0[i * HALF + digit as usize - 1];
            acc = if negative {
                acc.add_affine(&Affine { x: entry.x, y: entry.y.neg() }, b)
            } else {
                acc.add_affine(entry, b)
            };
        }
        debug_assert_eq!(carry, 0);
        acc
    }
}

/// W bits of `k` from bit `pos` (little-endian bit order; bits past 255 are zero).
fn window(k: &[u64; 4], pos: usize) -> u64 {
    let (limb, shift) = (pos / 64, pos % 64);
    if limb >= 4 {
        return 0;
    }
    let mut v = k[limb] >> shift;
    if shift + W > 64 && limb + 1 < 4 {
        v |= k[limb + 1] << (64 - shift);
    }
    v & ((1u64 << W) - 1)
}

fn curve_b() -> Fe {
    // B_BE < p: a constant.
    Fe::from_be(&B_BE).unwrap_or(Fe::ZERO)
}

/// The generator's table, built once per process.
fn generator_table() -> Option<&'static Table> {
    static G: OnceLock<Option<Table>> = OnceLock::new();
    G.get_or_init(|| {
        let g = Affine { x: Fe::from_be(&GX_BE)?, y: Fe::from_be(&GY_BE)? };
        Table::build(&g, curve_b())
    })
    .as_ref()
}

/// A P-256 public key with its table: verifies ES256 signatures as aws-lc does.
pub struct Es256Key {
    /// The SEC1 uncompressed encoding it was built from (what jsonwebtoken's key holds).
    sec1: [u8; 65],
    table: Table,
    generator: &'static Table,
    b: Fe,
}

impl Es256Key {
    /// Parse a SEC1 uncompressed point (`04 || x || y`) and build its table. `None` for
    /// any other encoding, coordinates not below p, or a point not on the curve: such a
    /// key is left to aws-lc, which refuses every signature under a key that is not on
    /// the curve (the differential tests check exactly that).
    pub fn new(sec1: &[u8]) -> Option<Es256Key> {
        let sec1: [u8; 65] = sec1.try_into().ok()?;
        if sec1[0] != 0x04 {
            return None;
        }
        let x = Fe::from_be(sec1[1..33].try_into().ok()?)?;
        let y = Fe::from_be(sec1[33..65].try_into().ok()?)?;
        let b = curve_b();
        // y² = x³ − 3x + b. P-256's cofactor is 1: on the curve is in the group.
        let three_x = x.double() + x;
        if !y.square().eq(&(x.square() * x - three_x + b)) {
            return None;
        }
        let table = Table::build(&Affine { x, y }, b)?;
        Some(Es256Key { sec1, table, generator: generator_table()?, b })
    }

    /// The key's SEC1 encoding.
    pub fn sec1(&self) -> &[u8] {
        &self.sec1
    }

    /// Verify a JOSE ES256 signature (`r || s`, 32 bytes each, big-endian) over `message`.
    /// Refuses what aws-lc refuses: another length, r or s zero or ≥ n, R at infinity, and
    /// x(R) mod n ≠ r. High s is valid, as in aws-lc (ECDSA has no low-s rule).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let (Some(r_be), Some(s_be)) = (sig[..32].try_into().ok(), sig[32..].try_into().ok()) else {
            return false;
        };
        let (Some(r), Some(s)) = (scalar(r_be), scalar(s_be)) else {
            return false;
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        let Some(e) = <&[u8; 32]>::try_from(digest.as_ref()).ok() else {
            return false;
        };
        // The 256-bit hash as an integer, reduced once mod n (2^256 < 2n).
        let e = <Scalar as Reduce<p256::FieldBytes>>::reduce(&p256::FieldBytes::from(*e));
        let Some(w) = Option::<Scalar>::from(s.invert_vartime()) else {
            return false;
        };
        let u1: [u8; 32] = (e * w).to_repr().into();
        let u2: [u8; 32] = (r * w).to_repr().into();
        let acc = self.generator.add_multiple(Proj::identity(), &u1, self.b);
        let point = self.table.add_multiple(acc, &u2, self.b);
        if point.z.is_zero() {
            return false;
        }
        // x(R) = X/Z; x(R) mod n == r  ⇔  X == r·Z, or X == (r+n)·Z where r+n < p.
        let Some(r_fe) = Fe::from_be(r_be) else {
            return false;
        };
        if point.x.eq(&(r_fe * point.z)) {
            return true;
        }
        match r_plus_n_below_p(r_be).and_then(|rn| Fe::from_be(&rn)) {
            Some(rn) => point.x.eq(&(rn * point.z)),
            None => false,
        }
    }
}

/// A big-endian scalar in [1, n); `None` for 0 or anything ≥ n.
fn scalar(be: &[u8; 32]) -> Option<Scalar> {
    let s = Option::<Scalar>::from(Scalar::from_repr(p256::FieldBytes::from(*be)))?;
    if bool::from(s.is_zero()) { None } else { Some(s) }
}

/// r + n as big-endian bytes, if it is below p (r < p − n, about 2^127: rare but legal).
fn r_plus_n_below_p(r_be: &[u8; 32]) -> Option<[u8; 32]> {
    let (r, n, p) = (limbs(r_be), limbs(&N_BE), limbs(&P_BE));
    let mut sum = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (s1, c1) = r[i].overflowing_add(n[i]);
        let (s2, c2) = s1.overflowing_add(carry as u64);
        sum[i] = s2;
        carry = c1 || c2;
    }
    if carry || !lt(&sum, &p) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, limb) in sum.iter().enumerate() {
        out[32 - 8 * (i + 1)..32 - 8 * i].copy_from_slice(&limb.to_be_bytes());
    }
    Some(out)
}

/// The tables in force, by SEC1 key: a table is a pure function of its key, so one per
/// distinct key serves every key set (and a reload of the same keys builds nothing).
fn registry() -> &'static RwLock<Vec<Arc<Es256Key>>> {
    static TABLES: OnceLock<RwLock<Vec<Arc<Es256Key>>>> = OnceLock::new();
    TABLES.get_or_init(|| RwLock::new(Vec::new()))
}

/// The registered table of `sec1`, if any.
pub fn lookup(sec1: &[u8]) -> Option<Arc<Es256Key>> {
    let tables = registry().read().unwrap_or_else(|e| e.into_inner());
    tables.iter().find(|k| k.sec1() == sec1).cloned()
}

/// Build (once) and register the table of an ES256 key, so jsonwebtoken's verification of
/// tokens under it goes through [`Es256Key::verify`]. At most [`MAX_TABLES`] keys get
/// one; any other key, and any key that does not parse here, stays with aws-lc.
pub fn register(sec1: &[u8]) -> bool {
    if lookup(sec1).is_some() {
        return true;
    }
    if registry().read().unwrap_or_else(|e| e.into_inner()).len() >= MAX_TABLES {
        at_the_cap();
        return false;
    }
    let Some(key) = Es256Key::new(sec1) else {
        return false;
    };
    let mut tables = registry().write().unwrap_or_else(|e| e.into_inner());
    if tables.len() >= MAX_TABLES {
        drop(tables);
        at_the_cap();
        return false;
    }
    if !tables.iter().any(|k| k.sec1() == sec1) {
        tables.push(Arc::new(key));
    }
    true
}

/// Said once per process: tables are never freed (a rotated-out key keeps its table), so a
/// long-lived gateway that rotates ES256 keys often reaches the cap and its newer keys fall
/// back to aws-lc, correct but about twice the CPU per cache miss.
fn at_the_cap() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::warn!(
            tables = MAX_TABLES,
            "ES256 verification tables are all in use; further ES256 keys are verified by aws-lc (slower on cache misses) until the gateway restarts"
        );
    });
}

/// jsonwebtoken's verifier for a registered key.
struct TableVerifier(Arc<Es256Key>);

/// Verifications a table answered (tests prove the gateway's path goes through one).
static TABLE_VERIFICATIONS: AtomicU64 = AtomicU64::new(0);

/// How many verifications the tables answered since start.
pub fn table_verifications() -> u64 {
    TABLE_VERIFICATIONS.load(Ordering::Relaxed)
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for TableVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> Result<(), jsonwebtoken::signature::Error> {
        TABLE_VERIFICATIONS.fetch_add(1, Ordering::Relaxed);
        if self.0.verify(msg, signature) { Ok(()) } else { Err(jsonwebtoken::signature::Error::new()) }
    }
}

impl jsonwebtoken::crypto::JwtVerifier for TableVerifier {
    fn algorithm(&self) -> jsonwebtoken::Algorithm {
        jsonwebtoken::Algorithm::ES256
    }
}

fn new_verifier(
    alg: &jsonwebtoken::Algorithm,
    key: &jsonwebtoken::DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn jsonwebtoken::crypto::JwtVerifier>> {
    let aws_lc = &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
    if *alg == jsonwebtoken::Algorithm::ES256
        && key.family() == jsonwebtoken::AlgorithmFamily::Ec
        && let Ok(bytes) = key.try_get_as_bytes()
        && let Some(table) = lookup(bytes)
    {
        return Ok(Box::new(TableVerifier(table)));
    }
    (aws_lc.verifier_factory)(alg, key)
}

/// Make jsonwebtoken verify ES256 under registered keys with their tables (aws-lc for
/// everything else). Idempotent; returns whether the provider is in force (false when
/// jsonwebtoken already chose its default, which only costs speed).
pub fn install() -> bool {
    static PROVIDER: OnceLock<jsonwebtoken::crypto::CryptoProvider> = OnceLock::new();
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let provider = PROVIDER.get_or_init(|| jsonwebtoken::crypto::CryptoProvider {
            verifier_factory: new_verifier,
            ..jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.clone()
        });
        provider.install_default().is_ok()
    })
}
