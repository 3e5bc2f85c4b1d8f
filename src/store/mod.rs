//! Durable grant state: authorization codes, refresh tokens (in rotation families),
//! revoked access tokens, operator blocks and login sessions. Two implementations share this trait: the
//! embedded redb file (default) and Redis (for replicas). The operations that must be
//! atomic — take a code once, rotate a refresh token once — are single trait methods, so
//! each implementation makes them atomic in its own way.
//!
//! Secrets are never stored: codes, refresh tokens and session ids are keyed by SHA-256.

pub mod embedded;
pub mod redis;
pub mod redis_limits;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A store key: the SHA-256 of an opaque secret.
pub type Hash = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The storage under the store failed (a full disk, a file-size limit): the embedded
    /// store's handle is unusable until it is reopened, which it does by itself.
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
}

/// What an authorization code stands for, bound at /authorize (RFC 6749 §4.1.2, RFC 7636).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the authorization request named the redirect_uri (then the token request must too).
    pub redirect_uri_given: bool,
    pub scopes: Vec<String>,
    pub user: String,
    /// S256 challenge; `None` only for confidential clients that did not use PKCE.
    pub code_challenge: Option<String>,
    pub expires_at: u64,
    /// The audience asked for with `resource` (RFC 8707); `None`: the default. Absent
    /// in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// When the code was issued (after the client's not-before, as tokens are): a client
    /// reset since voids it like the tokens it held (issue 19.8). 0 in records written
    /// before it existed: such a code (60 s at most) is void only if its client was reset.
    #[serde(default)]
    pub issued_at: u64,
}

/// An access token that was issued from a grant, so it can be revoked with it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedAccess {
    pub jti: String,
    pub expires_at: u64,
}

/// The outcome of presenting an authorization code.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeCode {
    /// First use: the grant, now consumed and recorded under the given family.
    Taken(CodeGrant),
    /// Second use: everything issued from the first use was revoked (RFC 6749 §4.1.2).
    Replayed { revoked: Vec<IssuedAccess> },
    /// Never issued, or expired and swept.
    Unknown,
}

/// A refresh token's grant. Rotation keeps `family` and `scopes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshGrant {
    pub family: String,
    pub client_id: String,
    pub subject: String,
    /// The resource owner, when there is one (password / authorization_code).
    pub user: Option<String>,
    /// The scopes originally granted; a refresh may narrow, never widen.
    pub scopes: Vec<String>,
    pub expires_at: u64,
    /// The audience the original grant was bound to (RFC 8707); `None`: the default.
    /// Rotation keeps it; a refresh may only ask for it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// When this refresh token was issued (0 in records older than the field): one issued
    /// before its client's not-before (disabled, or secret rotated) is refused.
    #[serde(default)]
    pub issued_at: u64,
    /// The key a public client's refresh token is bound to (RFC 8705 §4, RFC 9449 §5):
    /// a refresh must prove possession of it. Rotation keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<crate::tokens::binding::Binding>,
}

/// A refresh token as stored: its grant, and whether it was already rotated away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefresh {
    pub grant: RefreshGrant,
    /// Spent by a rotation: presenting it again is reuse (and revokes the family).
    pub spent: bool,
}

/// How many siblings one spent refresh token may get within the reuse interval: enough for
/// two threads racing and a retry after a lost answer; one more presentation is treated as
/// reuse (the family is revoked), so a stolen token raced against its owner cannot mint
/// refresh tokens without bound.
pub const MAX_SIBLINGS: u32 = 3;

/// What a rotation stores in place of the presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The new refresh token (its hash).
    pub new: Hash,
    pub new_expires_at: u64,
    /// The access token issued with it, linked to the family.
    pub access: IssuedAccess,
    /// Seconds after its rotation during which a spent token gets a sibling instead of
    /// revoking its family (concurrent or retried refreshes); 0: strict.
    pub reuse_interval: u64,
}

/// The outcome of presenting a refresh token for rotation.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotate {
    /// The presented token is now spent; the new one is stored in its place.
    Rotated(RefreshGrant),
    /// The presented token was spent less than the reuse interval ago: the new one is a
    /// sibling in the same family (the successor issued first stays valid too).
    Sibling(RefreshGrant),
    /// The presented token was already rotated: the whole family is now revoked.
    Reused { revoked: Vec<IssuedAccess> },
    /// Issued at or before its client's not-before as the store holds it (disabled or
    /// secret rotated on any replica): nothing was changed; the caller revokes the family.
    ClientReset,
    /// Unknown, expired, revoked, or belonging to another client.
    Invalid,
}

/// What an operator block names (issue 16.5): every token with this `jti`, or every
/// token for this `sub`, of one issuer or (`iss: None`) of any issuer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    Jti,
    Sub,
}

impl BlockKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockKind::Jti => "jti",
            BlockKind::Sub => "sub",
        }
    }
}

/// Which tokens a block stops; at most one block exists per key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub kind: BlockKind,
    /// The `jti` or `sub`, compared byte for byte.
    pub value: String,
    /// The issuer the block is scoped to (exact `iss`); `None`: every issuer.
    #[serde(default)]
    pub iss: Option<String>,
}

/// An operator block, as stored and as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Block {
    #[serde(flatten)]
    pub key: BlockKey,
    /// Unix time it lapses; `None`: until it is removed.
    pub expires_at: Option<u64>,
    pub created_at: u64,
    /// The operator's note (a ticket, an incident), for the list.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Block {
    /// In force at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

