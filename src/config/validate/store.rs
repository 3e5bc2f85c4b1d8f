//! `[store]`: where issued tokens, codes and sessions are kept.

use std::time::Duration;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::StoreConfig;
use crate::config::raw::RawStore;

impl Validator<'_> {
    pub(super) fn store(&self, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
        match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("embedded", _)) => {
                if let Some(u) = &raw.url {
                    return Err(self.err(u.span(), "url is for kind = \"redis\""));
                }
                Ok(StoreConfig::Embedded {
                    path: self.path(raw.path.as_ref().map_or("data/portcullis.redb", |p| p.get_ref())),
                })
            }
            Some(("redis", span)) => {
                let url = raw
                    .url
                    .as_ref()
                    .ok_or_else(|| self.err(span.clone(), "a redis store needs url = \"redis://host:port\""))?;
                let parsed =
                    url::Url::parse(url.get_ref()).map_err(|e| self.err(url.span(), format!("bad redis url: {e}")))?;
                if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
                    return Err(self.err(url.span(), "redis url must be redis://host[:port][/db] or rediss://..."));
                }
                // `pool_size` is still read (and type-checked) so that older configs load, but
                // one multiplexed connection serves every request (see store/redis.rs).
                self.number(&raw.pool_size, 4)?;
                Ok(StoreConfig::Redis {
                    url: url.get_ref().clone(),
                    key_prefix: raw.key_prefix.clone().unwrap_or_else(|| "portcullis:".to_string()),
                    timeout: self.duration(&raw.timeout, Duration::from_secs(1))?,
                })
            }
            Some((other, span)) => {
                Err(self.err(span, format!("unknown store kind {other:?}: use \"embedded\" or \"redis\"")))
            }
        }
    }
}
