//! The verdict on a valid token. Only the validator builds one (`new` is visible inside
//! `tokens/` alone), so no later phase can act on an unchecked token; the cache keeps them.

use super::binding::Binding;
use crate::config::SELF_ISSUER;

/// A claim value a route rule may test, as kept in a verdict: text (numbers and booleans
/// as JSON writes them), or a list of such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimValue {
    Text(Box<str>),
    List(Box<[Box<str>]>),
}

impl ClaimValue {
    /// From a JSON claim; objects and null are not values a rule can test.
    pub(super) fn from_json(v: &serde_json::Value) -> Option<ClaimValue> {
        use serde_json::Value;
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.as_str().into()),
            Value::Number(n) => Some(n.to_string().into()),
            Value::Bool(b) => Some(b.to_string().into()),
            _ => None,
        };
        match v {
            Value::Array(a) => Some(ClaimValue::List(a.iter().filter_map(text).collect())),
            v => text(v).map(ClaimValue::Text),
        }
    }
}

/// A kept claim: its name (as the rule writes it) and value.
pub type KeptClaim = (Box<str>, ClaimValue);

/// Who a valid token speaks for.
///
/// Compact, because up to `[cache] max_tokens` of them stay in memory: the seven strings
/// share one allocation, the user is derived (the subject, when it is not the client),
/// and of the other claims only those some route rule names are kept (none, usually).
#[derive(Debug)]
pub struct Principal {
    /// client_id, subject, scope, token_id, kid, aud and the issuer's name (empty: ours),
    /// back to back.
    text: Box<str>,
    /// Where each of those seven ends in `text`.
    ends: [u16; 7],
    /// The claims route rules name that the token carries.
    claims: Option<Box<[KeptClaim]>>,
    /// The fingerprint of the key that verified it (key file, issuer, audience): a hit
    /// under a key with another fingerprint is verified again.
    key_fingerprint: [u8; 32],
    expires_at: u64,
    /// When a connection let in with the token must end (the token's own `exp`): the same
    /// as `expires_at` except for an introspected token, whose `expires_at` is the cache's
    /// deadline (`max_cache`), not the token's.
    lease_until: u64,
    /// Issued without a user's consent (`gty`, client_credentials): a subject other than
    /// the client is then the client's linked user, and answers to the link.
    no_consent: bool,
    /// The key the token is bound to (`cnf`): the proxy path honours it only from whoever
    /// proves possession (`proxy/authenticate.rs`). Boxed: most tokens have none.
    binding: Option<Box<Binding>>,
}

impl Principal {
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)] // one per claim kept; a struct would only repeat them
    pub(super) fn new(
        client_id: &str,
        subject: &str,
        scope: &str,
        token_id: &str,
        kid: &str,
        audience: &str,
        key_fingerprint: [u8; 32],
        expires_at: u64,
    ) -> Option<Principal> {
        Self::build([client_id, subject, scope, token_id, kid, audience, ""], Vec::new(), key_fingerprint, expires_at)
    }

    /// `parts`: client_id, subject, scope, token_id, kid, aud, issuer name (empty: ours).
    pub(super) fn build(
        parts: [&str; 7],
        claims: Vec<KeptClaim>,
        key_fingerprint: [u8; 32],
        expires_at: u64,
    ) -> Option<Principal> {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u16; 7];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = u16::try_from(text.len()).ok()?;
        }
        let claims = (!claims.is_empty()).then(|| claims.into_boxed_slice());
        Some(Principal {
            text: text.into_boxed_str(),
            ends,
            claims,
            key_fingerprint,
            expires_at,
            lease_until: expires_at,
            no_consent: false,
            binding: None,
        })
    }

    /// The name of the issuer that signed it: [`SELF_ISSUER`] or a `[[trusted_issuer]]`.
    pub fn issuer_name(&self) -> &str {
        match self.part(6) {
            "" => SELF_ISSUER,
            name => name,
        }
    }

    /// Signed by the gateway itself.
    pub fn is_own(&self) -> bool {
        self.part(6).is_empty()
    }

    /// A claim a route rule names, if the token carries it as a value.
    pub fn claim(&self, name: &str) -> Option<&ClaimValue> {
        self.claims.as_deref()?.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    /// Mark a token that carries `gty` (no user consented to it).
    pub(super) fn without_consent(mut self, no_consent: bool) -> Principal {
        self.no_consent = no_consent;
        self
    }

    /// Record the key the token is bound to (its verified `cnf`).
    pub(super) fn bound_to(mut self, binding: Option<Binding>) -> Principal {
        self.binding = binding.map(Box::new);
        self
    }

    /// The key the token is bound to, if it is sender-constrained.
    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_deref()
    }

    /// Was the token issued without a user's consent (client_credentials, `gty`)?
    pub fn without_user_consent(&self) -> bool {
        self.no_consent
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { usize::from(self.ends[i - 1]) };
        // Every boundary was a `str` boundary when `text` was built.
        self.text.get(start..usize::from(self.ends[i])).unwrap_or_default()
    }

    pub fn client_id(&self) -> &str {
        self.part(0)
    }
    pub fn subject(&self) -> &str {
        self.part(1)
    }
    /// Space-separated, as in the token.
    pub fn scope(&self) -> &str {
        self.part(2)
    }
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope().split(' ').any(|s| s == wanted)
    }
    pub fn token_id(&self) -> &str {
        self.part(3)
    }
    pub(super) fn kid(&self) -> &str {
        self.part(4)
    }
    /// The `aud` the token was issued for (RFC 8707): a route checks it against its own.
    pub fn audience(&self) -> &str {
        self.part(5)
    }
    /// The resource owner, when the token acts for a user rather than the client itself.
    pub fn user(&self) -> Option<&str> {
        let sub = self.subject();
        (sub != self.client_id()).then_some(sub)
    }

    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// See the field: the token's own expiry, for what outlives a request.
    pub fn lease_until(&self) -> u64 {
        self.lease_until
    }

    /// The token's own expiry when `expires_at` is a cache deadline.
    pub(super) fn lasting_until(mut self, exp: u64) -> Principal {
        self.lease_until = exp;
        self
    }
    pub(super) fn key_fingerprint(&self) -> [u8; 32] {
        self.key_fingerprint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_introspected_tokens_lease_keeps_its_exp_while_the_cache_deadline_stays() {
        let p = Principal::new("svc", "alice", "read", "j", "", "aud", [0; 32], 1_000).unwrap();
        assert_eq!(p.lease_until(), 1_000, "a JWT: the same moment");
        let p = p.lasting_until(5_000);
        assert_eq!((p.expires_at(), p.lease_until()), (1_000, 5_000));
    }
}
