//! The default store: one redb file. Every mutation is one write transaction, committed
//! durably before we answer, so `kill -9` loses nothing that a client was told about.
//! redb serialises write transactions, which makes take-once and rotate-once atomic.
//!
//! Two faults degrade the store (grants, revocation and logins answer 503; the proxy path
//! keeps serving), and both heal without a restart:
//! - The configured path must keep naming the file we opened: if it is deleted or replaced
//!   while we run, writes would land in an unlinked inode and vanish at the next start
//!   (revoked tokens working again). So the path's device and inode are compared with the
//!   open file's — at most once a second — before every write and on the health probe;
//!   on a mismatch writes fail as unavailable until the original file is back. A replacing
//!   file is never adopted: only a restart opens another file.
//! - An I/O error (a full disk, a file-size limit) leaves a redb handle failed for good
//!   ("Previous I/O error occurred"). The store then closes the handle and reopens the same
//!   file — never creating a new one — with bounded backoff, from a write or a probe, so
//!   once the cause is gone the next attempt brings it back; each reopen is counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Block, BlockKey, CodeGrant, Hash, IssuedAccess, OnceKind, RefreshGrant, Rotate, Rotation, Session, Store,
    StoreError, StoredRefresh, TakeCode,
};

type Table = TableDefinition<'static, &'static [u8], &'static [u8]>;
const CODES: Table = TableDefinition::new("codes");
const REFRESH: Table = TableDefinition::new("refresh_tokens");
const FAMILIES: Table = TableDefinition::new("families");
const REVOKED: Table = TableDefinition::new("revoked_access");
const SESSIONS: Table = TableDefinition::new("sessions");
/// One record, rewritten by the health probe after a failure: only a write proves that the
/// file takes writes again (a reopened handle reads fine on a still-full disk).
const HEALTH: Table = TableDefinition::new("health");
/// client id → unix time at or before which its tokens are void (never swept: one small
/// record per client ever disabled).
const CLIENT_NOT_BEFORE: Table = TableDefinition::new("client_not_before");
/// Operator blocks: the block key's JSON → the block's JSON (swept once lapsed).
const BLOCKS: Table = TableDefinition::new("blocks");
/// One-time identifiers of client assertions: SHA-256 → unix time it may be forgotten.
const ONCE: Table = TableDefinition::new("once");

/// DPoP proof ids remembered in memory at most (about 80 bytes each): beyond it, after
/// the lapsed ones are dropped, a proof is refused (fail closed) rather than forgotten.
const MAX_PROOFS: usize = 1_000_000;

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
    /// Siblings issued for it within the reuse interval (at most `MAX_SIBLINGS`).
    #[serde(default)]
    siblings: u32,
}

#[derive(Serialize, Deserialize, Default)]
struct Family {
    revoked: bool,
    expires_at: u64,
    access: Vec<IssuedAccess>,
}

pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// DPoP proof ids → when they may be forgotten. In memory, not in the file: a proof
    /// comes with every request on the proxy path, and a commit (an fsync) each would cap
    /// the gateway at the disk's rate. The embedded store serves one process, so this is
    /// every replica's memory; a restart forgets it, but a proof older than the `iat`
    /// window is refused anyway, so only proofs of the last window could be replayed
    /// across a restart.
    proofs: std::sync::Mutex<std::collections::HashMap<Hash, u64>>,
}

/// Everything the blocking pool needs, shared with it.
struct Inner {
    /// The open database; `None` only while a failed handle is being replaced.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    file: FileIdentity,
    healing: Healing,
    opener: Opener,
}

/// How the file is opened: by path, or in unit tests through a backend that fails on demand.
enum Opener {
    File,
    #[cfg(test)]
    Faulty(Arc<AtomicBool>),
}

/// The first reopen attempt is immediate; later ones wait this long, doubling up to
/// [`MAX_BACKOFF`], so a request storm against a still-full disk costs one attempt per
/// interval, not one per request.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a reopen waits for in-flight transactions to let go of the failed handle.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// An I/O failure of the open handle, and the schedule of attempts to reopen it.
struct Healing {
    /// Set by a failure, cleared by a successful reopen; read on every operation.
    failed: AtomicBool,
    /// Reopened, and no write has succeeded since: keep the backoff until one does.
    probation: AtomicBool,
    state: std::sync::Mutex<HealState>,
    reopens: AtomicU64,
    /// Reopen attempts, successful or not (the unit tests bound them).
    attempts: AtomicU64,
}

