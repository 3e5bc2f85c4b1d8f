//! What every request reads: the configuration and keys in force (swapped whole on
//! reload), and the long-lived caches and upstream pool that outlive a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::config::{Config, StoreConfig};
use crate::issuers::IssuerSet;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::secrets::SecretCache;
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisStore;
use crate::store::{Block, BlockKey, IssuedAccess, RevocationEvent, Store, StoreError};
use crate::tokens::assertion::ClientKeys;
use crate::tokens::keys::{KeyError, KeySet};
use crate::tokens::now_secs;
use crate::tokens::validate::{Validator, clamp_not_before, client_resets};
use crate::upstream::Upstreams;

/// One consistent view: a config, the keys loaded from it and the upstream client built
/// for it (its CA and connect timeout come from the config, so it is rebuilt on reload).
/// How often the client not-befores are read again from the store, besides the notices.
const CLIENT_RESETS_RESYNC: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Runtime {
    pub config: Config,
    pub keys: KeySet,
    pub upstreams: Upstreams,
    /// The trusted issuers and their fetched keys; a reload takes over those it keeps.
    pub issuers: IssuerSet,
    /// The public keys of the `private_key_jwt` clients, read again on every reload.
    pub client_keys: ClientKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A trusted issuer's client could not be built (its `ca` file); the line of its
    /// `[[trusted_issuer]]`.
    #[error("trusted issuer: {1}")]
    Issuer(usize, String),
    /// A `private_key_jwt` client's key file could not be read; the line that names it.
    #[error("{1}")]
    ClientKey(usize, String),
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub validator: Validator,
    pub secrets: SecretCache,
    /// Rate limits of the token endpoint and the login form, and the route quotas.
    pub limiter: RateLimiter,
    pub store: Arc<dyn Store>,
    /// Revocations made by other replicas (shared store only); taken once by the server.
    revocation_feed: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<RevocationEvent>>>,
    pub metrics: Metrics,
    /// Where the process is in its life (a [`Phase`]), for /readyz.
    phase: AtomicU8,
    /// The client not-befores were read from the store at least once: until then a
    /// re-enabled client's old tokens would pass, so the replica is not ready.
    client_resets_loaded: AtomicBool,
    /// Requests still running when a shutdown's grace period ended, and so cut off.
    requests_cut: AtomicU64,
    /// The operator blocks were loaded from the store (false until then, and after a
    /// load failed: the revocation feed retries).
    blocks_loaded: AtomicBool,
    /// Upgraded (WebSocket) connections open: they have left their listener's
    /// `max_connections` slot, so `proxy::websocket` bounds them by the same number.
    pub upgraded: AtomicU64,
    /// Held from reading a configuration to putting it in force ([`Gateway::reloading`]),
    /// and by [`Gateway::apply`]: a configuration read before another was applied is never
    /// put in force after it.
    reload_lock: std::sync::Mutex<()>,
}

