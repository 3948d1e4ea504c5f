"""Tenant isolation: a worker serves only queues its key's owner may enqueue to, and secrets stay with their owner.

The serving rule (queues/access.py) is one SQL condition used by the claim's lock on
PostgreSQL, by the ORM claim and by key creation, registration and queue edits; these tests
check it against may_enqueue and drive each way in (issue 13, point 1, 3 and 5).
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.cache import cache
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actor import SYSTEM, Actor, actor_for_user
from accounts.models import Role
from accounts.secrets import secret_env_decrypt
from accounts.services import NewKey, apikey_check, apikey_create, apikey_forget_cached
from core.errors import Forbidden
from experiments.models import Experiment, Status
from experiments.services import experiment_clone, experiment_create, experiment_enqueue
from queues.access import may_enqueue, servable_queue_ids
from queues.models import Queue
from queues.services import queue_create
from tests.test_api import ROOT
from workers.api import claim_payload
from workers.dispatch import Capacity, dispatch_claim
from workers.models import Worker
from workers.services import Registration, worker_register, worker_update

pytestmark = pytest.mark.django_db


@pytest.fixture
def groups(alice: User, bob: User) -> tuple[Group, Group]:
    a, b = Group.objects.create(name="team-a"), Group.objects.create(name="team-b")
    alice.groups.add(a)
    bob.groups.add(b)
    return a, b


@pytest.fixture
def queues(groups: tuple[Group, Group]) -> dict[str, Queue]:
    a, b = groups
    return {
        "a": queue_create(actor=SYSTEM, name="queue-a", group_ids=[a.pk]),
        "b": queue_create(actor=SYSTEM, name="queue-b", group_ids=[b.pk]),
        "open": queue_create(actor=SYSTEM, name="open"),
    }


def _agent(user: User, **kw: Any) -> tuple[NewKey, Actor]:
    key = apikey_create(actor=SYSTEM, user=user, role=Role.AGENT, **kw)
    return key, actor_for_user(user, key.key)


def _bob_secret_experiment(bob: User, queue: Queue) -> Experiment:
    owner = actor_for_user(bob)
    exp = experiment_create(actor=owner, spec={"name": "b", "command": ["true"], "secret_env": {"B_TOKEN": "bee"}})
    experiment_enqueue(actor=owner, experiment_id=exp.pk, queue_id=queue.pk)
    return exp


def test_the_sql_rule_agrees_with_may_enqueue_for_every_owner_and_key(
    alice: User, bob: User, admin_user: User, queues: dict[str, Queue]
) -> None:
    for user in (alice, bob, admin_user):
        owner = actor_for_user(user)
        expected = {q.pk for q in queues.values() if may_enqueue(owner, q)}
        ids = [q.pk for q in queues.values()]
        assert servable_queue_ids(owner_id=user.pk, key_id=None, queue_ids=ids) == expected, user
        unlimited, _ = _agent(user)
        assert servable_queue_ids(owner_id=user.pk, key_id=unlimited.key.pk, queue_ids=ids) == expected, user
        limited, _ = _agent(user, allowed_queue_ids=[queues["open"].pk])
        assert servable_queue_ids(owner_id=user.pk, key_id=limited.key.pk, queue_ids=ids) == {queues["open"].pk}
    assert servable_queue_ids(owner_id=alice.pk, key_id=None, queue_ids=[]) == set()


def test_a_key_is_never_limited_to_a_queue_its_owner_may_not_use(alice: User, queues: dict[str, Queue]) -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {apikey_create(actor=SYSTEM, user=alice).token}")
    r = api.post("/api/v1/keys/", {"role": "agent", "allowed_queues": [queues["b"].pk]}, format="json")
    assert r.status_code == 403 and r.json()["error"]["field"] == "allowed_queues", r.content
    assert not alice.api_keys.filter(role=Role.AGENT).exists()
    r = api.post("/api/v1/keys/", {"role": "agent", "allowed_queues": [queues["a"].pk]}, format="json")
    assert r.status_code == 201


def test_an_agent_key_registers_only_for_queues_its_owner_may_use(alice: User, queues: dict[str, Queue]) -> None:
    key, _ = _agent(alice)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key.token}")
    r = api.post("/api/v1/workers/", {"name": "w", "queues": ["queue-b"]}, format="json")
    assert r.status_code == 403 and "queue-b" in r.json()["error"]["message"], r.content
    assert not Worker.objects.filter(name="w").exists()
    assert api.post("/api/v1/workers/", {"name": "w", "queues": ["queue-a", "open"]}, format="json").status_code == 201
    # A queue edit, by the agent or an admin, is held to the worker's owner, not to the editor.
    r = api.patch("/api/v1/workers/w/", {"queues": ["queue-b"]}, format="json")
    assert r.status_code == 403
    with pytest.raises(Forbidden):
        worker_update(actor=SYSTEM, worker=Worker.objects.get(name="w"), queues=[queues["b"].pk])


@pytest.mark.parametrize("wait", ["0", "1"])
def test_a_claim_never_hands_another_groups_experiment_or_secrets(
    alice: User, bob: User, queues: dict[str, Queue], wait: str
) -> None:
    """Issue 13's first way in: a worker that lists a queue it may no longer serve takes nothing from it."""
    key, agent = _agent(alice)
    worker_register(actor=agent, reg=Registration(name="w", queues=[queues["a"].pk], cpus=8, capabilities=31))
    # The worker listed queue-b while alice was in team-b; she has left it since.
    bob_group = Group.objects.get(name="team-b")
    alice.groups.add(bob_group)
    worker_update(actor=agent, worker=Worker.objects.get(name="w"), queues=[queues["a"].pk, queues["b"].pk])
    alice.groups.remove(bob_group)
    exp = _bob_secret_experiment(bob, queues["b"])
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {key.token}")
    r = api.post(f"/api/v1/workers/w/claim/?wait={wait}")
    assert r.status_code == 200 and r.json() == {"attempt": None, "experiment": None}, r.content
    assert Experiment.objects.get(pk=exp.pk).status == Status.QUEUED
    # Bob's own agent takes it, with his secret.
    _, bobs = _agent(bob)
    worker_register(actor=bobs, reg=Registration(name="bw", queues=[queues["b"].pk], cpus=8, capabilities=31))
    claim = dispatch_claim(actor=bobs, worker_name="bw")
    assert claim is not None and claim.experiment.pk == exp.pk
    assert claim_payload(claim)["experiment"]["secret_env"] == {"B_TOKEN": "bee"}


