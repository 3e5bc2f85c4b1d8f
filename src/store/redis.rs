//! The shared store for several gateway replicas: Redis — one server, a Sentinel-managed
//! primary, or a Redis Cluster. Records expire with Redis TTLs; the operations that must be
//! atomic are Lua scripts (a script runs alone on the server), and every revocation is
//! published on a channel so each replica evicts its cache.
//!
//! Every script declares the keys it touches, and the keys one script touches share a
//! hash tag, so each runs on one cluster slot. The unit of atomicity is the refresh family:
//! its tokens and state live under `{f:<family>}`; a token finds its family through an
//! index written before the token is handed out (and never changed after).
//!
//! Layout under the key prefix `P` (`F` = `P{f:<family id>}`):
//! `P code:<hex>`   "F"+grant JSON (fresh) or "U"+family (used)      TTL: code lifetime / replay memory
//! `P rtf:<hex>`    the refresh token's family id (index)            TTL: refresh lifetime
//! `F rt:<hex>`     "A"/"S" (active/spent) + grant JSON               TTL: refresh lifetime
//! `F at:<hex>`     unix time (Redis clock) the refresh token was spent TTL: as its `rt:`
//! `F sib:<hex>`    siblings minted from the spent token              TTL: as its `rt:`
//! `F fam`          hash {revoked}                                    TTL: longest member
//! `F acc`          hash jti → exp of access tokens from the family   TTL: longest member
//! `P rev:<jti>`    exp of a revoked access token                     TTL: until it expires
//! `P sess:<hex>`   session JSON                                      TTL: session lifetime
//! `P clientnb`     hash client id → not-before (unix time)            no TTL
//! `P blocks`       hash block key JSON → block JSON                   no TTL (lapsed ones pruned on read)
//! `P once:<kind>:<hex>` "1": a client assertion's or DPoP proof's jti  TTL: until it may be forgotten
//! channel `P revocations` (classic pub/sub: on a cluster PUBLISH reaches every node):
//! "<jti> <exp>" per revoked access token, "block <block JSON>" and "unblock <block key
//! JSON>" per operator block (issue 16.5), "clientnb", and the heartbeat.
//!
//! The layout of refresh families changed with cluster support (issue 14): refresh tokens
//! stored by an older version are not found (docs/operations.md, "Migration").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncCommands, IntoConnectionInfo, Script, TlsCertificates};
use tokio::sync::{Mutex, RwLock, mpsc};

use super::{
    Block, BlockKey, CodeGrant, Hash, IssuedAccess, OnceKind, RefreshGrant, RevocationEvent, Rotate, Rotation, Session,
    Store, StoreError, StoredRefresh, TakeCode,
};
use crate::config::RedisMode;
use crate::tokens::now_secs;

/// How long a used code is remembered so that a replay can be detected and punished.
const USED_CODE_MEMORY_SECS: u64 = 600;

/// Mark a family revoked (KEYS: its `fam`, `acc`) and return its live access tokens as a
/// flat list jti, exp, ...: the caller revokes each (`rev:` keys live in other slots).
/// `acc` is kept, so a revocation cut short is completed by repeating it.
const REVOKE_FAMILY_LUA: &str = r#"
local function revoke_family(fam, acc, now, minttl)
  redis.call('HSET', fam, 'revoked', '1')
  if redis.call('TTL', fam) < minttl then redis.call('EXPIRE', fam, minttl) end
  local all = redis.call('HGETALL', acc)
  local out = {}
  for i = 1, #all, 2 do
    local jti, exp = all[i], tonumber(all[i + 1])
    if exp and exp > now then
      table.insert(out, jti)
      table.insert(out, tostring(exp))
    end
  end
  return out
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{REVOKE_FAMILY_LUA}\n{body}"))
}

/// One connection to the data: a single server's (or Sentinel's current primary's)
/// managed connection, or a cluster connection that follows the slots by itself. Other
/// modules that keep state in the same Redis (shared rate limits) get one through
/// [`RedisStore::connection`]; on a cluster their scripts must declare their keys too.
#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the data is, as configured.
enum Target {
    Single(redis::Client),
    /// Asked for the current primary at every (re)connection.
    Sentinel(Mutex<SentinelClient>),
    /// The cluster client, and one plain client per seed node for the revocation channel
    /// (classic pub/sub: a subscriber on any node hears every PUBLISH of the cluster).
    Cluster {
        client: ClusterClient,
        seeds: Vec<redis::Client>,
    },
}

/// The shared connection; a failure through it (other than a timeout) discards it, so the
/// next use reconnects from scratch instead of trusting a manager whose connection may be
/// dead for good (the replica tests restart Redis under it), or that points at a primary
/// Sentinel has since demoted.
struct Conn<'a> {
    c: Link,
    slot: &'a RwLock<Option<Link>>,
    down: &'a Outage,
}

impl Conn<'_> {
    fn fail(&self, e: redis::RedisError) -> StoreError {
        discard(self.slot, self.down, e)
    }
}

fn discard(slot: &RwLock<Option<Link>>, down: &Outage, e: redis::RedisError) -> StoreError {
    if !e.is_timeout()
        && let Ok(mut w) = slot.try_write()
    {
        *w = None;
    }
    down.failed(unavailable(e))
}

/// Whether Redis is failing, so an outage is logged once when it starts and once when it
/// ends, not once per refused request.
#[derive(Default)]
struct Outage(std::sync::atomic::AtomicBool);

