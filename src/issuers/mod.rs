//! Trusted external issuers (`[[trusted_issuer]]`): each one's JWK Set, fetched in the
//! background and kept current.
//!
//! - At start (and when a reload adds or changes an issuer) a task fetches the set —
//!   through discovery when no `jwks_uri` is configured — without holding anything up: the
//!   gateway serves while an IdP is down, and that IdP's tokens are refused until its keys
//!   arrive.
//! - The set is refreshed after the answer's `Cache-Control: max-age`, clamped to
//!   `[refresh_min, refresh_max]` (`refresh_min` without one); a failure is retried with
//!   backoff (1 s doubling, at most `refresh_min`) and keeps the last good set.
//! - A token naming an unknown `kid` triggers a fetch at once, but at most one per
//!   `refetch_interval` per issuer, and concurrent misses share it: a flood of made-up
//!   `kid`s cannot make the gateway a load generator against the IdP.
//! - Each successful fetch replaces the set whole: a key the IdP removed stops verifying
//!   then, cached verdicts included (they are served only while their key's fingerprint
//!   is still in the set).
//!
//! This module fetches and keeps keys; judging tokens is `crate::tokens::validate`'s.
//! [`introspection`] is the RFC 7662 client for issuers of opaque tokens.

pub mod discovery;
pub mod fetch;
pub mod introspection;
pub mod jwks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, JwksSource, TrustedIssuer};
use crate::metrics::IssuerStats;
use fetch::{FetchError, Fetcher};
use introspection::{IntrospectionClient, IntrospectionSettings};
pub use jwks::{Found, KeySet, PublicKey};

/// Every outcome label a fetch can have, in the order the counters keep them.
const OUTCOMES: [&str; 8] =
    ["ok", "unreachable", "timeout", "http_status", "too_large", "bad_document", "no_usable_keys", "discovery_failed"];

/// The first retry after a failed fetch; doubled each time up to `refresh_min`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What a fetch under the lock remembers between attempts.
#[derive(Default)]
struct FetchState {
    /// Discovered (or configured) JWKS location; forgotten after a failure when discovered.
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
}

