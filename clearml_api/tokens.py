"""The bearer token `auth.login` hands out: a JWT (HS256 over SECRET_KEY) naming a Muster API key.

clearml-agent decodes the token without verifying it (it reads `exp` and `api_version`);
the server verifies the signature and the expiry, then that the key is still live, on
every call, so revoking a key ends its tokens at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from django.conf import settings

API_VERSION = "2.31"
SERVER_VERSION = "2.0.0"
DEFAULT_EXPIRY_S = 30 * 86400


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(signing_input: str) -> str:
    key = hashlib.sha256(("clearml-token:" + settings.SECRET_KEY).encode()).digest()
    return _b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())


def token_issue(*, access_key: str, user_id: int, username: str, role: str, expiry_s: int = DEFAULT_EXPIRY_S) -> str:
    now = int(time.time())
    payload = {
        "identity": {
            "user": str(user_id), "user_name": username, "company": "muster", "company_name": "Muster",
            "role": role,
        },
        "key": access_key, "iat": now, "exp": now + expiry_s, "env": "muster", "api_version": API_VERSION,
        "server_version": SERVER_VERSION, "server_build": "muster", "feature_set": "basic",
    }  # fmt: skip
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(payload, separators=(",", ":")).encode())
    return f"{head}.{body}.{_sign(head + '.' + body)}"


def token_read(token: str) -> dict[str, Any] | None:
    """The payload of a token this server signed and that has not expired; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 4096:
        return None
    head, body, signature = parts
    if not hmac.compare_digest(_sign(head + "." + body), signature):
        return None
    try:
        payload: dict[str, Any] = json.loads(_unb64(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(payload.get("exp"), int) or payload["exp"] <= time.time():
        return None
    return payload
