//! GET /.well-known/jwks.json (RFC 7517 §5): the public half of every listed signing
//! key, so resource servers can verify our tokens. Verify-only keys are published too
//! (tokens they signed are still valid); HS256 secrets never are.

use http::{Request, Response};

use super::metadata::{check_method, document_response};
use crate::http::Body;
use crate::server::context::Ctx;

pub fn handle<B>(ctx: &Ctx<'_>, req: &Request<B>) -> Response<Body> {
    match check_method(req) {
        Ok(()) => document_response(&ctx.rt.keys.jwks()),
        Err(e) => e.into_response(),
    }
}
