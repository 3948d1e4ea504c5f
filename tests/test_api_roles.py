"""The role matrix: every operation of the OpenAPI schema and every ClearML endpoint, tried as every
kind of caller against another group's objects.

The objects all belong to Bob, of team B: his queue (team B only), his experiments (one queued
with a secret, one running on his worker), his worker, his key and his secret. The callers:

- anon: no credentials;
- alice: a user of team A, who may read Bob's work but change none of it;
- bob: the owner;
- agent_a: an agent key of Alice's limited to team A's queue;
- agent_open: an agent key of Alice's with no queue limit (it serves what she may enqueue to);
- admin.

The roles each operation allows are written down once, below. A call by any other role must be
refused (401 without credentials, else 403 or 404); one that succeeds is an unexpected allow and
fails the test. This is the test that would have caught issue 13's ways in (an agent key serving
another group's queue, a stranger's clone, ClearML's pop of another group's queue). A new
operation without an entry fails `test_every_operation_has_an_entry`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve, reverse
from rest_framework.test import APIClient

from accounts.actor import SYSTEM, actor_for_user
from accounts.models import Role
from accounts.secrets import secret_set
from accounts.services import NewKey, apikey_create
from autoscalers.models import Instance
from autoscalers.serializers import AppWriteSerializer
from autoscalers.services import app_save as autoscaler_save
from clearml_api import endpoints as _clearml_endpoints  # registers every ClearML endpoint
from clearml_api.transport import ENDPOINTS as CLEARML_ENDPOINTS
from experiments.services import experiment_create, experiment_enqueue
from experiments.snapshots import snapshot_store
from queues.services import queue_create
from tests.test_api import ROOT
from workers.dispatch import dispatch_claim
from workers.services import Registration, worker_register

del _clearml_endpoints
ROLES = ("anon", "alice", "bob", "agent_a", "agent_open", "admin")
PEOPLE = {"alice", "bob", "admin"}  # every person reads every experiment, queue and worker
OWNER = {"bob", "admin"}  # changes to Bob's objects
ADMIN = {"admin"}
AGENTS_OWN = {"admin"}  # agent calls on Bob's worker or attempts: his agent's key only (not a role here)
ANY_KEY = {"alice", "bob", "agent_a", "agent_open", "admin"}

# operationId -> the roles allowed, against Bob's objects.
REST: dict[str, set[str]] = {
    "auth_login": {"anon", *ROLES},  # with Bob's password: the password is the credential
    "audit_list": ADMIN,
    "v1_experiments_list": PEOPLE,
    "v1_experiments_create": OWNER,  # into Bob's queue: team B and admins only
    "v1_experiments_retrieve": PEOPLE,
    "v1_experiments_partial_update": OWNER,
    "v1_experiments_attempts_list": PEOPLE,
    "v1_experiments_clone_create": PEOPLE,  # a stranger's clone carries no secrets (test_isolation)
    "v1_experiments_dequeue_create": OWNER,
    "v1_experiments_enqueue_create": OWNER,
    "v1_experiments_logs_retrieve": PEOPLE,
    "v1_experiments_rerun_create": OWNER,
    "v1_experiments_reset_create": OWNER,
    "experiments_stats": PEOPLE,
    "v1_experiments_stop_create": OWNER,
    "keys_list": PEOPLE,  # one's own keys (admins: everyone's)
    "keys_create": PEOPLE,  # for oneself
    "keys_revoke": OWNER,
    "v1_autoscalers_list": ADMIN,  # the autoscalers hold cloud accounts and spend money: admins only
    "v1_autoscalers_create": ADMIN,
    "v1_autoscalers_retrieve": ADMIN,
    "v1_autoscalers_update": ADMIN,
    "v1_autoscalers_destroy": ADMIN,
    "autoscalers_state": ADMIN,
    "autoscalers_export": ADMIN,
    "autoscalers_instances": ADMIN,
    "autoscalers_decisions": ADMIN,
    "autoscalers_spend": ADMIN,
    "autoscalers_console": ADMIN,
    "v1_queues_list": PEOPLE,
    "v1_queues_create": ADMIN,
    "v1_queues_retrieve": PEOPLE,
    "v1_queues_partial_update": ADMIN,
    "v1_queues_destroy": ADMIN,
    "v1_queues_clear_create": ADMIN,
    "v1_queues_entries_list": PEOPLE,
    "v1_queues_entries_dequeue_create": OWNER,
    "v1_queues_entries_move_create": OWNER,
    "v1_queues_pause_create": ADMIN,
    "v1_queues_resume_create": ADMIN,
    "queues_stats": PEOPLE,
    "secrets_list": PEOPLE,  # one's own names
    "secrets_set": PEOPLE,  # one's own
    "secrets_delete": PEOPLE,  # one's own (a name one has not is a 404)
    "fleet_stats": PEOPLE,
    "workers_list": PEOPLE,
    "workers_register": ADMIN,  # into Bob's queue: agent_a's owner may not enqueue there
    "workers_retrieve": PEOPLE,
    "workers_partial_update": AGENTS_OWN,
    "workers_destroy": AGENTS_OWN,
    "workers_claim": AGENTS_OWN,
    "workers_report": AGENTS_OWN,
    "workers_stats": PEOPLE,
    "attempts_start": AGENTS_OWN,
    "attempts_logs": AGENTS_OWN,
    "attempts_progress": AGENTS_OWN,
    "attempts_finish": AGENTS_OWN,
}
# Routes under /api/v1/ that the schema leaves out, with who may use them.
OUTSIDE_SCHEMA: dict[tuple[str, str], set[str]] = {
    ("snapshot-detail", "GET"): {"bob", "admin"},  # the uploader, and agents whose key serves a queue holding it
    ("snapshot-detail", "PUT"): PEOPLE,
}

# ClearML endpoint -> the roles allowed, against Bob's objects.
CLEARML: dict[str, set[str]] = {
    "auth.login": ANY_KEY,
    "queues.get_all": ANY_KEY,
    "queues.get_all_ex": ANY_KEY,
    "queues.get_by_id": ANY_KEY,
    "queues.get_default": ANY_KEY,
    "queues.create": ADMIN,
    "queues.add_task": OWNER,
    "queues.get_next_task": ADMIN,  # Bob's queue: agent_a's key serves team A's only
    "workers.register": ADMIN,
    "workers.unregister": AGENTS_OWN,
    "workers.status_report": AGENTS_OWN,
    "workers.get_all": ANY_KEY,
    "workers.get_runtime_properties": PEOPLE,
    "workers.set_runtime_properties": AGENTS_OWN,
    "tasks.get_all": ANY_KEY,  # the agents' lists leave Bob's tasks out (checked below)
    "tasks.get_all_ex": ANY_KEY,
    "tasks.get_by_id": PEOPLE,
    "tasks.started": AGENTS_OWN,
    "tasks.completed": AGENTS_OWN,
    "tasks.failed": AGENTS_OWN,
    "tasks.stopped": AGENTS_OWN,
    "tasks.stop": OWNER,
    "tasks.ping": ANY_KEY,
    "tasks.dequeue": OWNER,
    "tasks.edit": OWNER,
    "tasks.set_requirements": AGENTS_OWN,
    "tasks.enqueue": OWNER,
    "events.add_batch": AGENTS_OWN,
}
# (endpoint, role): answered, but nothing of Bob's may be in the answer.
FILTERED = {(e, r) for e in ("tasks.get_all", "tasks.get_all_ex") for r in ("agent_a", "agent_open")}


def _schema_operations() -> list[tuple[str, str, str]]:
    """(operationId, method, path) of every operation in the committed schema (a test keeps it current)."""
    schema = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    return sorted(
        (op["operationId"], method.upper(), path)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in ("get", "post", "put", "patch", "delete")
    )


def _routes() -> set[tuple[str, str]]:
    """(url name, method) of every route under /api/v1/, read from the URL resolver."""
    found: set[tuple[str, str]] = set()

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern) and "api/v1/" in route and p.name:
                cb = p.callback
                if getattr(cb, "http_methods", None):
                    methods = list(cb.http_methods)  # type: ignore[attr-defined]
                elif getattr(cb, "actions", None):
                    methods = [m.upper() for m in cb.actions]  # type: ignore[attr-defined]
                else:
                    view = cb.view_class  # type: ignore[attr-defined]
                    methods = [
                        m.upper() for m in view.http_method_names if hasattr(view, m) and m not in ("options", "head")
                    ]
                found.update((p.name, m) for m in methods if m not in ("HEAD", "OPTIONS"))

    walk(get_resolver().url_patterns, "")
    return found


def _url_name(path: str) -> str:
    """The URL name a schema path resolves to (placeholders filled with values their patterns take)."""
    hexes = ("{id}", "{attempt_id}", "{instance_id}")
    concrete = re.sub(r"\{[^}]+\}", lambda m: "0" * 32 if m.group(0) in hexes else "abc", path)
    return str(resolve(concrete).url_name)


OPERATIONS = _schema_operations()


def test_every_operation_has_an_entry() -> None:
    ids = {op for op, _, _ in OPERATIONS}
    assert not ids - set(REST), f"add these operations to REST: {sorted(ids - set(REST))}"
    assert not set(REST) - ids, f"REST names operations that no longer exist: {sorted(set(REST) - ids)}"
    assert set(CLEARML) == set(CLEARML_ENDPOINTS), "CLEARML and the facade's endpoints differ"
    in_schema = {(_url_name(path), method) for _, method, path in OPERATIONS}
    missing = _routes() - in_schema - set(OUTSIDE_SCHEMA)
    assert not missing, f"routes neither in the schema nor in OUTSIDE_SCHEMA: {sorted(missing)}"


@dataclass
class World:
    keys: dict[str, NewKey]
    path_values: dict[str, str]
    rest_bodies: dict[str, Any]
    clearml_bodies: dict[str, dict[str, Any]]
    bob_ids: tuple[str, ...]


@pytest.fixture
def world(db: Any) -> World:
    admin = User.objects.create_superuser("root", "", "pw-root-123")
    alice = User.objects.create_user("alice", "", "pw-alice-123")
    bob = User.objects.create_user("bob", "", "pw-bob-123")
    team_a, team_b = Group.objects.create(name="team-a"), Group.objects.create(name="team-b")
    alice.groups.add(team_a)
    bob.groups.add(team_b)
    queue_a = queue_create(actor=SYSTEM, name="queue-a", group_ids=[team_a.pk])
    queue_b = queue_create(actor=SYSTEM, name="queue-b", group_ids=[team_b.pk])
    queue_create(actor=SYSTEM, name="default", system_tags=["default"])  # ClearML's default queue, open to all
    keys = {
        "alice": apikey_create(actor=SYSTEM, user=alice),
        "bob": apikey_create(actor=SYSTEM, user=bob),
        "agent_a": apikey_create(actor=SYSTEM, user=alice, role=Role.AGENT, allowed_queue_ids=[queue_a.pk]),
        "agent_open": apikey_create(actor=SYSTEM, user=alice, role=Role.AGENT),
        "admin": apikey_create(actor=SYSTEM, user=admin, role=Role.ADMIN),
    }
    bob_agent_key = apikey_create(actor=SYSTEM, user=bob, role=Role.AGENT)
    bob_agent = actor_for_user(bob, bob_agent_key.key)
    worker = worker_register(
        actor=bob_agent, reg=Registration(name="b-box:0", queues=[queue_b.pk], capabilities=31, cpus=8)
    )
    owner = actor_for_user(bob)
    secret_set(actor=owner, name="B_TOKEN", value="bob-only-value")
    running = experiment_create(actor=owner, spec={"name": "running", "command": ["true"]})
    experiment_enqueue(actor=owner, experiment_id=running.pk, queue_id=queue_b.pk)
    claim = dispatch_claim(actor=bob_agent, worker=worker)
    assert claim is not None
    spec = {"name": "queued", "command": ["true"], "secret_env": {"B_SECRET": "bob-secret-value"}}
    queued = experiment_create(actor=owner, spec=spec)
    experiment_enqueue(actor=owner, experiment_id=queued.pk, queue_id=queue_b.pk)
    created = experiment_create(actor=owner, spec={"name": "created", "command": ["true"]})
    content = b"Bob's tarball"
    snap, _ = snapshot_store(actor=owner, sha256=hashlib.sha256(content).hexdigest(), chunks=[content])
    token = claim.attempt.lease_token
    autoscaler_body = {
        "name": "fleet", "provider": "local", "workers_prefix": "fleet",
        "resources": [{"name": "box", "instance_type": "local", "max_instances": 1}], "queues": {"queue-b": ["box"]},
    }  # fmt: skip
    fleet = autoscaler_save(actor=actor_for_user(admin), data=_autoscaler_data(autoscaler_body))
    machine = Instance.objects.create(
        app=fleet, resource=fleet.resources.get(), worker_name="fleet-box-1", hourly_price_usd=0, state="terminated"
    )
    rest_bodies = {
        "v1_autoscalers_create": {**autoscaler_body, "name": "another", "workers_prefix": "another"},
        "v1_autoscalers_update": {**autoscaler_body, "max_idle_s": 120},
        "autoscalers_state": {"state": "stopped"},
        "auth_login": {"username": "bob", "password": "pw-bob-123"},
        "v1_experiments_create": {"name": "new", "command": ["true"], "queue": "queue-b"},
        "v1_experiments_partial_update": {"name": "renamed"},
        "v1_experiments_enqueue_create": {"queue": "queue-b"},
        "v1_experiments_rerun_create": {},
        "keys_create": {"name": "another"},
        "v1_queues_create": {"name": "fresh queue"},
        "v1_queues_partial_update": {"display_name": "B"},
        "v1_queues_entries_move_create": {"experiments": [queued.pk], "to": "top"},
        "v1_queues_entries_dequeue_create": {"experiments": [queued.pk]},
        "secrets_set": {"value": "s3cr3t-value"},
        "workers_register": {"name": "fresh:0", "queues": ["queue-b"]},
        "workers_partial_update": {"drain": True},
        "workers_report": {"interval_s": 5, "running": [{"attempt": claim.attempt.pk, "token": token}]},
        "attempts_start": {"token": token},
        "attempts_logs": {"token": token, "chunks": [{"seq": 0, "text": "hi"}]},
        "attempts_progress": {"token": token, "iteration": 1},
        "attempts_finish": {"token": token, "outcome": "completed"},
    }
    task = {"task": running.pk}
    clearml_bodies: dict[str, dict[str, Any]] = {
        "queues.get_by_id": {"queue": queue_b.pk},
        "queues.create": {"name": "made-by-clearml"},
        "queues.add_task": {"queue": queue_b.pk, "task": created.pk},
        "queues.get_next_task": {"queue": queue_b.pk},
        "workers.register": {"worker": "fresh:1", "queues": [queue_b.pk]},
        "workers.unregister": {"worker": worker.name},
        "workers.status_report": {"worker": worker.name, "task": running.pk},
        "workers.get_runtime_properties": {"worker": worker.name},
        "workers.set_runtime_properties": {"worker": worker.name, "runtime_properties": [{"key": "k", "value": "v"}]},
        "tasks.get_by_id": task,
        "tasks.started": task,
        "tasks.completed": task,
        "tasks.failed": {**task, "status_reason": "exit code 1"},
        "tasks.stopped": task,
        "tasks.stop": task,
        "tasks.ping": task,
        "tasks.dequeue": {"task": queued.pk},
        "tasks.edit": {"task": queued.pk, "runtime": {"x": 1}},
        "tasks.set_requirements": {**task, "requirements": {"pip": "numpy"}},
        "tasks.enqueue": {"task": created.pk, "queue": queue_b.pk},
        "events.add_batch": {"task": running.pk, "type": "log", "msg": "hello"},
    }
    path_values = {
        "experiments": queued.pk,
        "queues": queue_b.pk,
        "workers": worker.name,
        "attempts": claim.attempt.pk,
        "keys": bob_agent_key.key.access_key,
        "secrets": "B_TOKEN",
        "snapshots": snap.sha256,
        "autoscalers": fleet.pk,
        "instances": machine.pk,
    }
    return World(keys, path_values, rest_bodies, clearml_bodies, (running.pk, queued.pk, created.pk))


def _autoscaler_data(body: dict[str, Any]) -> dict[str, Any]:
    data = AppWriteSerializer(data=body)
    data.is_valid(raise_exception=True)
    return dict(data.validated_data)


def _path(world: World, path: str) -> str:
    parts = path.strip("/").split("/")
    out = []
    for i, part in enumerate(parts):
        out.append(world.path_values[parts[i - 1]] if part.startswith("{") else part)
    return "/" + "/".join(out) + "/"


def _denied(role: str, status: int) -> bool:
    return status == 401 if role == "anon" else status in (403, 404)


@pytest.mark.parametrize(("operation", "method", "path"), OPERATIONS, ids=[op for op, _, _ in OPERATIONS])
@pytest.mark.parametrize("role", ROLES)
def test_rest_matrix(world: World, operation: str, method: str, path: str, role: str) -> None:
    client = APIClient()
    if role != "anon":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.keys[role].token}")
    url = _path(world, path)
    response = getattr(client, method.lower())(url, world.rest_bodies.get(operation, {}), format="json")
    status = response.status_code
    assert status < 500, (role, operation, response.content[:300])
    if role in REST[operation]:
        assert status not in (401, 403), (role, operation, status, response.content[:300])
    else:
        assert _denied(role, status), f"unexpected allow: {role} {method} {url} -> {status} {response.content[:300]!r}"


@pytest.mark.parametrize("endpoint", sorted(CLEARML))
@pytest.mark.parametrize("role", ROLES)
def test_clearml_matrix(world: World, endpoint: str, role: str) -> None:
    headers: dict[str, str] = {}
    if role != "anon":
        access, secret = world.keys[role].token.split(".", 1)
        headers["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()
    response = Client().post(
        f"/clearml/{endpoint}", data=world.clearml_bodies.get(endpoint, {}), content_type="application/json", **headers
    )
    status = response.status_code
    assert status < 500, (role, endpoint, response.content[:300])
    if role in CLEARML[endpoint]:
        assert status == 200, (role, endpoint, status, response.content[:300])
    else:
        assert _denied(role, status) or (role != "anon" and status == 400 and b"Invalid" in response.content), (
            f"unexpected allow: {role} {endpoint} -> {status} {response.content[:300]!r}"
        )
    if (endpoint, role) in FILTERED:
        assert not any(exp_id.encode() in response.content for exp_id in world.bob_ids), response.content[:300]


@pytest.mark.parametrize(("name", "method"), sorted(OUTSIDE_SCHEMA))
@pytest.mark.parametrize("role", ROLES)
def test_routes_outside_the_schema(world: World, name: str, method: str, role: str) -> None:
    client = APIClient()
    if role != "anon":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.keys[role].token}")
    url = reverse(name, kwargs={"sha256": world.path_values["snapshots"]})
    response = client.generic(method, url, b"Bob's tarball", content_type="application/octet-stream")
    assert response.status_code < 500
    if role in OUTSIDE_SCHEMA[(name, method)]:
        assert response.status_code not in (401, 403), (role, name, method, response.content[:300])
    else:
        assert _denied(role, response.status_code), f"unexpected allow: {role} {method} {url} -> {response.status_code}"