/// One trusted issuer at run time: its settings, its current key set and its fetcher.
pub struct Issuer {
    pub config: Arc<TrustedIssuer>,
    keys: ArcSwap<KeySet>,
    fetcher: Fetcher,
    fetch: tokio::sync::Mutex<FetchState>,
    /// Bumped after every attempt: a miss that waited for the lock while another fetched
    /// uses that result instead of fetching again.
    attempts: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// Unix seconds of the last successful fetch; 0 for never.
    last_success: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// SHA-256 of every setting that bears on a verdict (iss, audiences, leeway, claim
    /// mapping, algorithms) and of the claims route rules name: part of each key's
    /// cached-verdict fingerprint, so a reload that changes them re-verifies.
    policy: [u8; 32],
    task: Mutex<Option<tokio::task::AbortHandle>>,
    /// For `kind = "introspection"`: the RFC 7662 client, whose cache is the only cache of
    /// this issuer's verdicts (no key set, no background fetch).
    introspection: Option<Arc<IntrospectionClient>>,
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

impl Issuer {
    fn new(config: Arc<TrustedIssuer>, rule_claims: &[String]) -> Result<Issuer, String> {
        let fetcher =
            Fetcher::new(config.ca.as_deref(), config.connect_timeout, config.timeout, config.max_jwks_bytes)?;
        let jwks_uri = match &config.jwks {
            JwksSource::Uri(u) => Some(u.clone()),
            JwksSource::Discovery => None,
        };
        let policy = policy(&config, rule_claims);
        let introspection = match &config.introspection {
            Some(i) => {
                Some(Arc::new(IntrospectionClient::new(introspection_settings(&config, i)).map_err(|e| e.to_string())?))
            }
            None => None,
        };
        Ok(Issuer {
            config,
            keys: ArcSwap::from_pointee(KeySet::default()),
            fetcher,
            fetch: tokio::sync::Mutex::new(FetchState { jwks_uri, last_attempt: None }),
            attempts: AtomicU64::new(0),
            outcomes: Default::default(),
            last_success: AtomicU64::new(0),
            last_error: Mutex::new(None),
            policy,
            task: Mutex::new(None),
            introspection,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The introspection client of an issuer of opaque tokens; `None` for a JWT issuer.
    pub fn introspection(&self) -> Option<&IntrospectionClient> {
        self.introspection.as_deref()
    }

    /// The key set in force (empty until the first successful fetch).
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Is the key a cached verdict was made with (its `kid` and fingerprint, which covers
    /// this issuer's policy) still in force? No, once a refresh dropped it.
    pub fn holds(&self, kid: &str, fingerprint: &[u8; 32]) -> bool {
        self.keys.load().holds(kid, fingerprint)
    }

    /// A token named a `kid` the set lacks: fetch now, unless a fetch was made within
    /// `refetch_interval` or finished while this one waited for it.
    pub async fn refetch(&self) {
        let seen = self.attempts.load(Ordering::Acquire);
        let mut state = self.fetch.lock().await;
        if self.attempts.load(Ordering::Acquire) != seen {
            return;
        }
        if state.last_attempt.is_some_and(|t| t.elapsed() < self.config.refetch_interval) {
            return;
        }
        let _ = self.fetch_locked(&mut state).await;
    }

    /// One attempt; the caller holds the fetch lock. Returns the answer's max-age.
    async fn fetch_locked(&self, state: &mut FetchState) -> Result<Option<Duration>, FetchError> {
        state.last_attempt = Some(Instant::now());
        let result = self.fetch_once(state).await;
        self.attempts.fetch_add(1, Ordering::Release);
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        if let Some(i) = OUTCOMES.iter().position(|o| *o == label) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        match &result {
            Ok(_) => {
                self.last_success.store(now_secs(), Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e @ FetchError::NoUsableKeys) => {
                tracing::warn!(issuer = %self.config.name, outcome = label, error = %e, "JWKS holds no usable key; this issuer's tokens are refused until it does");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
            }
            Err(e) => {
                tracing::warn!(issuer = %self.config.name, outcome = label, error = %e, "JWKS fetch failed; the last good key set stays in force");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                if self.config.jwks == JwksSource::Discovery {
                    state.jwks_uri = None;
                }
            }
        }
        result
    }

    async fn fetch_once(&self, state: &mut FetchState) -> Result<Option<Duration>, FetchError> {
        let uri = match &state.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let u = discovery::jwks_uri(&self.fetcher, &self.config.issuer).await?;
                state.jwks_uri = Some(u.clone());
                u
            }
        };
        let doc = self.fetcher.get(&uri).await?;
        let (set, skipped) = match jwks::parse(&doc.body, &self.config.algorithms, &self.policy) {
            Ok(parsed) => parsed,
            // A well-formed set the IdP answered with, holding no key we may use (emptied
            // after a compromise, or rotated to keys the config does not allow): it is the
            // IdP's word, so the keys it no longer lists stop verifying now, cached
            // verdicts included. Garbage (not a JWK Set) keeps the last good set instead.
            Err(jwks::JwksError::NoUsableKeys) => {
                self.keys.store(Arc::new(KeySet::default()));
                return Err(FetchError::NoUsableKeys);
            }
            Err(e) => return Err(FetchError::BadDocument(e.to_string())),
        };
        for why in skipped {
            // Bounded: the reason quotes the document.
            let why: String = why.chars().take(200).collect();
            tracing::warn!(issuer = %self.config.name, "JWKS key skipped: {why}");
        }
        tracing::info!(issuer = %self.config.name, keys = set.len(), "JWKS fetched");
        self.keys.store(Arc::new(set));
        Ok(doc.max_age)
    }

    /// The background loop: fetch, sleep per max-age (or backoff), again; ends when the
    /// issuer is dropped (a reload removed or changed it).
    async fn run(weak: Weak<Issuer>) {
        let mut retry = FIRST_RETRY;
        loop {
            let Some(issuer) = weak.upgrade() else { return };
            let next = {
                let mut state = issuer.fetch.lock().await;
                match issuer.fetch_locked(&mut state).await {
                    Ok(max_age) => {
                        retry = FIRST_RETRY;
                        let c = &issuer.config;
                        max_age.unwrap_or(c.refresh_min).clamp(c.refresh_min, c.refresh_max)
                    }
                    Err(_) => {
                        let wait = retry.min(issuer.config.refresh_min);
                        retry = retry.saturating_mul(2);
                        wait
                    }
                }
            };
            drop(issuer);
            tokio::time::sleep(next).await;
        }
    }

    fn stats(&self) -> IssuerStats {
        IssuerStats {
            name: self.config.name.clone(),
            fetches: OUTCOMES.iter().zip(&self.outcomes).map(|(o, n)| (*o, n.load(Ordering::Relaxed))).collect(),
            keys: self.keys.load().len() as u64,
            last_success: self.last_success.load(Ordering::Relaxed),
        }
    }

    /// For `/readyz?verbose`.
    pub fn readiness(&self) -> serde_json::Value {
        if let Some(client) = &self.introspection {
            // Nothing to load: each token is asked about when it arrives.
            let stats = client.stats();
            let failures: u64 = ["timeout", "status", "not_json", "too_large", "malformed", "transport"]
                .iter()
                .map(|o| stats.requests(o))
                .sum();
            return serde_json::json!({
                "ok": true,
                "required": false,
                "kind": "introspection",
                "issuer": self.config.issuer,
                "requests": stats.requests("active") + stats.requests("inactive") + failures,
                "failures": failures,
            });
        }
        let keys = self.keys.load().len();
        let last = self.last_success.load(Ordering::Relaxed);
        let mut v = serde_json::json!({
            "ok": keys > 0,
            "required": false,
            "keys": keys,
            "issuer": self.config.issuer,
        });
        if last > 0 {
            v["last_success"] = last.into();
        }
        let error = self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (keys, error) {
            (0, Some(e)) => v["detail"] = format!("no keys in force ({e}); this issuer's tokens are refused").into(),
            (0, None) => v["detail"] = "no keys yet; this issuer's tokens are refused".into(),
            (_, Some(e)) => v["detail"] = format!("last fetch failed ({e}); the last good key set is in force").into(),
            _ => {}
        }
        v
    }
}

/// The trusted issuers of one configuration.
#[derive(Default)]
pub struct IssuerSet {
    issuers: Vec<Arc<Issuer>>,
}

impl IssuerSet {
    /// The issuers of `config`; one whose settings `previous` already has (same name,
    /// same settings, same route claims) is taken over with its keys and its task.
    /// New ones start fetching in the background when a runtime is there to run them
    /// (`portcullis check` builds the set only to check the CA files).
    pub fn build(config: &Config, previous: Option<&IssuerSet>) -> Result<IssuerSet, (usize, String)> {
        let mut issuers = Vec::new();
        for c in &config.trusted_issuers {
            let reuse = previous
                .and_then(|p| p.issuers.iter().find(|o| o.config.name == c.name && o.config.same_settings(c)).cloned());
            let mut fresh = Issuer::new(c.clone(), config.rule_claims()).map_err(|e| (c.line, e))?;
            match reuse {
                Some(old) if old.policy == fresh.policy => issuers.push(old),
                Some(old) => {
                    // Unchanged settings: an introspection issuer keeps its client, cache
                    // and counters whatever the route rules now name.
                    if old.introspection.is_some() {
                        fresh.introspection = old.introspection.clone();
                    }
                    issuers.push(Arc::new(fresh));
                }
                None => issuers.push(Arc::new(fresh)),
            }
        }
        Ok(IssuerSet { issuers })
    }

    /// Start the background fetch of every issuer that has none running yet.
    pub fn start(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        for i in self.issuers.iter().filter(|i| i.introspection.is_none()) {
            let mut task = i.task.lock().unwrap_or_else(|e| e.into_inner());
            if task.is_none() {
                let weak = Arc::downgrade(i);
                *task = Some(handle.spawn(Issuer::run(weak)).abort_handle());
            }
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.config.name == name)
    }

    pub fn by_iss(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.issuers.iter().find(|i| i.config.issuer == iss)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.issuers.iter()
    }

    /// JWKS fetch counters of the JWT issuers.
    pub fn stats(&self) -> Vec<IssuerStats> {
        self.issuers.iter().filter(|i| i.introspection.is_none()).map(|i| i.stats()).collect()
    }

    /// The introspection series of the introspection issuers (none: nothing written).
    pub fn render_introspection_metrics(&self, out: &mut String) {
        let stats: Vec<(&str, introspection::IntrospectionStats)> =
            self.issuers.iter().filter_map(|i| i.introspection.as_ref().map(|c| (i.name(), c.stats()))).collect();
        if !stats.is_empty() {
            introspection::render_metrics(out, &stats);
        }
    }
}

/// The client settings of an introspection issuer: its `iss` is required of answers that
/// name one; the audience is checked by the validator (any of the configured ones).
fn introspection_settings(config: &TrustedIssuer, i: &crate::config::Introspection) -> IntrospectionSettings {
    let mut s = IntrospectionSettings::new(&i.endpoint, &i.client_id, &i.client_secret);
    s.ca_file = config.ca.clone();
    s.timeout = config.timeout;
    s.max_cache = i.max_cache;
    s.negative_cache = i.negative_cache;
    s.issuer = Some(config.issuer.clone());
    s
}

/// SHA-256 of every setting of `config` that bears on a verdict, and of the claims route
/// rules name (see [`Issuer`]'s `policy`).
fn policy(config: &TrustedIssuer, rule_claims: &[String]) -> [u8; 32] {
    let mut p = format!(
        "{}\0{}\0{:?}\0{}\0{}\0{:?}\0{:?}\0{:?}",
        config.name,
        config.issuer,
        config.audiences,
        config.leeway.as_secs(),
        config.subject_claim,
        config.client_id_claim,
        config.scope_claim,
        config.algorithms,
    );
    for c in rule_claims {
        p.push('\0');
        p.push_str(c);
    }
    sha256(p.as_bytes())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
