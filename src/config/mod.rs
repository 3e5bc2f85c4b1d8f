//! Configuration: the TOML schema ([`raw`]) is validated ([`validate`]) into a
//! [`Config`] ([`model`]) that cannot exist in an invalid form, so no later phase
//! re-checks it. Every refusal carries the file and line it came from.
//!
//! This is the bottom floor of the gateway: it imports nothing above it. Reloading a
//! configuration is the server's job ([`crate::reload`]).

mod model;
mod raw;
mod route_table;
mod summary;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

/// Kept at its old path for the tests that call `config::reload::reload`; the
/// reloader itself lives above the config, in [`crate::reload`].
pub use crate::reload;
pub use model::{
    Access, Admin, ClaimRule, ClaimTest, Client, ClientAuth, ClientAuthMode, Config, DpopSettings, GrantType,
    IdentityHeaders, Introspection, JwksSource, JwsAlgorithm, KeyAlgorithm, KeyConfig, Limits, Listener, Quota,
    QuotaPer, RESOURCE_METADATA_PATH, RateLimits, RedisMode, Route, RouteQuota, SELF_ISSUER, StoreConfig, TlsFiles,
    TlsName, TokenBinding, TrustedIssuer, Upstream, User, split_scopes,
};
pub use route_table::{RouteKey, RouteTable};

/// A configuration that was refused: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole (e.g. unreadable).
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A setting that is accepted but may well be a mistake: printed by `check` and logged
/// at WARN whenever a configuration is put in force (start and reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    /// 1-based; 0 when no single line is to blame.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: warning: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}:{}: warning: {}", self.file.display(), self.line, self.reason)
        }
    }
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validate configuration text; `path` names it in errors and anchors relative paths.
    /// Reads no file: what the named files hold is checked when they are loaded.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let v = validate::Validator { text, file: path, warnings: Default::default() };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| v.line_of(s.start)).unwrap_or(0);
            v.err_at(line, e.message().trim_end().to_string())
        })?;
        v.validate(raw)
    }

    /// An error about this configuration found after validation (e.g. when a file it
    /// names is loaded), at `line` (0: the file as a whole).
    pub(crate) fn error_at(&self, line: usize, reason: String) -> ConfigError {
        ConfigError { file: self.source.clone(), line, reason }
    }

    /// What validation accepted but doubts, in file order.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// Each warning at WARN, when this configuration is put in force.
    pub(crate) fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
    }

    /// The line of `upstream_ca`, or 0.
    pub(crate) fn upstream_ca_line(&self) -> usize {
        self.upstream_ca_line
    }

    /// The line of `[store] path` (or of `[store]`), or 0.
    pub(crate) fn store_line(&self) -> usize {
        self.store_line
    }

    /// The line of the `[[key]]` with this id, or 0.
    pub(crate) fn key_line(&self, kid: &str) -> usize {
        self.keys.iter().find(|k| k.id == kid).map_or(0, |k| k.line)
    }
}
