"""The REST API as a client sees it: errors, limits, pagination, keys, health, the schema."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actor import SYSTEM
from accounts.models import ApiKey, KeyScope, Role
from accounts.services import apikey_check, apikey_create, key_digest
from core.models import AuditEvent
from experiments.models import Experiment, Status
from queues.models import Queue, QueueEntry
from tests.conftest import client_for

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert "error" in body, body
    return body["error"]  # type: ignore[no-any-return]


def test_create_and_enqueue_in_one_call_with_a_warning(alice_api: APIClient, queue: Queue) -> None:
    r = alice_api.post(
        "/api/v1/experiments/", {"name": "train", "command": ["python", "train.py"], "queue": "default"}, format="json"
    )
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["experiment"]["status"] == "queued"
    assert body["warnings"] == ["no live worker listens to queue default"]


def test_create_and_enqueue_is_one_transaction_audited_as_two_steps(alice_api: APIClient, queue: Queue) -> None:
    alice_api.post("/api/v1/experiments/", {"name": "warm", "command": ["x"]}, format="json")
    with CaptureQueriesContext(connection) as ctx:
        r = alice_api.post(
            "/api/v1/experiments/", {"name": "train", "command": ["python"], "queue": "DEFAULT"}, format="json"
        )
    assert r.status_code == 201, r.content
    sql = [q["sql"] for q in ctx.captured_queries]  # before the next request clears the log
    exp = Experiment.objects.get(pk=r.json()["experiment"]["id"])
    assert r.json()["experiment"] == alice_api.get(f"/api/v1/experiments/{exp.pk}/").json()  # answered unread
    assert (exp.status, exp.enqueue_status, exp.queue_id) == (Status.QUEUED, Status.CREATED, queue.pk)
    assert exp.queued_at is not None and QueueEntry.objects.filter(experiment=exp, queue=queue).count() == 1
    events = AuditEvent.objects.filter(object_id=exp.pk).order_by("id")
    assert [(e.action, e.before.get("status"), e.after["status"]) for e in events] == [
        ("create", None, "created"),
        ("enqueue", "created", "queued"),
    ]
    assert events[1].message == "queue default" and events[1].after["queue"] == queue.pk
    # one transaction (one savepoint under the test's own), the experiment written once
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 1, sql
    assert sum(s.startswith('INSERT INTO "experiments_experiment"') for s in sql) == 1
    assert not any(s.startswith('UPDATE "experiments_experiment"') for s in sql), sql


@pytest.mark.parametrize(
    ("queue_name", "status"),
    [("nowhere", 404), ("private", 403)],
)
def test_a_refused_enqueue_on_create_leaves_nothing(
    alice_api: APIClient, queue: Queue, queue_name: str, status: int
) -> None:
    private = Queue.objects.create(name="private")
    private.groups.add(Group.objects.create(name="other-team"))
    r = alice_api.post(
        "/api/v1/experiments/", {"name": "train", "command": ["python"], "queue": queue_name}, format="json"
    )
    assert r.status_code == status, r.content
    assert error(r)["field"] == "queue"
    assert not Experiment.objects.exists()
    assert not AuditEvent.objects.filter(object_type="experiment").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"command": ["x"]}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "n", "gpus": 1.5}, "gpus"),
        ({"name": "n", "gpus": "many"}, "gpus"),
        ({"name": "n", "env": {"1BAD": "x"}}, "env"),
        ({"name": "n", "parameters": {"k": "a\u0000b"}}, "parameters"),
        ({"name": "n", "parameters": [1, 2]}, "parameters"),
        ({"name": "n\u0000"}, "name"),
        ({"name": "n", "tags": ["t"] * 51}, "tags"),
        ({"name": "n", "priority": 10**9}, "priority"),
        ({"name": "n", "stop_signal": "SIGWHAT"}, "stop_signal"),
        ({"name": "n", "retry_policy": {"user_error": -1}}, "retry_policy"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    alice_api: APIClient, payload: dict[str, Any], field: str
) -> None:
    r = alice_api.post("/api/v1/experiments/", payload, format="json")
    assert r.status_code == 400, r.content
    assert error(r)["field"].split(".")[0] == field
    assert not Experiment.objects.exists()


def test_malformed_json_is_a_400(alice_api: APIClient) -> None:
    r = alice_api.post("/api/v1/experiments/", "{nope", content_type="application/json")
    assert r.status_code == 400
    assert error(r)["code"] == "parse_error"


def test_an_oversized_body_is_refused(alice_api: APIClient) -> None:
    r = alice_api.post("/api/v1/experiments/", {"name": "n", "diff": "x" * 5_000_000}, format="json")
    assert r.status_code == 413  # JSON like every other error, not Django's HTML 400
    assert error(r)["code"] == "too_large" and "MAX_REQUEST_BYTES" in error(r)["message"]
    assert not Experiment.objects.exists()


def test_illegal_moves_are_409_with_a_clear_message(alice_api: APIClient) -> None:
    exp = alice_api.post("/api/v1/experiments/", {"name": "n", "command": ["true"]}, format="json").json()
    r = alice_api.post(f"/api/v1/experiments/{exp['experiment']['id']}/stop/", {}, format="json")
    assert r.status_code == 409
    assert "cannot stop" in error(r)["message"]


def test_secrets_are_masked_when_read(alice_api: APIClient) -> None:
    r = alice_api.post(
        "/api/v1/experiments/", {"name": "n", "command": ["true"], "secret_env": {"TOKEN": "hunter2"}}, format="json"
    )
    exp_id = r.json()["experiment"]["id"]
    assert "hunter2" not in r.content.decode()
    detail = alice_api.get(f"/api/v1/experiments/{exp_id}/").json()
    assert detail["secret_env"] == {"TOKEN": "********"}


def test_the_agent_gets_secrets_with_its_claim(
    alice_api: APIClient, agent_api: APIClient, queue: Queue, make_worker: Any
) -> None:
    make_worker(name="gpu:0", queues=[queue])
    alice_api.post(
        "/api/v1/experiments/",
        {"name": "n", "command": ["true"], "secret_env": {"TOKEN": "hunter2"}, "queue": "default"},
        format="json",
    )
    claim = agent_api.post("/api/v1/workers/gpu:0/claim/").json()
    assert claim["experiment"]["secret_env"] == {"TOKEN": "hunter2"}
    assert len(claim["attempt"]["token"]) == 32


def test_a_full_run_through_the_api(alice_api: APIClient, agent_api: APIClient, queue: Queue) -> None:
    r = agent_api.post("/api/v1/workers/", {"name": "box:0", "queues": ["default"], "cpus": 4}, format="json")
    assert r.status_code == 201, r.content
    exp_id = alice_api.post(
        "/api/v1/experiments/", {"name": "n", "command": ["true"], "queue": "default"}, format="json"
    ).json()["experiment"]["id"]
    claim = agent_api.post("/api/v1/workers/box:0/claim/").json()
    attempt, token = claim["attempt"]["id"], claim["attempt"]["token"]
    base = f"/api/v1/attempts/{attempt}"
    assert agent_api.post(f"{base}/start/", {"token": token}, format="json").status_code == 200
    chunks = [{"seq": 0, "text": "hello\n"}, {"seq": 1, "text": "bye\n"}]
    assert agent_api.post(f"{base}/logs/", {"token": token, "chunks": chunks}, format="json").json() == {"added": 2}
    assert agent_api.post(f"{base}/logs/", {"token": token, "chunks": chunks}, format="json").json() == {"added": 0}
    r = agent_api.post(f"{base}/progress/", {"token": token, "iteration": 5, "metrics": {"loss": 0.5}}, format="json")
    assert r.json() == {"stop": False}
    r = agent_api.post(f"{base}/finish/", {"token": token, "outcome": "completed", "exit_code": 0}, format="json")
    assert r.status_code == 200
    exp = alice_api.get(f"/api/v1/experiments/{exp_id}/").json()
    assert exp["status"] == "completed" and exp["last_iteration"] == 5 and exp["last_metrics"] == {"loss": 0.5}
    logs = alice_api.get(f"/api/v1/experiments/{exp_id}/logs/").json()
    assert "".join(c["text"] for c in logs["chunks"]) == "hello\nbye\n"
    attempts = alice_api.get(f"/api/v1/experiments/{exp_id}/attempts/").json()
    assert attempts["next"] is None
    assert attempts["results"][0]["worker"] == "box:0" and attempts["results"][0]["outcome"] == "completed"
    for limit in ("0", "1000000000"):  # issue 13: a bare list, and every row in one page
        page = alice_api.get(f"/api/v1/experiments/{exp_id}/attempts/?limit={limit}").json()
        assert set(page) == {"next", "results"} and len(page["results"]) == 1
    stale = agent_api.post(f"{base}/progress/", {"token": "f" * 32}, format="json")
    assert stale.status_code == 409 and error(stale)["kill"] is True


def test_experiment_list_filters_and_cursor_pages(alice_api: APIClient, alice: Any) -> None:
    for i in range(7):
        alice_api.post("/api/v1/experiments/", {"name": f"run-{i}", "command": ["true"]}, format="json")
    r = alice_api.get("/api/v1/experiments/?limit=3&search=run")
    page = r.json()
    assert len(page["results"]) == 3 and page["next"]
    second = alice_api.get(page["next"]).json()
    assert {e["name"] for e in second["results"]}.isdisjoint({e["name"] for e in page["results"]})
    assert alice_api.get("/api/v1/experiments/?status=created").json()["results"]
    assert not alice_api.get("/api/v1/experiments/?status=queued").json()["results"]
    bad = alice_api.get("/api/v1/experiments/?status=bogus")
    assert bad.status_code == 400 and error(bad)["field"] == "status"
    forged = alice_api.get("/api/v1/experiments/?cursor=bz14")
    assert forged.status_code == 400 and error(forged)["field"] == "cursor"  # "o=x": bad input, not a 404


def test_queue_entries_page_by_keyset(admin_api: APIClient, queue: Queue, make_experiment: Any) -> None:
    for i in range(5):
        make_experiment(queue=queue, name=f"e{i}")
    first = admin_api.get(f"/api/v1/queues/{queue.pk}/entries/?limit=2").json()
    assert [e["name"] for e in first["results"]] == ["e0", "e1"]
    second = admin_api.get(f"/api/v1/queues/{queue.pk}/entries/?limit=2&cursor={first['next']}").json()
    assert [e["name"] for e in second["results"]] == ["e2", "e3"]
    assert admin_api.get(f"/api/v1/queues/{queue.pk}/entries/?cursor=%%%").status_code == 400


def test_queue_api_round_trip(admin_api: APIClient, make_experiment: Any) -> None:
    r = admin_api.post("/api/v1/queues/", {"name": "a100 x8", "concurrency_limit": 4}, format="json")
    assert r.status_code == 201
    qid = r.json()["id"]
    dup = admin_api.post("/api/v1/queues/", {"name": "A100 X8"}, format="json")
    assert dup.status_code == 409 and error(dup)["field"] == "name"
    assert admin_api.post(f"/api/v1/queues/{qid}/pause/").json()["paused"] is True
    assert admin_api.patch(f"/api/v1/queues/{qid}/", {"name": "a100-x8"}, format="json").json()["name"] == "a100-x8"
    exp = make_experiment(queue=Queue.objects.get(pk=qid))
    r = admin_api.post(f"/api/v1/queues/{qid}/entries/move/", {"experiments": [exp.pk], "to": "by"}, format="json")
    assert r.status_code == 400 and error(r)["field"] == "value"
    assert admin_api.delete(f"/api/v1/queues/{qid}/").json() == {"count": 1}
    exp.refresh_from_db()
    assert exp.status == Status.CREATED and not QueueEntry.objects.exists()


def test_register_refuses_a_live_name_from_another_host(agent_api: APIClient, queue: Queue) -> None:
    assert agent_api.post("/api/v1/workers/", {"name": "w:0", "hostname": "a"}, format="json").status_code == 201
    r = agent_api.post("/api/v1/workers/", {"name": "w:0", "hostname": "b"}, format="json")
    assert r.status_code == 409 and "live on host a" in error(r)["message"]
    bad = agent_api.post("/api/v1/workers/", {"name": "w 0"}, format="json")
    assert bad.status_code == 400 and error(bad)["field"] == "name"
    unknown = agent_api.post("/api/v1/workers/", {"name": "w:1", "queues": ["nope"]}, format="json")
    assert unknown.status_code == 400 and "nope" in error(unknown)["message"]


def test_agent_keys_limit_queues_and_worker_names(admin_user: Any, queue: Queue, make_queue: Any) -> None:
    other = make_queue("other")
    key = apikey_create(
        actor=SYSTEM, user=admin_user, role=Role.AGENT, allowed_queue_ids=[queue.pk], worker_prefix="gpu-"
    )
    api = client_for(key)
    assert api.post("/api/v1/workers/", {"name": "cpu-1"}, format="json").status_code == 403
    assert api.post("/api/v1/workers/", {"name": "gpu-1", "queues": [other.name]}, format="json").status_code == 403
    assert api.post("/api/v1/workers/", {"name": "gpu-1", "queues": ["default"]}, format="json").status_code == 201


def test_keys_are_stored_as_digests_and_shown_once(alice_api: APIClient, alice: Any) -> None:
    r = alice_api.post("/api/v1/keys/", {"name": "laptop", "expires_in_days": 30}, format="json")
    assert r.status_code == 201
    body = r.json()
    access, secret = body["access_key"], body["secret"]
    stored = ApiKey.objects.get(access_key=access)
    assert stored.digest == key_digest(secret) and secret not in stored.digest
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    listed = alice_api.get("/api/v1/keys/").json()
    assert all("secret" not in k and "token" not in k for k in listed)
    assert apikey_check(body["token"]) == stored


def test_revoked_and_expired_keys_are_refused(alice: Any, queue: Queue) -> None:
    key = apikey_create(actor=SYSTEM, user=alice)
    api = client_for(key)
    assert api.get("/api/v1/queues/").status_code == 200
    assert api.delete(f"/api/v1/keys/{key.key.access_key}/").status_code == 200
    assert api.get("/api/v1/queues/").status_code == 401
    old = apikey_create(actor=SYSTEM, user=alice)
    ApiKey.objects.filter(pk=old.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert client_for(old).get("/api/v1/queues/").status_code == 401
    assert APIClient(HTTP_AUTHORIZATION="Bearer mkdeadbeef.nope").get("/api/v1/queues/").status_code == 401


def test_read_only_keys_cannot_write(alice: Any) -> None:
    api = client_for(apikey_create(actor=SYSTEM, user=alice, scope=KeyScope.READ))
    assert api.get("/api/v1/experiments/").status_code == 200
    r = api.post("/api/v1/experiments/", {"name": "n"}, format="json")
    assert r.status_code == 403 and "read-only" in error(r)["message"]


def test_login_gives_a_key_and_is_throttled(alice: Any) -> None:
    client = APIClient()
    ok = client.post("/api/v1/auth/login/", {"username": "alice", "password": "pw-alice-123"}, format="json")
    assert ok.status_code == 201 and ok.json()["token"]
    codes = [
        client.post("/api/v1/auth/login/", {"username": "alice", "password": "wrong"}, format="json").status_code
        for _ in range(12)
    ]
    assert 401 in codes and codes[-1] == 429


def test_health_endpoints() -> None:
    client = APIClient()
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_apikey_command_makes_lists_and_revokes(alice: Any) -> None:
    out = StringIO()
    call_command("apikey", "create", "--user", "alice", "--role", "agent", "--json", stdout=out)

    made = json.loads(out.getvalue())
    assert apikey_check(made["token"]) is not None
    out = StringIO()
    call_command("apikey", "list", "--user", "alice", stdout=out)
    assert made["access_key"] in out.getvalue()
    call_command("apikey", "revoke", made["access_key"], stdout=StringIO())
    assert apikey_check(made["token"]) is None


def test_apikey_command_limits_an_agent_key_to_queues_by_name_or_id(alice: Any, make_queue: Any) -> None:
    gpu, cpu = make_queue("gpu"), make_queue("cpu")
    out = StringIO()
    call_command(
        "apikey",
        "create",
        "--user",
        "alice",
        "--role",
        "agent",
        "--queue",
        "GPU",
        "--queue",
        cpu.pk,
        "--json",
        stdout=out,
    )
    key = ApiKey.objects.get(access_key=json.loads(out.getvalue())["access_key"])
    assert set(key.allowed_queues.values_list("pk", flat=True)) == {gpu.pk, cpu.pk}
    with pytest.raises(CommandError, match="unknown queue nope"):
        call_command("apikey", "create", "--user", "alice", "--role", "agent", "--queue", "nope", stdout=StringIO())
    assert ApiKey.objects.filter(user=alice).count() == 1  # the refused one wrote nothing


def test_the_committed_schema_matches_the_code() -> None:
    out = StringIO()
    call_command("spectacular", "--urlconf", "orchestration.schema_urls", "--validate", "--fail-on-warn", stdout=out)
    committed = (ROOT / "docs" / "openapi.yaml").read_text()
    assert out.getvalue() == committed, "the API changed: run `make schema` and commit docs/openapi.yaml"


def test_the_schema_and_docs_are_served(admin_api: APIClient) -> None:
    assert admin_api.get("/api/schema/").status_code == 200
    docs = admin_api.get("/api/docs/")
    assert docs.status_code == 200 and b"cdn" not in docs.content.lower()


def test_admin_password_logins_are_throttled(alice: Any) -> None:
    client = Client()
    codes = [client.post("/admin/login/", {"username": "alice", "password": "wrong"}).status_code for _ in range(12)]
    assert codes[0] == 200 and codes[-1] == 429


def test_metrics_need_a_key_and_count_what_is_there(
    admin_api: APIClient, agent_api: APIClient, queue: Queue, make_experiment: Any, make_worker: Any
) -> None:
    assert APIClient().get("/metrics").status_code == 401
    make_experiment(queue=queue)
    make_experiment()
    make_worker(name="m:0", queues=[queue])
    agent_api.post("/api/v1/workers/m:0/claim/")
    agent_api.post("/api/v1/workers/m:0/report/", {"interval_s": 5}, format="json")
    body = admin_api.get("/metrics").content.decode()
    assert 'muster_queue_length{queue="default"} 0' in body
    assert 'muster_experiments{status="in_progress"} 1' in body and 'muster_experiments{status="created"} 1' in body
    assert 'muster_workers{status="busy"} 1' in body
    assert "# TYPE muster_claims_total counter" in body and "muster_reports_total" in body
