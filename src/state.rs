//! What every request reads: the configuration and keys in force (swapped whole on
//! reload), and the long-lived caches and upstream pool that outlive a reload.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, StoreConfig};
use crate::oauth::client_auth::SecretCache;
use crate::proxy::forward::Upstreams;
use crate::store::embedded::EmbeddedStore;
use crate::store::{IssuedAccess, Store, StoreError};
use crate::tokens::keys::{KeyError, KeySet};
use crate::tokens::validate::Validator;

/// One consistent view: a config and the keys loaded from it.
pub struct Runtime {
    pub config: Config,
    pub keys: KeySet,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("upstream TLS: {0}")]
    UpstreamTls(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub validator: Validator,
    pub secrets: SecretCache,
    pub upstreams: Upstreams,
    pub store: Arc<dyn Store>,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, StartError> {
        let keys = KeySet::load(&config)?;
        let upstreams = Upstreams::new(&config).map_err(StartError::UpstreamTls)?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Embedded { path } => Arc::new(EmbeddedStore::open(path)?),
        };
        Ok(Arc::new(Gateway {
            store,
            validator: Validator::new(config.cache_max_tokens),
            secrets: SecretCache::new(config.cache_max_client_secrets),
            upstreams,
            runtime: ArcSwap::from_pointee(Runtime { config, keys }),
        }))
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

    /// Put a new, already validated configuration in force. Keys are loaded first, so a
    /// configuration whose keys cannot be loaded leaves the old one serving.
    pub fn apply(&self, config: Config) -> Result<(), StartError> {
        let keys = KeySet::load(&config)?;
        self.runtime.store(Arc::new(Runtime { config, keys }));
        Ok(())
    }
}