struct HealState {
    /// The error that failed the handle, as logged.
    reason: String,
    /// No attempt before this.
    next_attempt: Option<Instant>,
    backoff: Duration,
}

impl Healing {
    fn new() -> Healing {
        Healing {
            failed: AtomicBool::new(false),
            probation: AtomicBool::new(false),
            state: std::sync::Mutex::new(HealState {
                reason: String::new(),
                next_attempt: None,
                backoff: FIRST_BACKOFF,
            }),
            reopens: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealState> {
        // A panic while holding it leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remember an I/O failure (other errors leave the handle usable).
    fn note<T>(&self, result: &Result<T, StoreError>) {
        match result {
            // Logged once, when the handle turns failed; the reason is in place before the flag.
            Err(StoreError::Io(reason)) if !self.failed.load(Ordering::Acquire) => {
                let mut state = self.lock();
                if !self.failed.load(Ordering::Acquire) {
                    state.reason.clone_from(reason);
                    self.failed.store(true, Ordering::Release);
                    tracing::error!(
                        error = %reason,
                        "store I/O failed; grants and revocation answer 503 until the store file is reopened (retrying with backoff)"
                    );
                }
            }
            Ok(_) if self.probation.swap(false, Ordering::AcqRel) => {
                // A write went through after a reopen: the cause is gone, start afresh.
                self.lock().backoff = FIRST_BACKOFF;
            }
            _ => {}
        }
    }

    fn reason(&self) -> String {
        self.lock().reason.clone()
    }
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
        std::fs::metadata(path).ok().map(|m| Self::of_meta(&m))
    }

    fn of_meta(m: &std::fs::Metadata) -> (u64, u64) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        }
        #[cfg(not(unix))]
        {
            let _ = m;
            (0, 0)
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

/// A redb error: an I/O failure (or the "previous I/O error" that follows one, or a closed
/// handle) makes the handle unusable until reopened; anything else is a plain failure.
fn storage(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        e @ (redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            StoreError::Io(e.to_string())
        }
        e => unavailable(e),
    }
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
    let t = txn.open_table(table).map_err(storage)?;
    let bytes = t.get(key).map_err(storage)?.map(|g| g.value().to_vec());
    bytes.map(|b| decode(&b)).transpose()
}

fn put<T: Serialize>(txn: &WriteTransaction, table: Table, key: &[u8], value: &T) -> Result<(), StoreError> {
    let mut t = txn.open_table(table).map_err(storage)?;
    t.insert(key, encode(value)?.as_slice()).map_err(storage)?;
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

/// Create every table up front so that readers never see a missing table.
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    for table in [CODES, REFRESH, FAMILIES, REVOKED, SESSIONS, CLIENT_NOT_BEFORE, BLOCKS, ONCE] {
        txn.open_table(table).map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

impl Opener {
    /// Open the file at `path`. At start (`expect` is `None`) it is created if missing; a
    /// reopen never creates (a fresh empty file would forget every revocation) and opens
    /// only the file first opened: the handle's own (device, inode) must be `expect`, so a
    /// file moved into the path meanwhile — an older copy missing revocations — is refused,
    /// not adopted, whatever happens between a check of the path and the open.
    fn open(&self, path: &Path, expect: Option<(u64, u64)>) -> Result<Database, StoreError> {
        let failed = |e: redb::DatabaseError| StoreError::Io(format!("{}: {e}", path.display()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(expect.is_none())
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
        if let Some(expect) = expect {
            let meta = file.metadata().map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
            if FileIdentity::of_meta(&meta) != expect || meta.len() == 0 {
                return Err(StoreError::Unavailable(format!(
                    "{}: not the store file opened at start (replaced or emptied); not adopted",
                    path.display()
                )));
            }
        }
        // `create_with_backend` initialises only an empty file: at start, a new one; on a
        // reopen never (the file checked above is the non-empty original).
        let backend = redb::backends::FileBackend::new(file).map_err(failed)?;
        match self {
            Opener::File => Database::builder().create_with_backend(backend).map_err(failed),
            #[cfg(test)]
            Opener::Faulty(fail) => Database::builder()
                .create_with_backend(faults::Faulty { inner: backend, fail: fail.clone() })
                .map_err(failed),
        }
    }
}

/// How much the disk probe writes: more than a redb commit usually needs beyond its free
/// pages, so a disk that takes it takes the store's next writes too.
const DISK_PROBE_BYTES: usize = 256 * 1024;

/// Write, fsync and remove a scratch file of [`DISK_PROBE_BYTES`] next to the store file:
/// proof that the file system takes new blocks (not a full disk, not a file-size limit).
fn disk_takes_writes(store: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    let name = store.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let probe = store.with_file_name(format!(".{name}.disk-probe"));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe)?;
        f.write_all(&vec![0u8; DISK_PROBE_BYTES])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| StoreError::Io(format!("{}: the disk refuses writes: {e}", probe.display())))
}

fn down(reason: &str) -> StoreError {
    StoreError::Unavailable(format!("reopening after an I/O failure ({reason})"))
}

impl Inner {
    /// The handle, when it is usable; after a failure, `None` until a reopen succeeded.
    fn current(&self) -> Option<Arc<Database>> {
        if self.healing.failed.load(Ordering::Acquire) {
            return None;
        }
        self.db.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The handle, reopening a failed one if an attempt is due. Blocking: call on the
    /// blocking pool.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.current() {
            return Ok(db);
        }
        self.heal()?;
        self.current().ok_or_else(|| self.down())
    }

    fn down(&self) -> StoreError {
        down(&self.healing.reason())
    }

    /// Another thread holds the schedule (it is reopening): do not wait for it.
    fn down_busy(&self) -> StoreError {
        down("a reopen is under way")
    }

    /// Close the failed handle and open the same file again, unless an attempt is not yet
    /// due or another thread is at it. Only the file we opened at start is reopened: if the
    /// path is gone or names another file, that fault is reported instead.
    fn heal(&self) -> Result<(), StoreError> {
        let Ok(mut state) = self.healing.state.try_lock() else { return Err(self.down_busy()) };
        if !self.healing.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = Instant::now();
        if state.next_attempt.is_some_and(|at| now < at) {
            return Err(down(&state.reason));
        }
        state.next_attempt = Some(now + state.backoff);
        state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        self.healing.attempts.fetch_add(1, Ordering::Relaxed);
        self.file.check()?;
        // A reopened handle reads, and a small write fits in the free pages inside the file,
        // on a disk still full: reopening then would flap between up and down. The disk must
        // first take new blocks next to the store.
        if let Err(e) = disk_takes_writes(&self.file.path) {
            tracing::debug!(error = %e, retry_in = ?state.backoff, "store disk still refuses writes");
            state.reason = e.to_string();
            return Err(down(&state.reason));
        }
        // redb locks the file: the old handle must be closed before it can be opened again.
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut old) = old {
            let deadline = Instant::now() + RELEASE_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => break drop(db),
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    // Still used: the last user closes it, and a later attempt reopens.
                    Err(_) => break,
                }
            }
        }
        let reopened = self.opener.open(&self.file.path, Some(self.file.id)).and_then(|db| {
            create_tables(&db)?;
            Ok(db)
        });
        match reopened {
            Ok(db) => {
                *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
                self.healing.probation.store(true, Ordering::Release);
                self.healing.failed.store(false, Ordering::Release);
                self.healing.reopens.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %self.file.path.display(), "store file reopened after an I/O failure; accepting writes again");
                Ok(())
            }
            Err(e @ StoreError::Unavailable(_)) => {
                tracing::error!(error = %e, retry_in = ?state.backoff, "store reopen refused: the path names another file than the one opened at start; staying degraded (put the original back or restart)");
                state.reason = e.to_string();
                Err(down(&state.reason))
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?state.backoff, "store reopen failed");
                state.reason = e.to_string();
                Err(down(&state.reason))
            }
        }
    }
}

