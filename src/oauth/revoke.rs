//! POST /oauth/revoke (RFC 7009): a client revokes one of its own tokens. Revoking an
//! access token refuses it on the proxy path from the next request on (the validation
//! cache is evicted, here and through the store on every replica); revoking a refresh
//! token revokes its whole family, access tokens included.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::Body as HttpBody;

use super::client_auth;
use super::error::{BadRequest, OAuthError};
use super::grants::revocation::{self, Reason, Revoke};
use super::token::read_post;
use super::{limited, refused};
use crate::http::{Body, full};
use crate::ratelimit::Endpoint;
use crate::server::context::{Ctx, Outcome};
use crate::state::Gateway;
use crate::store::IssuedAccess;
use crate::tokens::validate::inspect;
use crate::tokens::{now_secs, sha256};

/// Answer one revocation request (rate limited per IP like the token endpoint).
pub async fn handle<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>) -> (Response<Body>, Outcome)
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut outcome = Outcome::default();
    match limited(gw, ctx, Endpoint::Revoke, revoke(gw, ctx, req, &mut outcome)).await {
        // §2.2: 200 whether or not the token was valid or known.
        Ok(()) => {
            let mut resp = Response::new(full(Bytes::new()));
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            (resp, outcome)
        }
        Err(e) => {
            let resp = refused(ctx, Endpoint::Revoke, e, &mut outcome);
            (resp, outcome)
        }
    }
}

async fn revoke<B>(gw: &Gateway, ctx: &Ctx<'_>, req: Request<B>, outcome: &mut Outcome) -> Result<(), OAuthError>
where
    B: HttpBody<Data = Bytes> + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, params) = read_post(ctx, req).await?;
    let rt = ctx.rt.clone();
    let client =
        client_auth::authenticate(gw, &rt, ctx.source, &parts.headers, &params, ctx.peer.client_cert()).await?;
    outcome.client_id = Some(client.id.clone());
    let token = params.require("token")?;
    let now = now_secs();
    // The hint only orders the lookups (§2.1); both kinds are always tried.
    let refresh_first = params.get("token_type_hint") == Some("refresh_token");
    for kind in if refresh_first { [Kind::Refresh, Kind::Access] } else { [Kind::Access, Kind::Refresh] } {
        match kind {
            Kind::Access => {
                let Ok(claims) = inspect(token, &rt.keys, now) else { continue };
                if claims.client_id != client.id {
                    return Err(BadRequest::NotYourToken.into());
                }
                let access = IssuedAccess { jti: claims.jti, expires_at: claims.exp };
                revocation::revoke(gw, Revoke::Access(access), Reason::RevokeEndpoint).await?;
                tracing::info!(client_id = %client.id, "access token revoked");
                return Ok(());
            }
            Kind::Refresh => {
                let Some(stored) = gw.store.get_refresh(sha256(token.as_bytes()), now).await? else { continue };
                let grant = stored.grant;
                if grant.client_id != client.id {
                    return Err(BadRequest::NotYourToken.into());
                }
                let revoked = revocation::revoke(gw, Revoke::Family(&grant.family), Reason::RevokeEndpoint).await?;
                tracing::info!(client_id = %client.id, access_tokens = revoked, "refresh token family revoked");
                return Ok(());
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Kind {
    Access,
    Refresh,
}
