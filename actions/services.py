"""Custom context-menu actions: visibility, the request with ${id}/${name} substituted, issuing it, syncing.

Substitution escapes each value for where it lands: percent-encoding in the URL, JSON string
escaping in a JSON payload (form encoding in any other payload), and no control characters
(and percent-encoded non-ASCII) in headers, so an object named `"&/<` cannot break out of
any of them. Actions with a secret are issued by the server, only to CUSTOM_ACTION_HOSTS.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import httpx
from django.conf import settings
from django.urls import reverse

from accounts.actor import Actor
from accounts.secrets import text_decrypt, text_encrypt
from actions.models import CustomAction
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Forbidden, InvalidInput, NotFound

PLACEHOLDER = re.compile(r"\$\{(id|name|secret)\}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ActionRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: str


def _substitute(text: str, values: Mapping[str, str], escape: Any) -> str:
    return PLACEHOLDER.sub(lambda m: escape(values.get(m.group(1), "")), text)


def _header_value(value: str) -> str:
    cleaned = CONTROL.sub(" ", value)
    return "".join(c if ord(c) < 128 else quote(c) for c in cleaned)


def _is_json(action: CustomAction) -> bool:
    content_type = next((v for k, v in action.headers.items() if k.lower() == "content-type"), "")
    if content_type:
        return "json" in content_type.lower()
    return action.payload.lstrip()[:1] in ("{", "[")


def action_render(action: CustomAction, *, object_id: str, object_name: str, secret: str = "") -> ActionRequest:
    """The request an action makes for one object (the secret only ever fills headers)."""
    values = {"id": object_id, "name": object_name}
    url = _substitute(action.url, values, lambda v: quote(v, safe=""))
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidInput("a custom action's URL must be http or https", field="url")
    if _is_json(action):
        body = _substitute(action.payload, values, lambda v: json.dumps(v)[1:-1])
    else:
        body = _substitute(action.payload, values, quote_plus)
    headers = {
        CONTROL.sub("", str(k)): _header_value(_substitute(str(v), {**values, "secret": secret}, str))
        for k, v in action.headers.items()
    }
    if action.payload and not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = "application/json" if _is_json(action) else "application/x-www-form-urlencoded"
    return ActionRequest(method=action.method, url=url, headers=headers, body=body)


def browser_action_origins() -> frozenset[str]:
    """The origins that browser-issued actions (those without a secret) call: the pages' CSP allows
    connecting there. Read for every page (one small query), so an admin's new action works at once."""
    found = set()
    for url in CustomAction.objects.filter(secret_ciphertext="").values_list("url", flat=True):
        parts = urlsplit(PLACEHOLDER.sub("x", url))
        if parts.scheme in ("http", "https") and parts.netloc:
            found.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(found)


def action_visible(action: CustomAction, actor: Actor) -> bool:
    return not action.roles or str(actor.role) in action.roles


def actions_for(object_type: str, actor: Actor) -> list[CustomAction]:
    """The actions of one object type that this actor sees (one query)."""

    found = [a for a in CustomAction.objects.filter(object_type=object_type) if action_visible(a, actor)]
    for action in found:
        action.run_url = reverse("pages:custom-action", args=[action.pk])  # type: ignore[attr-defined]
    return found


# Actions sit beneath the apps whose objects they act on: each of those apps says, from its
# AppConfig.ready(), how to find an object's name by its id (None: no such object).
NAME_LOOKUPS: dict[str, Callable[[str], str | None]] = {}


def object_type_register(object_type: str, name_of: Callable[[str], str | None]) -> None:
    """Let actions name this app's objects (called once, from the app's AppConfig.ready)."""
    NAME_LOOKUPS[CustomAction.ObjectType(object_type)] = name_of


def _object_name(object_type: str, object_id: str) -> str:
    found = NAME_LOOKUPS[object_type](object_id)
    if found is None:
        raise NotFound(f"no {object_type} {object_id!r}", field="object")
    return found


def _secret(action: CustomAction) -> str:
    return text_decrypt(action.secret_ciphertext) if action.secret_ciphertext else ""


