//! The RFC 7662 introspection client (issue 16.3) against real loopback providers: a second
//! portcullis (its `/oauth/introspect`, over TLS with the test CA) and a small fault server
//! that counts what reaches it (500, slow, HTML, 10 MiB, inactive, malformed), which shows
//! the caching and the single flight.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::issuers::introspection::{
    Inactive, IntrospectError, Introspected, IntrospectionClient, IntrospectionSettings,
};

/// `rs`: a resource server allowed to introspect every client's tokens.
fn resource_server() -> String {
    format!(
        "[[client]]\nid = \"rs\"\nsecret_hash = \"{SVC_HASH}\"\ngrants = [\"client_credentials\"]\nscopes = [\"read\"]\nintrospect = true\n"
    )
}

/// A second portcullis as the identity provider, and settings for its introspection endpoint.
async fn idp() -> (EchoUpstream, TestGateway, IntrospectionSettings) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &resource_server()).await;
    let ca = gw.dir.path().join("ca.pem");
    std::fs::write(&ca, &gw.pki.ca_pem).unwrap();
    let mut s = IntrospectionSettings::new(&gw.url("/oauth/introspect"), "rs", SVC_SECRET);
    s.ca_file = Some(ca);
    s.issuer = Some(ISSUER.to_string());
    (up, gw, s)
}

fn client(s: &IntrospectionSettings) -> IntrospectionClient {
    IntrospectionClient::new(s.clone()).unwrap()
}

fn active(outcome: Result<Introspected, IntrospectError>) -> Arc<portcullis::issuers::introspection::ActiveToken> {
    match outcome {
        Ok(Introspected::Active(t)) => t,
        other => panic!("expected an active token, got {other:?}"),
    }
}

#[tokio::test]
async fn a_portcullis_provider_says_what_its_tokens_are() {
    let (_up, idp, s) = idp().await;
    let token = svc_token(&idp).await;
    let t = active(client(&s).introspect(&token).await);
    assert_eq!(t.sub.as_deref(), Some("svc"));
    assert_eq!(t.client_id.as_deref(), Some("svc"));
    assert_eq!(t.scope.as_deref(), Some("read"));
    assert_eq!(t.iss.as_deref(), Some(ISSUER));
    assert_eq!(t.aud, vec![ISSUER.to_string()]);
    assert_eq!(t.jti.as_deref(), claims(&token)["jti"].as_str());
    assert!(t.exp.is_some());

    // Audience and issuer rules, on a real answer.
    let want = |audience: Option<&str>, issuer: Option<&str>| {
        let mut s = s.clone();
        s.audience = audience.map(Into::into);
        s.issuer = issuer.map(Into::into);
        s
    };
    assert!(matches!(client(&want(Some(ISSUER), None)).introspect(&token).await, Ok(Introspected::Active(_))));
    let wrong_aud = client(&want(Some("https://other.api"), None)).introspect(&token).await;
    assert_eq!(wrong_aud, Ok(Introspected::Inactive(Inactive::WrongAudience)));
    let wrong_iss = client(&want(None, Some("https://gateway.test/other"))).introspect(&token).await;
    assert_eq!(wrong_iss, Ok(Introspected::Inactive(Inactive::WrongIssuer)));

    // Garbage and unknown tokens are inactive; an over-long one is not even sent.
    let c = client(&s);
    assert_eq!(c.introspect("not-a-token").await, Ok(Introspected::Inactive(Inactive::NotActive)));
    assert_eq!(c.introspect(&"a".repeat(9000)).await, Ok(Introspected::Inactive(Inactive::Unusable)));
    assert_eq!(c.introspect("").await, Ok(Introspected::Inactive(Inactive::Unusable)));

    // A refresh token introspected by its own client is described, and refused as a bearer.
    let (_, refresh) = password_tokens(&idp).await;
    let mut webapp = s.clone();
    webapp.client_id = "webapp".into();
    let described = client(&webapp).introspect(&refresh).await;
    assert_eq!(described, Ok(Introspected::Inactive(Inactive::NotAccessToken)));

    // Wrong credentials: the provider's 401 is an error, never an active token.
    let mut wrong = s.clone();
    wrong.client_secret = "nope".into();
    assert_eq!(client(&wrong).introspect(&token).await, Err(IntrospectError::Status(401)));
    // The provider's certificate is checked: without the test CA, nothing is sent.
    let mut untrusted = s.clone();
    untrusted.ca_file = None;
    assert!(matches!(client(&untrusted).introspect(&token).await, Err(IntrospectError::Transport(_))));
}

