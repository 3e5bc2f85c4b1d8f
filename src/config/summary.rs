//! What `portcullis check` prints about a valid configuration: one line per listener,
//! endpoint, key, client, user and route, so an operator sees what would be served.

use std::io::{self, Write};

use super::model::{Access, Config, KeyAlgorithm, Quota, StoreConfig};

impl Config {
    /// Print the summary. Key files are looked at (present, to be generated, missing),
    /// never read.
    pub fn write_summary(&self, out: &mut impl Write) -> io::Result<()> {
        let config = self;
        writeln!(out, "issuer    {}", config.issuer)?;
        writeln!(out, "audience  {}", config.audience)?;
        for l in &config.listeners {
            writeln!(out, "listener  {} ({})", l.address, if l.tls { "https" } else { "http" })?;
        }
        // Each endpoint at every path it is served at (under the issuer's path too).
        let served = config.served_paths();
        let at =
            |key: &str| served.iter().filter(|(k, _)| *k == key).map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(" ");
        writeln!(out, "token     POST {}", at("token"))?;
        writeln!(out, "authorize GET  {} (login and consent pages)", at("authorize"))?;
        writeln!(out, "revoke    POST {}", at("revoke"))?;
        writeln!(out, "introspect POST {}", at("introspect"))?;
        writeln!(out, "metadata  GET  {}", at("metadata"))?;
        writeln!(out, "jwks      GET  {}", at("jwks"))?;
        match &config.admin {
            Some(a) => {
                let blocks = if a.api_key_hash.is_some() { " /blocks (key)" } else { "" };
                writeln!(out, "admin     {} (http: /healthz /readyz /metrics{blocks})", a.address)?
            }
            None => writeln!(out, "admin     disabled")?,
        }
        match &config.store {
            StoreConfig::Embedded { path } => writeln!(out, "store     embedded {}", path.display())?,
            StoreConfig::Redis { url, key_prefix, mode, .. } => {
                // The URL may carry a password: print only scheme, host and port.
                let shown = url::Url::parse(url)
                    .map(|u| format!("{}://{}:{}", u.scheme(), u.host_str().unwrap_or("?"), u.port().unwrap_or(6379)))
                    .unwrap_or_default();
                let mode = match mode {
                    crate::config::RedisMode::Single => String::new(),
                    crate::config::RedisMode::Cluster(n) => format!(" cluster of {} seed node(s)", n.len()),
                    crate::config::RedisMode::Sentinel { nodes, service_name } => {
                        format!(" sentinel ({} node(s)) service {service_name}", nodes.len())
                    }
                };
                writeln!(out, "store     redis {shown}{mode} prefix={key_prefix}")?;
            }
        }
        let r = &config.rate_limit;
        if r.enabled {
            let per_min = |q: Quota| q.refill_per_sec * 60.0;
            writeln!(
                out,
                "limits    per IP {} then {}/s (failure counts {}); per client {} failures, {:.1}/min; per user {} failures, {:.1}/min",
                r.ip.burst,
                r.ip.refill_per_sec,
                r.failure_cost,
                r.client_failures.burst,
                per_min(r.client_failures),
                r.user_failures.burst,
                per_min(r.user_failures),
            )?;
        } else {
            writeln!(out, "limits    rate limiting disabled")?;
        }
        for k in &config.keys {
            let state = if k.file.exists() {
                "present"
            } else if k.generate && k.algorithm != KeyAlgorithm::RS256 {
                "generated on first start"
            } else {
                "MISSING"
            };
            writeln!(
                out,
                "key       {} {:?} {} ({}){}",
                k.id,
                k.algorithm,
                k.file.display(),
                state,
                if k.active { "" } else { " verify-only" }
            )?;
        }
        let mut clients: Vec<_> = config.clients.values().collect();
        clients.sort_by(|a, b| a.id.cmp(&b.id));
        for c in clients {
            let mut grants: Vec<_> = c.grants.iter().map(|g| g.as_str()).collect();
            if c.implicit {
                grants.push("implicit");
            }
            grants.sort_unstable();
            writeln!(
                out,
                "client    {} grants=[{}] scopes=[{}]{}{}",
                c.id,
                grants.join(","),
                c.scopes.join(","),
                c.user.as_ref().map(|u| format!(" user={u}")).unwrap_or_default(),
                if c.enabled { "" } else { " DISABLED" }
            )?;
        }
        let mut users: Vec<_> = config.users.values().collect();
        users.sort_by(|a, b| a.username.cmp(&b.username));
        for u in users {
            let linked_only = if u.password_hash.is_none() { " (no password: linked only)" } else { "" };
            writeln!(out, "user      {}{linked_only}{}", u.username, if u.enabled { "" } else { " DISABLED" })?;
        }
        for i in &config.trusted_issuers {
            if let Some(x) = &i.introspection {
                // The secret is never shown.
                writeln!(
                    out,
                    "trusted   {} {} introspection={} client_id={} audience=[{}] max_cache={} negative_cache={}",
                    i.name,
                    i.issuer,
                    x.endpoint,
                    x.client_id,
                    i.audiences.join(","),
                    humantime::format_duration(x.max_cache),
                    humantime::format_duration(x.negative_cache)
                )?;
                continue;
            }
            let algs: Vec<_> = i.algorithms.iter().map(|a| a.as_str()).collect();
            let jwks = match &i.jwks {
                super::JwksSource::Uri(u) => u.as_str(),
                super::JwksSource::Discovery => "discovery",
            };
            writeln!(
                out,
                "trusted   {} {} algorithms=[{}] audience=[{}] jwks={jwks}",
                i.name,
                i.issuer,
                algs.join(","),
                i.audiences.join(",")
            )?;
        }
        for r in &config.routes {
            let issuers = match r.issuers.as_slice() {
                [only] if only == super::SELF_ISSUER => String::new(),
                list => format!(" issuers=[{}]", list.join(",")),
            };
            let claims = if r.claims.is_empty() {
                String::new()
            } else {
                let names: Vec<_> = r.claims.iter().map(|c| c.claim.as_str()).collect();
                format!(" claims=[{}]", names.join(","))
            };
            let quota = r.quota.as_ref().map_or(String::new(), |q| {
                format!(" quota={}/{}s,burst={},per={}", q.rate, q.window.as_secs(), q.burst, q.per.as_str())
            });
            writeln!(
                out,
                "route     {}{}{} -> {}://{}{}{}{}{issuers}{claims}{quota}",
                r.host.as_deref().map(|h| format!("{h} ")).unwrap_or_default(),
                r.prefix,
                r.methods.as_ref().map(|m| format!(" {m:?}")).unwrap_or_default(),
                if r.upstream.h2c { "h2c" } else { r.upstream.scheme.as_str() },
                r.upstream.authority,
                r.upstream.base_path,
                match &r.access {
                    Access::Public => " public".to_string(),
                    Access::Scopes(scopes) => format!(" scopes=[{}]", scopes.join(",")),
                },
                if r.strip_prefix { " strip_prefix" } else { "" },
            )?;
        }
        Ok(())
    }
}
