"""Stock Python OAuth clients against a running portcullis, unmodified.

Usage: clients.py BASE_URL CA_FILE PKJWT_PRIVATE_KEY_PEM
Each check raises on failure; the script prints one line per passed check.
"""
import sys

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from oauthlib.oauth2 import BackendApplicationClient, LegacyApplicationClient
from requests_oauthlib import OAuth2Session as RoSession

BASE, CA, PKJWT_KEY = sys.argv[1], sys.argv[2], sys.argv[3]
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

# authlib: private_key_jwt (RFC 7523) with its stock PrivateKeyJWT, the assertion's aud the
# token endpoint the metadata names; a fresh jti each time, so two requests both pass.
meta = requests.get(BASE + "/.well-known/oauth-authorization-server", verify=CA).json()
check("metadata lists private_key_jwt", "private_key_jwt" in meta["token_endpoint_auth_methods_supported"])
with open(PKJWT_KEY) as f:
    private_pem = f.read()
s = OAuth2Session("pkjwt", private_pem, scope="read", token_endpoint_auth_method="private_key_jwt")
s.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"]))
s.verify = CA
first = s.fetch_token(TOKEN_URL, grant_type="client_credentials")
second = s.fetch_token(TOKEN_URL, grant_type="client_credentials")
check("authlib private_key_jwt", api_status(first["access_token"]) == 200 and api_status(second["access_token"]) == 200)
# The same assertion twice: the second is a replay.
from authlib.oauth2.rfc7523 import private_key_jwt_sign
from authlib.jose import RSAKey
assertion = private_key_jwt_sign(RSAKey.import_key(private_pem), "pkjwt", meta["token_endpoint"])
form = {"grant_type": "client_credentials", "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}
codes = [requests.post(TOKEN_URL, data=form, verify=CA).status_code for _ in range(2)]
check("authlib assertion replay refused", codes == [200, 401])
