//! The default store: one redb file. Every mutation is one write transaction, committed
//! durably before we answer, so `kill -9` loses nothing that a client was told about.
//! redb serialises write transactions, which makes take-once and rotate-once atomic.
//!
//! The configured path must keep naming the file we opened: if it is deleted or replaced
//! while we run, writes would land in an unlinked inode and vanish at the next start
//! (revoked tokens working again). So the path's device and inode are compared with the
//! open file's — at most once a second — before every write and on the readiness probe;
//! on a mismatch writes fail as unavailable (503 `temporarily_unavailable`) and `/readyz`
//! answers 503 until the file is back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    CodeGrant, Hash, IssuedAccess, RefreshGrant, Rotate, Rotation, Session, Store, StoreError, StoredRefresh, TakeCode,
};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
const CODES: Table = TableDefinition::new("codes");
const REFRESH: Table = TableDefinition::new("refresh_tokens");
const FAMILIES: Table = TableDefinition::new("families");
const REVOKED: Table = TableDefinition::new("revoked_access");
const SESSIONS: Table = TableDefinition::new("sessions");
/// client id → unix time at or before which its tokens are void (never swept: one small
/// record per client ever disabled).
const CLIENT_NOT_BEFORE: Table = TableDefinition::new("client_not_before");

/// How long a used code is remembered so that a replay can be detected and punished.
const USED_CODE_MEMORY_SECS: u64 = 600;

#[derive(Serialize, Deserialize)]
enum CodeState {
    Fresh(CodeGrant),
    Used { family: String, expires_at: u64 },
}

#[derive(Serialize, Deserialize)]
struct RefreshState {
    grant: RefreshGrant,
    spent: bool,
    /// When it was spent; absent in records written before the reuse interval existed
    /// (then any reuse is treated strictly).
    #[serde(default)]
    spent_at: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct Family {
    revoked: bool,
    expires_at: u64,
    access: Vec<IssuedAccess>,
}

pub struct EmbeddedStore {
    db: Arc<Database>,
    file: FileIdentity,
}

/// How often the store path is checked against the open file, at most.
const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Which file the database was opened on, and whether the path still names it.
struct FileIdentity {
    path: PathBuf,
    /// (device, inode) of the file opened at start.
    id: (u64, u64),
    start: Instant,
    /// Milliseconds after `start` of the last check, plus one (0: never checked).
    checked_at: AtomicU64,
    intact: AtomicBool,
}

impl FileIdentity {
    fn of(path: &Path) -> Option<(u64, u64)> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
        }
        #[cfg(not(unix))]
        {
            std::fs::metadata(path).ok().map(|_| (0, 0))
        }
    }

    fn new(path: &Path) -> Result<FileIdentity, StoreError> {
        let id =
            Self::of(path).ok_or_else(|| unavailable(format!("{}: cannot stat the store file", path.display())))?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            id,
            start: Instant::now(),
            checked_at: AtomicU64::new(0),
            intact: AtomicBool::new(true),
        })
    }

    /// Does the configured path still name the open file? Cached for a second.
    fn check(&self) -> Result<(), StoreError> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX).saturating_add(1);
        let last = self.checked_at.load(Ordering::Acquire);
        let fresh = last != 0 && now.saturating_sub(last) < FILE_CHECK_INTERVAL.as_millis() as u64;
        let intact = if fresh {
            self.intact.load(Ordering::Acquire)
        } else {
            let intact = Self::of(&self.path) == Some(self.id);
            let was = self.intact.swap(intact, Ordering::AcqRel);
            self.checked_at.store(now, Ordering::Release);
            if was && !intact {
                tracing::error!(
                    path = %self.path.display(),
                    "the store file was removed or replaced while in use; refusing writes until it is back (restore it or restart)"
                );
            } else if !was && intact {
                tracing::warn!(path = %self.path.display(), "the store file is back; accepting writes again");
            }
            intact
        };
        if intact {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!("{}: store file removed or replaced", self.path.display())))
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn now_secs() -> u64 {
    crate::tokens::now_secs()
}

/// Read one record inside a write transaction.
fn get<T: DeserializeOwned>(txn: &WriteTransaction, table: Table, key: &[u8]) -> Result<Option<T>, StoreError> {
    let t = txn.open_table(table).map_err(unavailable)?;
    let bytes = t.get(key).map_err(unavailable)?.map(|g| g.value().to_vec());
    bytes.map(|b| decode(&b)).transpose()
}