def test_an_agent_key_limited_to_one_queue_claims_nothing_elsewhere(
    admin_user: User, bob: User, queues: dict[str, Queue]
) -> None:
    _, agent = _agent(admin_user, allowed_queue_ids=[queues["open"].pk])
    exp = _bob_secret_experiment(bob, queues["b"])
    assert dispatch_claim(actor=agent, queue_ids=[queues["b"].pk], capacity=Capacity()) is None
    assert Experiment.objects.get(pk=exp.pk).status == Status.QUEUED


def test_clearml_get_next_task_refuses_a_queue_the_key_may_not_serve(
    alice: User, bob: User, queues: dict[str, Queue]
) -> None:
    """Issue 13's fifth way in: ClearML's pop named another group's queue and took its task."""
    key, _ = _agent(alice, allowed_queue_ids=[queues["a"].pk])
    exp = _bob_secret_experiment(bob, queues["b"])
    access, secret = key.token.split(".", 1)
    client = Client()
    r = client.post(
        "/clearml/queues.get_next_task",
        data={"queue": queues["b"].pk},
        content_type="application/json",
        HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode(),
    )
    assert r.status_code == 403, r.content
    assert Experiment.objects.get(pk=exp.pk).status == Status.QUEUED


def test_secrets_are_encrypted_at_rest_and_a_stranger_clone_has_none(
    alice: User, bob: User, queues: dict[str, Queue], make_queue: Callable[..., Queue]
) -> None:
    exp = _bob_secret_experiment(bob, queues["open"])
    stored = Experiment.objects.get(pk=exp.pk).secret_env
    assert set(stored) == {"B_TOKEN"} and "bee" not in str(stored)
    assert secret_env_decrypt(stored) == {"B_TOKEN": "bee"}
    clone = experiment_clone(actor=actor_for_user(alice), experiment_id=exp.pk)
    assert clone.secret_env == {}