#[tokio::test]
async fn a_revocation_at_the_provider_shows_within_the_cache_bound() {
    let (_up, idp, mut s) = idp().await;
    s.max_cache = Duration::from_secs(1);
    let c = client(&s);
    let token = svc_token(&idp).await;
    assert!(matches!(c.introspect(&token).await, Ok(Introspected::Active(_))));
    let resp = idp
        .client()
        .post(idp.url("/oauth/revoke"))
        .basic_auth("svc", Some(SVC_SECRET))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let gone = within(Duration::from_secs(10), async || {
        c.introspect(&token).await == Ok(Introspected::Inactive(Inactive::NotActive))
    })
    .await;
    let took = gone.expect("still active 10 s after the revocation");
    assert!(took < Duration::from_secs(5), "took {took:?} with a 1 s cache bound");
    assert!(c.stats().requests("active") >= 1);
    assert_eq!(c.stats().requests("inactive"), 1, "the inactive answer is then cached");
}

// ---------------------------------------------------------------------------------------
// A provider that misbehaves on purpose, counting requests per path.

struct Faulty {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// Authorization header and body of the last request.
    last: Arc<Mutex<Option<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Faulty {
    async fn start() -> Faulty {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let last: Arc<Mutex<Option<(String, String)>>> = Arc::default();
        let (h, l) = (hits.clone(), last.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (h, l) = (h.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (h, l) = (h.clone(), l.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            *l.lock().unwrap() = Some((auth, String::from_utf8_lossy(&body).into_owned()));
                            Ok::<_, std::convert::Infallible>(fault(&path).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Faulty { addr, hits, last, task }
    }

    fn settings(&self, path: &str) -> IntrospectionSettings {
        let mut s = IntrospectionSettings::new(&format!("http://{}{path}", self.addr), "rs", "s3cret");
        s.timeout = Duration::from_millis(500);
        s.max_response_bytes = 64 * 1024;
        s.negative_cache = Duration::from_secs(60);
        s
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn answer(status: u16, content_type: &str, body: impl Into<Bytes>) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut().insert("content-type", content_type.parse().unwrap());
    resp
}

async fn fault(path: &str) -> hyper::Response<Full<Bytes>> {
    let exp = portcullis::tokens::now_secs() + 600;
    let j = "application/json";
    match path {
        "/500" => answer(500, j, r#"{"error":"server_error"}"#),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            answer(200, j, format!(r#"{{"active":true,"exp":{exp}}}"#))
        }
        "/html" => answer(200, "text/html", "<html><body>Sign in</body></html>"),
        "/html-as-json" => answer(200, j, "<html><body>Sign in</body></html>"),
        "/huge" => answer(200, j, vec![b' '; 10 * 1024 * 1024]),
        "/inactive" => answer(200, j, r#"{"active":false}"#),
        "/string-active" => answer(200, j, r#"{"active":"true"}"#),
        "/redirect" => {
            let mut resp = answer(302, j, "");
            resp.headers_mut().insert("location", "/active".parse().unwrap());
            resp
        }
        // Active, after a pause long enough for concurrent lookups to pile up.
        "/active" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            answer(200, "application/json; charset=utf-8", format!(r#"{{"active":true,"sub":"u1","exp":{exp}}}"#))
        }
        _ => answer(404, j, "{}"),
    }
}

#[tokio::test]
async fn provider_faults_are_bounded_errors_and_are_not_asked_again_at_once() {
    let f = Faulty::start().await;
    let cases: [(&str, IntrospectError); 6] = [
        ("/500", IntrospectError::Status(500)),
        ("/html", IntrospectError::NotJson),
        ("/html-as-json", IntrospectError::Malformed),
        ("/huge", IntrospectError::TooLarge),
        ("/string-active", IntrospectError::Malformed),
        ("/redirect", IntrospectError::Status(302)),
    ];
    for (path, want) in cases {
        let c = IntrospectionClient::new(f.settings(path)).unwrap();
        assert_eq!(c.introspect("tok-a").await, Err(want.clone()), "{path}");
        assert_eq!(c.introspect("tok-a").await, Err(want), "{path}, again");
        assert_eq!(f.hits(path), 1, "{path}: the failure is remembered for the negative time");
        assert_eq!(c.stats().cache_hits, 1);
    }
    assert_eq!(f.hits("/redirect"), 1);
    assert_eq!(f.hits("/active"), 0, "a redirect is not followed");

    let c = IntrospectionClient::new(f.settings("/slow")).unwrap();
    let start = Instant::now();
    assert_eq!(c.introspect("tok-a").await, Err(IntrospectError::Timeout));
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?} with a 500 ms timeout", start.elapsed());
    assert_eq!(c.stats().requests("timeout"), 1);

    // Nobody listening.
    let port = free_port();
    let mut s = f.settings("/x");
    s.endpoint = format!("http://127.0.0.1:{port}/introspect");
    let c = IntrospectionClient::new(s).unwrap();
    assert!(matches!(c.introspect("tok-a").await, Err(IntrospectError::Transport(_))));
}

#[tokio::test]
async fn answers_are_cached_by_token_and_concurrent_lookups_share_one_request() {
    let f = Faulty::start().await;
    let c = Arc::new(IntrospectionClient::new(f.settings("/active")).unwrap());
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.introspect("tok-shared").await })
        })
        .collect();
    for l in lookups {
        assert_eq!(active(l.await.unwrap()).sub.as_deref(), Some("u1"));
    }
    assert_eq!(f.hits("/active"), 1, "twenty concurrent lookups, one request");
    let stats = c.stats();
    assert_eq!(stats.requests("active"), 1);
    assert_eq!(stats.joined + stats.cache_hits, 19, "{stats:?}");

    // Cached: no new request for the same token; another token is asked for.
    active(c.introspect("tok-shared").await);
    assert_eq!(f.hits("/active"), 1);
    active(c.introspect("tok-other").await);
    assert_eq!(f.hits("/active"), 2);

    // What reached the provider: the token in a form body with the hint, and the client's
    // credentials form-encoded then Basic (RFC 6749 §2.3.1).
    let (auth, body) = f.last.lock().unwrap().clone().unwrap();
    assert_eq!(body, "token=tok-other&token_type_hint=access_token");
    assert_eq!(auth, format!("Basic {}", b64_std("rs:s3cret")));

    // Inactive answers are cached for the negative time.
    let c = IntrospectionClient::new(f.settings("/inactive")).unwrap();
    for _ in 0..3 {
        assert_eq!(c.introspect("tok-x").await, Ok(Introspected::Inactive(Inactive::NotActive)));
    }
    assert_eq!(f.hits("/inactive"), 1);

    // Zero cache times: every lookup asks again.
    let mut s = f.settings("/inactive");
    s.negative_cache = Duration::ZERO;
    let c = IntrospectionClient::new(s).unwrap();
    c.introspect("tok-y").await.unwrap();
    c.introspect("tok-y").await.unwrap();
    assert_eq!(f.hits("/inactive"), 3);
}

#[tokio::test]
async fn a_flood_of_distinct_tokens_is_bounded_by_the_concurrency_limit() {
    let f = Faulty::start().await;
    let mut s = f.settings("/active");
    s.max_concurrent = 2;
    let c = Arc::new(IntrospectionClient::new(s).unwrap());
    let lookups: Vec<_> = (0..10)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.introspect(&format!("tok-{i}")).await })
        })
        .collect();
    let mut busy = Vec::new();
    for (i, l) in lookups.into_iter().enumerate() {
        match l.await.unwrap() {
            Ok(Introspected::Active(_)) => {}
            Err(IntrospectError::Busy) => busy.push(i),
            other => panic!("{other:?}"),
        }
    }
    assert!(!busy.is_empty(), "ten lookups at once over two slots: some must be refused at once");
    assert_eq!(f.hits("/active"), 10 - busy.len(), "a refused lookup sends nothing");
    assert_eq!(c.stats().requests("busy"), busy.len() as u64);
    // Busy is not the provider's fault: not remembered, the next lookup is sent.
    assert!(matches!(c.introspect(&format!("tok-{}", busy[0])).await, Ok(Introspected::Active(_))));
}

#[tokio::test]
async fn a_lookup_whose_caller_went_away_leaves_nothing_behind() {
    let f = Faulty::start().await;
    let mut s = f.settings("/slow");
    s.timeout = Duration::from_secs(30);
    let c = Arc::new(IntrospectionClient::new(s).unwrap());
    let lookups: Vec<_> = (0..3)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.introspect(&format!("tok-{}", i % 2)).await })
        })
        .collect();
    wait_until("the lookups reach the provider", || async { f.hits("/slow") == 2 }).await;
    assert_eq!(c.in_flight(), 2, "two distinct tokens under way");
    for l in &lookups {
        l.abort();
    }
    for l in lookups {
        assert!(l.await.unwrap_err().is_cancelled());
    }
    assert_eq!(c.in_flight(), 0, "cancelled lookups leave the in-flight map");
    assert_eq!(c.stats().requests.iter().sum::<u64>(), 0, "and count no outcome");
}

fn b64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}
