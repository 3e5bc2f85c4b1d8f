//! Differential run of the ES256 table verifier (`portcullis::tokens::es256`) against
//! aws-lc over many (key, message, signature) triples, random and edge cases (see
//! `src/tokens/es256_diff.rs`), on every core. Exits non-zero on any mismatch.
//!
//! Run: `cargo run --release --example ecdsa_diff -- [TRIPLES] [SEED]` (default 10,000,000).

use std::time::Instant;

use portcullis::tokens::es256_diff::{Case, Cases, Tally};

fn main() {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).expect("random seed");
        u64::from_le_bytes(b)
    });
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u64;
    println!("ecdsa_diff: {total} triples, seed {seed}, {threads} threads");
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let share = total / threads + u64::from(t < total % threads);
            std::thread::spawn(move || run(seed.wrapping_add(t.wrapping_mul(0x1000_0000_0000_0001)), share))
        })
        .collect();
    let mut sum = Tally::default();
    let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
    for h in handles {
        let (t, k) = h.join().expect("worker");
        sum.total += t.total;
        sum.valid += t.valid;
        sum.mismatches += t.mismatches;
        for (kind, n) in k {
            *kinds.entry(kind).or_default() += n;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("kinds: {kinds:?}");
    println!(
        "triples {} valid {} ({:.1}%) mismatches {} in {:.1} s",
        sum.total,
        sum.valid,
        100.0 * sum.valid as f64 / sum.total.max(1) as f64,
        sum.mismatches,
        secs
    );
    if sum.mismatches > 0 {
        std::process::exit(1);
    }
}

fn run(seed: u64, share: u64) -> (Tally, std::collections::HashMap<&'static str, u64>) {
    let mut cases = Cases::new(seed);
    let mut tally = Tally::default();
    let mut kinds = std::collections::HashMap::new();
    let mut report = |c: &Case, ours: bool, reference: bool| {
        eprintln!(
            "MISMATCH ({}): ours {ours}, aws-lc {reference}; key {:02x?} message {:02x?} signature {:02x?}",
            c.kind, c.public, c.message, c.signature
        );
    };
    let mut batches = 0u64;
    while tally.total < share {
        batches += 1;
        // A new key with x(R) ≥ n every 500 batches (each builds a table).
        let batch = if batches.is_multiple_of(500) { cases.wrap_batch() } else { cases.batch() };
        for case in batch {
            cases.check(&case, &mut tally, &mut report);
            *kinds.entry(case.kind).or_default() += 1;
        }
    }
    (tally, kinds)
}