impl Outage {
    fn failed(&self, e: StoreError) -> StoreError {
        if !self.0.load(Ordering::Acquire) && !self.0.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "Redis store unavailable; grants, revocation and logins answer 503 until it answers");
        }
        e
    }

    fn answered(&self) {
        if self.0.load(Ordering::Acquire) && self.0.swap(false, Ordering::AcqRel) {
            tracing::warn!("Redis store answering again");
        }
    }
}

/// How to reach Redis: what `[store]` says beyond the key prefix.
pub struct RedisOptions<'a> {
    pub url: &'a str,
    pub mode: &'a RedisMode,
    pub timeout: Duration,
    /// PEM roots for `rediss://`.
    pub ca_file: Option<&'a std::path::Path>,
    /// Replicas that must acknowledge a grant-state write before it counts (`WAIT`); 0: none.
    pub replica_acks: u32,
}

pub struct RedisStore {
    target: Target,
    config: ConnectionManagerConfig,
    timeout: Duration,
    replica_acks: u32,
    prefix: String,
    /// One multiplexed connection, not a pool: every command here is a short request or a
    /// Lua script (no blocking command that would hold a connection), a multiplexed
    /// connection pipelines concurrent requests, Redis runs them one at a time anyway, and
    /// pub/sub has its own connection (`spawn_listener`).
    conn: RwLock<Option<Link>>,
    down: Outage,
    /// Which seed node the revocation channel tries first (rotates after a failure).
    next_seed: AtomicUsize,
    take_code: Script,
    put_refresh: Script,
    get_refresh: Script,
    rotate: Script,
    add_access: Script,
    revoke_family: Script,
    revoke_one: Script,
    untake_code: Script,
    unrotate: Script,
    confirm_rotation: Script,
}

/// The message on the revocation channel that says a client not-before was recorded.
const CLIENT_RESETS_NOTICE: &str = "clientnb";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Pairs jti, exp from a flat script reply.
fn accesses(flat: &[String]) -> Vec<IssuedAccess> {
    flat.chunks_exact(2)
        .filter_map(|p| p[1].parse().ok().map(|expires_at| IssuedAccess { jti: p[0].clone(), expires_at }))
        .collect()
}