/// Where the process is in its life. Only `Serving` is ready for traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Config and keys loaded, listeners bound, not yet accepting.
    Starting = 0,
    Serving = 1,
    /// Shutdown began: /readyz answers 503 so balancers stop sending, while the listeners
    /// still accept for the drain delay and in-flight requests finish.
    Draining = 2,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, StartError> {
        let keys = KeySet::load(&config)?;
        let upstreams = Upstreams::new(&config).map_err(StartError::UpstreamTls)?;
        let client_keys = ClientKeys::load(&config).map_err(|(line, e)| StartError::ClientKey(line, e))?;
        let issuers = IssuerSet::build(&config, None).map_err(|(line, e)| StartError::Issuer(line, e))?;
        issuers.start();
        let limiter = RateLimiter::new(config.rate_limit.max_tracked);
        let (store, feed, limiter): (Arc<dyn Store>, _, _) = match &config.store {
            StoreConfig::Embedded { path } => (Arc::new(EmbeddedStore::open(path)?), None, limiter),
            StoreConfig::Redis { url, key_prefix, timeout, mode, ca_file, replica_acks } => {
                let opts = crate::store::redis::RedisOptions {
                    url,
                    mode,
                    timeout: *timeout,
                    ca_file: ca_file.as_deref(),
                    replica_acks: *replica_acks,
                };
                let redis = Arc::new(RedisStore::open(&opts, key_prefix)?);
                let feed = redis.spawn_listener();
                // Issue 14: the rate limits and route quotas are budgets in Redis too.
                let limiter = limiter.shared(redis.clone(), *timeout);
                (redis, Some(feed), limiter)
            }
        };
        Ok(Arc::new(Gateway {
            store,
            revocation_feed: std::sync::Mutex::new(feed),
            validator: Validator::new(config.cache_max_tokens),
            secrets: SecretCache::new(config.cache_max_client_secrets),
            limiter,
            metrics: Metrics::new(),
            phase: AtomicU8::new(Phase::Starting as u8),
            client_resets_loaded: AtomicBool::new(false),
            requests_cut: AtomicU64::new(0),
            blocks_loaded: AtomicBool::new(false),
            upgraded: AtomicU64::new(0),
            reload_lock: std::sync::Mutex::new(()),
            runtime: ArcSwap::from_pointee(Runtime { config, keys, upstreams, issuers, client_keys }),
        }))
    }

    /// Ready for traffic: a config and its keys are loaded (they are, or this Gateway
    /// would not exist), the client not-befores were read from the store once, and the
    /// listeners are serving, not draining. The store's health after that is not part of
    /// it: a store outage degrades grants, not the proxy path.
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Serving && self.client_resets_loaded()
    }

    /// Have the client not-befores been read from the store at least once?
    pub fn client_resets_loaded(&self) -> bool {
        self.client_resets_loaded.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// `true`: serving; `false`: draining (shutdown began).
    pub fn set_serving(&self, serving: bool) {
        let phase = if serving { Phase::Serving } else { Phase::Draining };
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Requests received whose response has not been sent in full (the metrics' gauge,
    /// kept by dispatch's logging phase).
    pub fn in_flight(&self) -> u64 {
        self.metrics.in_flight()
    }

    /// Record `n` requests cut off at the end of a shutdown's grace period.
    pub fn cut(&self, n: u64) {
        self.requests_cut.fetch_add(n, Ordering::Relaxed);
    }

    pub fn requests_cut(&self) -> u64 {
        self.requests_cut.load(Ordering::Relaxed)
    }

    /// The configuration and keys in force; cheap, lock-free.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// The configuration and keys in force, as an owned handle to keep across awaits.
    pub fn runtime_full(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Make revoked access tokens fail on the proxy path from the next request on.
    pub async fn revoke_access(&self, revoked: &[IssuedAccess]) {
        for a in revoked {
            self.validator.revoke(&a.jti, a.expires_at).await;
        }
    }

    /// Apply revocations and blocks published by other replicas until the feed ends. After
    /// an interruption (messages may be lost) the cache is dropped and the blocks are
    /// loaded again; a load that fails is retried every second meanwhile.
    pub async fn follow_revocations(&self) {
        let feed = self.revocation_feed.lock().ok().and_then(|mut f| f.take());
        let Some(mut feed) = feed else { return };
        loop {
            let stale = !self.blocks_loaded.load(Ordering::Acquire);
            if stale && self.load_blocks().await {
                tracing::info!("operator blocks loaded from the store");
            }
            let event = if self.blocks_loaded.load(Ordering::Acquire) {
                feed.recv().await
            } else {
                match tokio::time::timeout(std::time::Duration::from_secs(1), feed.recv()).await {
                    Ok(event) => event,
                    Err(_) => continue,
                }
            };
            let Some(event) = event else { return };
            match event {
                RevocationEvent::Revoked(a) => self.validator.revoke(&a.jti, a.expires_at).await,
                RevocationEvent::Blocked(b) => self.validator.block(&b),
                RevocationEvent::Unblocked(k) => self.validator.unblock(&k),
                RevocationEvent::Resync => {
                    self.validator.clear();
                    self.load_client_resets().await;
                    if !self.load_blocks().await {
                        tracing::warn!(
                            "operator blocks unavailable from the store after a feed interruption; retrying"
                        );
                    }
                }
                RevocationEvent::ClientResets => {
                    self.load_client_resets().await;
                }
            }
        }
    }

    /// Load every operator block from the store and enforce exactly those; false (and
    /// the blocks held so far kept) when the store cannot answer.
    async fn load_blocks(&self) -> bool {
        match self.store.blocks(now_secs()).await {
            Ok(all) => {
                self.validator.replace_blocks(&all);
                self.blocks_loaded.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "loading operator blocks failed");
                self.blocks_loaded.store(false, Ordering::Release);
                false
            }
        }
    }

    /// Whether the operator blocks were loaded from the store (for `/readyz?verbose`).
    pub fn blocks_loaded(&self) -> bool {
        self.blocks_loaded.load(Ordering::Acquire)
    }

    /// At start: the operator blocks in the store. While the store cannot answer they are
    /// retried in the background (by the revocation feed where the store is shared), and
    /// blocked tokens are accepted meanwhile, like revoked ones the store cannot confirm.
    pub async fn restore_blocks(self: &Arc<Self>) {
        if self.load_blocks().await {
            return;
        }
        tracing::warn!("operator blocks unavailable from the store; retrying in the background");
        if self.revocation_feed.lock().is_ok_and(|f| f.is_some()) {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            while !gw.load_blocks().await {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            tracing::info!("operator blocks restored from the store");
        });
    }

    /// Add or replace an operator block: stored (and so announced to the other replicas)
    /// first, then enforced here. Nothing changes when the store refuses it.
    pub async fn block(&self, block: Block) -> Result<(), StoreError> {
        self.store.put_block(block.clone()).await?;
        self.validator.block(&block);
        Ok(())
    }

    /// Remove an operator block everywhere; false when there was none.
    pub async fn unblock(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let removed = self.store.delete_block(key).await?;
        self.validator.unblock(key);
        Ok(removed)
    }

    /// Put a new, already validated configuration in force. Keys are loaded first, so a
    /// configuration whose keys cannot be loaded leaves the old one serving.
    /// Cached validation verdicts need no flush: each hit is re-checked against the
    /// runtime in force (client enabled, kid listed, same key file, issuer, audience).
    pub fn apply(&self, config: Config) -> Result<(), StartError> {
        let _order = self.reloading();
        self.apply_held(config)
    }

    /// The lock a reload holds from reading its file to [`Gateway::apply_held`].
    pub(crate) fn reloading(&self) -> std::sync::MutexGuard<'_, ()> {
        self.reload_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`Gateway::apply`] under the [`Gateway::reloading`] lock the caller holds.
    pub(crate) fn apply_held(&self, config: Config) -> Result<(), StartError> {
        let keys = KeySet::reload(&config, &self.runtime().keys)?;
        let upstreams = Upstreams::new(&config).map_err(StartError::UpstreamTls)?;
        let client_keys = ClientKeys::load(&config).map_err(|(line, e)| StartError::ClientKey(line, e))?;
        let issuers = IssuerSet::build(&config, Some(&self.runtime().issuers))
            .map_err(|(line, e)| StartError::Issuer(line, e))?;
        issuers.start();
        self.reset_clients(Some(&self.runtime().config), &config);
        self.runtime.store(Arc::new(Runtime { config, keys, upstreams, issuers, client_keys }));
        Ok(())
    }

    /// Client not-befores (issue 19.8) for a configuration about to be put in force: a
    /// disabled, removed or (opted-in) secret-rotated client's tokens issued until now stay
    /// void, also once it is enabled again; remembered here and persisted in the store.
    fn reset_clients(&self, old: Option<&Config>, new: &Config) {
        let resets = client_resets(old, new);
        let now = now_secs();
        for id in resets.void {
            self.validator.set_client_not_before(&id, now);
            let store = self.store.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = store.put_client_not_before(&id, now).await {
                        tracing::error!(client_id = %id, error = %e, "could not record that the client's tokens are void; a restart after enabling it again would accept them");
                    }
                });
            }
        }
        if resets.clear_cache {
            self.validator.clear();
        }
    }

    /// At start: the client not-befores recorded by earlier runs and other replicas, then
    /// this configuration's disabled clients. While the store cannot answer, retried in
    /// the background, and `/readyz` answers 503 until they are loaded. Then read again
    /// every [`CLIENT_RESETS_RESYNC`] (and on every notice from a replica), so a reset made
    /// elsewhere reaches this replica even if the notice was lost.
    pub async fn restore_client_resets(self: &Arc<Self>) {
        let config = &self.runtime().config;
        self.reset_clients(None, config);
        let loaded = self.load_client_resets().await;
        if !loaded {
            tracing::warn!("client not-befores unavailable from the store; not ready until they are loaded");
        }
        let gw = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut loaded = loaded;
            loop {
                let pause = if loaded { CLIENT_RESETS_RESYNC } else { std::time::Duration::from_secs(1) };
                tokio::time::sleep(pause).await;
                let Some(gw) = gw.upgrade() else { return };
                let now = gw.load_client_resets().await;
                if now && !loaded {
                    tracing::info!("client not-befores restored from the store");
                }
                loaded |= now;
            }
        });
    }

    /// Read every client not-before from the store into memory (only ever raising one).
    /// Cached verdicts do not know `iat`, so a raised one drops them.
    async fn load_client_resets(&self) -> bool {
        match self.store.client_not_before().await {
            Ok(all) => {
                let mut raised = false;
                let now = now_secs();
                for (id, at) in all {
                    let known = self.validator.client_not_before(&id);
                    if let Some(at) = clamp_not_before(&id, at, now, known) {
                        raised |= self.validator.set_client_not_before(&id, at);
                    }
                }
                if raised {
                    self.validator.clear();
                }
                self.client_resets_loaded.store(true, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "client not-befores: store unavailable");
                false
            }
        }
    }
}
