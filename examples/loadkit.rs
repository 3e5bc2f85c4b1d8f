//! Helpers for `benches/load.sh` (built in release mode by that script only):
//!
//! - `mint`: sign access tokens with the active key of a gateway config, one per line;
//! - `fill-cache`: put N distinct valid tokens into a `Validator` and report resident memory;
//! - `report`: turn the raw wrk results into the table, a CSV and a JSON file;
//! - `bare-proxy`: the least a hyper + tokio reverse proxy can do (no authentication, no
//!   header rewriting, no log): the floor under portcullis's own proxy path.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Parser, Subcommand};
use portcullis::config::Config;
use portcullis::store::embedded::EmbeddedStore;
use portcullis::tokens::issue::{Grant, issue};
use portcullis::tokens::keys::KeySet;
use portcullis::tokens::now_secs;
use portcullis::tokens::validate::Validator;

/// The gateway binary's allocator, so that `fill-cache` measures what the gateway would hold.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign `count` tokens for `client` with the active key of `config`, one per line.
    Mint {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "bench")]
        client: String,
        #[arg(long, default_value = "read")]
        scope: String,
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Validate `count` distinct tokens into one validator; print resident memory as JSON.
    FillCache {
        #[arg(long, default_value_t = 1_000_000)]
        count: u64,
        /// Signing algorithm of the tokens (the cached verdict does not depend on it;
        /// HS256 only makes the fill quicker).
        #[arg(long, default_value = "HS256")]
        alg: String,
    },
    /// Summarise raw results (TSV: round, scenario, proto, rps, p50_ms, p99_ms, non2xx,
    /// cpu_us_per_req, user_us_per_req, sys_us_per_req, note).
    Report {
        #[arg(long)]
        raw: PathBuf,
        #[arg(long)]
        meta: PathBuf,
        /// Writes `<out>.csv` and `<out>.json`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Listen on `listen` (plain HTTP/1.1) and pass every request to `upstream` over one
    /// kept-alive upstream connection per client connection, on one current-thread runtime.
    BareProxy {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    portcullis::install_crypto_provider();
    match Cli::parse().command {
        Command::Mint { config, count, client, scope, lifetime, out } => {
            mint(&config, count, &client, &scope, lifetime, &out)
        }
        Command::FillCache { count, alg } => fill_cache(count, &alg),
        Command::Report { raw, meta, out } => report(&raw, &meta, &out),
        Command::BareProxy { listen, upstream } => bare_proxy(listen, upstream),
    }
}

fn bare_proxy(listen: std::net::SocketAddr, upstream: std::net::SocketAddr) -> anyhow::Result<()> {
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::sync::Arc;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
                else {
                    return;
                };
                tokio::spawn(conn);
                let sender = Arc::new(tokio::sync::Mutex::new(sender));
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let sender = sender.clone();
                    async move { sender.lock().await.send_request(req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(client), svc).await;
            });
        }
    })
}

fn mint(config: &Path, count: usize, client: &str, scope: &str, lifetime: u64, out: &Path) -> anyhow::Result<()> {
    let config = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = KeySet::load(&config)?;
    let scopes: Vec<String> = scope.split(' ').map(str::to_string).collect();
    let grant = Grant {
        issuer: config.issuer(),
        audience: config.audience(),
        client_id: client,
        subject: client,
        scopes: &scopes,
        lifetime_secs: lifetime,
        binding: None,
    };
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let now = now_secs();
    for _ in 0..count {
        writeln!(w, "{}", issue(&keys, &grant, now)?.access_token)?;
    }
    w.flush()?;
    Ok(())
}

/// Resident set size of this process, in bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn fill_cache(count: u64, alg: &str) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let text = format!(
        r#"