/// A refusal that retrying will not cure: the configuration is wrong (a bad password, a
/// node that is not in cluster mode, a certificate not trusted, a Sentinel that knows no
/// such master). The start is refused for these; anything else (refused connection,
/// timeout) only delays readiness of the store.
fn is_misconfiguration(e: &redis::RedisError) -> bool {
    use redis::ErrorKind;
    if matches!(e.kind(), ErrorKind::AuthenticationFailed | ErrorKind::MasterNameNotFoundBySentinel) {
        return true;
    }
    let text = e.to_string().to_ascii_lowercase();
    [
        "wrongpass",
        "noauth",
        "invalid password",
        "cluster support disabled",
        "certificate",
        "unknownissuer",
        "does not point to a sentinel",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

impl RedisStore {
    /// One Redis server at `url` (what the replica tests and older callers use).
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        RedisStore::open(
            &RedisOptions { url, mode: &RedisMode::Single, timeout, ca_file: None, replica_acks: 0 },
            prefix,
        )
    }

    /// Prepare the store; the connection is made on first use and re-made after failures,
    /// so the gateway starts (not ready) while Redis is down and recovers by itself.
    pub fn open(opts: &RedisOptions<'_>, prefix: &str) -> Result<RedisStore, StoreError> {
        let certs = match opts.ca_file {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| unavailable(format!("ca_file {}: {e}", path.display())))?)
            }
            None => None,
        };
        let tls = |root: &Option<Vec<u8>>| TlsCertificates { client_tls: None, root_cert: root.clone() };
        let plain = |url: &str| -> Result<redis::Client, StoreError> {
            match &certs {
                Some(_) => redis::Client::build_with_tls(url, tls(&certs)).map_err(unavailable),
                None => redis::Client::open(url).map_err(unavailable),
            }
        };
        let target = match opts.mode {
            RedisMode::Single => Target::Single(plain(opts.url)?),
            RedisMode::Cluster(nodes) => {
                let mut b = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(opts.timeout)
                    .response_timeout(opts.timeout)
                    // A request waits at most twice the store timeout, failover or not:
                    // grants answer 503 rather than hang while a primary is replaced.
                    .overall_response_timeout(Some(opts.timeout * 2))
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(300);
                if certs.is_some() {
                    b = b.certs(tls(&certs));
                }
                let client = b.build().map_err(unavailable)?;
                let seeds = nodes.iter().map(|n| plain(n)).collect::<Result<_, _>>()?;
                Target::Cluster { client, seeds }
            }
            RedisMode::Sentinel { nodes, service_name } => {
                // The sentinels' URLs carry the credentials (and db) used for the primary too.
                let first = nodes.first().map(String::as_str).unwrap_or(opts.url);
                let info = first.into_connection_info().map_err(unavailable)?;
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info.redis_settings().clone());
                if first.starts_with("rediss://") {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    nodes.iter().map(String::as_str).collect(),
                    service_name.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(unavailable)?;
                Target::Sentinel(Mutex::new(client))
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            target,
            config,
            timeout: opts.timeout,
            replica_acks: opts.replica_acks,
            prefix: prefix.to_string(),
            conn: RwLock::new(None),
            down: Outage::default(),
            next_seed: AtomicUsize::new(0),
            // KEYS: code; ARGV: family, replay memory
            take_code: Script::new(
                r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'unknown'} end
local kind, rest = string.sub(v, 1, 1), string.sub(v, 2)
if kind == 'F' then
  local g = cjson.decode(rest)
  if tonumber(g.expires_at) <= tonumber(ARGV[3]) then redis.call('DEL', KEYS[1]); return {'unknown'} end
  redis.call('SET', KEYS[1], 'U' .. ARGV[1], 'EX', tonumber(ARGV[2]))
  return {'taken', rest}
end
return {'replayed', rest}
"#,
            ),
            // KEYS: rt, fam; ARGV: grant json, ttl
            put_refresh: Script::new(
                r#"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], 'A' .. ARGV[1], 'EX', ttl)
redis.call('HSETNX', KEYS[2], 'revoked', '0')
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
return 'ok'
"#,
            ),
            // KEYS: rt, fam; returns {record, revoked flag}
            get_refresh: Script::new(
                r#"
local v = redis.call('GET', KEYS[1])
if not v then return {} end
return {v, redis.call('HGET', KEYS[2], 'revoked') or '0'}
"#,
            ),
            // KEYS: old rt, new rt, fam, acc, old at, old sib, old pend, the pending
            // successor's rt (any key of the slot when none); ARGV: now, client_id,
            // expected grant json, new grant json, new ttl, access jti, access exp, reuse
            // interval, max siblings, the client's not-before ('' for none), expected pend
            // ('' for none), the pending successor's jti, new pend, pend ttl.
            // `pend:<old>` names the successor of a rotation whose answer has not been
            // confirmed as sent (see `rotate_refresh`): a rotation that finds it where it
            // would count a reuse (past the reuse interval or its siblings) takes that
            // successor back and issues its own instead (the retry of the same request).
            rotate: script(
                r#"
local pend = redis.call('GET', KEYS[7]) or ''
local v = redis.call('GET', KEYS[1])
if not v then return {'invalid'} end
local kind, gj = string.sub(v, 1, 1), string.sub(v, 2)
if gj ~= ARGV[3] then return {'invalid'} end
local g = cjson.decode(gj)
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[3], 'revoked') == '1' then return {'invalid'} end
if tonumber(g.expires_at) <= now or g.client_id ~= ARGV[2] then return {'invalid'} end
if ARGV[10] ~= '' then
  local issued = tonumber(g.issued_at) or 0
  local at = tonumber(ARGV[10])
  -- An unreadable not-before fails closed.
  if not at or issued <= at then return {'client_reset'} end
end
local outcome = 'rotated'
-- The reuse interval runs on Redis's clock: one clock for every replica, whatever theirs say.
local clock = tonumber(redis.call('TIME')[1])
if kind == 'S' then
  local at, grace = tonumber(redis.call('GET', KEYS[5]) or ''), tonumber(ARGV[8])
  local siblings = tonumber(redis.call('GET', KEYS[6]) or '0') or 0
  local sibling = grace > 0 and at and clock - at <= grace and siblings < tonumber(ARGV[9])
  if not sibling and pend ~= '' and pend == ARGV[11] then
    redis.call('DEL', KEYS[8])
    if ARGV[12] ~= '' then redis.call('HDEL', KEYS[4], ARGV[12]) end
    outcome = 'rolled'
  elseif not sibling then
    local out = revoke_family(KEYS[3], KEYS[4], now, 600)
    table.insert(out, 1, 'reused')
    return out
  else
    redis.call('INCR', KEYS[6])
    local left = redis.call('TTL', KEYS[1])
    if left > 0 then redis.call('EXPIRE', KEYS[6], left) end
    outcome = 'sibling'
  end
else
  redis.call('SET', KEYS[1], 'S' .. gj, 'KEEPTTL')
  local left = redis.call('TTL', KEYS[1])
  if left > 0 then redis.call('SET', KEYS[5], tostring(clock), 'EX', left) end
end
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[2], 'A' .. ARGV[4], 'EX', ttl)
if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
local aexp = tonumber(ARGV[7])
if aexp > now then
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
  if redis.call('TTL', KEYS[4]) < aexp - now then redis.call('EXPIRE', KEYS[4], aexp - now) end
end
if outcome ~= 'sibling' then redis.call('SET', KEYS[7], ARGV[13], 'EX', tonumber(ARGV[14])) end
return {outcome}
"#,
            ),
            // KEYS: fam, acc; ARGV: jti, exp, now
            add_access: Script::new(
                r#"
local exp, now = tonumber(ARGV[2]), tonumber(ARGV[3])
if exp <= now then return 'expired' end
if redis.call('HGET', KEYS[1], 'revoked') == '1' then return 'revoked' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[2]) < exp - now then redis.call('EXPIRE', KEYS[2], exp - now) end
return 'ok'
"#,
            ),
            // KEYS: fam, acc; ARGV: now
            revoke_family: script("return revoke_family(KEYS[1], KEYS[2], tonumber(ARGV[1]), 600)"),
            // KEYS: rev:<jti>; ARGV: channel, jti, exp, now. The channel is not a key:
            // classic PUBLISH is allowed in a cluster script and reaches every node.
            // KEYS: code; ARGV: family, grant json, ttl. Undo a take that no replica
            // acknowledged (see `undo`).
            untake_code: Script::new(
                r#"
if redis.call('GET', KEYS[1]) == 'U' .. ARGV[1] then
  redis.call('SET', KEYS[1], 'F' .. ARGV[2], 'EX', tonumber(ARGV[3]))
end
return 1
"#,
            ),
            // KEYS: old rt, new rt, old at, old sib, acc, old pend; ARGV: outcome, grant
            // json, jti, pend. Undo a rotation that no replica acknowledged (see `undo`);
            // a roll-forward is not undone (its pend stays: the retry rolls forward again).
            unrotate: Script::new(
                r#"
if ARGV[1] == 'rotated' then
  if redis.call('GET', KEYS[6]) ~= ARGV[4] then return 0 end
  redis.call('DEL', KEYS[6])
end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[5], ARGV[3])
if ARGV[1] == 'rotated' then
  if redis.call('GET', KEYS[1]) == 'S' .. ARGV[2] then
    redis.call('SET', KEYS[1], 'A' .. ARGV[2], 'KEEPTTL')
    redis.call('DEL', KEYS[3])
  end
