//! The shared store for several gateway replicas: Redis. Records expire with Redis TTLs;
//! the operations that must be atomic are Lua scripts (a script runs alone on the server),
//! and every revocation is published on a channel so each replica evicts its cache.
//!
//! Layout under the key prefix `P`:
//! `P code:<hex>`  "F"+grant JSON (fresh) or "U"+family (used)       TTL: code lifetime / replay memory
//! `P rt:<hex>`    "A"/"S" (active/spent) + grant JSON               TTL: refresh lifetime
//! `P rtat:<hex>`  unix time the refresh token was spent             TTL: as its `rt:`
//! `P fam:<id>`    hash {revoked}                                    TTL: longest member
//! `P famacc:<id>` hash jti → exp of access tokens from the family   TTL: longest member
//! `P rev:<jti>`   exp of a revoked access token                     TTL: until it expires
//! `P sess:<hex>`  session JSON                                      TTL: session lifetime
//! `P clientnb`    hash client id → not-before (unix time)            no TTL
//! `P blocks`      hash block key JSON → block JSON                   no TTL (lapsed ones pruned on read)
//! `P once:<kind>:<hex>` "1": a client assertion's or DPoP proof's jti  TTL: until it may be forgotten
//! channel `P revocations`: "<jti> <exp>" per revoked access token, "block <block JSON>" and
//! "unblock <block key JSON>" per operator block (issue 16.5), and the heartbeat.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio::sync::{RwLock, mpsc};

use super::{
    Block, BlockKey, CodeGrant, Hash, IssuedAccess, OnceKind, RefreshGrant, RevocationEvent, Rotate, Rotation, Session,
    Store, StoreError, StoredRefresh, TakeCode,
};
use crate::tokens::now_secs;

/// How long a used code is remembered so that a replay can be detected and punished.
const USED_CODE_MEMORY_SECS: u64 = 600;

/// Revoke a family (KEYS[1]=fam, KEYS[2]=famacc; ARGV[1]=prefix, ARGV[2]=now, ARGV[3]=min ttl).
/// Returns the revoked access tokens as a flat list jti, exp, jti, exp...
const REVOKE_FAMILY_LUA: &str = r#"
local function revoke_family(fam, famacc, prefix, now, minttl)
  redis.call('HSET', fam, 'revoked', '1')
  if redis.call('TTL', fam) < minttl then redis.call('EXPIRE', fam, minttl) end
  local all = redis.call('HGETALL', famacc)
  local out = {}
  for i = 1, #all, 2 do
    local jti, exp = all[i], tonumber(all[i + 1])
    if exp > now then
      redis.call('SET', prefix .. 'rev:' .. jti, tostring(exp), 'EX', exp - now + 5)
      redis.call('PUBLISH', prefix .. 'revocations', jti .. ' ' .. tostring(exp))
      table.insert(out, jti)
      table.insert(out, tostring(exp))
    end
  end
  redis.call('DEL', famacc)
  return out
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{REVOKE_FAMILY_LUA}\n{body}"))
}

/// The shared connection; a failure through it (other than a timeout) discards it, so the
/// next use reconnects from scratch instead of trusting a manager whose connection may be
/// dead for good (the replica tests restart Redis under it).
struct Conn<'a> {
    c: ConnectionManager,
    slot: &'a RwLock<Option<ConnectionManager>>,
    down: &'a Outage,
}

impl Conn<'_> {
    fn fail(&self, e: redis::RedisError) -> StoreError {
        if !e.is_timeout()
            && let Ok(mut w) = self.slot.try_write()
        {
            *w = None;
        }
        self.down.failed(unavailable(e))
    }
}

/// Whether Redis is failing, so an outage is logged once when it starts and once when it
/// ends, not once per refused request.
#[derive(Default)]
struct Outage(std::sync::atomic::AtomicBool);

impl Outage {
    fn failed(&self, e: StoreError) -> StoreError {
        use std::sync::atomic::Ordering;
        if !self.0.load(Ordering::Acquire) && !self.0.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "Redis store unavailable; grants, revocation and logins answer 503 until it answers");
        }
        e
    }

    fn answered(&self) {
        use std::sync::atomic::Ordering;
        if self.0.load(Ordering::Acquire) && self.0.swap(false, Ordering::AcqRel) {
            tracing::warn!("Redis store answering again");
        }
    }
}

pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    prefix: String,
    /// One multiplexed connection, not a pool: every command here is a short request or a
    /// Lua script (no blocking command that would hold a connection), a multiplexed
    /// connection pipelines concurrent requests, Redis runs them one at a time anyway, and
    /// pub/sub has its own connection (`spawn_listener`).
    conn: RwLock<Option<ConnectionManager>>,
    down: Outage,
    take_code: Script,
    put_refresh: Script,
    rotate: Script,
    add_access: Script,
    revoke_family: Script,
    revoke_access: Script,
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

impl RedisStore {
    /// Prepare the store; the connection is made on first use and re-made after failures,
    /// so the gateway starts (not ready) while Redis is down and recovers by itself.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            client,
            config,
            prefix: prefix.to_string(),
            conn: RwLock::new(None),
            down: Outage::default(),
            take_code: script(
                r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'unknown'} end
local now, prefix, family = tonumber(ARGV[2]), ARGV[1], ARGV[3]
local kind, rest = string.sub(v, 1, 1), string.sub(v, 2)
if kind == 'F' then
  local g = cjson.decode(rest)
  if tonumber(g.expires_at) <= now then redis.call('DEL', KEYS[1]); return {'unknown'} end
  local memory = tonumber(ARGV[4])
  redis.call('SET', KEYS[1], 'U' .. family, 'EX', memory)
  local fam = prefix .. 'fam:' .. family
  redis.call('HSETNX', fam, 'revoked', '0')
  if redis.call('TTL', fam) < memory then redis.call('EXPIRE', fam, memory) end
  return {'taken', rest}
end
local out = revoke_family(prefix .. 'fam:' .. rest, prefix .. 'famacc:' .. rest, prefix, now, tonumber(ARGV[4]))
table.insert(out, 1, 'replayed')
return out
"#,
            ),
            put_refresh: script(
                r#"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], 'A' .. ARGV[1], 'EX', ttl)
redis.call('HSETNX', KEYS[2], 'revoked', '0')
if redis.call('TTL', KEYS[2]) < ttl then redis.call('EXPIRE', KEYS[2], ttl) end
return 'ok'
"#,
            ),
            // KEYS: old rt, new rt, fam, famacc, old rtat, clientnb, old rtsib; ARGV: prefix,
            // now, client_id, expected grant json, new grant json, new ttl, access jti,
            // access exp, reuse interval, max siblings
            rotate: script(
                r#"
local v = redis.call('GET', KEYS[1])
if not v then return {'invalid'} end
local kind, gj = string.sub(v, 1, 1), string.sub(v, 2)
if gj ~= ARGV[4] then return {'invalid'} end
local g = cjson.decode(gj)
local now = tonumber(ARGV[2])
if redis.call('HGET', KEYS[3], 'revoked') == '1' then return {'invalid'} end
if tonumber(g.expires_at) <= now or g.client_id ~= ARGV[3] then return {'invalid'} end
local nb = redis.call('HGET', KEYS[6], ARGV[3])
if nb then
  local issued = tonumber(g.issued_at) or 0
  local at = tonumber(nb)
  -- An unreadable not-before fails closed.
  if not at or issued <= at then return {'client_reset'} end
end
local outcome = 'rotated'
-- The reuse interval runs on Redis's clock: one clock for every replica, whatever theirs say.
local clock = tonumber(redis.call('TIME')[1])
if kind == 'S' then
  local at, grace = tonumber(redis.call('GET', KEYS[5]) or ''), tonumber(ARGV[9])
  local siblings = tonumber(redis.call('GET', KEYS[7]) or '0') or 0
  if grace <= 0 or not at or clock - at > grace or siblings >= tonumber(ARGV[10]) then
    local out = revoke_family(KEYS[3], KEYS[4], ARGV[1], now, 600)
    table.insert(out, 1, 'reused')
    return out
  end
  redis.call('INCR', KEYS[7])
  local left = redis.call('TTL', KEYS[1])
  if left > 0 then redis.call('EXPIRE', KEYS[7], left) end
  outcome = 'sibling'
else
  redis.call('SET', KEYS[1], 'S' .. gj, 'KEEPTTL')
  local left = redis.call('TTL', KEYS[1])
  if left > 0 then redis.call('SET', KEYS[5], tostring(clock), 'EX', left) end
end
local ttl = tonumber(ARGV[6])
redis.call('SET', KEYS[2], 'A' .. ARGV[5], 'EX', ttl)
if redis.call('TTL', KEYS[3]) < ttl then redis.call('EXPIRE', KEYS[3], ttl) end
local aexp = tonumber(ARGV[8])
if aexp > now then
  redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
  if redis.call('TTL', KEYS[4]) < aexp - now then redis.call('EXPIRE', KEYS[4], aexp - now) end
end
return {outcome}
"#,
            ),
            // KEYS: fam, famacc; ARGV: prefix, jti, exp, now
            add_access: script(
                r#"
local exp, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if exp <= now then return 'expired' end
if redis.call('HGET', KEYS[1], 'revoked') == '1' then
  redis.call('SET', ARGV[1] .. 'rev:' .. ARGV[2], ARGV[3], 'EX', exp - now + 5)
  redis.call('PUBLISH', ARGV[1] .. 'revocations', ARGV[2] .. ' ' .. ARGV[3])
  return 'revoked'
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if redis.call('TTL', KEYS[2]) < exp - now then redis.call('EXPIRE', KEYS[2], exp - now) end
return 'ok'
"#,
            ),
            revoke_family: script("return revoke_family(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), 600)"),
            revoke_access: script(
                r#"
local exp, now = tonumber(ARGV[3]), tonumber(ARGV[4])
if exp <= now then return 'expired' end
redis.call('SET', ARGV[1] .. 'rev:' .. ARGV[2], ARGV[3], 'EX', exp - now + 5)
redis.call('PUBLISH', ARGV[1] .. 'revocations', ARGV[2] .. ' ' .. ARGV[3])
return 'ok'
"#,
            ),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
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
        let c = self
            .client
            .get_connection_manager_with_config(self.config.clone())
            .await
            .map_err(|e| down.failed(unavailable(e)))?;
        *w = Some(c.clone());
        Ok(Conn { c, slot, down })
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
        let channel = format!("{}revocations", self.prefix);
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
                    let mut pubsub = this.client.get_async_pubsub().await?;
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
        let reply: Vec<String> = self
            .take_code
            .key(self.key("code", &hex(&code)))
            .arg(&self.prefix)
            .arg(now)
            .arg(family)
            .arg(USED_CODE_MEMORY_SECS)
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        match reply.first().map(String::as_str) {
            Some("taken") => Ok(TakeCode::Taken(decode(reply.get(1).map(String::as_str).unwrap_or(""))?)),
            Some("replayed") => Ok(TakeCode::Replayed { revoked: accesses(&reply[1..]) }),
            _ => Ok(TakeCode::Unknown),
        }
    }

    async fn put_refresh(&self, token: Hash, grant: RefreshGrant) -> Result<(), StoreError> {
        let ttl = grant.expires_at.saturating_sub(now_secs()).max(1);
        let fam = self.key("fam", &grant.family);
        let mut conn = self.conn().await?;
        let _: String = self
            .put_refresh
            .key(self.key("rt", &hex(&token)))
            .key(fam)
            .arg(encode(&grant)?)
            .arg(ttl)
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(())
    }

    async fn get_refresh(&self, token: Hash, now: u64) -> Result<Option<StoredRefresh>, StoreError> {
        let mut conn = self.conn().await?;
        let v: Option<String> = conn.c.get(self.key("rt", &hex(&token))).await.map_err(|e| conn.fail(e))?;
        let Some(v) = v else { return Ok(None) };
        let spent = v.starts_with('S');
        let grant: RefreshGrant = decode(v.get(1..).unwrap_or(""))?;
        if grant.expires_at <= now {
            return Ok(None);
        }
        let revoked: Option<String> =
            conn.c.hget(self.key("fam", &grant.family), "revoked").await.map_err(|e| conn.fail(e))?;
        Ok((revoked.as_deref() != Some("1")).then_some(StoredRefresh { grant, spent }))
    }

    async fn rotate_refresh(&self, old: Hash, client_id: &str, next: Rotation, now: u64) -> Result<Rotate, StoreError> {
        let mut conn = self.conn().await?;
        let old_key = self.key("rt", &hex(&old));
        let v: Option<String> = conn.c.get(&old_key).await.map_err(|e| conn.fail(e))?;
        let Some(v) = v else { return Ok(Rotate::Invalid) };
        let expected = v.get(1..).unwrap_or("").to_string();
        let grant: RefreshGrant = decode(&expected)?;
        let mut successor = grant.clone();
        successor.expires_at = next.new_expires_at;
        successor.issued_at = now;
        let reply: Vec<String> = self
            .rotate
            .key(&old_key)
            .key(self.key("rt", &hex(&next.new)))
            .key(self.key("fam", &grant.family))
            .key(self.key("famacc", &grant.family))
            .key(self.key("rtat", &hex(&old)))
            .key(format!("{}clientnb", self.prefix))
            .key(self.key("rtsib", &hex(&old)))
            .arg(&self.prefix)
            .arg(now)
            .arg(client_id)
            .arg(&expected)
            .arg(encode(&successor)?)
            .arg(next.new_expires_at.saturating_sub(now).max(1))
            .arg(&next.access.jti)
            .arg(next.access.expires_at)
            .arg(next.reuse_interval)
            .arg(crate::store::MAX_SIBLINGS)
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        match reply.first().map(String::as_str) {
            Some("rotated") => Ok(Rotate::Rotated(grant)),
            Some("sibling") => Ok(Rotate::Sibling(grant)),
            Some("reused") => Ok(Rotate::Reused { revoked: accesses(&reply[1..]) }),
            Some("client_reset") => Ok(Rotate::ClientReset),
            _ => Ok(Rotate::Invalid),
        }
    }

    async fn add_access(&self, family: &str, access: IssuedAccess) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String = self
            .add_access
            .key(self.key("fam", family))
            .key(self.key("famacc", family))
            .arg(&self.prefix)
            .arg(&access.jti)
            .arg(access.expires_at)
            .arg(now_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(())
    }

    async fn revoke_family(&self, family: &str) -> Result<Vec<IssuedAccess>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<String> = self
            .revoke_family
            .key(self.key("fam", family))
            .key(self.key("famacc", family))
            .arg(&self.prefix)
            .arg(now_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(accesses(&reply))
    }

    async fn revoke_access(&self, access: IssuedAccess) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let _: String = self
            .revoke_access
            .arg(&self.prefix)
            .arg(&access.jti)
            .arg(access.expires_at)
            .arg(now_secs())
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let found = conn.c.exists(self.key("rev", jti)).await.map_err(|e| conn.fail(e))?;
        self.down.answered();
        Ok(found)
    }

    /// `SET NX`: atomic on the server, so of two replicas presenting the same id one wins.
    async fn first_use(&self, kind: OnceKind, id: Hash, expires_at: u64, now: u64) -> Result<bool, StoreError> {
        let ttl = expires_at.saturating_sub(now).max(1);
        let mut conn = self.conn().await?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("once:{}", kind.as_str()), &hex(&id)))
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(ttl)
            .query_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
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
            .arg(format!("{}revocations", self.prefix))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(())
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
            .arg(format!("{}revocations", self.prefix))
            .arg(format!("block {}", encode(&block)?))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
        Ok(())
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
            .arg(format!("{}revocations", self.prefix))
            .arg(format!("unblock {}", encode(key)?))
            .invoke_async(&mut conn.c)
            .await
            .map_err(|e| conn.fail(e))?;
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

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING").query_async::<String>(&mut conn.c).await.map_err(|e| conn.fail(e))?;
        self.down.answered();
        Ok(())
    }
}
