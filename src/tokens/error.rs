//! Why a token was refused: one enum for the validator and the external-issuer checks,
//! mapped to the wire (`invalid_token`) by the proxy's error module alone.

/// Why a token was refused. All of them are `invalid_token` on the wire; the detail is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token names no kid or an unknown kid")]
    UnknownKey,
    #[error("token header alg does not match its key")]
    WrongAlgorithm,
    #[error("token typ is not at+jwt")]
    WrongType,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("required claim missing or invalid")]
    BadClaims,
    #[error("token's client is unknown")]
    UnknownClient,
    #[error("token's client is disabled")]
    ClientDisabled,
    #[error("token was revoked")]
    Revoked,
    #[error("token's user is unknown or disabled")]
    UserInactive,
    #[error("token header has a crit parameter")]
    CriticalHeader,
    #[error("token lifetime exceeds the configured maximum")]
    LifetimeTooLong,
    #[error("token was issued before its client was disabled or its secret rotated")]
    ClientReset,
    /// An operator blocked its `jti` or its `sub` through the admin API (issue 16.5).
    #[error("token's jti or subject is blocked")]
    Blocked,
    /// An introspection issuer said the token is not active (or it is not an access token).
    #[error("identity provider says the token is not active")]
    Inactive,
    /// An introspection issuer could not be asked (down, slow, garbled answer): the token
    /// can be shown neither good nor bad, and is refused like an invalid one.
    #[error("identity provider could not be asked about the token")]
    IntrospectionFailed,
    /// The token's `cnf` is not one this gateway can read completely (RFC 7800).
    #[error("token's cnf claim is not a binding the gateway can enforce")]
    BadBinding,
    /// A bound token without proof of possession of its key: no client certificate, or
    /// another one (RFC 8705 §3), or no valid DPoP proof (RFC 9449 §7.1).
    #[error("token is bound to a key the request does not prove possession of")]
    BindingMismatch,
}

impl TokenError {
    /// The `reason` label of `portcullis_bearer_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::WrongAlgorithm => "wrong_algorithm",
            TokenError::WrongType => "wrong_type",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::BadClaims => "bad_claims",
            TokenError::UnknownClient => "unknown_client",
            TokenError::ClientDisabled => "client_disabled",
            TokenError::Revoked => "revoked",
            TokenError::UserInactive => "user_inactive",
            TokenError::CriticalHeader => "critical_header",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::ClientReset => "client_reset",
            TokenError::Blocked => "blocked",
            TokenError::Inactive => "inactive",
            TokenError::IntrospectionFailed => "introspection_failed",
            TokenError::BadBinding => "bad_binding",
            TokenError::BindingMismatch => "binding_mismatch",
        }
    }

    /// The `error_description` sent to the caller: enough to act on, nothing to exploit.
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Expired => "The access token expired",
            _ => "The access token is invalid",
        }
    }
}
