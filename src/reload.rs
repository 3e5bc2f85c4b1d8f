//! Hot reload: on SIGHUP, or when the config file or the TLS files it names change on
//! disk, read and validate everything first (config, TLS certificate and key, signing
//! keys), then put it in force at once. A configuration that fails anywhere is refused
//! with `file:line` in the log, and the one in force keeps serving.
//!
//! Connections already open keep the TLS session they have; new ones get the new
//! certificate. Requests in flight finish with the runtime they started with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::config::{Config, ConfigError, StoreConfig};
use crate::state::{Gateway, StartError};
use crate::tls;
use crate::tokens::keys::KeySet;

/// File events closer together than this are one change (editors write in steps).
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A steady stream of events still reloads this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// What asked for a reload; for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP: always reloads, even if no watched file changed (e.g. a key file did).
    Signal,
    /// A watched file changed on disk: reloads only if its contents did.
    FileChange,
}

impl Trigger {
    /// The name the log writes.
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "Signal",
            Trigger::FileChange => "FileChange",
        }
    }
}

/// Re-read `path` and put it in force; on any error nothing changes. A key file may not
/// be generated, nor the key of an id in force replaced (see `KeySet::reload`).
pub fn reload(gw: &Gateway, tls_slot: &ArcSwapOption<tls::Acceptor>, path: &Path) -> Result<(), ConfigError> {
    // From the read to the swap: an `apply` of a newer configuration waits for it.
    let _order = gw.reloading();
    let config = Config::load(path)?;
    let (old_issuer, old_audience) = {
        let rt = gw.runtime();
        restart_only_unchanged(&rt.config, &config)?;
        (rt.config.issuer().to_string(), rt.config.audience().to_string())
    };
    let acceptor = match &config.tls {
        Some(files) => {
            let at = |e: tls::TlsError| config.error_at(e.line(files), e.to_string());
            // As with keys: files missing at reload are a wrong path or a lost volume, and a
            // self-signed certificate would silently replace the real one.
            if !files.cert.exists() && !files.key.exists() {
                return Err(config.error_at(
                    files.line,
                    format!(
                        "TLS certificate {} and key {} do not exist; a reload never generates a certificate \
                         (dev_certificate applies at start only): correct the paths",
                        files.cert.display(),
                        files.key.display()
                    ),
                ));
            }
            Some(Arc::new(tls::acceptor(files).map_err(at)?))
        }
        None => None,
    };
    // Keys load inside apply; if they fail, neither the runtime nor TLS has changed.
    gw.apply_held(config.clone()).map_err(|e| match &e {
        StartError::Key(k) => config.error_at(config.key_line(k.kid()), e.to_string()),
        StartError::Issuer(line, _) | StartError::ClientKey(line, _) => config.error_at(*line, e.to_string()),
        StartError::UpstreamTls(_) | StartError::Store(_) => config.error_at(0, e.to_string()),
    })?;
    tls_slot.store(acceptor);
    gw.metrics.certificate(config.tls.as_ref().map(|t| t.cert.as_path()));
    // Allowed (a deliberate move must be possible), but never silently: the verifier
    // checks both, so every access token issued before is refused from now on.
    for (name, old, new) in [("issuer", &old_issuer, config.issuer()), ("audience", &old_audience, config.audience())] {
        if old != new {
            tracing::warn!(
                setting = name,
                old = %old,
                new = %new,
                "{name} changed by reload: every outstanding access token stops validating; clients must obtain new tokens"
            );
        }
    }
    config.log_warnings();
    Ok(())
}