def _clearml(key: NewKey, endpoint: str, data: dict[str, Any]) -> Any:
    access, secret = key.token.split(".", 1)
    auth = "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()
    return Client().post(f"/clearml/{endpoint}", data=data, content_type="application/json", HTTP_AUTHORIZATION=auth)


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [("queues.get_all", "name"), ("tasks.get_all", "name"), ("workers.get_all", "worker_pattern")],
)
def test_a_catastrophic_pattern_is_matched_in_linear_time(
    admin_user: User, alice: User, endpoint: str, field: str, make_queue: Callable[..., Queue]
) -> None:
    """Issue 13, point 4: `^(a+)+$` against a 36-character name hung Python's `re` for minutes.

    No timing is asserted: with a backtracking matcher this test does not end (36 a's and a b
    take 2^36 steps), with RE2 it is immediate.
    """
    long = "a" * 36 + "b"
    make_queue(long)
    experiment_create(actor=actor_for_user(alice), spec={"name": long, "command": ["true"]})
    _, agent = _agent(admin_user)
    worker_register(actor=agent, reg=Registration(name=long, cpus=1))
    key = apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN)
    r = _clearml(key, endpoint, {field: "^(a+)+$"})
    assert r.status_code == 200, r.content
    listed = r.json()["data"]
    assert next(iter(listed.values())) == []
    r = _clearml(key, endpoint, {field: "^a+b$"})
    assert [d["name"] if "name" in d else d["id"] for d in next(iter(r.json()["data"].values()))] == [long]


@pytest.mark.parametrize("pattern", ["(a)\\1", "(?<=a)b", "(", 5])
def test_a_pattern_re2_cannot_run_is_a_400_naming_the_field(admin_user: User, pattern: object) -> None:
    key, _ = _agent(admin_user)
    r = _clearml(key, "queues.get_all", {"name": pattern})
    assert r.status_code == 400 and "name" in r.json()["meta"]["result_msg"], r.content


def test_an_agent_reads_only_the_tasks_of_queues_it_serves(alice: User, bob: User, queues: dict[str, Queue]) -> None:
    """Issue 13, point 9: agent keys read every task through tasks.get_all."""
    key, _ = _agent(alice)
    theirs = _bob_secret_experiment(bob, queues["b"])
    owner = actor_for_user(alice)
    mine = experiment_create(actor=owner, spec={"name": "mine", "command": ["true"]})
    experiment_enqueue(actor=owner, experiment_id=mine.pk, queue_id=queues["a"].pk)
    listed = _clearml(key, "tasks.get_all", {}).json()["data"]["tasks"]
    assert [t["id"] for t in listed] == [mine.pk]
    assert _clearml(key, "tasks.get_all", {"id": [theirs.pk]}).json()["data"]["tasks"] == []
    assert _clearml(key, "tasks.get_by_id", {"task": theirs.pk}).status_code == 403
    assert _clearml(key, "tasks.get_by_id", {"task": mine.pk}).status_code == 200