impl EmbeddedStore {
    /// Open or create the store file (and its directory).
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(path, Opener::File)
    }

    fn open_with(path: &Path, opener: Opener) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        }
        let existed = path.exists();
        let db = opener.open(path, None)?;
        if !existed {
            // The README promises it: the first start says where the grant state went.
            tracing::info!(path = %path.display(), "created the store file");
        }
        create_tables(&db)?;
        let file = FileIdentity::new(path)?;
        let inner = Inner { db: std::sync::RwLock::new(Some(Arc::new(db))), file, healing: Healing::new(), opener };
        Ok(EmbeddedStore { inner: Arc::new(inner), proofs: Default::default() })
    }

    /// Run one write transaction on the blocking pool (commits fsync) and commit it.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        // Refuse rather than write into a file nobody will open again.
        self.inner.file.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let db = inner.db()?;
            let out = (|| {
                let txn = db.begin_write().map_err(storage)?;
                let out = f(&txn)?;
                txn.commit().map_err(storage)?;
                Ok(out)
            })();
            inner.healing.note(&out);
            out
        })
        .await
        .map_err(unavailable)?
    }

    /// Run `f` in a read transaction on the blocking pool.
    async fn read_txn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let db = inner.db()?;
            let out = db.begin_read().map_err(storage).and_then(|txn| f(&txn));
            inner.healing.note(&out);
            out
        })
        .await
        .map_err(unavailable)?
    }

    async fn read<T, F>(&self, table: Table, key: Vec<u8>, f: F) -> Result<Option<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&[u8]) -> Result<Option<T>, StoreError> + Send + 'static,
    {
        self.read_txn(move |txn| {
            let t = txn.open_table(table).map_err(storage)?;
            let bytes = t.get(key.as_slice()).map_err(storage)?.map(|g| g.value().to_vec());
            match bytes {
                Some(b) => f(&b),
                None => Ok(None),
            }
        })
        .await
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
                txn.open_table(CODES).map_err(storage)?.remove(code.as_slice()).map_err(storage)?;
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
            put(txn, REFRESH, &token, &RefreshState { grant, spent: false, spent_at: None, siblings: 0 })
        })
        .await
    }

    async fn get_refresh(&self, token: Hash, now: u64) -> Result<Option<StoredRefresh>, StoreError> {
        let state = self.read(REFRESH, token.to_vec(), |b| decode::<RefreshState>(b).map(Some)).await?;
        let Some(state) = state else { return Ok(None) };
        if state.grant.expires_at <= now {
            return Ok(None);
        }
        let family = state.grant.family.clone();
        let revoked = self
            .read(FAMILIES, family.into_bytes(), |b| decode::<Family>(b).map(|f| Some(f.revoked)))
            .await?
            .unwrap_or(false);
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
            // The client's not-before as stored, in this transaction: memory may lag behind.
            let reset: Option<u64> = get(txn, CLIENT_NOT_BEFORE, client_id.as_bytes())?;
            if reset.is_some_and(|at| state.grant.issued_at <= at) {
                return Ok(Rotate::ClientReset);
            }
            let sibling = state.spent;
            if sibling {
                let within = state.spent_at.is_some_and(|at| now.saturating_sub(at) <= next.reuse_interval);
                if next.reuse_interval == 0 || !within || state.siblings >= super::MAX_SIBLINGS {
                    return Ok(Rotate::Reused { revoked: revoke_family_in(txn, &state.grant.family)? });
                }
                state.siblings += 1;
                put(txn, REFRESH, &old, &state)?;
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
            put(
                txn,
                REFRESH,
                &next.new,
                &RefreshState { grant: successor, spent: false, spent_at: None, siblings: 0 },
            )?;
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
        // A failed handle is reopened by a write or a probe, never here on the async thread.
        let db = self.inner.current().ok_or_else(|| self.inner.down())?;
        let found = (|| {
            let txn = db.begin_read().map_err(storage)?;
            let t = txn.open_table(REVOKED).map_err(storage)?;
            Ok(t.get(jti.as_bytes()).map_err(storage)?.is_some())
        })();
        self.inner.healing.note(&found);
        found
    }

    async fn first_use(&self, kind: OnceKind, id: Hash, expires_at: u64, now: u64) -> Result<bool, StoreError> {
        match kind {
            OnceKind::DpopProof => {
                let mut seen =
                    self.proofs.lock().map_err(|_| StoreError::Unavailable("proof memory poisoned".into()))?;
                if seen.get(&id).is_some_and(|exp| *exp > now) {
                    return Ok(false);
                }
                if seen.len() >= MAX_PROOFS {
                    seen.retain(|_, exp| *exp > now);
                    if seen.len() >= MAX_PROOFS {
                        return Err(StoreError::Unavailable("DPoP proof memory full".into()));
                    }
                }
                seen.insert(id, expires_at);
                Ok(true)
            }
            OnceKind::ClientAssertion => {
                self.write(move |txn| {
                    let known: Option<u64> = get(txn, ONCE, &id)?;
                    if known.is_some_and(|exp| exp > now) {
                        return Ok(false);
                    }
                    put(txn, ONCE, &id, &expires_at)?;
                    Ok(true)
                })
                .await
            }
        }
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
        self.read_txn(|txn| {
            let t = txn.open_table(CLIENT_NOT_BEFORE).map_err(storage)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let id = String::from_utf8(k.value().to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                out.push((id, decode::<u64>(v.value())?));
            }
            Ok(out)
        })
        .await
    }

    async fn put_block(&self, block: Block) -> Result<(), StoreError> {
        self.write(move |txn| put(txn, BLOCKS, &encode(&block.key)?, &block)).await
    }

    async fn delete_block(&self, key: &BlockKey) -> Result<bool, StoreError> {
        let key = encode(key)?;
        self.write(move |txn| {
            let mut t = txn.open_table(BLOCKS).map_err(storage)?;
            let removed = t.remove(key.as_slice()).map_err(storage)?.is_some();
            Ok(removed)
        })
        .await
    }

    async fn blocks(&self, now: u64) -> Result<Vec<Block>, StoreError> {
        self.read_txn(move |txn| {
            let t = txn.open_table(BLOCKS).map_err(storage)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(storage)? {
                let (_, v) = row.map_err(storage)?;
                // An unreadable block fails the load: silently dropping it would unblock.
                let block: Block = decode(v.value())?;
                if block.live(now) {
                    out.push(block);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Also where a failed handle heals while no write comes (readiness probes, scrapes).
    /// After a failure, and until a write succeeded, the probe is a write.
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.file.check()?;
        let h = &self.inner.healing;
        if h.failed.load(Ordering::Acquire) || h.probation.load(Ordering::Acquire) {
            return self.write(|txn| put(txn, HEALTH, b"probe", &now_secs())).await;
        }
        self.read_txn(|_| Ok(())).await
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn reopens(&self) -> u64 {
        self.inner.healing.reopens.load(Ordering::Relaxed)
    }

    async fn sweep(&self, now: u64) -> Result<u64, StoreError> {
        // The DPoP replay memory too, so it fills only with live proofs (and an insert
        // into a full map, which retains under the lock, stays rare).
        let proofs = match self.proofs.lock() {
            Ok(mut seen) => {
                let before = seen.len();
                seen.retain(|_, exp| *exp > now);
                (before - seen.len()) as u64
            }
            Err(_) => 0,
        };
        self.write(move |txn| {
            let mut removed = 0u64;
            // Unreadable records are kept: deleting what we cannot parse could hide a bug.
            let mut sweep = |table: Table, expired: &dyn Fn(&[u8]) -> bool| -> Result<(), StoreError> {
                let mut t = txn.open_table(table).map_err(storage)?;
                let before = t.len().map_err(storage)?;
                t.retain(|_, v| !expired(v)).map_err(storage)?;
                removed += before - t.len().map_err(storage)?;
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
            sweep(BLOCKS, &|v| decode::<Block>(v).is_ok_and(|b| !b.live(now)))?;
            sweep(ONCE, &|v| decode::<u64>(v).is_ok_and(|exp| exp <= now))?;
            Ok(removed + proofs)
        })
        .await
    }
}

/// A file backend whose writes fail while `fail` is set, as on a full disk.
#[cfg(test)]
mod faults {
    use std::ops::Bound;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    #[derive(Debug)]
    pub(super) struct Faulty {
        pub(super) inner: FileBackend,
        pub(super) fail: Arc<AtomicBool>,
    }

    impl Faulty {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::Acquire) {
                return Err(std::io::Error::other("injected: no space left on device"));
            }
            Ok(())
        }
    }

    impl StorageBackend for Faulty {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.inner.close()
        }
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(start, end)
        }
        fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }
        fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.query_lock_range(start, end)
        }
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
            audience: None,
            issued_at: 0,
            binding: None,
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
            audience: None,
            issued_at: 1000,
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
    async fn the_periodic_sweep_drops_lapsed_dpop_proofs() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        assert!(s.first_use(OnceKind::DpopProof, [1; 32], 100, 50).await.unwrap());
        assert!(s.first_use(OnceKind::DpopProof, [2; 32], 200, 50).await.unwrap());
        assert_eq!(s.sweep(150).await.unwrap(), 1);
        assert_eq!(s.proofs.lock().unwrap().len(), 1);
        assert!(!s.first_use(OnceKind::DpopProof, [2; 32], 200, 160).await.unwrap(), "a live proof is kept");
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
            audience: None,
            issued_at: 40,
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

    /// Issue 23.1: the stored not-before is judged inside the rotation, whatever this
    /// process remembers: a token issued at or before it is refused and left unspent.
    #[tokio::test]
    async fn rotation_checks_the_stored_client_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let issued = |family: &str, at: u64| RefreshGrant { issued_at: at, ..grant(family, 5000) };
        s.put_refresh([1; 32], issued("f", 100)).await.unwrap();
        s.put_refresh([5; 32], issued("g", 101)).await.unwrap();
        s.put_client_not_before("c", 100).await.unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        let next =
            |new: u8, jti: &str| Rotation { new: [new; 32], new_expires_at: 6000, access: at(jti), reuse_interval: 0 };
        assert_eq!(s.rotate_refresh([1; 32], "c", next(2, "j1"), 130).await.unwrap(), Rotate::ClientReset);
        assert!(!s.get_refresh([1; 32], 130).await.unwrap().unwrap().spent, "nothing changed");
        assert_eq!(s.get_refresh([2; 32], 130).await.unwrap(), None, "no successor");
        assert!(matches!(s.rotate_refresh([5; 32], "c", next(6, "j2"), 130).await.unwrap(), Rotate::Rotated(_)));
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

    /// Review 23.16: a spent token gets at most `MAX_SIBLINGS` siblings within the
    /// interval; one more presentation is reuse and revokes the family.
    #[tokio::test]
    async fn siblings_are_capped_and_one_more_is_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        s.put_refresh([1; 32], grant("f", 5000)).await.unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        let next = |new: u8| Rotation { new: [new; 32], new_expires_at: 6000, access: at("j"), reuse_interval: 10 };
        assert!(matches!(s.rotate_refresh([1; 32], "c", next(2), 100).await.unwrap(), Rotate::Rotated(_)));
        for i in 0..super::super::MAX_SIBLINGS as u8 {
            assert!(matches!(s.rotate_refresh([1; 32], "c", next(3 + i), 101).await.unwrap(), Rotate::Sibling(_)));
        }
        assert!(matches!(s.rotate_refresh([1; 32], "c", next(20), 101).await.unwrap(), Rotate::Reused { .. }));
        assert_eq!(s.get_refresh([2; 32], 101).await.unwrap(), None, "the family is revoked");
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

    #[tokio::test]
    async fn blocks_are_kept_replaced_removed_and_swept_once_lapsed() {
        use crate::store::BlockKind;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key =
            |kind, value: &str, iss: Option<&str>| BlockKey { kind, value: value.into(), iss: iss.map(Into::into) };
        let block = |key: BlockKey, expires_at| Block { key, expires_at, created_at: 1, reason: None };
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.put_block(block(key(BlockKind::Sub, "alice", None), None)).await.unwrap();
            s.put_block(block(key(BlockKind::Sub, "alice", Some("https://idp")), Some(50))).await.unwrap();
            s.put_block(block(key(BlockKind::Jti, "j1", None), Some(50))).await.unwrap();
            // The same key again replaces it.
            s.put_block(block(key(BlockKind::Jti, "j1", None), Some(500))).await.unwrap();
        }
        let s = EmbeddedStore::open(&path).unwrap();
        let mut live = s.blocks(100).await.unwrap();
        live.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            live.iter().map(|b| (b.key.value.as_str(), b.expires_at)).collect::<Vec<_>>(),
            [("j1", Some(500)), ("alice", None)],
            "the lapsed issuer-scoped block is left out"
        );
        assert_eq!(s.sweep(100).await.unwrap(), 1, "and swept");
        assert_eq!(s.blocks(10).await.unwrap().len(), 2, "gone from the file");
        assert!(s.delete_block(&key(BlockKind::Sub, "alice", None)).await.unwrap());
        assert!(!s.delete_block(&key(BlockKind::Sub, "alice", None)).await.unwrap(), "already removed");
        assert!(!s.delete_block(&key(BlockKind::Jti, "j1", Some("https://idp"))).await.unwrap(), "another key");
        assert_eq!(s.blocks(100).await.unwrap().len(), 1);
    }

    /// Issue 18: a failed write (a full disk) used to leave the handle failed for good.
    /// While the fault lasts every operation fails as an I/O failure and the store says
    /// why; once it is gone the store reopens the same file, keeps what was committed
    /// before, and a storm of requests during the fault costs a bounded number of reopens.
    #[tokio::test]
    async fn an_io_failure_heals_by_reopening_once_the_cause_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let s = EmbeddedStore::open_with(&dir.path().join("s.redb"), Opener::Faulty(fail.clone())).unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        s.revoke_access(at("before")).await.unwrap();
        assert_eq!(s.health().await, crate::store::Health::Healthy);

        fail.store(true, Ordering::Release);
        let first = s.revoke_access(at("during")).await;
        assert!(matches!(first, Err(StoreError::Io(_))), "{first:?}");
        for i in 0..200 {
            assert!(s.revoke_access(at(&format!("storm{i}"))).await.is_err());
        }
        assert!(s.is_revoked("before").await.is_err(), "a failed handle answers nothing");
        let health = s.health().await;
        assert!(matches!(&health, crate::store::Health::Degraded(why) if why.contains("I/O")), "{health:?}");
        let attempts = s.inner.healing.attempts.load(Ordering::Relaxed);
        assert!(attempts <= 5, "{attempts} reopen attempts during a burst of 200 requests (backoff)");
        assert_eq!(s.reopens(), 0);

        fail.store(false, Ordering::Release);
        let mut healed = false;
        for _ in 0..200 {
            if s.revoke_access(at("after")).await.is_ok() {
                healed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(healed, "the store did not reopen once the fault was gone");
        assert_eq!(s.reopens(), 1);
        assert_eq!(s.health().await, crate::store::Health::Healthy);
        assert!(s.is_revoked("before").await.unwrap(), "committed before the fault: kept");
        assert!(s.is_revoked("after").await.unwrap());
        assert!(!s.is_revoked("during").await.unwrap(), "refused during the fault: never written");
    }

    /// The store never creates a file on a reopen: a removed file stays a fault.
    #[tokio::test]
    async fn a_reopen_never_creates_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let s = EmbeddedStore::open_with(&path, Opener::Faulty(fail.clone())).unwrap();
        fail.store(true, Ordering::Release);
        let at = IssuedAccess { jti: "j".into(), expires_at: u64::MAX };
        assert!(s.revoke_access(at.clone()).await.is_err());
        std::fs::remove_file(&path).unwrap();
        fail.store(false, Ordering::Release);
        tokio::time::sleep(FILE_CHECK_INTERVAL + Duration::from_millis(50)).await;
        for _ in 0..5 {
            assert!(s.revoke_access(at.clone()).await.is_err());
        }
        assert!(!path.exists(), "no fresh file behind the operator's back");
        assert_eq!(s.reopens(), 0);
    }

    /// Issue 18 attack: a copy of the store made before a revocation, moved over the path
    /// while the handle is failed, was adopted by the reopen (and kept after a restart).
    /// Now the reopen checks the opened file's own identity: the copy is refused, the
    /// store stays degraded, and putting the original back heals it.
    #[tokio::test]
    async fn a_reopen_never_adopts_a_file_moved_into_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let copy = dir.path().join("copy.redb");
        let original = dir.path().join("original.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let s = EmbeddedStore::open_with(&path, Opener::Faulty(fail.clone())).unwrap();
        let at = |jti: &str| IssuedAccess { jti: jti.into(), expires_at: u64::MAX };
        std::fs::copy(&path, &copy).unwrap();
        s.revoke_access(at("t")).await.unwrap();

        fail.store(true, Ordering::Release);
        assert!(s.revoke_access(at("x")).await.is_err());
        // Swapped at once: the path check of the write above is still cached as intact.
        std::fs::rename(&path, &original).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        fail.store(false, Ordering::Release);
        for _ in 0..20 {
            assert!(s.revoke_access(at("y")).await.is_err(), "a write went to the copy");
            assert!(s.is_revoked("t").await.is_err(), "answered from the copy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(s.reopens(), 0);
        assert!(matches!(s.health().await, crate::store::Health::Degraded(_)));

        std::fs::rename(&original, &path).unwrap();
        let mut healed = false;
        for _ in 0..300 {
            if s.revoke_access(at("z")).await.is_ok() {
                healed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(healed, "the original back in place: the store reopens it");
        assert!(s.is_revoked("t").await.unwrap());
    }
}
