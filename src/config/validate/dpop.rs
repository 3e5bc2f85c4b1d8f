//! `[dpop]`: the algorithms, `iat` window and nonce rule of DPoP proofs (RFC 9449).

use std::time::Duration;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{DpopSettings, JwsAlgorithm};
use crate::config::raw::RawDpop;

/// The algorithms a DPoP proof may use unless configured (RFC 9449 §4.2: asymmetric).
const DEFAULT_ALGORITHMS: [JwsAlgorithm; 4] =
    [JwsAlgorithm::ES256, JwsAlgorithm::EdDSA, JwsAlgorithm::RS256, JwsAlgorithm::PS256];

/// Proofs are made for one request: a minute either way covers clock skew and latency.
const DEFAULT_IAT_WINDOW: Duration = Duration::from_secs(60);
/// Every proof id is remembered for the window: beyond this, the replay memory grows large.
const MAX_IAT_WINDOW: Duration = Duration::from_secs(600);

impl Validator<'_> {
    pub(super) fn dpop(&self, raw: &RawDpop) -> Result<DpopSettings, ConfigError> {
        let algorithms = match &raw.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for a in list {
                    let alg = JwsAlgorithm::parse(a.get_ref())
                        .filter(|alg| DEFAULT_ALGORITHMS.contains(alg))
                        .ok_or_else(|| {
                            self.err(
                                a.span(),
                                format!(
                                    "[dpop] algorithm {:?} not supported: use ES256, EdDSA, RS256 or PS256",
                                    a.get_ref()
                                ),
                            )
                        })?;
                    if !out.contains(&alg) {
                        out.push(alg);
                    }
                }
                if out.is_empty() {
                    return Err(self.err_at(1, "[dpop] algorithms must name at least one algorithm"));
                }
                out
            }
        };
        let iat_window = self.duration(&raw.iat_window, DEFAULT_IAT_WINDOW)?;
        if let Some(w) = &raw.iat_window
            && (iat_window > MAX_IAT_WINDOW || iat_window.subsec_nanos() != 0)
        {
            return Err(self.err(w.span(), "[dpop] iat_window must be whole seconds, at most 10m"));
        }
        Ok(DpopSettings { algorithms, iat_window, nonce: raw.nonce.unwrap_or(false) })
    }
}
