"""The official huggingface_hub client against a spacedock cluster: the Spaces API scenario of issue 3.

Environment: HF_ENDPOINT (a coordinator's API URL) and SPACEDOCK_ADMIN_TOKEN. Prints one line per check and
exits non-zero at the first failure. Every HTTP response the client receives is recorded, and the secret value
must appear in none of them.
"""

import json
import os
import urllib.error
import urllib.request

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from checks import PASSED, check, on_every_response

ENDPOINT = os.environ["HF_ENDPOINT"].rstrip("/")
ADMIN = os.environ["SPACEDOCK_ADMIN_TOKEN"]
SECRET = "s3cret-value-that-must-never-leak"
BODIES = []


def record(response):
    response.read()
    BODIES.append(response.text)


on_every_response(record)


def admin_post(path, body):
    request = urllib.request.Request(
        ENDPOINT + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        text = response.read().decode()
        BODIES.append(text)
        return json.loads(text)


def raw(method, path, token, body):
    data = None if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        ENDPOINT + path,
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request) as response:
            text = response.read().decode()
            BODIES.append(text)
            return response.status, response.headers, text
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        BODIES.append(text)
        return e.code, e.headers, text


def raises(name, exc_type, fn, contains=None, status=None):
    try:
        fn()
    except exc_type as e:
        message = str(e)
        code = getattr(getattr(e, "response", None), "status_code", None)
        check(name, (contains is None or contains in message) and (status is None or code == status), f"{code}: {message}")
        return
    check(name, False, f"no {exc_type.__name__} raised")


# Users and tokens, through the cluster's operator endpoints.
for user in ("alice", "bob"):
    admin_post("/api/cluster/users", {"name": user})
alice_token = admin_post("/api/cluster/tokens", {"owner": "alice", "name": "scenario", "role": "write"})["token"]
bob_token = admin_post("/api/cluster/tokens", {"owner": "bob", "name": "scenario", "role": "write"})["token"]
api = HfApi(endpoint=ENDPOINT, token=alice_token)
bob = HfApi(endpoint=ENDPOINT, token=bob_token)

me = api.whoami()
check("whoami name", me["name"] == "alice", me)
check("whoami role", me["auth"]["accessToken"]["role"] == "write", me)

url = api.create_repo(
    "alice/demo",
    repo_type="space",
    space_sdk="gradio",
    space_secrets=[{"key": "API_KEY", "value": SECRET}],
    space_variables=[{"key": "MODE", "value": "fast", "description": "speed"}],
)
check("create_repo url", str(url) == f"{ENDPOINT}/spaces/alice/demo", url)
again = api.create_repo("alice/demo", repo_type="space", space_sdk="gradio", exist_ok=True)
check("create_repo exist_ok", str(again) == str(url), again)
raises("create_repo twice is a conflict", HfHubHTTPError, lambda: api.create_repo("alice/demo", repo_type="space", space_sdk="gradio"), status=409)

info = api.space_info("alice/demo")
check("space_info id", info.id == "alice/demo", info)
check("space_info sdk", info.sdk == "gradio", info.sdk)
check("space_info subdomain", info.subdomain == "alice-demo", info.subdomain)
check("space_info host", info.host is not None and "alice-demo" in info.host, info.host)
check("space_info runtime", info.runtime is not None and info.runtime.stage == "NO_APP_FILE", info.runtime)

listed = [s.id for s in api.list_spaces(author="alice")]
check("list_spaces author", listed == ["alice/demo"], listed)
searched = [s.id for s in api.list_spaces(search="dem")]
check("list_spaces search", "alice/demo" in searched, searched)

runtime = api.get_space_runtime("alice/demo")
check("runtime hardware", runtime.requested_hardware == "cpu-basic", runtime.raw)
check("runtime sleep default", runtime.sleep_time == 172800, runtime.raw)
runtime = api.request_space_hardware("alice/demo", "t4-small")
check("request_space_hardware", runtime.requested_hardware == "t4-small", runtime.raw)
runtime = api.set_space_sleep_time("alice/demo", 3600)
check("set_space_sleep_time", runtime.sleep_time == 3600, runtime.raw)

api.add_space_secret("alice/demo", "OTHER", "another-value", description="d")
secrets = api.get_space_secrets("alice/demo")
check("get_space_secrets names", sorted(secrets) == ["API_KEY", "OTHER"], secrets)
api.delete_space_secret("alice/demo", "OTHER")
check("delete_space_secret", sorted(api.get_space_secrets("alice/demo")) == ["API_KEY"])

variables = api.get_space_variables("alice/demo")
check("get_space_variables", variables["MODE"].value == "fast" and variables["MODE"].description == "speed", variables)
variables = api.add_space_variable("alice/demo", "SIZE", "large")
check("add_space_variable", variables["SIZE"].value == "large", variables)
variables = api.delete_space_variable("alice/demo", "SIZE")
check("delete_space_variable", "SIZE" not in variables, variables)