elseif (tonumber(redis.call('GET', KEYS[4]) or '0') or 0) > 0 then
  redis.call('DECR', KEYS[4])
end
return 1
"#,
            ),
            // KEYS: old pend; ARGV: pend. The rotation's answer goes out: no longer pending.
            // 0: another attempt rolled forward over this one (its successor is gone).
            confirm_rotation: Script::new(
                r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#,
            ),
            revoke_one: Script::new(
                r#"
local exp, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if exp <= now then return 'expired' end
redis.call('SET', KEYS[1], ARGV[3], 'EX', exp - now + 5)
redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return 'ok'
"#,
            ),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// The shared connection (made if needed), for other state kept in the same Redis
    /// under [`RedisStore::key_prefix`]. Report a failure through it with
    /// [`RedisStore::connection_failed`], so the next use reconnects.
    pub async fn connection(&self) -> Result<Link, StoreError> {
        Ok(self.conn().await?.c)
    }

    /// A command through [`RedisStore::connection`] failed: drop the connection (unless
    /// it was a timeout) so the next use reconnects, and note the outage.
    pub fn connection_failed(&self, e: redis::RedisError) -> StoreError {
        discard(&self.conn, &self.down, e)
    }

    pub fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// A key of a refresh family: all of one family's keys share the hash tag `{f:<id>}`.
    fn fam_key(&self, family: &str, what: &str) -> String {
        format!("{}{{f:{family}}}{what}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// The connection, connecting (again) if needed.
    async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        let (slot, down) = (&self.conn, &self.down);
        if let Some(c) = slot.read().await.as_ref() {
            return Ok(Conn { c: c.clone(), slot, down });
        }
        let mut w = slot.write().await;
        if let Some(c) = w.as_ref() {
            return Ok(Conn { c: c.clone(), slot, down });
        }
        let c = self.connect().await.map_err(|e| down.failed(unavailable(e)))?;
        *w = Some(c.clone());
        Ok(Conn { c, slot, down })
    }

    async fn connect(&self) -> redis::RedisResult<Link> {
        let limit = self.timeout * 2;
        let connect = async {
            match &self.target {
                Target::Single(client) => {
                    Ok(Link::Single(client.get_connection_manager_with_config(self.config.clone()).await?))
                }
                Target::Sentinel(sentinel) => {
                    let client = sentinel.lock().await.async_get_client().await?;
                    Ok(Link::Single(client.get_connection_manager_with_config(self.config.clone()).await?))
                }
                Target::Cluster { client, .. } => Ok(Link::Cluster(client.get_async_connection().await?)),
            }
        };
        tokio::time::timeout(limit, connect).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out")))
        })
    }

    /// Connect once, at start, and refuse to go on if the answer shows a misconfiguration
    /// (see [`is_misconfiguration`]); an unreachable Redis is not one (the gateway starts,
    /// the store recovers by itself).
    pub async fn check_config(&self) -> Result<(), StoreError> {
        let result = async {
            let mut c = self.connect().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await?;
            if let Link::Cluster(c) = &mut c {
                // Every node must be a cluster node: a plain server among the seeds would
                // answer CLUSTER SLOTS with an error the client may skip over.
                redis::cmd("CLUSTER").arg("INFO").query_async::<String>(c).await?;
            }
            *self.conn.write().await = Some(c);
            Ok::<_, redis::RedisError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_misconfiguration(&e) => Err(StoreError::Unavailable(format!(
                "Redis refused the configuration ({e}); correct [store] and start again"
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "Redis store not reachable at start; it is retried, grants answer 503 until then");
                Ok(())
            }
        }
    }

    /// After a write that must survive a failover: wait until `replica_acks` replicas of
    /// the primary holding `key` have it, within the store timeout. Not acknowledged: the
    /// write may be lost with its primary, so the caller answers 503 (the client retries;
    /// see docs/operations.md for what a retry of a rotation or a code exchange meets).
    async fn replicated(&self, conn: &mut Conn<'_>, key: &str) -> Result<(), StoreError> {
        if self.replica_acks == 0 {
            return Ok(());
        }
        // Half the store timeout, so Redis answers (with a count) before the connection's
        // own response timeout would.
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.replica_acks).arg((self.timeout.as_millis() as u64 / 2).max(1));
        let acked: i64 = match &mut conn.c {
            Link::Single(c) => wait.query_async(c).await.map_err(|e| conn.fail(e))?,
            Link::Cluster(c) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key.as_bytes(),
                    SlotAddr::Master,
                )));
                let v = c.route_command(wait, route).await.map_err(|e| conn.fail(e))?;
                // Not a count: an error reply, e.g. from a node demoted since the slot map
                // was read ("WAIT cannot be used with replica instances"): start afresh.
                match v {
                    redis::Value::Int(n) => n,
                    redis::Value::ServerError(e) => return Err(conn.fail(e.into())),
                    other => {
                        let e = redis::RedisError::from(std::io::Error::other(format!("WAIT answered {other:?}")));
                        return Err(conn.fail(e));
                    }
                }
            }
        };
        if acked < i64::from(self.replica_acks) {
            return Err(self.down.failed(unavailable(format!(
                "write acknowledged by {acked} of the {} replica(s) required",
                self.replica_acks
            ))));
        }
        Ok(())
    }

    /// Revoke access tokens one by one (each `rev:` key is its own slot) and announce each.
    async fn revoke_each(&self, conn: &mut Conn<'_>, revoked: &[IssuedAccess]) -> Result<(), StoreError> {
        let now = now_secs();
        for a in revoked {
            let key = self.key("rev", &a.jti);
            let _: String = self
                .revoke_one
                .key(&key)
                .arg(self.channel())
                .arg(&a.jti)
                .arg(a.expires_at)
                .arg(now)
                .invoke_async(&mut conn.c)
                .await
                .map_err(|e| conn.fail(e))?;
            self.replicated(conn, &key).await?;
        }
        Ok(())
    }

    /// A client for the revocation channel: the server, Sentinel's current primary, or
    /// the next seed node of a cluster that answers.
    async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        match &self.target {
            Target::Single(client) => client.get_async_pubsub().await,
            Target::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client.get_async_pubsub().await
            }
            Target::Cluster { seeds, .. } => {
                let mut last = None;
                for _ in 0..seeds.len() {
                    let i = self.next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len();
                    match tokio::time::timeout(self.timeout, seeds[i].get_async_pubsub()).await {
                        Ok(Ok(p)) => return Ok(p),
                        Ok(Err(e)) => last = Some(e),
                        Err(_) => {}
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "no seed node answered"))
                }))
            }
        }
    }

    /// Follow the revocation channel, forever: each message becomes an event; after any
    /// interruption a `Resync` comes first, because messages may have been missed.
    ///
    /// A subscription can also die silently (a dropped NAT flow, a failover without a
    /// reset). So the replica publishes a heartbeat on the channel itself every
    /// `HEARTBEAT`; hearing nothing for `3 × HEARTBEAT` means the feed is deaf, and it is
    /// rebuilt (with a `Resync`).
    pub fn spawn_listener(self: &Arc<Self>) -> mpsc::Receiver<RevocationEvent> {
        const HEARTBEAT: Duration = Duration::from_secs(1);
        let (tx, rx) = mpsc::channel(1024);
        let channel = self.channel();
        let beat = self.clone();
        let beat_channel = channel.clone();
        let beat_tx = tx.clone();
        tokio::spawn(async move {
            while !beat_tx.is_closed() {
                if let Ok(mut conn) = beat.conn().await {
                    let sent: Result<i64, _> = conn.c.publish(&beat_channel, "heartbeat").await;
                    match sent {
                        Ok(_) => beat.down.answered(),
                        Err(e) => drop(conn.fail(e)),
                    }
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
        let this = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let subscribed = tokio::time::timeout(HEARTBEAT * 3, async {
                    let mut pubsub = this.pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                })
                .await;
                match subscribed {
                    Ok(Ok(mut pubsub)) => {
                        if !first {
                            tracing::info!("revocation channel re-subscribed; clearing the validation cache");
                            if tx.send(RevocationEvent::Resync).await.is_err() {
                                return;
                            }
                        }
                        let mut messages = pubsub.on_message();
                        loop {
                            let msg = match tokio::time::timeout(HEARTBEAT * 3, messages.next()).await {
                                Ok(Some(msg)) => msg,
                                Ok(None) => {
                                    tracing::warn!("revocation channel lost");
                                    break;
                                }
                                Err(_) => {
                                    tracing::warn!("revocation channel silent; reconnecting");
                                    break;
                                }
                            };
                            let Ok(payload) = msg.get_payload::<String>() else { continue };
                            if payload == CLIENT_RESETS_NOTICE {
                                if tx.send(RevocationEvent::ClientResets).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            let Some(event) = parse_event(&payload) else { continue };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "revocation channel unavailable"),
                    Err(_) => tracing::debug!("revocation channel: subscribing timed out"),
                }
                first = false;
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        rx
    }
}

/// How long a rotation stays pending (`pend:<old>`) when its answer is not confirmed as
/// sent: the 503 after an unacknowledged WAIT, a connection lost before the reply, or a
/// failover. A retry with the same token within it is the same request: the unsent
/// successor is taken back and a new one issued, no sibling spent, whatever the reuse
/// interval (a failover's retries outlast a short one). Long enough for an election and
/// its retries; short because a confirmation lost with its primary leaves this window
/// open to a replay of the spent token.
const PENDING: Duration = Duration::from_secs(60);

/// Take back a code take or a rotation that no replica acknowledged in time, so that the
/// 503 the client gets means "nothing changed" while this primary lives: its retry then
/// rotates (or exchanges) normally instead of spending a sibling per attempt (three, and
/// the family would be revoked). If the primary dies first, its replica has either
/// neither write or only the first, which the retry meets as within the reuse interval.
/// Best effort: a failure here leaves the unacknowledged write, as without it.
async fn undo(conn: &mut Conn<'_>, call: &redis::ScriptInvocation<'_>) {
    if let Err(e) = call.invoke_async::<i64>(&mut conn.c).await {
        tracing::debug!(error = %e, "taking back an unacknowledged write failed");
    }
}

/// The door for modules with scripts of their own (`redis_limits`): they reach Redis only
/// through these, so a change of connection (Cluster, Sentinel) is made here once.
impl RedisStore {
    /// Run `script` on `keys` (every key it touches, declared) with integer `args`, under
    /// the store's timeout; a failure counts as the store's like any other.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[String],
        args: &[i64],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        for a in args {
            call.arg(*a);
        }
        let reply = call.invoke_async(&mut conn.c).await.map_err(|e| conn.fail(e))?;
        self.down.answered();
        Ok(reply)
    }
}

/// One message of the revocation channel; `None` for the heartbeat and anything unreadable.
/// Revoked jtis are ours (random base64url), so never `block` or `unblock`.
fn parse_event(payload: &str) -> Option<RevocationEvent> {
    let (head, rest) = payload.split_once(' ')?;
    match head {
        "block" => serde_json::from_str(rest).ok().map(RevocationEvent::Blocked),
        "unblock" => serde_json::from_str(rest).ok().map(RevocationEvent::Unblocked),
        jti => {
            let expires_at = rest.parse().ok()?;
            Some(RevocationEvent::Revoked(IssuedAccess { jti: jti.to_string(), expires_at }))
        }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn put_code(&self, code: Hash, grant: CodeGrant) -> Result<(), StoreError> {
        let ttl = grant.expires_at.saturating_sub(now_secs()).max(1);
        let value = format!("F{}", encode(&grant)?);
        let mut conn = self.conn().await?;
        conn.c.set_ex::<_, _, ()>(self.key("code", &hex(&code)), value, ttl).await.map_err(|e| conn.fail(e))
    }

    async fn take_code(&self, code: Hash, family: &str, now: u64) -> Result<TakeCode, StoreError> {
        let mut conn = self.conn().await?;
        let key = self.key("code", &hex(&code));
        let reply: Vec<String> = self
            .take_code
            .key(&key)
            .arg(family)
            .arg(USED_CODE_MEMORY_SECS)
            .arg(now)
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        match reply.first().map(String::as_str) {
            Some("taken") => {
                let rest = reply.get(1).map(String::as_str).unwrap_or("");
                let grant: CodeGrant = decode(rest)?;
                // A take lost with its primary would make the code fresh again.
                if let Err(e) = self.replicated(&mut conn, &key).await {
                    let ttl = grant.expires_at.saturating_sub(now).max(1);
                    undo(&mut conn, self.untake_code.key(&key).arg(family).arg(rest).arg(ttl)).await;
                    return Err(e);
                }
                Ok(TakeCode::Taken(grant))
            }
            Some("replayed") => {
                let used_by = reply.get(1).map(String::as_str).unwrap_or("");
                let revoked = self.revoke_family(used_by).await?;
                Ok(TakeCode::Replayed { revoked })
            }
            _ => Ok(TakeCode::Unknown),
        }
    }

    async fn put_refresh(&self, token: Hash, grant: RefreshGrant) -> Result<(), StoreError> {
        let ttl = grant.expires_at.saturating_sub(now_secs()).max(1);
        let h = hex(&token);
        let mut conn = self.conn().await?;
        // The index first: a token whose record exists is always findable.
        let index = self.key("rtf", &h);
        conn.c.set_ex::<_, _, ()>(&index, &grant.family, ttl).await.map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &index).await?;
        let rt = self.fam_key(&grant.family, &format!("rt:{h}"));
        let _: String = self
            .put_refresh
            .key(&rt)
            .key(self.fam_key(&grant.family, "fam"))
            .arg(encode(&grant)?)
            .arg(ttl)
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &rt).await
    }

    async fn get_refresh(&self, token: Hash, now: u64) -> Result<Option<StoredRefresh>, StoreError> {
        let h = hex(&token);
        let mut conn = self.conn().await?;
        let family: Option<String> = conn.c.get(self.key("rtf", &h)).await.map_err(|e| conn.fail(e))?;
        let Some(family) = family else { return Ok(None) };
        let reply: Vec<String> = self
            .get_refresh
            .key(self.fam_key(&family, &format!("rt:{h}")))
            .key(self.fam_key(&family, "fam"))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        let [v, revoked] = reply.as_slice() else { return Ok(None) };
        let spent = v.starts_with('S');
        let grant: RefreshGrant = decode(v.get(1..).unwrap_or(""))?;
        if grant.expires_at <= now || grant.family != family {
            return Ok(None);
        }
        Ok((revoked != "1").then_some(StoredRefresh { grant, spent }))
    }

    async fn rotate_refresh(&self, old: Hash, client_id: &str, next: Rotation, now: u64) -> Result<Rotate, StoreError> {
        let (old_h, new_h) = (hex(&old), hex(&next.new));
        let mut conn = self.conn().await?;
        let family: Option<String> = conn.c.get(self.key("rtf", &old_h)).await.map_err(|e| conn.fail(e))?;
        let Some(family) = family else { return Ok(Rotate::Invalid) };
        let old_key = self.fam_key(&family, &format!("rt:{old_h}"));
        let v: Option<String> = conn.c.get(&old_key).await.map_err(|e| conn.fail(e))?;
        let Some(v) = v else { return Ok(Rotate::Invalid) };
        let expected = v.get(1..).unwrap_or("").to_string();
        let grant: RefreshGrant = decode(&expected)?;
        if grant.family != family {
            return Ok(Rotate::Invalid);
        }
        // The client's not-before lives in one hash for all clients (another slot): read
        // just before the rotation, which compares it atomically with the token.
        let nb: Option<String> =
            conn.c.hget(format!("{}clientnb", self.prefix), client_id).await.map_err(|e| conn.fail(e))?;
        let mut successor = grant.clone();
        successor.expires_at = next.new_expires_at;
        successor.issued_at = now;
        let ttl = next.new_expires_at.saturating_sub(now).max(1);
        // The successor's index before the successor: once handed out, it is findable.
        let index = self.key("rtf", &new_h);
        conn.c.set_ex::<_, _, ()>(&index, &family, ttl).await.map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &index).await?;
        // An earlier attempt with this token whose answer never went out (see `PENDING`).
        let pend_key = self.fam_key(&family, &format!("pend:{old_h}"));
        let pend: Option<String> = conn.c.get(&pend_key).await.map_err(|e| conn.fail(e))?;
        let pend = pend.unwrap_or_default();
        let (prev_h, prev_jti) = pend.split_once(' ').unwrap_or(("", ""));
        let prev_key =
            if prev_h.is_empty() { pend_key.clone() } else { self.fam_key(&family, &format!("rt:{prev_h}")) };
        let new_pend = format!("{new_h} {}", next.access.jti);
        let reply: Vec<String> = self
            .rotate
            .key(&old_key)
            .key(self.fam_key(&family, &format!("rt:{new_h}")))
            .key(self.fam_key(&family, "fam"))
            .key(self.fam_key(&family, "acc"))
            .key(self.fam_key(&family, &format!("at:{old_h}")))
            .key(self.fam_key(&family, &format!("sib:{old_h}")))
            .key(&pend_key)
            .key(&prev_key)
            .arg(now)
            .arg(client_id)
            .arg(&expected)
            .arg(encode(&successor)?)
            .arg(ttl)
            .arg(&next.access.jti)
            .arg(next.access.expires_at)
            .arg(next.reuse_interval)
            .arg(crate::store::MAX_SIBLINGS)
            .arg(nb.unwrap_or_default())
            .arg(&pend)
            .arg(prev_jti)
            .arg(&new_pend)
            .arg(PENDING.as_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        match reply.first().map(String::as_str) {
            Some(outcome @ ("rotated" | "sibling" | "rolled")) => {
                // A rotation lost with its primary would make the spent token live again.
                if let Err(e) = self.replicated(&mut conn, &old_key).await {
                    if outcome != "rolled" {
                        let mut call = self.unrotate.key(&old_key);
                        call.key(self.fam_key(&family, &format!("rt:{new_h}")))
                            .key(self.fam_key(&family, &format!("at:{old_h}")))
                            .key(self.fam_key(&family, &format!("sib:{old_h}")))
                            .key(self.fam_key(&family, "acc"))
                            .key(&pend_key)
                            .arg(outcome)
                            .arg(&expected)
                            .arg(&next.access.jti)
                            .arg(&new_pend);
                        undo(&mut conn, &call).await;
                    }
                    return Err(e);
                }
                // The answer goes out now: the successor is the client's. Not replicated
                // (a confirmation lost with its primary leaves the pend to its short TTL).
                // The reply (0: a sibling, which leaves the pend alone, or a roll-forward took
                // it over) changes nothing here.
                let _: i64 =
                    self.confirm_rotation.key(&pend_key).arg(&new_pend).invoke_async(&mut conn.c).await.map_err(
                        |e| {
                            // Not confirmed: the retry rolls this attempt forward.
                            conn.fail(e)
                        },
                    )?;
                Ok(if outcome == "sibling" { Rotate::Sibling(grant) } else { Rotate::Rotated(grant) })
            }
            Some("reused") => {
                let revoked = accesses(&reply[1..]);
                self.revoke_each(&mut conn, &revoked).await?;
                Ok(Rotate::Reused { revoked })
            }
            Some("client_reset") => Ok(Rotate::ClientReset),
            _ => Ok(Rotate::Invalid),
        }
    }

    async fn add_access(&self, family: &str, access: IssuedAccess) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let outcome: String = self
            .add_access
            .key(self.fam_key(family, "fam"))
            .key(self.fam_key(family, "acc"))
            .arg(&access.jti)
            .arg(access.expires_at)
            .arg(now_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        if outcome == "revoked" {
            // Revoked while this token was being issued: it is born revoked.
            self.revoke_each(&mut conn, std::slice::from_ref(&access)).await?;
        }
        Ok(())
    }

    async fn revoke_family(&self, family: &str) -> Result<Vec<IssuedAccess>, StoreError> {
        let mut conn = self.conn().await?;
        let fam = self.fam_key(family, "fam");
        let reply: Vec<String> = self
            .revoke_family
            .key(&fam)
            .key(self.fam_key(family, "acc"))
            .arg(now_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &fam).await?;
        let revoked = accesses(&reply);
        self.revoke_each(&mut conn, &revoked).await?;
        Ok(revoked)
    }

    async fn revoke_access(&self, access: IssuedAccess) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.revoke_each(&mut conn, std::slice::from_ref(&access)).await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let found = conn.c.exists(self.key("rev", jti)).await.map_err(|e| conn.fail(e))?;
        self.down.answered();
        Ok(found)
    }

    /// `SET NX`: atomic on the server, so of two replicas presenting the same id one wins;
    /// then `WAIT` for `replica_acks` like codes, so a failover does not forget it.
    async fn first_use(&self, kind: OnceKind, id: Hash, expires_at: u64, now: u64) -> Result<bool, StoreError> {
        let ttl = expires_at.saturating_sub(now).max(1);
        let mut conn = self.conn().await?;
        let key = self.key(&format!("once:{}", kind.as_str()), &hex(&id));
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        // A jti lost with its primary would make the proof or assertion fresh again.
        if set.is_some() {
            self.replicated(&mut conn, &key).await?;
        }
        self.down.answered();
        Ok(set.is_some())
    }

    async fn put_session(&self, id: Hash, session: Session) -> Result<(), StoreError> {
        let ttl = session.expires_at.saturating_sub(now_secs()).max(1);
        let mut conn = self.conn().await?;
        conn.c.set_ex::<_, _, ()>(self.key("sess", &hex(&id)), encode(&session)?, ttl).await.map_err(|e| conn.fail(e))
    }

    async fn get_session(&self, id: Hash, now: u64) -> Result<Option<Session>, StoreError> {
        let mut conn = self.conn().await?;
        let v: Option<String> = conn.c.get(self.key("sess", &hex(&id))).await.map_err(|e| conn.fail(e))?;
        Ok(v.map(|v| decode::<Session>(&v)).transpose()?.filter(|s| s.expires_at > now))
    }

    /// Redis expires records itself.
    async fn sweep(&self, _now: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    async fn put_client_not_before(&self, client_id: &str, at: u64) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        // Keep the latest: replicas applying the same reload write nearly the same time.
        // Every replica (this one too) hears the notice and reads the stored maxima back.
        let script = Script::new(
            "local v = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0 \
             if tonumber(ARGV[2]) > v then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end \
             redis.call('PUBLISH', ARGV[3], 'clientnb') return 1",
        );
        let _: i64 = script
            .key(format!("{}clientnb", self.prefix))
            .arg(client_id)
            .arg(at)
            .arg(self.channel())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &format!("{}clientnb", self.prefix)).await
    }

    /// Read as text and parsed here: one bad value (a hand-edited record) is skipped and
    /// logged, instead of failing the whole read (a type error is not a connection failure,
    /// and must not keep the replica from ever loading the others).
    async fn client_not_before(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut conn = self.conn().await?;
        let all: Vec<(Vec<u8>, Vec<u8>)> =
            conn.c.hgetall(format!("{}clientnb", self.prefix)).await.map_err(|e| conn.fail(e))?;
        Ok(all
            .into_iter()
            .filter_map(|(id, at)| {
                let id = String::from_utf8(id).ok();
                let at = std::str::from_utf8(&at).ok().and_then(|a| a.parse::<u64>().ok());
                match (id, at) {
                    (Some(id), Some(at)) => Some((id, at)),
                    (id, _) => {
                        tracing::error!(
                            client_id = id.as_deref().unwrap_or("(not UTF-8)"),
                            "unreadable client not-before in Redis; skipped"
                        );
                        None
                    }
                }
            })
            .collect())
    }

    /// Stored and published in one script, so no replica can miss a block that is stored.
    async fn put_block(&self, block: Block) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let script = Script::new(
            "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) redis.call('PUBLISH', ARGV[3], ARGV[4]) return 1",
        );
        let _: i64 = script
            .key(format!("{}blocks", self.prefix))
            .arg(encode(&block.key)?)
            .arg(encode(&block)?)
            .arg(self.channel())
            .arg(format!("block {}", encode(&block)?))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        // A block lost with its primary would silently unblock.
        self.replicated(&mut conn, &format!("{}blocks", self.prefix)).await
    }

    async fn delete_block(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let script = Script::new(
            "local n = redis.call('HDEL', KEYS[1], ARGV[1]) \
             if n > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end return n",
        );
        let removed: i64 = script
            .key(format!("{}blocks", self.prefix))
            .arg(encode(key)?)
            .arg(self.channel())
            .arg(format!("unblock {}", encode(key)?))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        self.replicated(&mut conn, &format!("{}blocks", self.prefix)).await?;
        Ok(removed > 0)
    }

    async fn blocks(&self, now: u64) -> Result<Vec<Block>, StoreError> {
        let mut conn = self.conn().await?;
        let key = format!("{}blocks", self.prefix);
        let all: std::collections::HashMap<String, String> = conn.c.hgetall(&key).await.map_err(|e| conn.fail(e))?;
        let mut out = Vec::new();
        let mut lapsed = Vec::new();
        for (field, v) in all {
            // An unreadable block fails the load: silently dropping it would unblock.
            let block: Block = decode(&v)?;
            if block.live(now) {
                out.push(block);
            } else {
                lapsed.push(field);
            }
        }
        if !lapsed.is_empty() {
            // Only lapsed ones, which nobody enforces any more; a failure here changes nothing.
            let _: Result<i64, _> = conn.c.hdel(&key, lapsed).await;
        }
        Ok(out)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn check_config(&self) -> Result<(), StoreError> {
        RedisStore::check_config(self).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn.c).await.map_err(|e| conn.fail(e))?;
        self.down.answered();
        Ok(())
    }
}
