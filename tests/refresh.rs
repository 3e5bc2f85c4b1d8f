//! Refresh-token rotation that tolerates real clients (issue 19.1): a reuse interval during
//! which a just-rotated token gets a sibling, strict reuse detection after it, and the
//! confidential clients' opt-out from rotation.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Extra clients: `strict` (no reuse interval), `brief` (one second), `steady` (no rotation).
fn extra_clients() -> String {
    let client = |id: &str, extra: &str| {
        format!(
            "[[client]]\nid = \"{id}\"\nsecret_hash = \"{SVC_HASH}\"\ngrants = [\"password\", \"refresh_token\"]\nscopes = [\"read\"]\n{extra}\n"
        )
    };
    [
        client("strict", "refresh_reuse_interval = \"0s\""),
        client("brief", "refresh_reuse_interval = \"1s\""),
        client("steady", "rotate_refresh_tokens = false"),
    ]
    .concat()
}

async fn start() -> (EchoUpstream, TestGateway) {
    let up = EchoUpstream::start().await;
    let gw = TestGateway::start_with(up.addr, &extra_clients()).await;
    (up, gw)
}

/// Access and refresh token of alice through `client`'s password grant.
async fn login(gw: &TestGateway, client: &str) -> (String, String) {
    let form = [("grant_type", "password"), ("username", "alice"), ("password", ALICE_PASSWORD)];
    let (status, v) = token_request(gw, Some((client, SVC_SECRET)), &form).await;
    assert_eq!(status, 200, "{v}");
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

async fn refresh(gw: &TestGateway, client: &str, rt: &str) -> (u16, Value) {
    token_request(gw, Some((client, SVC_SECRET)), &[("grant_type", "refresh_token"), ("refresh_token", rt)]).await
}

fn tokens(v: &Value) -> (String, String) {
    (v["access_token"].as_str().unwrap().to_string(), v["refresh_token"].as_str().unwrap().to_string())
}

/// Two tasks refresh with the same token at once (a multi-threaded client): both succeed,
/// with different refresh tokens of the same family; none of the four tokens is revoked,
/// and either refresh token rotates on. Revoking one then revokes the family, siblings too.
#[tokio::test]
async fn concurrent_refreshes_with_one_token_both_succeed_within_the_reuse_interval() {
    let (_up, gw) = start().await;
    let (at0, rt0) = login(&gw, "webapp").await;
    let (a, b) = tokio::join!(refresh(&gw, "webapp", &rt0), refresh(&gw, "webapp", &rt0));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let ((at1, rt1), (at2, rt2)) = (tokens(&a.1), tokens(&b.1));
    assert_ne!(rt1, rt2, "a sibling, not the same secret (only hashes are stored)");
    for at in [&at0, &at1, &at2] {
        assert_eq!(api_status(&gw, at).await, 200);
    }
    // A retry after a lost answer, still within the interval: yet another sibling.
    let (status, v) = refresh(&gw, "webapp", &rt0).await;
    assert_eq!(status, 200, "{v}");
    let (_, rt3) = tokens(&v);
    let (status, v) = refresh(&gw, "webapp", &rt1).await;
    assert_eq!(status, 200, "the first successor rotates on: {v}");
    let (status, v) = refresh(&gw, "webapp", &rt2).await;
    assert_eq!(status, 200, "so does the sibling: {v}");

    // One family: revoking a sibling revokes every member.
    let resp = gw
        .client()
        .post(gw.url("/oauth/revoke"))
        .basic_auth("webapp", Some(SVC_SECRET))
        .form(&[("token", rt3.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for at in [&at0, &at1, &at2] {
        assert_eq!(api_status(&gw, at).await, 401);
    }
}

/// `refresh_reuse_interval = "0s"`: the second of two concurrent refreshes is reuse, and
/// revokes the family, winner included (the strict behaviour of before).
#[tokio::test]
async fn with_no_reuse_interval_a_second_use_revokes_the_family() {
    let (_up, gw) = start().await;
    let (_, rt0) = login(&gw, "strict").await;
    let (a, b) = tokio::join!(refresh(&gw, "strict", &rt0), refresh(&gw, "strict", &rt0));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "{a:?} {b:?}");
    let winner = if a.0 == 200 { &a.1 } else { &b.1 };
    let (at1, rt1) = tokens(winner);
    assert_eq!(api_status(&gw, &at1).await, 401, "the family is revoked, the winner's tokens too");
    assert_eq!(refresh(&gw, "strict", &rt1).await.0, 400);
}

/// Outside the interval, presenting the spent token is reuse again: the family is revoked
/// (the wait is the interval's length, not a speed claim).
#[tokio::test]
async fn reuse_after_the_interval_revokes_the_family() {
    let (_up, gw) = start().await;
    let (at0, rt0) = login(&gw, "brief").await;
    let (status, v) = refresh(&gw, "brief", &rt0).await;
    assert_eq!(status, 200, "{v}");
    let (at1, rt1) = tokens(&v);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, v) = refresh(&gw, "brief", &rt0).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_grant")));
    for at in [&at0, &at1] {
        assert_eq!(api_status(&gw, at).await, 401);
    }
    assert_eq!(refresh(&gw, "brief", &rt1).await.0, 400, "the successor died with its family");
}

/// `rotate_refresh_tokens = false` (a confidential client, RFC 9700 §4.14.2): the same
/// refresh token keeps working, no new one is issued, and revoking it still revokes the
/// access tokens it gave.
#[tokio::test]
async fn a_confidential_client_may_opt_out_of_rotation() {
    let (_up, gw) = start().await;
    let (_, rt) = login(&gw, "steady").await;
    let mut access = Vec::new();
    for _ in 0..3 {
        let (status, v) = refresh(&gw, "steady", &rt).await;
        assert_eq!(status, 200, "{v}");
        assert!(v.get("refresh_token").is_none(), "no new refresh token: {v}");
        let at = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(api_status(&gw, &at).await, 200);
        access.push(at);
    }
    let resp = gw
        .client()
        .post(gw.url("/oauth/revoke"))
        .basic_auth("steady", Some(SVC_SECRET))
        .form(&[("token", rt.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for at in &access {
        assert_eq!(api_status(&gw, at).await, 401);
    }
    assert_eq!(refresh(&gw, "steady", &rt).await.0, 400);
}

/// A public client may not opt out: its refresh tokens have no other protection.
#[tokio::test]
async fn a_public_client_may_not_opt_out_of_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let up = EchoUpstream::start().await;
    let text = config_toml(
        dir.path(),
        &pki,
        up.addr,
        "[[client]]\nid = \"pub\"\ngrants = [\"authorization_code\", \"refresh_token\"]\nscopes = [\"read\"]\nredirect_uris = [\"https://pub.test/cb\"]\nrotate_refresh_tokens = false\n",
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let Err(err) = portcullis::config::Config::load(&path) else { panic!("a public client opted out of rotation") };
    let err = err.to_string();
    assert!(err.contains("rotate_refresh_tokens") && err.contains("gateway.toml:"), "{err}");
}