fn put<T: Serialize>(txn: &WriteTransaction, table: Table, key: &[u8], value: &T) -> Result<(), StoreError> {
    let mut t = txn.open_table(table).map_err(unavailable)?;
    t.insert(key, encode(value)?.as_slice()).map_err(unavailable)?;
    Ok(())
}

/// Mark a family revoked and its access tokens revoked, inside `txn`.
fn revoke_family_in(txn: &WriteTransaction, family: &str) -> Result<Vec<IssuedAccess>, StoreError> {
    let mut fam: Family = get(txn, FAMILIES, family.as_bytes())?.unwrap_or_default();
    fam.revoked = true;
    fam.expires_at = fam.expires_at.max(now_secs() + USED_CODE_MEMORY_SECS);
    let revoked = std::mem::take(&mut fam.access);
    put(txn, FAMILIES, family.as_bytes(), &fam)?;
    for a in &revoked {
        put(txn, REVOKED, a.jti.as_bytes(), &a.expires_at)?;
    }
    Ok(revoked)
}

/// Open (or extend) a family so that it lives at least until `expires_at`.
fn open_family_in(txn: &WriteTransaction, family: &str, expires_at: u64) -> Result<(), StoreError> {
    let mut fam: Family = get(txn, FAMILIES, family.as_bytes())?.unwrap_or_default();
    fam.expires_at = fam.expires_at.max(expires_at);
    put(txn, FAMILIES, family.as_bytes(), &fam)
}

impl EmbeddedStore {
    /// Open or create the store file (and its directory).
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let existed = path.exists();
        let db = Database::create(path).map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        if !existed {
            // The README promises it: the first start says where the grant state went.
            tracing::info!(path = %path.display(), "created the store file");
        }
        // Create every table up front so that readers never see a missing table.
        let txn = db.begin_write().map_err(unavailable)?;
        for table in [CODES, REFRESH, FAMILIES, REVOKED, SESSIONS, CLIENT_NOT_BEFORE] {
            txn.open_table(table).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let file = FileIdentity::new(path)?;
        Ok(EmbeddedStore { db: Arc::new(db), file })
    }

