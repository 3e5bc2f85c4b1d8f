//! Routing with thousands of routes (issue 17): the route index picks, over real sockets,
//! the same route a linear scan would — the longest prefix on a segment boundary, case
//! ignored, host routes before host-less ones, a method filter passing over to a shorter
//! prefix — and the refusals (unknown path, wrong method) are the very answers a small
//! configuration gives.

mod common;

use common::*;
use std::fmt::Write;

/// 40 × 50 public routes `/svc{a}/v{b}`, each to the upstream's base path `/r{a}-{b}` (the
/// echoed path names the route), plus, for some of them, a POST-only `/svc{a}/v{b}/w`
/// (`/m{a}-{b}`), a route of the same prefix for host `h{a}.example` (`/h{a}-{b}`), and
/// PUT-only `/only{a}` routes with nothing under them.
fn many_routes(up: std::net::SocketAddr) -> (String, usize) {
    let mut toml = String::new();
    let mut n = 0;
    let mut route = |toml: &mut String, prefix: &str, base: &str, extra: &str| {
        n += 1;
        write!(toml, "[[route]]\nprefix = \"{prefix}\"\nupstream = \"http://{up}{base}\"\npublic = true\n{extra}")
            .unwrap();
    };
    for a in 0..40 {
        for b in 0..50 {
            route(&mut toml, &format!("/svc{a}/v{b}"), &format!("/r{a}-{b}"), "");
            if b % 5 == 0 {
                route(&mut toml, &format!("/svc{a}/v{b}/w"), &format!("/m{a}-{b}"), "methods = [\"POST\"]\n");
            }
            if b % 7 == 0 {
                route(
                    &mut toml,
                    &format!("/SVC{a}/V{b}/"),
                    &format!("/h{a}-{b}"),
                    &format!("host = \"H{a}.example\"\n"),
                );
            }
        }
        route(&mut toml, &format!("/only{a}"), "/only", "methods = [\"PUT\"]\n");
    }
    (toml, n)
}

async fn send(gw: &TestGateway, method: &str, host: &str, path: &str) -> RawResponse {
    raw_plain(gw.http, &format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"), b"").await
}

#[tokio::test]
async fn thousands_of_routes_each_request_reaches_its_own_route() {
    let up = EchoUpstream::start().await;
    let (routes, n) = many_routes(up.addr);
    assert!(n > 2_400, "{n}");
    let gw = TestGateway::start_with(up.addr, &routes).await;
    assert_eq!(gw.gateway.runtime().config.routes.len(), n + 8, "the generated routes and the test's own");

    // Spread over the whole table, first and last included.
    let picks = (0..40).flat_map(|a| [(a, (a * 7) % 50), (a, 49 - a), (a, 0), (a, 35)]);
    for (a, b) in picks {
        let echo = send(&gw, "GET", "x.example", &format!("/svc{a}/v{b}/items")).await.echo();
        assert_eq!(echo.path, format!("/r{a}-{b}/svc{a}/v{b}/items"));
        // Case ignored; the prefix itself, with and without a trailing slash.
        let echo = send(&gw, "GET", "x.example", &format!("/SvC{a}/V{b}")).await.echo();
        assert_eq!(echo.path, format!("/r{a}-{b}/SvC{a}/V{b}"));
        let echo = send(&gw, "GET", "x.example", &format!("/svc{a}/v{b}/")).await.echo();
        assert_eq!(echo.path, format!("/r{a}-{b}/svc{a}/v{b}/"));

        // The POST-only route below: POST takes it, any other method the shorter prefix.
        let below = format!("/svc{a}/v{b}/w/x");
        let want = if b % 5 == 0 { format!("/m{a}-{b}{below}") } else { format!("/r{a}-{b}{below}") };
        assert_eq!(send(&gw, "POST", "x.example", &below).await.echo().path, want, "POST {below}");
        assert_eq!(send(&gw, "GET", "x.example", &below).await.echo().path, format!("/r{a}-{b}{below}"));

        // The host route wins for its host only (any case, a trailing dot, a port).
        for host in [format!("h{a}.example"), format!("H{a}.EXAMPLE."), format!("h{a}.example:8080")] {
            let echo = send(&gw, "GET", &host, &format!("/svc{a}/v{b}/y")).await.echo();
            let want = if b % 7 == 0 { format!("/h{a}-{b}/svc{a}/v{b}/y") } else { format!("/r{a}-{b}/svc{a}/v{b}/y") };
            assert_eq!(echo.path, want, "{host}");
        }
        let other = format!("h{}.example", (a + 1) % 40);
        assert_eq!(
            send(&gw, "GET", &other, &format!("/svc{a}/v{b}/y")).await.echo().path,
            format!("/r{a}-{b}/svc{a}/v{b}/y")
        );
    }
}

#[tokio::test]
async fn thousands_of_routes_refusals_are_the_small_configs_answers() {
    let up = EchoUpstream::start().await;
    let (routes, _) = many_routes(up.addr);
    let many = TestGateway::start_with(up.addr, &routes).await;
    let few = TestGateway::start_with(
        up.addr,
        "[[route]]\nprefix = \"/only0\"\nupstream = \"http://127.0.0.1:9\"\npublic = true\nmethods = [\"PUT\"]\n",
    )
    .await;
    // Unknown paths (a segment's prefix is not the segment), and a method no route takes.
    for (method, path) in [
        ("GET", "/nope/x"),
        ("GET", "/svc1"),
        ("GET", "/svc1x/v1"),
        ("GET", "/svc1/v1x"),
        ("GET", "/svc1/v50"),
        ("GET", "/svc40/v1"),
        ("GET", "/"),
        ("GET", "/only0"),
        ("DELETE", "/only0/x"),
        ("POST", "/ONLY0"),
    ] {
        let (m, f) = (send(&many, method, "x.example", path).await, send(&few, method, "x.example", path).await);
        assert_eq!(m.status, 404, "{method} {path}");
        assert_eq!((m.status, m.json(), m.header("content-type")), (f.status, f.json(), f.header("content-type")));
    }
    // The PUT-only route takes PUT (its upstream is the echo here).
    assert_eq!(send(&many, "PUT", "x.example", "/Only3/z").await.echo().path, "/only/Only3/z");
}