issuer = "https://bench.local"
[[listener]]
address = "127.0.0.1:0"
tls = false
[cache]
max_tokens = {count}
[store]
path = "{dir}/fill.redb"
[[key]]
id = "fill-{alg}"
algorithm = "{alg}"
file = "{dir}/fill-{alg}.pem"
[[client]]
id = "bench"
secret_hash = "$argon2id$v=19$m=19456,t=2,p=1$NDYTW6/8Jb0QvNtu/HAEsg$50KFYCT9MCJVGUAcSiitFKy6q9BorQxPHViybm55BfY"
grants = ["client_credentials"]
scopes = ["read", "write"]
"#,
        dir = dir.display()
    );
    let config = Config::parse(&text, &dir.join("fill.toml")).map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = KeySet::load(&config)?;
    let store = EmbeddedStore::open(&dir.join("fill.redb"))?;
    let scopes = vec!["read".to_string(), "write".to_string()];
    let grant = Grant {
        issuer: config.issuer(),
        audience: config.audience(),
        client_id: "bench",
        subject: "bench",
        scopes: &scopes,
        lifetime_secs: 3600,
        binding: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let validator = Validator::new(config.cache_max_tokens());
    let before = rss_bytes();
    let started = Instant::now();
    // About 1024 tokens, spread over the fill, are kept to be looked up again once the
    // cache is full.
    let every = (count / 1024).max(1);
    let kept = rt.block_on(async {
        let now = now_secs();
        let mut kept = Vec::new();
        for i in 0..count {
            let token = issue(&keys, &grant, now)?.access_token;
            validator
                .validate(&token, &keys, &config, &store)
                .await
                .map_err(|e| anyhow::anyhow!("fill token refused: {e}"))?;
            if i % every == 0 {
                kept.push(token);
            }
        }
        anyhow::Ok(kept)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let stats = rt.block_on(validator.stats());
    let after = rss_bytes();
    // Issue 17: the cost of a cache hit as the cache grows (1k against 1M entries), the
    // kept tokens round robin: in a large cache their entries are far apart in memory.
    const HITS: usize = 200_000;
    let hit_started = Instant::now();
    rt.block_on(async {
        for i in 0..HITS {
            let token = &kept[i % kept.len()];
            validator
                .validate(token, &keys, &config, &store)
                .await
                .map_err(|e| anyhow::anyhow!("cached token refused: {e}"))?;
        }
        anyhow::Ok(())
    })?;
    let hit_ns = hit_started.elapsed().as_secs_f64() * 1e9 / HITS as f64;
    let out = serde_json::json!({
        "tokens": count,
        "alg": alg,
        "cached_entries": stats.entries,
        "rss_before_mb": mb(before),
        "rss_after_mb": mb(after),
        "bytes_per_token": (after.saturating_sub(before)) as f64 / count.max(1) as f64,
        "seconds": seconds,
        "hit_ns": (hit_ns * 10.0).round() / 10.0,
        // Issue 6: a million cached tokens in less than 400 MB resident.
        "goal_rss_mb": 400,
        "met": mb(after) < 400.0,
    });
    println!("{out}");
    drop(validator);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("portcullis-fill-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[derive(Clone)]
struct Row {
    round: u32,
    scenario: String,
    proto: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non2xx: u64,
    cpu_us: f64,
    user_us: f64,
    sys_us: f64,
    note: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn report(raw: &Path, meta: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(raw)?;
    let mut order: Vec<(String, String)> = Vec::new();
    let mut runs: BTreeMap<(String, String), Vec<Row>> = BTreeMap::new();
    let mut raw_json = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(f.len() >= 10, "bad raw line: {line}");
        let row = Row {
            round: f[0].parse()?,
            scenario: f[1].to_string(),
            proto: f[2].to_string(),
            rps: f[3].parse()?,
            p50_ms: f[4].parse()?,
            p99_ms: f[5].parse()?,
            non2xx: f[6].parse()?,
            cpu_us: f[7].parse()?,
            user_us: f[8].parse()?,
            sys_us: f[9].parse()?,
            note: f.get(10).unwrap_or(&"").to_string(),
        };
        raw_json.push(serde_json::json!({
            "round": row.round, "scenario": row.scenario, "proto": row.proto, "rps": row.rps,
            "p50_ms": row.p50_ms, "p99_ms": row.p99_ms, "non2xx": row.non2xx, "cpu_us_per_req": row.cpu_us,
            "user_us_per_req": row.user_us, "sys_us_per_req": row.sys_us, "note": row.note,
        }));
        let key = (row.proto.clone(), row.scenario.clone());
        if !order.contains(&key) {
            order.push(key.clone());
        }
        runs.entry(key).or_default().push(row);
    }
    // The median of each column over the rounds.
    let summary: Vec<Row> = order
        .iter()
        .map(|k| {
            let rs = &runs[k];
            let mut r = rs[0].clone();
            r.rps = median(rs.iter().map(|r| r.rps).collect());
            r.p50_ms = median(rs.iter().map(|r| r.p50_ms).collect());
            r.p99_ms = median(rs.iter().map(|r| r.p99_ms).collect());
            r.cpu_us = median(rs.iter().map(|r| r.cpu_us).collect());
            r.user_us = median(rs.iter().map(|r| r.user_us).collect());
            r.sys_us = median(rs.iter().map(|r| r.sys_us).collect());
            r.non2xx = rs.iter().map(|r| r.non2xx).max().unwrap_or(0);
            r.note = rs.iter().map(|r| r.note.as_str()).filter(|n| !n.is_empty()).collect::<Vec<_>>().join("; ");
            r
        })
        .collect();
    // A ratio compares two rows of the same round (minutes apart, not a whole run apart),
    // then takes the median over the rounds: steadier on a shared machine than a ratio
    // of medians.
    let ratio_of = |proto: &str, scenario: &str, to: &str| -> Option<f64> {
        let rows = runs.get(&(proto.to_string(), scenario.to_string()))?;
        let bases = runs.get(&(proto.to_string(), to.to_string()))?;
        let per_round: Vec<f64> = rows
            .iter()
            .filter_map(|r| bases.iter().find(|b| b.round == r.round && b.rps > 0.0).map(|b| r.rps / b.rps))
            .collect();
        (!per_round.is_empty()).then(|| median(per_round))
    };
    let ratio = |r: &Row, to: &str| -> Option<f64> {
        if r.scenario == "portcullis-token" {
            return None;
        }
        ratio_of(&r.proto, &r.scenario, to)
    };
    let fmt_ratio = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));

    let mut csv = String::from(
        "proto,scenario,rps,p50_ms,p99_ms,vs_nginx,vs_direct,cpu_us_per_req,user_us_per_req,sys_us_per_req,non2xx,note\n",
    );
    let mut rows_json = Vec::new();
    println!(
        "{:<6} {:<18} {:>10} {:>9} {:>9} {:>8} {:>8} {:>10} {:>7} {:>7} {:>8}  note",
        "proto", "scenario", "req/s", "p50 ms", "p99 ms", "/nginx", "/direct", "cpu us/req", "user", "sys", "non2xx"
    );
    for r in &summary {
        let (vn, vd) = (ratio(r, "nginx"), ratio(r, "direct"));
        println!(
            "{:<6} {:<18} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>8} {:>10.1} {:>7.1} {:>7.1} {:>8}  {}",
            r.proto,
            r.scenario,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            fmt_ratio(vn),
            fmt_ratio(vd),
            r.cpu_us,
            r.user_us,
            r.sys_us,
            r.non2xx,
            r.note
        );
        csv.push_str(&format!(
            "{},{},{:.0},{:.3},{:.3},{},{},{:.1},{:.1},{:.1},{},\"{}\"\n",
            r.proto,
            r.scenario,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            vn.map_or(String::new(), |x| format!("{x:.3}")),
            vd.map_or(String::new(), |x| format!("{x:.3}")),
            r.cpu_us,
            r.user_us,
            r.sys_us,
            r.non2xx,
            r.note.replace('"', "'")
        ));
        rows_json.push(serde_json::json!({
            "proto": r.proto, "scenario": r.scenario, "rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
            "vs_nginx": vn, "vs_direct": vd, "cpu_us_per_req": r.cpu_us,
            "user_us_per_req": r.user_us, "sys_us_per_req": r.sys_us, "non2xx": r.non2xx, "note": r.note,
        }));
    }
    // The goals of issue 6, as far as this run measured them.
    let row = |proto: &str, scenario: &str| summary.iter().find(|r| r.proto == proto && r.scenario == scenario);
    let mut goals = Vec::new();
    for proto in ["http", "https"] {
        let mut goal = |name: String, value: Option<f64>, target: f64, unit: &str, at_least: bool| {
            if let Some(v) = value {
                let met = if at_least { v >= target } else { v <= target };
                goals.push(serde_json::json!({ "goal": name, "value": v, "target": target, "unit": unit, "met": met }));
            }
        };
        goal(format!("{proto}: cache hit / nginx"), ratio_of(proto, "portcullis-hit", "nginx"), 1.0, "x", true);
        if let (Some(hit), Some(nginx)) = (row(proto, "portcullis-hit"), row(proto, "nginx")) {
            goal(format!("{proto}: cache hit p99 (ms), at most nginx's"), Some(hit.p99_ms), nginx.p99_ms, "ms", false);
        }
        goal(
            format!("{proto}: cache hit / haproxy-jwt"),
            ratio_of(proto, "portcullis-hit", "haproxy-jwt"),
            5.0,
            "x",
            true,
        );
        goal(
            format!("{proto}: cache miss / haproxy-jwt"),
            ratio_of(proto, "portcullis-miss", "haproxy-jwt"),
            1.2,
            "x",
            true,
        );
        goal(
            format!("{proto}: token endpoint (EdDSA) tokens/s"),
            row(proto, "portcullis-token").map(|r| r.rps),
            10_000.0,
            "/s",
            true,
        );
    }
    if !goals.is_empty() {
        println!("\ngoals (issue 6)");
        for g in &goals {
            println!(
                "  {:<44} {:>9.2}{:<3} target {}{}{:<4} {}",
                g["goal"].as_str().unwrap_or_default(),
                g["value"].as_f64().unwrap_or_default(),
                g["unit"].as_str().unwrap_or_default(),
                if g["unit"] == "ms" { "<= " } else { ">= " },
                g["target"].as_f64().unwrap_or_default(),
                g["unit"].as_str().unwrap_or_default(),
                if g["met"] == true { "met" } else { "NOT met" },
            );
        }
    }
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(meta)?)?;
    // What a proxy on hyper + tokio can reach at all here, whatever it does per request.
    let floor = ratio_of("http", "hyper-floor", "nginx");
    let hit_of_floor = ratio_of("http", "portcullis-hit", "hyper-floor");
    if let (Some(f), Some(h)) = (floor, hit_of_floor) {
        println!("\nreference (no target)");
        println!("  http: hyper-floor / nginx                    {f:>9.2}x  (a bare hyper + tokio proxy)");
        println!("  http: cache hit / hyper-floor                {h:>9.2}x");
    }
    let reference = serde_json::json!({ "http_floor_vs_nginx": floor, "http_hit_vs_floor": hit_of_floor });
    let json = serde_json::json!({
        "meta": meta, "summary": rows_json, "goals": goals, "reference": reference, "runs": raw_json,
    });
    std::fs::write(out.with_extension("csv"), csv)?;
    std::fs::write(out.with_extension("json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