def test_tasks_edit_of_someone_elses_task_is_refused_and_changes_nothing(
    alice: User, bob: User, queues: dict[str, Queue]
) -> None:
    theirs = _bob_secret_experiment(bob, queues["open"])
    alice_key = apikey_create(actor=SYSTEM, user=alice)
    r = _clearml(alice_key, "tasks.edit", {"task": theirs.pk, "runtime": {"x": 1}})
    assert r.status_code == 403, r.content
    # An agent that does not run it may not either (it serves the queue, but nothing of it runs there).
    agent_key, _ = _agent(alice)
    r = _clearml(agent_key, "tasks.edit", {"task": theirs.pk, "runtime": {"x": 1}})
    assert r.status_code == 403, r.content
    assert Experiment.objects.get(pk=theirs.pk).runtime == {}
    bob_key = apikey_create(actor=SYSTEM, user=bob)
    assert _clearml(bob_key, "tasks.edit", {"task": theirs.pk, "name": "x"}).json()["data"] == {
        "updated": 0,
        "fields": {},
    }
    assert _clearml(bob_key, "tasks.edit", {"task": theirs.pk, "runtime": {"x": 1}}).json()["data"]["updated"] == 1


DEEP = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize("path", ["/api/v1/auth/login/", "/api/v1/experiments/", "/api/v1/workers/", "/api/v1/keys/"])
def test_deep_nesting_is_a_json_400_on_every_drf_endpoint(alice: User, path: str) -> None:
    """Issue 13, point 7: 10,000 nested arrays were a RecursionError and an HTML 500."""
    api = APIClient()
    if path != "/api/v1/auth/login/":
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {apikey_create(actor=SYSTEM, user=alice).token}")
    r = api.post(path, DEEP, content_type="application/json")
    assert r.status_code in (400, 403) and r["Content-Type"] == "application/json", r.content[:200]
    if r.status_code == 400:
        assert "nests deeper than" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", [DEEP, '{"a": ' + DEEP + "}", '{"x": 1}\n' + DEEP])
def test_deep_nesting_is_a_400_envelope_on_the_clearml_facade(admin_user: User, body: str) -> None:
    key = apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN)
    access, secret = key.token.split(".", 1)
    auth = "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()
    for endpoint in ("auth.login", "tasks.get_all"):
        r = Client().post(f"/clearml/{endpoint}", data=body, content_type="application/json", HTTP_AUTHORIZATION=auth)
        assert r.status_code == 400 and r.json()["meta"]["result_code"] == 400, r.content[:300]


def test_deep_nesting_in_a_pages_json_field_is_a_400(alice: User) -> None:
    web = Client()
    web.force_login(alice)
    r = web.post("/experiments/new/", {"name": "x", "command": "true", "parameters": DEEP})
    assert r.status_code == 400 and b"nests deeper than 64 levels" in r.content
    assert not Experiment.objects.exists()


def _login(client: APIClient, password: str, *, addr: str = "10.0.0.1", forwarded: str | None = None) -> int:
    extra = {"REMOTE_ADDR": addr}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    body = {"username": "alice", "password": password}
    return int(client.post("/api/v1/auth/login/", body, format="json", **extra).status_code)


def test_successful_logins_are_not_counted(alice: User) -> None:
    client = APIClient()
    assert [_login(client, "pw-alice-123") for _ in range(15)] == [201] * 15


def test_a_forwarded_header_from_a_client_buys_no_more_guesses(alice: User) -> None:
    """Issue 13, point 6: a new X-Forwarded-For per request gave unlimited guesses."""
    client = APIClient()
    codes = [_login(client, "wrong", forwarded=f"192.0.2.{i}") for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]


