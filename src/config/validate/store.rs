//! `[store]`: where issued tokens, codes and sessions are kept.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{RedisMode, StoreConfig};
use crate::config::raw::RawStore;

impl Validator<'_> {
    pub(super) fn store(&self, raw: &RawStore) -> Result<StoreConfig, ConfigError> {
        match raw.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
            None | Some(("embedded", _)) => {
                if let Some(u) = &raw.url {
                    return Err(self.err(u.span(), "url is for kind = \"redis\""));
                }
                for (set, what) in [
                    (raw.cluster.as_ref().map(Spanned::span), "cluster"),
                    (raw.sentinel.as_ref().map(Spanned::span), "sentinel"),
                    (raw.service_name.as_ref().map(Spanned::span), "service_name"),
                    (raw.ca_file.as_ref().map(Spanned::span), "ca_file"),
                    (raw.replica_acks.as_ref().map(Spanned::span), "replica_acks"),
                ] {
                    if let Some(span) = set {
                        return Err(self.err(span, format!("{what} is for kind = \"redis\"")));
                    }
                }
                // Unused by the embedded store, but a bad value is still refused: it would
                // be refused the day the store becomes Redis, far from where it was written.
                self.duration(&raw.timeout, Duration::from_secs(1))?;
                Ok(StoreConfig::Embedded {
                    path: self.path(raw.path.as_ref().map_or("data/portcullis.redb", |p| p.get_ref())),
                })
            }
            Some(("redis", span)) => self.redis_store(raw, span),
            Some((other, span)) => {
                Err(self.err(span, format!("unknown store kind {other:?}: use \"embedded\" or \"redis\"")))
            }
        }
    }

    fn redis_store(&self, raw: &RawStore, span: Range<usize>) -> Result<StoreConfig, ConfigError> {
        let given = [raw.url.is_some(), raw.cluster.is_some(), raw.sentinel.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(self.err(span, "a redis store takes one of url, cluster = [...] or sentinel = [...]"));
        }
        if let (Some(n), None) = (&raw.service_name, &raw.sentinel) {
            return Err(self.err(n.span(), "service_name is for sentinel = [...]"));
        }
        let (url, mode) = if let Some(url) = &raw.url {
            self.redis_url(url)?;
            (url.get_ref().clone(), RedisMode::Single)
        } else if let Some(seeds) = &raw.cluster {
            let nodes = self.redis_urls(seeds, "cluster")?;
            (nodes[0].clone(), RedisMode::Cluster(nodes))
        } else if let Some(sentinels) = &raw.sentinel {
            let nodes = self.redis_urls(sentinels, "sentinel")?;
            let name = raw.service_name.as_ref().ok_or_else(|| {
                self.err(sentinels.span(), "sentinel = [...] needs service_name = \"<the monitored master's name>\"")
            })?;
            if name.get_ref().trim().is_empty() {
                return Err(self.err(name.span(), "service_name must not be empty"));
            }
            (nodes[0].clone(), RedisMode::Sentinel { nodes, service_name: name.get_ref().clone() })
        } else {
            return Err(self.err(
                span,
                "a redis store needs url = \"redis://host:port\", cluster = [\"redis://...\", ...] or \
                 sentinel = [...] with service_name",
            ));
        };
        let ca_file = match &raw.ca_file {
            None => None,
            Some(f) => {
                if !url.starts_with("rediss://") {
                    return Err(self.err(f.span(), "ca_file is for rediss:// (TLS) servers"));
                }
                if matches!(mode, RedisMode::Sentinel { .. }) {
                    return Err(
                        self.err(f.span(), "ca_file is not supported with sentinel = [...] (system roots only)")
                    );
                }
                let path = self.path(f.get_ref());
                // Read now, so `check` refuses what `serve` would: a missing file or one
                // without a single PEM certificate.
                use rustls_pki_types::CertificateDer;
                use rustls_pki_types::pem::PemObject;
                let certs = CertificateDer::pem_file_iter(&path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| self.err(f.span(), format!("ca_file {}: {e}", path.display())))?;
                if certs.is_empty() {
                    return Err(self.err(f.span(), format!("ca_file {}: no PEM certificate in it", path.display())));
                }
                Some(path)
            }
        };
        // `pool_size` is still read (and type-checked) so that older configs load, but
        // one multiplexed connection serves every request (see store/redis.rs).
        self.number(&raw.pool_size, 4)?;
        let replica_acks = match &raw.replica_acks {
            None => 0,
            Some(n) if *n.get_ref() > 16 => return Err(self.err(n.span(), "replica_acks above 16 cannot be meant")),
            Some(n) => *n.get_ref() as u32,
        };
        Ok(StoreConfig::Redis {
            url,
            key_prefix: raw.key_prefix.clone().unwrap_or_else(|| "portcullis:".to_string()),
            timeout: self.duration(&raw.timeout, Duration::from_secs(1))?,
            mode,
            ca_file,
            replica_acks,
        })
    }

    fn redis_url(&self, url: &Spanned<String>) -> Result<url::Url, ConfigError> {
        let parsed = url::Url::parse(url.get_ref()).map_err(|e| self.err(url.span(), format!("bad redis url: {e}")))?;
        if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
            return Err(self.err(url.span(), "redis url must be redis://host[:port][/db] or rediss://..."));
        }
        // The client would read them (`#insecure` turns TLS verification off); the gateway
        // configures TLS with ca_file and takes no other option, so anything here is refused.
        if parsed.fragment().is_some() {
            return Err(self.err(url.span(), "redis url takes no #fragment (TLS is configured with ca_file)"));
        }
        if parsed.query().is_some() {
            return Err(self.err(url.span(), "redis url takes no ?query options"));
        }
        Ok(parsed)
    }

    /// A node list: at least one, each a redis URL, all of one scheme (a cluster or a set
    /// of sentinels is all TLS or all plain; a mix is a typo that would send the password
    /// in clear to some node).
    fn redis_urls(&self, list: &Spanned<Vec<Spanned<String>>>, what: &str) -> Result<Vec<String>, ConfigError> {
        let Some(first) = list.get_ref().first() else {
            return Err(self.err(list.span(), format!("{what} = [...] needs at least one node URL")));
        };
        let scheme = self.redis_url(first)?.scheme().to_string();
        for u in list.get_ref() {
            let s = self.redis_url(u)?;
            if what == "cluster" && !matches!(s.path(), "" | "/" | "/0") {
                return Err(self.err(u.span(), "a Redis Cluster has database 0 only: drop the /db from the node URL"));
            }
            if s.scheme() != scheme {
                return Err(self.err(
                    u.span(),
                    format!("{what} node URLs mix schemes ({scheme}:// and {}://): use one for all", s.scheme()),
                ));
            }
        }
        Ok(list.get_ref().iter().map(|u| u.get_ref().clone()).collect())
    }
}