/// What `serve` would refuse about `config` beyond its text, checked without writing
/// anything (`portcullis check`): the signing key files, the TLS files, the upstream CA
/// and the store location.
pub fn preflight(config: &Config) -> Result<(), ConfigError> {
    crate::install_crypto_provider();
    // The store first: whether it exists decides whether a key may be generated.
    store_writable(config)?;
    KeySet::check(config).map_err(|e| config.error_at(config.key_line(e.kid()), e.to_string()))?;
    // A key `serve` would generate: its file must be creatable where it is named.
    for kc in config.keys.iter().filter(|k| k.generate && !k.file.exists()) {
        creatable(&kc.file).map_err(|why| {
            config.error_at(kc.line, format!("key {:?}: {} cannot be generated: {why}", kc.id, kc.file.display()))
        })?;
    }
    if let Some(files) = &config.tls {
        // Both missing with dev_certificate: `serve` makes them (and check must not), so
        // check that it could.
        let generated = files.dev_certificate && !files.cert.exists() && !files.key.exists();
        if generated {
            for file in [&files.key, &files.cert] {
                creatable(file).map_err(|why| {
                    config.error_at(files.line, format!("dev_certificate: {} cannot be created: {why}", file.display()))
                })?;
            }
        } else {
            tls::server_config(files).map_err(|e| config.error_at(e.line(files), e.to_string()))?;
        }
    }
    crate::upstream::Upstreams::new(config).map_err(|e| config.error_at(config.upstream_ca_line(), e))?;
    crate::tokens::assertion::ClientKeys::load(config).map_err(|(line, e)| config.error_at(line, e))?;
    // Builds each issuer's client (reads its CA file); starts no fetch.
    crate::issuers::IssuerSet::build(config, None)
        .map_err(|(line, e)| config.error_at(line, format!("trusted issuer: {e}")))?;
    Ok(())
}

/// The first bytes of every redb file (redb's `MAGICNUMBER`, not public API).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// The embedded store file can be opened for writing and is a redb file (or empty, which
/// the store initialises), or can be created with its directories (the store does that at
/// start); probed with a scratch file, never the store itself.
fn store_writable(config: &Config) -> Result<(), ConfigError> {
    let StoreConfig::Embedded { path } = &config.store else { return Ok(()) };
    let refuse = |why: String| config.error_at(config.store_line(), format!("store {}: {why}", path.display()));
    if path.is_dir() {
        return Err(refuse("is a directory".into()));
    }
    if path.exists() {
        use std::io::Read;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| refuse(format!("cannot be opened for writing: {e}")))?;
        let mut head = Vec::with_capacity(REDB_MAGIC.len());
        file.take(REDB_MAGIC.len() as u64)
            .read_to_end(&mut head)
            .map_err(|e| refuse(format!("cannot be read: {e}")))?;
        if !head.is_empty() && head != REDB_MAGIC {
            return Err(refuse("is not a redb store file (wrong magic bytes)".into()));
        }
        return Ok(());
    }
    creatable(path).map_err(|why| refuse(format!("cannot be created: {why}")))
}