def test_failures_count_per_username_across_addresses(alice: User, bob: User) -> None:
    client = APIClient()
    codes = [_login(client, "wrong", addr=f"10.0.1.{i}") for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    ok = client.post("/api/v1/auth/login/", {"username": "bob", "password": "pw-bob-123"}, format="json")
    assert ok.status_code == 201, "another user, from another address, is not locked out"


def test_the_page_and_admin_logins_count_failures_only(alice: User) -> None:
    for path in ("/login/", "/admin/login/"):
        alice.is_staff = path == "/admin/login/"
        alice.save()
        web = Client()
        for _ in range(12):
            assert web.post(path, {"username": "alice", "password": "pw-alice-123"}).status_code == 302
            web.logout()
        codes = [web.post(path, {"username": "alice", "password": "nope"}).status_code for _ in range(11)]
        assert codes[:10] == [200] * 10 and codes[10] == 429, path
        cache.clear()


def test_a_submit_names_its_queue_by_id_or_by_name(alice: User, queues: dict[str, Queue]) -> None:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {apikey_create(actor=SYSTEM, user=alice).token}")
    for ref in (queues["open"].pk, "OPEN"):
        r = api.post("/api/v1/experiments/", {"name": "n", "command": ["true"], "queue": ref}, format="json")
        assert r.status_code == 201 and r.json()["experiment"]["queue"] == queues["open"].pk, r.content
    r = api.post("/api/v1/experiments/", {"name": "n", "command": ["true"], "queue": "opne"}, format="json")
    assert r.status_code == 404 and r.json()["error"]["field"] == "queue"


def test_an_expired_key_is_refused_at_once_though_it_was_just_checked(
    alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, point 9: a key past its expiry was still accepted for the auth cache's 10 s."""
    expiry = timezone.now() + timedelta(minutes=5)
    new = apikey_create(actor=SYSTEM, user=alice, expires_at=expiry)
    with override_settings(AUTH_CACHE_S=3600):
        apikey_forget_cached()
        assert apikey_check(new.token) is not None  # checked, and now in the cache
        monkeypatch.setattr(timezone, "now", lambda: expiry + timedelta(seconds=1))
        assert apikey_check(new.token) is None
    apikey_forget_cached()


def test_too_many_query_parameters_is_a_json_400_on_the_api(alice: User) -> None:
    """Issue 13, point 9: 5,000 query parameters gave Django's HTML 400."""
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {apikey_create(actor=SYSTEM, user=alice).token}")
    query = "&".join(f"p{i}=1" for i in range(5000))
    for path in ("/api/v1/experiments/", "/api/v1/queues/"):
        r = api.get(f"{path}?{query}")
        assert r.status_code == 400 and r["Content-Type"] == "application/json", (path, r.content[:200])
        assert r.json()["error"]["code"] == "bad_request"
    assert Client().get(f"/login/?{query}").status_code == 400  # pages keep Django's page


PRODUCTION = {
    "DEBUG": "false",
    "ALLOWED_HOSTS": "muster.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://muster.example.com",
    "TRUSTED_PROXIES": "10.0.0.5",
}


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "SECRET_KEY", "DEBUG")}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_in_the_documented_production_configuration() -> None:
    """docs/security.md's checklist: no warning, the false W001-W003 gone (the project's middleware recognised)."""
    done = _manage("check", "--deploy", "--fail-level", "WARNING", **PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "the development key"),
        ("dev-insecure-change-me-" + "0" * 32, "the development key"),
        ("short-key", "too short"),
    ],
)
def test_production_refuses_a_guessable_secret_key_and_says_how_to_make_one(key: str, says: str) -> None:
    done = _manage("check", **PRODUCTION, SECRET_KEY=key)
    assert done.returncode == 2 and says in done.stderr and "secrets.token_urlsafe(50)" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_production_turns_on_https_and_a_strict_csp() -> None:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT, "
        "s.SECURE_HSTS_SECONDS, list(s.SECURE_PROXY_SSL_HEADER or []), s.SECURE_CSP['script-src']]))"
    )
    done = _manage("shell", "-c", code, **PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        '[true, true, true, 31536000, ["HTTP_X_FORWARDED_PROTO", "https"], ["\'self\'"]]'
    )
    off = _manage("shell", "-c", code, **PRODUCTION, SECRET_KEY=secrets.token_urlsafe(50), HTTPS_ONLY="false")
    assert off.stdout.strip().splitlines()[-1] == "[false, false, false, 0, [], [\"'self'\"]]"
