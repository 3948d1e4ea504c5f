"""Property-based fuzzing of the whole API from its OpenAPI schema: never a 5xx, every
answer's status documented for its operation, every body as its schema says (errors too).

Schemathesis generates at least 50 examples per operation (NUL bytes allowed); a second
test sends 4 KB strings and NUL-laden strings into every string field of every body.
The schema is loaded at module level (schemathesis' from_fixture breaks on pytest 9).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from accounts.actor import SYSTEM, actor_for_user
from accounts.models import Role
from accounts.services import apikey_create
from queues.services import queue_create
from workers.services import Registration, worker_register

app = get_wsgi_application()
schema = schemathesis.openapi.from_wsgi("/api/schema/", app)
schema.config.generation.update(allow_x00=True, max_examples=50)

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]


@pytest.fixture
def keep_test_connection() -> Iterator[None]:
    """The WSGI handler closes connections after each request; the test's transaction needs its own."""

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth_headers(db: Any, keep_test_connection: None) -> dict[str, str]:
    admin = User.objects.create_superuser("root", "", "pw-root-123")
    key = apikey_create(actor=SYSTEM, user=admin, role=Role.ADMIN)
    queue_create(actor=SYSTEM, name="default")
    agent = apikey_create(actor=SYSTEM, user=admin, role=Role.AGENT)
    worker_register(actor=actor_for_user(admin, agent.key), reg=Registration(name="box:0", capabilities=31))
    return {"Authorization": f"Bearer {key.token}"}


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_never_answers_5xx_and_answers_as_documented(
    case: schemathesis.Case, auth_headers: dict[str, str]
) -> None:
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    case.call_and_validate(headers=auth_headers, checks=checks)


def _string_paths(node: dict[str, Any], components: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """A body with every string property filled by the caller's value, following $refs."""
    if depth > 5:
        return {}
    if "$ref" in node:
        node = components[node["$ref"].rsplit("/", 1)[1]]
    body: dict[str, Any] = {}
    for name, declared in node.get("properties", {}).items():
        prop = components[declared["$ref"].rsplit("/", 1)[1]] if "$ref" in declared else declared
        kind = prop.get("type")
        if kind == "string" and "enum" not in prop:
            body[name] = "{S}"
        elif kind == "array" and prop.get("items", {}).get("type") == "string":
            body[name] = ["{S}"]
        elif kind == "object" and "properties" in prop:
            body[name] = _string_paths(prop, components, depth + 1)
        elif kind == "object":
            body[name] = {"{S}": "{S}"}
    return body


def _fill(template: Any, value: str) -> Any:
    if isinstance(template, dict):
        return {_fill(k, value): _fill(v, value) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, value) for v in template]
    return value if template == "{S}" else template


@pytest.mark.parametrize("value", ["x" * 4096, "a\x00b", "\x00" * 10, "é" * 2000])
def test_every_body_survives_long_and_nul_strings(auth_headers: dict[str, str], value: str) -> None:
    raw = schema.raw_schema
    components = raw["components"]["schemas"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=auth_headers["Authorization"])
    failures = []
    for path, item in raw["paths"].items():
        url = path.replace("{id}", "0" * 32).replace("{name}", "box:0").replace("{attempt_id}", "0" * 32)
        url = url.replace("{access_key}", "mk0")
        for method, op in item.items():
            if method not in ("post", "patch", "put"):
                continue
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not content:
                continue
            body = _fill(_string_paths(content["schema"], components), value)
            response = getattr(client, method)(url, body, format="json")
            if response.status_code >= 500:
                failures.append((method, path, response.status_code))
    assert failures == []