/// Whether a missing file could be created at `path` with its directories: the nearest
/// existing ancestor (where they would be made) is a directory that takes a scratch file.
fn creatable(path: &Path) -> Result<(), String> {
    let ancestor = path
        .ancestors()
        .skip(1)
        .map(|a| if a.as_os_str().is_empty() { Path::new(".") } else { a })
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !ancestor.is_dir() {
        return Err(format!("{} is not a directory", ancestor.display()));
    }
    let probe = ancestor.join(format!(".portcullis-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!("{} is not writable: {e}", ancestor.display())),
    }
}

/// Sockets are bound once, at start; a config that moves them is refused as a whole
/// rather than applied in part.
fn restart_only_unchanged(old: &Config, new: &Config) -> Result<(), ConfigError> {
    let differs = |i: usize| match (old.listeners.get(i), new.listeners.get(i)) {
        (Some(a), Some(b)) => a.address != b.address || a.tls != b.tls,
        (a, b) => a.is_some() || b.is_some(),
    };
    if let Some(i) = (0..old.listeners.len().max(new.listeners.len())).find(|&i| differs(i)) {
        // Point at the listener that changed, or the last one left when one was removed.
        let line = new.listeners.get(i).or(new.listeners.last()).map_or(0, |l| l.line);
        return Err(new.error_at(line, "[[listener]] changed: listeners are bound at start; restart to apply".into()));
    }
    if old.admin.as_ref().map(|a| a.address) != new.admin.as_ref().map(|a| a.address) {
        let line = new.admin.as_ref().map_or(0, |a| a.line);
        return Err(
            new.error_at(line, "[admin] changed: the admin listener is bound at start; restart to apply".into())
        );
    }
    // Read once at start; a reload still applies everything else, and says so.
    let later = [
        ("limits.max_connections", old.limits.max_connections != new.limits.max_connections),
        ("limits.shutdown_grace", old.limits.shutdown_grace != new.limits.shutdown_grace),
        ("cache.max_tokens", old.cache_max_tokens != new.cache_max_tokens),
        ("cache.max_client_secrets", old.cache_max_client_secrets != new.cache_max_client_secrets),
    ];
    for (name, changed) in later {
        if changed {
            tracing::warn!(setting = name, "changed; it takes effect at the next restart");
        }
    }
    if old.store != new.store {
        return Err(new.error_at(0, "[store] changed: the store is opened at start; restart to apply".into()));
    }
    Ok(())
}

/// Watches for reload triggers and reloads; created when the server binds so that
/// SIGHUP is handled from then on (its default action would end the process).
pub struct Reloader {
    gw: Arc<Gateway>,
    tls: Arc<ArcSwapOption<tls::Acceptor>>,
    path: PathBuf,
    changed: Arc<Notify>,
    /// Kept alive for as long as the reloader runs; `None` if watching failed.
    watcher: Option<RecommendedWatcher>,
    watched: BTreeSet<PathBuf>,
    /// Contents of the files last read, so unrelated events in a watched directory
    /// (and a refused file's repeated events) cause no reload.
    fingerprint: [u8; 32],
    hangup: Hangup,
}

impl Reloader {
    /// Must be called within the tokio runtime (for the signal handler).
    pub fn new(gw: Arc<Gateway>, tls: Arc<ArcSwapOption<tls::Acceptor>>) -> Reloader {
        let path = gw.runtime().config.source.clone();
        let changed = Arc::new(Notify::new());
        let notify_changed = changed.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if !matches!(ev.kind, EventKind::Access(_)) => notify_changed.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "config file watch error"),
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let mut r = Reloader {
            fingerprint: [0; 32],
            gw,
            tls,
            path,
            changed,
            watcher,
            watched: BTreeSet::new(),
            hangup: Hangup::new(),
        };
        r.fingerprint = r.current_fingerprint();
        r.update_watches();
        // Made once, when the server binds: the start's configuration warnings are logged
        // here, as each reload logs those of the configuration it puts in force.
        r.gw.runtime().config.log_warnings();
        r
    }

    /// Reload on every trigger until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let changed = self.changed.clone();
        loop {
            let trigger = tokio::select! {
                _ = &mut stop => return,
                _ = changed.notified() => Trigger::FileChange,
                _ = self.hangup.recv() => Trigger::Signal,
            };
            if trigger == Trigger::FileChange {
                self.settle().await;
            }
            let fingerprint = self.current_fingerprint();
            if trigger == Trigger::FileChange && fingerprint == self.fingerprint {
                continue;
            }
            self.fingerprint = fingerprint;
            let files_before = self.files();
            let (gw, tls, path) = (self.gw.clone(), self.tls.clone(), self.path.clone());
            let result = tokio::task::spawn_blocking(move || reload(&gw, &tls, &path)).await;
            match result {
                Ok(Ok(())) => {
                    self.gw.metrics.reload(true);
                    tracing::info!(trigger = trigger.as_str(), config = %self.path.display(), "configuration reloaded");
                    // New TLS file paths need watching, and the fingerprint must cover
                    // them. Otherwise keep the one taken before reading: a change made
                    // while we reloaded must still count as a change.
                    if self.files() != files_before {
                        self.update_watches();
                        self.fingerprint = self.current_fingerprint();
                    }
                }
                Ok(Err(e)) => {
                    self.gw.metrics.reload(false);
                    tracing::error!(trigger = trigger.as_str(), error = %e, "configuration refused; the previous one keeps serving");
                }
                Err(e) => {
                    self.gw.metrics.reload(false);
                    tracing::error!(trigger = trigger.as_str(), error = %e, "configuration reload failed; the previous one keeps serving");
                }
            }
        }
    }

    /// Wait until no file event has arrived for [`DEBOUNCE`] (at most [`DEBOUNCE_MAX`]).
    async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
        while tokio::time::Instant::now() < deadline {
            if tokio::time::timeout(DEBOUNCE, self.changed.notified()).await.is_err() {
                return;
            }
        }
    }

    /// The files whose change means a reload: the config and the TLS files it names.
    fn files(&self) -> Vec<PathBuf> {
        let rt = self.gw.runtime();
        let mut files = vec![self.path.clone()];
        if let Some(t) = &rt.config.tls {
            files.push(t.cert.clone());
            files.push(t.key.clone());
            // The client CA bundle reloads like the certificate.
            files.extend(t.client_ca.clone());
        }
        files
    }

    fn current_fingerprint(&self) -> [u8; 32] {
        let mut all = Vec::new();
        for f in self.files() {
            // An unreadable file counts as empty: its return is a change too.
            let bytes = std::fs::read(&f).unwrap_or_default();
            all.extend_from_slice(&crate::tokens::sha256(&bytes));
        }
        crate::tokens::sha256(&all)
    }

    /// Watch the directories holding the files, not the files: editors and
    /// orchestrators replace files by renaming, which a watch on the old inode misses.
    fn update_watches(&mut self) {
        let wanted: BTreeSet<PathBuf> = self
            .files()
            .iter()
            .map(|f| match f.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        let Some(watcher) = self.watcher.as_mut() else { return };
        for gone in self.watched.difference(&wanted) {
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.watched) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for config changes; reload with SIGHUP");
            }
        }
        self.watched = wanted;
    }
}

