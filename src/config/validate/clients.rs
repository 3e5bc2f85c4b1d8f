//! `[[client]]` and `[[user]]`: who may ask for tokens, and who may log in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{AssertionKey, Client, ClientAuth, GrantType, TokenBinding, User};
use crate::config::raw::{RawClient, RawUser};

/// Long enough for a retried or concurrent refresh, short enough that a stolen, already
/// rotated token is rarely still worth anything (Auth0's and Hydra's defaults are similar).
const DEFAULT_REFRESH_REUSE_INTERVAL: Duration = Duration::from_secs(10);

/// A client assertion is made for one request: minutes are plenty, and its `jti` is
/// remembered (to refuse a replay) for as long as it may live.
const DEFAULT_MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// The ceiling an operator may raise it to (some libraries sign for an hour).
const MAX_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

impl Validator<'_> {
    pub(super) fn clients(
        &self,
        raw: &[Spanned<RawClient>],
        default_lifetime: Duration,
        refresh_lifetime: Duration,
    ) -> Result<HashMap<String, Arc<Client>>, ConfigError> {
        let mut clients = HashMap::new();
        for c in raw {
            let span = c.span();
            let c = c.get_ref();
            let id = c.id.get_ref();
            if id.is_empty() || id.chars().any(|ch| ch.is_control()) {
                return Err(self.err(c.id.span(), "client id must be non-empty printable text"));
            }
            if clients.contains_key(id) {
                return Err(self.err(c.id.span(), format!("duplicate client id {id:?}")));
            }
            // private_key_jwt has its own keys (clients.rs); every other method, mtls.rs.
            let key_jwt = c.token_endpoint_auth_method.as_ref().is_some_and(|m| m.get_ref() == "private_key_jwt")
                || c.jwks_file.is_some()
                || c.public_key.is_some()
                || c.max_assertion_lifetime.is_some();
            let auth = if key_jwt {
                self.client_auth(c)?
            } else {
                let secret = c.secret_hash.as_ref().map(|h| self.argon2id(h, "secret_hash")).transpose()?;
                self.client_auth_method(c, secret)?
            };
            let mut grants = HashSet::new();
            let mut implicit = false;
            for g in &c.grants {
                if g.get_ref() == "implicit" {
                    // RFC 9700 §2.1.2: the token travels in the URL fragment (history, logs,
                    // referrers) and cannot be sender-constrained.
                    self.warn(
                        g.span(),
                        format!(
                            "client {id:?}: the implicit grant is deprecated (RFC 9700 §2.1.2: SHOULD NOT be used); \
                             use authorization_code with PKCE"
                        ),
                    );
                    implicit = true;
                    continue;
                }
                let grant = GrantType::parse(g.get_ref()).ok_or_else(|| {
                    self.err(g.span(), format!("unknown grant {:?}: use client_credentials, password, authorization_code, refresh_token or implicit", g.get_ref()))
                })?;
                if auth == ClientAuth::Public && grant.needs_confidential_client() {
                    return Err(self.err(
                        g.span(),
                        format!("grant {:?} needs a confidential client: set secret_hash", g.get_ref()),
                    ));
                }
                if grant == GrantType::Password {
                    self.warn(
                        g.span(),
                        format!(
                            "client {id:?}: the password grant is deprecated (RFC 9700 §2.4: MUST NOT be used; the \
                             client sees the user's password); use authorization_code with PKCE"
                        ),
                    );
                }
                grants.insert(grant);
            }
            // A refresh token is only ever issued alongside an access token from another grant.
            if !implicit
                && let Some(first) = c.grants.first()
                && grants.iter().all(|g| *g == GrantType::RefreshToken)
            {
                return Err(self.err(
                    first.span(),
                    format!(
                        "client {id:?}: grants = [\"refresh_token\"] alone can issue nothing (a refresh token comes \
                         from another grant): add that grant"
                    ),
                ));
            }
            // No grant at all: perhaps a client parked on purpose, but it can obtain nothing.
            if c.grants.is_empty() && !implicit {
                self.warn(c.id.span(), format!("client {id:?} has no grants: it can obtain no token"));
            }
            let scopes = self.scopes(&c.scopes)?;
            let default_scopes = match &c.default_scopes {
                None => scopes.clone(),
                Some(list) => {
                    let d = self.scopes(list)?;
                    if let Some(bad) = list.iter().find(|s| !scopes.contains(s.get_ref())) {
                        return Err(self.err(
                            bad.span(),
                            format!("default scope {:?} is not in the client's scopes", bad.get_ref()),
                        ));
                    }
                    d
                }
            };
            let user = match &c.user {
                Some(u) if u.get_ref().trim().is_empty() => return Err(self.err(u.span(), "user must not be empty")),
                Some(u) => Some(u.get_ref().clone()),
                None => None,
            };
            if user.as_deref() == Some(id.as_str()) {
                return Err(self.err(span, "a client's linked user must differ from its id"));
            }
            if c.refresh_on_client_credentials == Some(true) && !grants.contains(&GrantType::RefreshToken) {
                return Err(self.err(span, "refresh_on_client_credentials needs \"refresh_token\" in grants"));
            }
            let rotate_refresh_tokens = match &c.rotate_refresh_tokens {
                Some(r) if !*r.get_ref() && auth == ClientAuth::Public => {
                    return Err(self.err(
                        r.span(),
                        "rotate_refresh_tokens = false needs a confidential client (RFC 9700 section 4.14.2)",
                    ));
                }
                Some(r) => *r.get_ref(),
                None => true,
            };
            // Zero is allowed here (strict reuse detection), unlike other durations.
            let refresh_reuse_interval =
                self.duration_or_zero(&c.refresh_reuse_interval, DEFAULT_REFRESH_REUSE_INTERVAL)?;
            // The stores keep a rotation's time in whole seconds: "500ms" would act as "0s"
            // and "1500ms" as "1s", so a fraction is refused rather than silently rounded.
            if let Some(r) = &c.refresh_reuse_interval
                && refresh_reuse_interval.subsec_nanos() != 0
            {
                return Err(self.err(
                    r.span(),
                    format!(
                        "refresh_reuse_interval is counted in whole seconds: {:?} is not (write e.g. \"2s\")",
                        r.get_ref()
                    ),
                ));
            }
            if c.introspect == Some(true) && auth == ClientAuth::Public {
                return Err(self.err(span, "introspect = true needs a confidential client (RFC 7662 section 2.1)"));
            }
            let redirect_uris = c.redirect_uris.iter().map(|r| self.redirect_uri(r)).collect::<Result<Vec<_>, _>>()?;
            if redirect_uris.is_empty() && (implicit || grants.contains(&GrantType::AuthorizationCode)) {
                return Err(self.err(span, "authorization_code and implicit need at least one redirect_uris entry"));
            }
            let token_lifetime = self.duration(&c.token_lifetime, default_lifetime)?;
            if grants.contains(&GrantType::RefreshToken)
                && token_lifetime > refresh_lifetime
                && let Some(l) = &c.token_lifetime
            {
                self.warn(
                    l.span(),
                    format!("client {id:?}: token_lifetime is longer than refresh_token_lifetime: its refresh tokens expire first"),
                );
            }
            let cors_origins = c.cors_origins.iter().map(|o| self.origin(o)).collect::<Result<Vec<_>, _>>()?;
            let token_binding = self.token_binding(&c.token_binding)?;
            // A token sent in a redirect's fragment is issued to no connection and no proof.
            if implicit && let Some(b) = &c.token_binding {
                return Err(self.err(
                    b.span(),
                    format!("client {id:?}: token_binding cannot bind implicit-grant tokens; remove \"implicit\" from grants"),
                ));
            }
            let client = Client {
                cors_origins,
                id: id.clone(),
                name: c.name.clone().unwrap_or_else(|| id.clone()),
                auth,
                grants,
                scopes,
                default_scopes,
                user,
                enabled: c.enabled.unwrap_or(true),
                token_lifetime,
                redirect_uris,
                first_party: c.first_party.unwrap_or(false),
                implicit,
                refresh_on_client_credentials: c.refresh_on_client_credentials.unwrap_or(false),
                refresh_reuse_interval,
                rotate_refresh_tokens,
                introspect: c.introspect.unwrap_or(false),
                secret_rotation_revokes: c.secret_rotation_revokes.unwrap_or(false),
                token_binding,
            };
            clients.insert(id.clone(), Arc::new(client));
        }
        Ok(clients)
    }

    /// How the client authenticates: `token_endpoint_auth_method` when given, else a
    /// secret when it has one, else none (public). `private_key_jwt` names its key file
    /// (`jwks_file` or `public_key`, exactly one) and has no secret.
    fn client_auth(&self, c: &RawClient) -> Result<ClientAuth, ConfigError> {
        let method = c.token_endpoint_auth_method.as_ref();
        let jwt = method.is_some_and(|m| m.get_ref() == "private_key_jwt");
        if !jwt {
            for (name, v) in [
                ("jwks_file", &c.jwks_file),
                ("public_key", &c.public_key),
                ("max_assertion_lifetime", &c.max_assertion_lifetime),
            ] {
                if let Some(v) = v {
                    return Err(
                        self.err(v.span(), format!("{name} needs token_endpoint_auth_method = \"private_key_jwt\""))
                    );
                }
            }
        }
        match (method.map(|m| (m.get_ref().as_str(), m.span())), &c.secret_hash) {
            (None | Some(("client_secret_basic" | "client_secret_post", _)), Some(h)) => {
                Ok(ClientAuth::Confidential { secret_hash: self.argon2id(h, "secret_hash")? })
            }
            (Some(("client_secret_basic" | "client_secret_post", span)), None) => {
                Err(self.err(span, "client_secret_basic and client_secret_post need secret_hash"))
            }
            (None | Some(("none", _)), None) => Ok(ClientAuth::Public),
            (Some(("none", _)), Some(h)) => Err(self.err(h.span(), "token_endpoint_auth_method = \"none\" takes no secret_hash")),
            (Some(("private_key_jwt", _)), Some(h)) => {
                Err(self.err(h.span(), "private_key_jwt takes no secret_hash: the client signs with its private key"))
            }
            (Some(("private_key_jwt", span)), None) => {
                let (file, jwks) = match (&c.jwks_file, &c.public_key) {
                    (Some(f), None) => (f, true),
                    (None, Some(f)) => (f, false),
                    _ => return Err(self.err(span, "private_key_jwt needs exactly one of jwks_file and public_key")),
                };
                if file.get_ref().trim().is_empty() {
                    return Err(self.err(file.span(), "the key file path is empty"));
                }
                let max_lifetime = self.duration(&c.max_assertion_lifetime, DEFAULT_MAX_ASSERTION_LIFETIME)?;
                if let Some(v) = &c.max_assertion_lifetime
                    && max_lifetime > MAX_ASSERTION_LIFETIME
                {
                    return Err(self.err(v.span(), "max_assertion_lifetime may be at most 1h (RFC 7523 asks for short-lived assertions)"));
                }
                Ok(ClientAuth::PrivateKeyJwt(AssertionKey {
                    file: self.path(file.get_ref()),
                    jwks,
                    max_lifetime,
                    line: self.line_of(file.span().start),
                }))
            }
            (Some((other, span)), _) => Err(self.err(
                span,
                format!("unknown token_endpoint_auth_method {other:?}: use client_secret_basic, client_secret_post, none or private_key_jwt"),
            )),
        }
    }

    /// `token_binding`: `"mtls"` or `"dpop"`.
    fn token_binding(&self, raw: &Option<Spanned<String>>) -> Result<Option<TokenBinding>, ConfigError> {
        let Some(b) = raw else { return Ok(None) };
        match b.get_ref().as_str() {
            "mtls" => Ok(Some(TokenBinding::Mtls)),
            "dpop" => Ok(Some(TokenBinding::Dpop)),
            other => Err(self.err(b.span(), format!("unknown token_binding {other:?}: use \"mtls\" or \"dpop\""))),
        }
    }

    /// `[[user]]`; a username may not also be a client id: a user's token and the
    /// client's own token would be indistinguishable to upstreams.
    pub(super) fn users(
        &self,
        raw: &[Spanned<RawUser>],
        clients: &HashMap<String, Arc<Client>>,
    ) -> Result<HashMap<String, Arc<User>>, ConfigError> {
        let mut users = HashMap::new();
        for u in raw {
            let u = u.get_ref();
            let name = u.username.get_ref();
            if name.is_empty() || name.chars().any(|c| c.is_control()) || name.len() > 256 {
                return Err(self.err(u.username.span(), "username must be 1-256 printable characters"));
            }
            if users.contains_key(name) {
                return Err(self.err(u.username.span(), format!("duplicate user {name:?}")));
            }
            let password_hash = match &u.password_hash {
                Some(h) => Some(self.argon2id(h, "password_hash")?),
                None => None,
            };
            let user = User {
                username: name.clone(),
                password_hash,
                display_name: u.display_name.clone().unwrap_or_else(|| name.clone()),
                enabled: u.enabled.unwrap_or(true),
            };
            users.insert(name.clone(), Arc::new(user));
        }
        if let Some(u) = raw.iter().find(|u| clients.contains_key(u.get_ref().username.get_ref())) {
            let name = u.get_ref().username.get_ref();
            return Err(self.err(u.get_ref().username.span(), format!("username {name:?} is also a client id")));
        }
        Ok(users)
    }

    /// A client's `user` must be a `[[user]]`: its tokens act as that user, and a name that
    /// exists nowhere (a typo) would act as nobody anyone can disable (issue: RFC 9700 §4.15).
    pub(super) fn linked_users(
        &self,
        raw: &[Spanned<RawClient>],
        users: &HashMap<String, Arc<User>>,
    ) -> Result<(), ConfigError> {
        for c in raw {
            let c = c.get_ref();
            if let Some(u) = &c.user
                && !users.contains_key(u.get_ref())
            {
                return Err(self.err(
                    u.span(),
                    format!(
                        "client {:?}: user {:?} is no [[user]]: its tokens would act as a user nobody can disable",
                        c.id.get_ref(),
                        u.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn argon2id(&self, h: &Spanned<String>, field: &str) -> Result<String, ConfigError> {
        let parsed = argon2::PasswordHash::new(h.get_ref()).map_err(|e| {
            self.err(h.span(), format!("{field} is not a PHC string ({e}): make one with `portcullis hash-secret`"))
        })?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(
                self.err(h.span(), format!("{field} must be an argon2id hash: make one with `portcullis hash-secret`"))
            );
        }
        Ok(h.get_ref().clone())
    }

    /// RFC 6749 §3.1.2: absolute, no fragment; plain http only for loopback (RFC 8252 §7.3).
    fn redirect_uri(&self, v: &Spanned<String>) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let url = url::Url::parse(s).map_err(|e| self.err(v.span(), format!("bad redirect_uri {s:?}: {e}")))?;
        if url.fragment().is_some() {
            return Err(self.err(v.span(), format!("bad redirect_uri {s:?}: a fragment is not allowed")));
        }
        if url.scheme() == "http" && !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
            return Err(
                self.err(v.span(), format!("bad redirect_uri {s:?}: http is only allowed for loopback; use https"))
            );
        }
        Ok(s.clone())
    }

    /// A browser origin as sent in `Origin` (RFC 6454 §6.1): `scheme://host[:port]`, no
    /// path, compared in its serialised (lower-case, default port dropped) form. `*` and
    /// `null` are refused: CORS here answers one listed origin at a time.
    fn origin(&self, v: &Spanned<String>) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let bad = || self.err(v.span(), format!("bad cors_origins entry {s:?}: write scheme://host[:port], no path"));
        let url = url::Url::parse(s).map_err(|_| bad())?;
        let plain = url.path() == "/" && !s.ends_with('/') && url.query().is_none() && url.fragment().is_none();
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !plain || !url.username().is_empty()
        {
            return Err(bad());
        }
        Ok(url.origin().ascii_serialization())
    }
}