def action_issue(*, actor: Actor, action_id: int, object_id: str) -> dict[str, Any]:
    """Render an action for an object; issue it here when it holds a secret, else hand it to the browser."""
    if actor.is_agent:
        raise Forbidden("agents do not run custom actions")
    action = CustomAction.objects.filter(pk=action_id).first()
    if action is None or not action_visible(action, actor):
        raise NotFound(f"no custom action {action_id}", field="action")
    name = _object_name(action.object_type, object_id)
    if not action.via_server:
        request = action_render(action, object_id=object_id, object_name=name)
        return {"mode": "browser", "request": asdict(request)}
    request = action_render(action, object_id=object_id, object_name=name, secret=_secret(action))
    host = urlsplit(request.url).hostname or ""
    if host not in settings.CUSTOM_ACTION_HOSTS:
        raise Forbidden(
            f"custom actions with a secret may only call {', '.join(settings.CUSTOM_ACTION_HOSTS) or 'no host'}"
        )

    audit_record(actor=actor, change=Change("custom_action", str(action.pk), "issue", {}, {"object": object_id}))
    try:
        response = httpx.request(
            request.method, request.url, headers=request.headers, content=request.body or None, timeout=TIMEOUT_S
        )
    except httpx.HTTPError as e:
        return {"mode": "server", "ok": False, "status": None, "detail": f"{type(e).__name__}: {e}"[:300]}
    return {"mode": "server", "ok": response.is_success, "status": response.status_code, "detail": response.text[:300]}


def action_set_secret(action: CustomAction, secret: str) -> None:
    action.secret_ciphertext = text_encrypt(secret) if secret else ""


# -- the config file ---------------------------------------------------------------------------------


def _load(path: Path) -> Mapping[str, Any]:
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: the top level maps an object type to a list of actions")
    return data


def _fields(object_type: str, item: Mapping[str, Any], order: int) -> dict[str, Any]:
    request = item.get("action", {})
    if not isinstance(request, dict) or not item.get("name") or not request.get("url"):
        raise InvalidInput(f"{object_type} action {item.get('name')!r}: needs a name and action.url")
    method = str(request.get("method", "POST")).upper()
    if method not in CustomAction.Method.values:
        raise InvalidInput(f"{object_type} action {item['name']!r}: method must be one of {CustomAction.Method.values}")
    roles = item.get("roles", [])
    if not isinstance(roles, list) or any(r not in ("admin", "user") for r in roles):
        raise InvalidInput(f"{object_type} action {item['name']!r}: roles is a list of 'admin' and 'user'")
    headers = request.get("headers", {})
    if not isinstance(headers, dict):
        raise InvalidInput(f"{object_type} action {item['name']!r}: headers is a table of names and values")
    return {
        "tooltip": str(item.get("tooltip", "")),
        "method": method,
        "url": str(request["url"]),
        "payload": str(request.get("payload", "")),
        "headers": {str(k): str(v) for k, v in headers.items()},
        "confirm": bool(item.get("confirm", False)),
        "roles": roles,
        "order": order,
        "from_file": True,
    }


@atomic
def actions_sync(*, actor: Actor, path: Path) -> dict[str, int]:
    """Create or update, by name, every action the file lists; the file wins for those, others are kept.

    A secret is never in the file: `secret_env` names an environment variable that holds it.
    """
    data = _load(path)
    counts = {"created": 0, "updated": 0}
    for object_type, items in data.items():
        if object_type not in CustomAction.ObjectType.values:
            raise InvalidInput(f"{path}: unknown object type {object_type!r} (queue, worker, experiment)")
        if not isinstance(items, Sequence):
            raise InvalidInput(f"{path}: {object_type} must be a list of actions")
        for order, item in enumerate(items):
            fields = _fields(object_type, item, order)
            action, created = CustomAction.objects.get_or_create(
                object_type=object_type, name=str(item["name"]), defaults=fields
            )
            for key, value in fields.items():
                setattr(action, key, value)
            secret_env = item.get("secret_env")
            action_set_secret(action, os.environ.get(str(secret_env), "") if secret_env else "")
            action.save()
            counts["created" if created else "updated"] += 1
    audit_record(actor=actor, change=Change("custom_action", str(path), "sync", {}, counts))
    return counts
