"""What the huggingface_hub scenarios share: numbered checks that stop at the first failure, and a hook on every
HTTP response the client receives."""

import sys

import huggingface_hub
from huggingface_hub.utils import _http

PASSED = [0]


def check(name, condition, detail=""):
    if not condition:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    PASSED[0] += 1
    print(f"ok   {name}")


def on_every_response(hook):
    """Calls `hook(response)` for every response the client receives."""

    def factory():
        client = _http.default_client_factory()
        client.event_hooks["response"].append(hook)
        return client

    huggingface_hub.set_client_factory(factory)
