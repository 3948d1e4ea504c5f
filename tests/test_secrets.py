"""Per-user secrets: encrypted at rest, names only when read, injected into the owner's runs only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.actor import Actor
from accounts.models import UserSecret
from accounts.secrets import secret_set
from core.errors import Forbidden
from core.models import AuditEvent
from experiments.models import Experiment, Status
from experiments.services import attempt_finish, experiment_rerun
from queues.models import Queue
from workers.api import claim_payload
from workers.dispatch import dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db
VALUE = "hf_0123456789abcdef"


def test_set_list_replace_delete(alice_api: APIClient, bob_api: APIClient) -> None:
    r = alice_api.put("/api/v1/secrets/HF_TOKEN/", {"value": VALUE}, format="json")
    assert r.status_code == 200 and r.json()["name"] == "HF_TOKEN"
    listed = alice_api.get("/api/v1/secrets/")
    assert [s["name"] for s in listed.json()] == ["HF_TOKEN"] and VALUE not in listed.content.decode()
    stored = UserSecret.objects.get(name="HF_TOKEN")
    assert VALUE not in stored.ciphertext
    assert alice_api.put("/api/v1/secrets/HF_TOKEN/", {"value": "other-value"}, format="json").status_code == 200
    assert UserSecret.objects.count() == 1
    assert bob_api.get("/api/v1/secrets/").json() == []
    assert bob_api.delete("/api/v1/secrets/HF_TOKEN/").status_code == 404  # bob has none of that name
    assert alice_api.delete("/api/v1/secrets/HF_TOKEN/").status_code == 204
    events = json.dumps(list(AuditEvent.objects.filter(object_type="secret").values()), default=str)
    assert VALUE not in events and "other-value" not in events


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [("1BAD", {"value": "x"}, "name"), ("has-dash", {"value": "x"}, "name"), ("OK", {"value": ""}, "value")],
)
def test_bad_secrets_are_a_400(alice_api: APIClient, name: str, body: dict[str, str], field: str) -> None:
    r = alice_api.put(f"/api/v1/secrets/{name}/", body, format="json")
    assert r.status_code == 400 and r.json()["error"]["field"] == field


def test_only_admins_touch_other_peoples_secrets(alice_actor: Actor, admin_actor: Actor, bob: User) -> None:
    with pytest.raises(Forbidden):
        secret_set(actor=alice_actor, name="X", value="y", owner=bob)
    secret_set(actor=admin_actor, name="X", value="for bob", owner=bob)
    assert UserSecret.objects.filter(owner=bob, name="X").exists()


def test_the_owners_secrets_reach_the_claim_and_the_experiments_own_win(
    alice_actor: Actor, queue: Queue, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker],
    agent_actor: Actor,
) -> None:  # fmt: skip
    secret_set(actor=alice_actor, name="HF_TOKEN", value=VALUE)
    secret_set(actor=alice_actor, name="SHARED", value="from-the-user")
    make_experiment(queue=queue, secret_env={"SHARED": "from-the-experiment"})
    worker = make_worker("sec:0", queues=[queue])
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    with CaptureQueriesContext(connection) as queries:
        env: Any = claim_payload(claim)["experiment"]["secret_env"]
    assert env == {"HF_TOKEN": VALUE, "SHARED": "from-the-experiment"}
    # On PostgreSQL the claim's one-statement take brought them along: no second round trip.
    assert len(queries) == (0 if connection.vendor == "postgresql" else 1)


def test_an_experiment_read_never_shows_secret_values(
    alice_api: APIClient, alice_actor: Actor, make_experiment: Callable[..., Experiment]
) -> None:
    secret_set(actor=alice_actor, name="HF_TOKEN", value=VALUE)
    exp = make_experiment(secret_env={"DB_PASSWORD": "pw-9876543"})
    body = alice_api.get(f"/api/v1/experiments/{exp.pk}/").content.decode()
    assert VALUE not in body and "pw-9876543" not in body


def test_a_rerun_of_repository_code_gets_the_frozen_requirements(
    alice_actor: Actor, queue: Queue, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker],
    agent_actor: Actor,
) -> None:  # fmt: skip

    exp = make_experiment(queue=queue, repository="file:///repo.git", commit="a" * 40, requirements="torch>=2\n")
    worker = make_worker("frz:0", queues=[queue])
    first = dispatch_claim(actor=agent_actor, worker=worker)
    assert first is not None and claim_payload(first)["experiment"]["requirements"] == "torch>=2\n"
    attempt_finish(actor=agent_actor, attempt_id=first.attempt.pk, token=first.attempt.lease_token,
                   outcome=Status.COMPLETED, frozen_requirements="torch==2.5.1\n")  # fmt: skip
    experiment_rerun(actor=alice_actor, experiment_id=exp.pk)
    second = dispatch_claim(actor=agent_actor, worker=worker)
    assert second is not None and claim_payload(second)["experiment"]["requirements"] == "torch==2.5.1\n"
