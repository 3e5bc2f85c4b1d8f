"""Stock Python OAuth clients against a running portcullis, unmodified.

Usage: clients.py BASE_URL CA_FILE
Each check raises on failure; the script prints one line per passed check.
"""
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from oauthlib.oauth2 import BackendApplicationClient, LegacyApplicationClient
from requests_oauthlib import OAuth2Session as RoSession

BASE, CA = sys.argv[1], sys.argv[2]
TOKEN_URL = BASE + "/oauth/token"


def api_status(token):
    return requests.get(BASE + "/api/x", headers={"Authorization": "Bearer " + token}, verify=CA).status_code


def check(name, cond):
    if not cond:
        raise SystemExit("FAILED: " + name)
    print("ok", name)


# authlib: client_credentials with client_secret_basic, then with client_secret_post.
for method in ("client_secret_basic", "client_secret_post"):
    s = OAuth2Session("svc", "svc-secret", scope="read write", token_endpoint_auth_method=method)
    s.verify = CA
    tok = s.fetch_token(TOKEN_URL, grant_type="client_credentials")
    check("authlib client_credentials " + method, tok["token_type"].lower() == "bearer" and tok["scope"] == "read write")
    r = s.get(BASE + "/api/x", verify=CA)
    check("authlib session calls the API " + method, r.status_code == 200)

# authlib: password grant, refresh, introspection and revocation.
s = OAuth2Session("webapp", "svc-secret", scope="read")
s.verify = CA
tok = s.fetch_token(TOKEN_URL, username="alice", password="other-secret")
check("authlib password grant", "refresh_token" in tok and api_status(tok["access_token"]) == 200)
new = s.refresh_token(TOKEN_URL, refresh_token=tok["refresh_token"])
check("authlib refresh rotates", new["refresh_token"] != tok["refresh_token"])
info = s.introspect_token(BASE + "/oauth/introspect", token=new["access_token"]).json()
check("authlib introspection", info["active"] is True and info["sub"] == "alice")
r = s.revoke_token(BASE + "/oauth/revoke", token=new["access_token"], token_type_hint="access_token")
check("authlib revocation", r.status_code == 200 and api_status(new["access_token"]) == 401)

# requests-oauthlib: backend (client_credentials) and legacy (password) clients.
ro = RoSession(client=BackendApplicationClient(client_id="svc"))
tok = ro.fetch_token(token_url=TOKEN_URL, client_id="svc", client_secret="svc-secret", verify=CA)
check("requests-oauthlib client_credentials", api_status(tok["access_token"]) == 200)
ro = RoSession(client=LegacyApplicationClient(client_id="webapp"))
tok = ro.fetch_token(
    token_url=TOKEN_URL, username="alice", password="other-secret",
    client_id="webapp", client_secret="svc-secret", verify=CA,
)
check("requests-oauthlib password grant", api_status(tok["access_token"]) == 200)

# authlib understands our error responses.
bad = OAuth2Session("svc", "wrong")
bad.verify = CA
try:
    bad.fetch_token(TOKEN_URL, grant_type="client_credentials")
    check("authlib sees invalid_client", False)
except Exception as e:  # authlib raises OAuthError with .error
    check("authlib sees invalid_client", getattr(e, "error", "") == "invalid_client")