check("pause_space", api.pause_space("alice/demo").stage == "PAUSED")
check("restart_space", api.restart_space("alice/demo").stage == "NO_APP_FILE")
check("restart_space factory", api.restart_space("alice/demo", factory_reboot=True).stage == "NO_APP_FILE")

copy = api.duplicate_repo("alice/demo", "alice/copy", repo_type="space")
check("duplicate_repo url", str(copy) == f"{ENDPOINT}/spaces/alice/copy", copy)
check("duplicate copies variables", "MODE" in api.get_space_variables("alice/copy"))
check("duplicate leaves secrets", api.get_space_secrets("alice/copy") == {})
raises("duplicate onto an existing repo", HfHubHTTPError, lambda: api.duplicate_repo("alice/demo", "alice/copy", repo_type="space"), status=409)

hardware = {h.name: h for h in api.list_spaces_hardware()}
check("list_spaces_hardware", "t4-small" in hardware and hardware["t4-small"].unit_cost_usd == 0.4, list(hardware))

api.delete_repo("alice/copy", repo_type="space")
raises("deleted repo is gone", RepositoryNotFoundError, lambda: api.space_info("alice/copy"))
raises("unknown repo", RepositoryNotFoundError, lambda: api.space_info("alice/nope"))
raises("bad token", HfHubHTTPError, lambda: HfApi(endpoint=ENDPOINT, token="hf_not_a_real_token").whoami(), status=401)
raises("unknown flavor", HfHubHTTPError, lambda: api.request_space_hardware("alice/demo", "h900"), contains="h900", status=400)
raises("bad secret key", HfHubHTTPError, lambda: api.add_space_secret("alice/demo", "1-bad key", "v"), status=400)
# The client refuses bad names itself; the server must too.
status, headers, body = raw("POST", "/api/repos/create", alice_token, {"name": "bad--name", "type": "space", "sdk": "gradio"})
check("bad repo name", status == 400 and headers.get("X-Error-Code") == "BadRequest" and "--" in body, (status, body))
status, headers, body = raw("POST", "/api/repos/create", alice_token, b"{not json")
check("malformed JSON", status == 400 and "malformed JSON" in body, (status, body))
status, headers, body = raw("POST", "/api/repos/create", alice_token, b"x" * (2 << 20))
check("oversized body", status == 413, (status, body[:100]))
status, headers, body = raw("POST", "/api/spaces/alice/demo/secrets", alice_token, {"key": "K"})
check("secret without a value", status == 400 and "value" in body, (status, body))

api.create_repo("alice/hidden", repo_type="space", space_sdk="docker", private=True)
raises("private space hidden from others", RepositoryNotFoundError, lambda: bob.space_info("alice/hidden"))
check("private space listed only for members", "alice/hidden" not in [s.id for s in bob.list_spaces(author="alice")])
raises("others cannot write", HfHubHTTPError, lambda: bob.pause_space("alice/demo"), status=403)

# Tokens: a revoked or expired token is refused.
created = admin_post("/api/cluster/tokens", {"owner": "alice", "name": "short-lived", "role": "read"})
check("fresh token works", HfApi(endpoint=ENDPOINT, token=created["token"]).whoami()["name"] == "alice")
status, headers, body = raw("DELETE", f"/api/cluster/tokens/{created['id']}", alice_token, {})
check("owner revokes a token", status == 200, (status, body))
raises("revoked token", HfHubHTTPError, lambda: HfApi(endpoint=ENDPOINT, token=created["token"]).whoami(), status=401)
status, headers, body = raw("GET", "/api/whoami-v2", created["token"], None)
check("revoked token says why", status == 401 and "revoked" in body, (status, body))
expiring = admin_post("/api/cluster/tokens", {"owner": "alice", "name": "expiring", "role": "read", "expiresInSeconds": 1})
import time
time.sleep(1.5)
raises("expired token", HfHubHTTPError, lambda: HfApi(endpoint=ENDPOINT, token=expiring["token"]).whoami(), status=401)
status, headers, body = raw("GET", "/api/whoami-v2", expiring["token"], None)
check("expired token says why", status == 401 and "expired" in body, (status, body))
raises("read token cannot write", HfHubHTTPError, lambda: HfApi(endpoint=ENDPOINT, token=admin_post("/api/cluster/tokens", {"owner": "alice", "name": "ro", "role": "read"})["token"]).pause_space("alice/demo"), status=403)

leaks = [b for b in BODIES if SECRET in b]
check(f"secret in none of {len(BODIES)} responses", not leaks, leaks[:1])
print(f"hf scenario: {PASSED[0]} checks passed with huggingface_hub {huggingface_hub.__version__}")