/// SIGHUP, where there is such a thing.
struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    fn new() -> Hangup {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle SIGHUP; reload by changing the config file");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// The next SIGHUP; never resolves where none can come.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.signal.as_mut()
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listeners: &str, admin: &str) -> Config {
        let text = format!("issuer = \"https://a.example\"\n{listeners}{admin}[[key]]\nid = \"k\"\nfile = \"k.pem\"\n");
        Config::parse(&text, Path::new("gw.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    const ONE: &str = "[[listener]]\naddress = \"127.0.0.1:1\"\ntls = false\n";
    const TWO: &str =
        "[[listener]]\naddress = \"127.0.0.1:1\"\ntls = false\n[[listener]]\naddress = \"127.0.0.1:2\"\ntls = false\n";

    #[test]
    fn listeners_and_admin_address_need_a_restart() {
        let base = config(ONE, "");
        assert!(restart_only_unchanged(&base, &config(ONE, "")).is_ok());
        let e = restart_only_unchanged(&base, &config(TWO, "")).unwrap_err();
        assert_eq!(e.line, 6, "points at the added listener: {e}");
        let e = restart_only_unchanged(&config(TWO, ""), &base).unwrap_err();
        assert_eq!(e.line, 3, "a removal points at the last listener left: {e}");
        let e = restart_only_unchanged(&base, &config(ONE, "[admin]\naddress = \"127.0.0.1:3\"\n")).unwrap_err();
        assert_eq!(e.line, 6);
        assert!(e.reason.contains("restart"));
        // Stating the default explicitly is no change.
        assert!(restart_only_unchanged(&base, &config(ONE, "[admin]\naddress = \"127.0.0.1:9901\"\n")).is_ok());
    }
}