    /// Run one write transaction on the blocking pool (commits fsync) and commit it.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        // Refuse rather than write into a file nobody will open again.
        self.file.check()?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(unavailable)?;
            let out = f(&txn)?;
            txn.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }

    async fn read<T, F>(&self, table: Table, key: Vec<u8>, f: F) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&[u8]) -> Result<Option<T>, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(table).map_err(unavailable)?;
            let bytes = t.get(key.as_slice()).map_err(unavailable)?.map(|g| g.value().to_vec());
            match bytes {
                Some(b) => f(&b),
                None => Ok(None),
            }
        })
        .await
        .map_err(unavailable)?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn put_code(&self, code: Hash, grant: CodeGrant) -> Result<(), StoreError> {
        self.write(move |txn| put(txn, CODES, &code, &CodeState::Fresh(grant))).await
    }

    async fn take_code(&self, code: Hash, family: &str, now: u64) -> Result<TakeCode, StoreError> {
        let family = family.to_string();
        self.write(move |txn| match get::<CodeState>(txn, CODES, &code)? {
            None => Ok(TakeCode::Unknown),
            Some(CodeState::Fresh(grant)) if grant.expires_at <= now => {
                txn.open_table(CODES).map_err(unavailable)?.remove(code.as_slice()).map_err(unavailable)?;
                Ok(TakeCode::Unknown)
            }
            Some(CodeState::Fresh(grant)) => {
                let expires_at = now + USED_CODE_MEMORY_SECS;
                put(txn, CODES, &code, &CodeState::Used { family: family.clone(), expires_at })?;
                open_family_in(txn, &family, expires_at)?;
                Ok(TakeCode::Taken(grant))
            }
            Some(CodeState::Used { family: used_by, .. }) => {
                Ok(TakeCode::Replayed { revoked: revoke_family_in(txn, &used_by)? })
            }
        })
        .await
    }

    async fn put_refresh(&self, token: Hash, grant: RefreshGrant) -> Result<(), StoreError> {
        self.write(move |txn| {
            open_family_in(txn, &grant.family, grant.expires_at)?;
            put(txn, REFRESH, &token, &RefreshState { grant, spent: false, spent_at: None })
        })
        .await
    }

    async fn get_refresh(&self, token: Hash, now: u64) -> Result<Option<StoredRefresh>, StoreError> {
        let db = self.db.clone();
        let state = self.read(REFRESH, token.to_vec(), |b| decode::<RefreshState>(b).map(Some)).await?;
        let Some(state) = state else { return Ok(None) };
        if state.grant.expires_at <= now {
            return Ok(None);
        }
        let family = state.grant.family.clone();
        let revoked = tokio::task::spawn_blocking(move || -> Result<bool, StoreError> {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(FAMILIES).map_err(unavailable)?;
            let fam = t.get(family.as_bytes()).map_err(unavailable)?.map(|g| g.value().to_vec());
            Ok(fam.map(|b| decode::<Family>(&b)).transpose()?.is_some_and(|f| f.revoked))
        })
        .await
        .map_err(unavailable)??;
        Ok((!revoked).then_some(StoredRefresh { grant: state.grant, spent: state.spent }))
    }

    async fn rotate_refresh(&self, old: Hash, client_id: &str, next: Rotation, now: u64) -> Result<Rotate, StoreError> {
        let client_id = client_id.to_string();
        self.write(move |txn| {
            let Some(mut state) = get::<RefreshState>(txn, REFRESH, &old)? else { return Ok(Rotate::Invalid) };
            let fam: Family = get(txn, FAMILIES, state.grant.family.as_bytes())?.unwrap_or_default();
            if fam.revoked || state.grant.expires_at <= now || state.grant.client_id != client_id {
                return Ok(Rotate::Invalid);
            }
            let sibling = state.spent;
            if sibling {
                let within = state.spent_at.is_some_and(|at| now.saturating_sub(at) <= next.reuse_interval);
                if next.reuse_interval == 0 || !within {
                    return Ok(Rotate::Reused { revoked: revoke_family_in(txn, &state.grant.family)? });
                }
            } else {
                state.spent = true;
                state.spent_at = Some(now);
                put(txn, REFRESH, &old, &state)?;
            }
            let mut successor = state.grant.clone();
            successor.expires_at = next.new_expires_at;
            successor.issued_at = now;
            let mut fam = fam;
            fam.access.retain(|a| a.expires_at > now);
            fam.expires_at = fam.expires_at.max(next.new_expires_at).max(next.access.expires_at);
            fam.access.push(next.access);
            put(txn, FAMILIES, successor.family.as_bytes(), &fam)?;
            put(txn, REFRESH, &next.new, &RefreshState { grant: successor, spent: false, spent_at: None })?;
            Ok(if sibling { Rotate::Sibling(state.grant) } else { Rotate::Rotated(state.grant) })
        })
        .await
    }

    async fn add_access(&self, family: &str, access: IssuedAccess) -> Result<(), StoreError> {
        let family = family.to_string();
        self.write(move |txn| {
            let mut fam: Family = get(txn, FAMILIES, family.as_bytes())?.unwrap_or_default();
            if fam.revoked {
                // Issued concurrently with a revocation: revoke it too.
                return put(txn, REVOKED, access.jti.as_bytes(), &access.expires_at);
            }
            let now = now_secs();
            fam.access.retain(|a| a.expires_at > now);
            fam.expires_at = fam.expires_at.max(access.expires_at);
            fam.access.push(access);
            put(txn, FAMILIES, family.as_bytes(), &fam)
        })
        .await
    }

    async fn revoke_family(&self, family: &str) -> Result<Vec<IssuedAccess>, StoreError> {
        let family = family.to_string();
        self.write(move |txn| revoke_family_in(txn, &family)).await
    }

    async fn revoke_access(&self, access: IssuedAccess) -> Result<(), StoreError> {
        self.write(move |txn| put(txn, REVOKED, access.jti.as_bytes(), &access.expires_at)).await
    }

    /// Asked on every validation-cache miss, so answered on the calling thread: a read
    /// transaction on redb's small, hot revocation table is in-memory work (readers never
    /// wait for a writer), and the hop to the blocking pool and back cost more than the read
    /// (two thread wake-ups, about a quarter of the CPU time of a miss).
    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let t = txn.open_table(REVOKED).map_err(unavailable)?;
        Ok(t.get(jti.as_bytes()).map_err(unavailable)?.is_some())
    }

    async fn put_session(&self, id: Hash, session: Session) -> Result<(), StoreError> {
        self.write(move |txn| put(txn, SESSIONS, &id, &session)).await
    }

    async fn get_session(&self, id: Hash, now: u64) -> Result<Option<Session>, StoreError> {
        let s = self.read(SESSIONS, id.to_vec(), |b| decode::<Session>(b).map(Some)).await?;
        Ok(s.filter(|s| s.expires_at > now))
    }

    async fn put_client_not_before(&self, client_id: &str, at: u64) -> Result<(), StoreError> {
        let client_id = client_id.to_string();
        self.write(move |txn| {
            let known: Option<u64> = get(txn, CLIENT_NOT_BEFORE, client_id.as_bytes())?;
            put(txn, CLIENT_NOT_BEFORE, client_id.as_bytes(), &known.unwrap_or(0).max(at))
        })
        .await
    }

    async fn client_not_before(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            let t = txn.open_table(CLIENT_NOT_BEFORE).map_err(unavailable)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(unavailable)? {
                let (k, v) = row.map_err(unavailable)?;
                let id = String::from_utf8(k.value().to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push((id, decode::<u64>(v.value())?));
            }
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.file.check()?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.begin_read().map(|_| ()).map_err(unavailable))
            .await
            .map_err(unavailable)?
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        self.write(move |txn| {
            let mut removed = 0u64;
            // Unreadable records are kept: deleting what we cannot parse could hide a bug.
            let mut sweep = |table: Table, expired: &dyn Fn(&[u8]) -> bool| -> Result<(), StoreError> {
                let mut t = txn.open_table(table).map_err(unavailable)?;
                let before = t.len().map_err(unavailable)?;
                t.retain(|_, v| !expired(v)).map_err(unavailable)?;
                removed += before - t.len().map_err(unavailable)?;
                Ok(())
            };
            sweep(CODES, &|v| match decode::<CodeState>(v) {
                Ok(CodeState::Fresh(g)) => g.expires_at <= now,
                Ok(CodeState::Used { expires_at, .. }) => expires_at <= now,
                Err(_) => false,
            })?;
            sweep(REFRESH, &|v| decode::<RefreshState>(v).is_ok_and(|s| s.grant.expires_at <= now))?;
            sweep(FAMILIES, &|v| decode::<Family>(v).is_ok_and(|f| f.expires_at <= now))?;
            sweep(REVOKED, &|v| decode::<u64>(v).is_ok_and(|exp| exp <= now))?;
            sweep(SESSIONS, &|v| decode::<Session>(v).is_ok_and(|s| s.expires_at <= now))?;
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(family: &str, exp: u64) -> RefreshGrant {
        RefreshGrant {
            family: family.into(),
            client_id: "c".into(),
            subject: "alice".into(),
            user: Some("alice".into()),
            scopes: vec!["read".into()],
            expires_at: exp,
            issued_at: 0,
        }
    }

    #[tokio::test]
    async fn code_is_taken_once_and_replay_revokes_the_family() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let code = CodeGrant {
            client_id: "c".into(),
            redirect_uri: "https://app/cb".into(),
            redirect_uri_given: true,
            scopes: vec![],
            user: "alice".into(),
            code_challenge: None,
            expires_at: 1060,
        };
        s.put_code([1; 32], code.clone()).await.unwrap();
        assert_eq!(s.take_code([1; 32], "f1", 1000).await.unwrap(), TakeCode::Taken(code));
        s.add_access("f1", IssuedAccess { jti: "j1".into(), expires_at: u64::MAX }).await.unwrap();
        s.put_refresh([2; 32], grant("f1", u64::MAX)).await.unwrap();
        let again = s.take_code([1; 32], "f2", 1001).await.unwrap();
        assert_eq!(
            again,
            TakeCode::Replayed { revoked: vec![IssuedAccess { jti: "j1".into(), expires_at: u64::MAX }] }
        );
        assert!(s.is_revoked("j1").await.unwrap());
        assert_eq!(s.get_refresh([2; 32], 1002).await.unwrap(), None, "family refresh tokens die with the replay");
        assert_eq!(s.take_code([9; 32], "f3", 1000).await.unwrap(), TakeCode::Unknown);
    }

    #[tokio::test]
    async fn expired_code_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let mut code = CodeGrant {
            client_id: "c".into(),
            redirect_uri: "x".into(),
            redirect_uri_given: false,
            scopes: vec![],
            user: "u".into(),
            code_challenge: None,
            expires_at: 100,
        };
        s.put_code([1; 32], code.clone()).await.unwrap();
        assert_eq!(s.take_code([1; 32], "f", 100).await.unwrap(), TakeCode::Unknown);
        code.expires_at = 200;
        s.put_code([1; 32], code).await.unwrap();
        assert!(matches!(s.take_code([1; 32], "f", 150).await.unwrap(), TakeCode::Taken(_)));
    }

    #[tokio::test]
    async fn refresh_rotates_once_and_reuse_revokes() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        s.put_refresh([1; 32], grant("f", 5000)).await.unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        let next =
            |new: u8, jti: &str| Rotation { new: [new; 32], new_expires_at: 6000, access: at(jti), reuse_interval: 0 };
        assert_eq!(s.rotate_refresh([1; 32], "other", next(2, "x"), 100).await.unwrap(), Rotate::Invalid);
        assert!(matches!(s.rotate_refresh([1; 32], "c", next(2, "j1"), 100).await.unwrap(), Rotate::Rotated(_)));
        let successor = s.get_refresh([2; 32], 100).await.unwrap().unwrap();
        assert_eq!((successor.grant.expires_at, successor.spent), (6000, false));
        assert!(s.get_refresh([1; 32], 100).await.unwrap().unwrap().spent, "spent but not yet reused");
        let reused = s.rotate_refresh([1; 32], "c", next(3, "j2"), 101).await.unwrap();
        assert_eq!(
            reused,
            Rotate::Reused { revoked: vec![at("j1")] },
            "the access token of the rotation is revoked too"
        );
        assert_eq!(s.rotate_refresh([2; 32], "c", next(4, "j3"), 102).await.unwrap(), Rotate::Invalid);
        assert_eq!(s.get_refresh([2; 32], 102).await.unwrap(), None, "revoked family");
    }

    #[tokio::test]
    async fn a_spent_refresh_token_gets_a_sibling_within_the_reuse_interval_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        s.put_refresh([1; 32], grant("f", 5000)).await.unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        let next =
            |new: u8, jti: &str| Rotation { new: [new; 32], new_expires_at: 6000, access: at(jti), reuse_interval: 10 };
        assert!(matches!(s.rotate_refresh([1; 32], "c", next(2, "j1"), 100).await.unwrap(), Rotate::Rotated(_)));
        assert!(matches!(s.rotate_refresh([1; 32], "c", next(3, "j2"), 110).await.unwrap(), Rotate::Sibling(_)));
        for (token, label) in [([2; 32], "first successor"), ([3; 32], "sibling")] {
            let live = s.get_refresh(token, 110).await.unwrap().unwrap();
            assert_eq!((live.grant.family.as_str(), live.spent), ("f", false), "{label}");
        }
        // The window is counted from the rotation, not extended by the sibling.
        let reused = s.rotate_refresh([1; 32], "c", next(4, "j3"), 111).await.unwrap();
        assert_eq!(reused, Rotate::Reused { revoked: vec![at("j1"), at("j2")] });
        assert_eq!(s.get_refresh([2; 32], 111).await.unwrap(), None);
        assert_eq!(s.get_refresh([3; 32], 111).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_survive_reopen_and_sweep_removes_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.put_refresh([1; 32], grant("f", 5000)).await.unwrap();
            s.put_refresh([2; 32], grant("g", 50)).await.unwrap();
            s.put_session([3; 32], Session { user: "alice".into(), expires_at: 50 }).await.unwrap();
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert!(s.get_refresh([1; 32], 100).await.unwrap().is_some());
        s.put_client_not_before("c", 70).await.unwrap();
        s.put_client_not_before("c", 60).await.unwrap();
        assert_eq!(s.client_not_before().await.unwrap(), vec![("c".to_string(), 70)], "the latest is kept");
        let removed = s.sweep(100).await.unwrap();
        assert_eq!(removed, 3, "refresh g, family g, session");
        assert!(s.get_refresh([1; 32], 100).await.unwrap().is_some());
    }
}