/// What another replica told us through the shared store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationEvent {
    /// This access token was revoked somewhere: refuse it here too.
    Revoked(IssuedAccess),
    /// An operator block was added or replaced somewhere: apply it here too.
    Blocked(Block),
    /// An operator block was removed somewhere.
    Unblocked(BlockKey),
    /// The feed was interrupted and events may be lost: drop every cached verdict (and
    /// read the blocks and the client not-befores again).
    Resync,
    /// A replica recorded a client not-before: read them all again from the store.
    ClientResets,
}

/// What a one-time identifier (a `jti`) belongs to: each kind is remembered apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnceKind {
    /// A `private_key_jwt` client assertion (RFC 7523 §3 item 7), until its `exp`.
    ClientAssertion,
    /// A DPoP proof (RFC 9449 §11.1), for the proof's `iat` window.
    DpopProof,
}

impl OnceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OnceKind::ClientAssertion => "assertion",
            OnceKind::DpopProof => "dpop",
        }
    }
}

/// A logged-in browser session at /authorize.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub expires_at: u64,
}

/// How the store is doing: what `/readyz?verbose` and `portcullis_store_up` show. A
/// degraded store refuses what needs it (grants, revocation, logins: 503
/// `temporarily_unavailable`); the proxy path keeps serving, so readiness does not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Why, for a human: the store error as logged (no secret is ever part of one).
    Degraded(String),
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Remember a freshly issued authorization code.
    async fn put_code(&self, code: Hash, grant: CodeGrant) -> Result<(), StoreError>;

    /// Consume a code exactly once. The first taker gets the grant and the code is
    /// recorded as used by `family`; any later taker revokes that family.
    async fn take_code(&self, code: Hash, family: &str, now: u64) -> Result<TakeCode, StoreError>;

    /// Store a new refresh token (opening its family if new).
    async fn put_refresh(&self, token: Hash, grant: RefreshGrant) -> Result<(), StoreError>;

    /// Look a refresh token up without changing anything (for pre-checks). A spent token
    /// is still returned (its reuse is detected by `rotate_refresh`); an expired one or one
    /// of a revoked family is not.
    async fn get_refresh(&self, token: Hash, now: u64) -> Result<Option<StoredRefresh>, StoreError>;

    /// Rotate exactly once: if `old` is live and belongs to `client_id`, spend it (noting
    /// when), store `next.new` in the same family and link `next.access` to the family —
    /// all in one atomic step, so a failure leaves the old token usable. A spent `old`
    /// gets a sibling the same way while it was spent at most `next.reuse_interval`
    /// seconds ago (at most [`MAX_SIBLINGS`] times), and revokes the family after that. A token issued at or before the
    /// client's stored not-before is `ClientReset`, judged in the same atomic step, so a
    /// replica that has not yet heard of the reset cannot rotate it into a fresh token.
    async fn rotate_refresh(&self, old: Hash, client_id: &str, next: Rotation, now: u64) -> Result<Rotate, StoreError>;

    /// Link an access token to a family so revoking the family revokes it.
    async fn add_access(&self, family: &str, access: IssuedAccess) -> Result<(), StoreError>;

    /// Revoke a family: its refresh tokens stop working and its access tokens are revoked.
    async fn revoke_family(&self, family: &str) -> Result<Vec<IssuedAccess>, StoreError>;

    /// Revoke one access token until it would have expired anyway.
    async fn revoke_access(&self, access: IssuedAccess) -> Result<(), StoreError>;

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError>;

    async fn put_session(&self, id: Hash, session: Session) -> Result<(), StoreError>;
    async fn get_session(&self, id: Hash, now: u64) -> Result<Option<Session>, StoreError>;

    /// Record a one-time identifier (the SHA-256 of the issuer and `jti`) until
    /// `expires_at`: true when it was not seen before (first use), false for a replay.
    /// Atomic: of two replicas racing with the same id, exactly one gets true.
    async fn first_use(&self, kind: OnceKind, id: Hash, expires_at: u64, now: u64) -> Result<bool, StoreError>;

    /// Remove expired records; returns how many.
    async fn sweep(&self, now: u64) -> Result<u64, StoreError>;

    /// Record that `client_id`'s tokens issued at or before `at` are void (the client was
    /// disabled or removed, or its secret rotated): kept as the latest such time.
    async fn put_client_not_before(&self, client_id: &str, at: u64) -> Result<(), StoreError>;

    /// Every client's not-before, for a start (a restart must not revive those tokens).
    async fn client_not_before(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Add or replace an operator block, durably, and announce it to the other replicas
    /// (as a [`RevocationEvent::Blocked`]) where the store is shared.
    async fn put_block(&self, block: Block) -> Result<(), StoreError>;

    /// Remove a block (announced as [`RevocationEvent::Unblocked`]); false when there was none.
    async fn delete_block(&self, key: &BlockKey) -> Result<bool, StoreError>;

    /// Every block in force at `now`: at start, after a feed interruption, and for the list.
    async fn blocks(&self, now: u64) -> Result<Vec<Block>, StoreError>;

    /// Is the store reachable and usable right now (for readiness)? A store that heals
    /// itself may try to here.
    async fn ping(&self) -> Result<(), StoreError>;

    /// At start, before serving: refuse a store whose configuration cannot work (a wrong
    /// password, a node not in cluster mode, an untrusted certificate, no such master).
    /// An unreachable store is not refused here: it recovers by itself.
    async fn check_config(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Health now, from `ping`.
    async fn health(&self) -> Health {
        match self.ping().await {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Degraded(e.to_string()),
        }
    }

    /// The implementation's name, the `store` label of the health metrics.
    fn kind(&self) -> &'static str {
        "other"
    }

    /// How often the store reopened itself after a failure (0 for stores that never need to).
    fn reopens(&self) -> u64 {
        0
    }
}
