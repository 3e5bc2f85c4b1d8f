//! Revoking a refresh family or one access token: the store, then this replica's validation
//! cache (other replicas hear it through the store's feed), then the metric. Used by the
//! revocation endpoint and by the grants that detect a replay.

use crate::oauth::error::OAuthError;
use crate::state::Gateway;
use crate::store::IssuedAccess;

/// What to revoke.
pub enum Revoke<'a> {
    /// A refresh family, with every access token issued from it.
    Family(&'a str),
    /// A family the store already revoked in the same atomic step that detected a replay;
    /// these are its access tokens.
    Revoked(Vec<IssuedAccess>),
    /// One access token.
    Access(IssuedAccess),
}

/// Why, as the `reason` label of the revocation metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A client called the revocation endpoint (RFC 7009).
    RevokeEndpoint,
    /// An authorization code was presented twice (RFC 6749 §4.1.2).
    CodeReplay,
    /// A spent refresh token was presented again (RFC 9700 §4.14.2).
    RefreshReuse,
    /// The refresh token's user was disabled or removed.
    UserInactive,
    /// The refresh token was issued before its client was disabled, removed or had its
    /// secret rotated (issue 19.8).
    ClientReset,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RevokeEndpoint => "revoke_endpoint",
            Reason::CodeReplay => "code_replay",
            Reason::RefreshReuse => "refresh_reuse",
            Reason::ClientReset => "client_reset",
            Reason::UserInactive => "user_inactive",
        }
    }
}

/// Revoke `what` for `reason`; returns how many access tokens were revoked. Once this
/// returns, the proxy path of this replica refuses those access tokens.
pub async fn revoke(gw: &Gateway, what: Revoke<'_>, reason: Reason) -> Result<usize, OAuthError> {
    let (family, access) = match what {
        Revoke::Family(family) => (true, gw.store.revoke_family(family).await?),
        Revoke::Revoked(access) => (true, access),
        Revoke::Access(access) => {
            gw.store.revoke_access(access.clone()).await?;
            (false, vec![access])
        }
    };
    gw.revoke_access(&access).await;
    if family {
        gw.metrics.revoked("refresh_family", reason.as_str(), 1);
    }
    gw.metrics.revoked("access_token", reason.as_str(), access.len() as u64);
    Ok(access.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_keep_their_metric_labels() {
        let labels = [Reason::RevokeEndpoint, Reason::CodeReplay, Reason::RefreshReuse, Reason::UserInactive]
            .map(Reason::as_str);
        assert_eq!(labels, ["revoke_endpoint", "code_replay", "refresh_reuse", "user_inactive"]);
    }
}
