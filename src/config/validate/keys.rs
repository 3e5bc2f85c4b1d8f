//! `[[key]]`: the signing keys, by id and file. The files are read (or generated) once,
//! by `crate::tokens::keys`; only a missing RS256 file (never generated) is looked for here.

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{KeyAlgorithm, KeyConfig};
use crate::config::raw::RawKey;

impl Validator<'_> {
    pub(super) fn keys(&self, raw: &[Spanned<RawKey>]) -> Result<Vec<KeyConfig>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err_at(1, "no [[key]]: at least one signing key is required"));
        }
        let mut keys: Vec<KeyConfig> = Vec::new();
        for k in raw {
            let span = k.span();
            let k = k.get_ref();
            let id = k.id.get_ref().trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                return Err(self.err(k.id.span(), format!("bad key id {id:?}: use letters, digits, '-', '_' or '.'")));
            }
            if keys.iter().any(|o| o.id == id) {
                return Err(self.err(k.id.span(), format!("duplicate key id {id:?}")));
            }
            let algorithm = match &k.algorithm {
                None => KeyAlgorithm::EdDSA,
                Some(a) => KeyAlgorithm::parse(a.get_ref()).ok_or_else(|| {
                    self.err(a.span(), format!("unknown algorithm {:?}: use EdDSA, ES256, RS256 or HS256", a.get_ref()))
                })?,
            };
            let generate = k.generate.unwrap_or(true);
            let file = self.path(k.file.get_ref());
            // The one file check here (a stat, not a read): `serve` would refuse this key when it
            // loads the set, and `check` must refuse everything `serve` refuses.
            if generate && algorithm == KeyAlgorithm::RS256 && !file.exists() {
                return Err(self.err(span, "RS256 keys are not generated: create the PEM file (e.g. openssl genpkey -algorithm RSA) or set generate = false"));
            }
            self.key_permissions(k, &file);
            keys.push(KeyConfig {
                id: id.to_string(),
                algorithm,
                file,
                active: k.active.unwrap_or(true),
                generate,
                line: self.line_of(k.id.span().start),
            });
        }
        if !keys.iter().any(|k| k.active) {
            return Err(
                self.err(raw[0].span(), "no active key: at least one [[key]] must have active = true to sign tokens")
            );
        }
        Ok(keys)
    }

    /// Warn about a private key others may read (a stat; generated files are 0600).
    fn key_permissions(&self, k: &RawKey, file: &std::path::Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(file)
                && meta.permissions().mode() & 0o044 != 0
            {
                self.warn(
                    k.file.span(),
                    format!(
                        "key {:?}: {} is readable by group or others (mode {:o}); anyone who reads it can sign \
                         tokens: chmod 600",
                        k.id.get_ref(),
                        file.display(),
                        meta.permissions().mode() & 0o777
                    ),
                );
            }
        }
        #[cfg(not(unix))]
        let _ = (k, file);
    }
}
