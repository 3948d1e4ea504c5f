"""The ClearML facade through Django's test client, in the order clearml-agent calls it (reference §3.1)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from accounts.actor import SYSTEM, actor_for_user
from accounts.models import Role
from accounts.services import NewKey, apikey_create, apikey_revoke
from clearml_api.tokens import token_issue
from experiments.models import Attempt, Experiment, LogChunk, Status
from experiments.services import attempts_unbound_expire, experiment_create, experiment_enqueue
from queues.models import Queue
from workers.models import Worker, WorkerKind

pytestmark = pytest.mark.django_db
SCRIPT = "print('hello from clearml')\n"


class Agent:
    """What clearml-agent sends: GET with a JSON body, /vX.Y/ or bare paths, a bearer token after login."""

    def __init__(self, key: NewKey, host: str = "gpu-box"):
        self.client = Client()
        self.key = key
        access, secret = key.token.split(".", 1)
        self.basic = "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()
        self.token = ""
        self.host = host

    def raw(self, endpoint: str, data: dict[str, Any] | None = None, *, version: str = "v2.5", auth: str = "",
            method: str = "get", content_type: str = "application/json", body: str | None = None) -> Any:  # fmt: skip
        path = f"/clearml/{version}/{endpoint}" if version else f"/clearml/{endpoint}"
        headers = {
            "Authorization": auth or (f"Bearer {self.token}" if self.token else self.basic),
            "X-ClearML-Worker": self.host,
        }
        payload = body if body is not None else json.dumps(data or {})
        return self.client.generic(method.upper(), path, payload, content_type=content_type, headers=headers)

    def call(self, endpoint: str, data: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        r = self.raw(endpoint, data, **kw)
        body = r.json()
        assert r.status_code == body["meta"]["result_code"] == 200, body["meta"]
        return body["data"]  # type: ignore[no-any-return]

    key: NewKey

    def login(self) -> None:
        self.token = self.call("auth.login", version="", auth=self.basic)["token"]


def SYSTEM_USER() -> Any:  # noqa: N802 - reads as the constant it stands for

    return actor_for_user(User.objects.filter(is_superuser=True).first())  # type: ignore[arg-type]


def agent_key_of(agent: Agent) -> NewKey:
    return agent.key


@pytest.fixture
def agent_key(admin_user: User) -> NewKey:
    return apikey_create(actor=SYSTEM, user=admin_user, role=Role.AGENT, name="clearml")


@pytest.fixture
def agent(agent_key: NewKey) -> Agent:
    a = Agent(agent_key)
    a.login()
    return a


@pytest.fixture
def enqueue(admin_api: Any) -> Callable[..., str]:
    def make(queue: str = "default", **spec: Any) -> str:
        spec.setdefault("name", "ct")
        if "command" not in spec:
            spec.setdefault("script", SCRIPT)
        r = admin_api.post("/api/v1/experiments/", {"queue": queue, **spec}, format="json")
        assert r.status_code == 201, r.json()
        return r.json()["experiment"]["id"]  # type: ignore[no-any-return]

    return make


def test_the_envelope_paths_and_errors(agent: Agent, queue: Queue) -> None:
    r = agent.raw("queues.get_all", {"name": "default"}, version="v2.14")
    body = r.json()
    assert r.status_code == 200 and set(body) == {"meta", "data"}
    meta = body["meta"]
    assert {"id", "trx", "endpoint", "result_code", "result_subcode", "result_msg"} <= set(meta)
    assert meta["endpoint"] == {"name": "queues.get_all", "requested_version": "2.14", "actual_version": "2.31"}
    assert agent.call("queues.get_all", {"name": "default"}, version="")["queues"][0]["id"] == queue.pk
    by_query = agent.client.get(
        f"/clearml/queues.get_by_id?queue={queue.pk}", headers={"Authorization": f"Bearer {agent.token}"}
    )
    assert by_query.json()["data"]["queue"]["name"] == "default"
    missing = agent.raw("queues.nope")
    assert missing.status_code == 400 and "Unable to find endpoint" in missing.json()["meta"]["result_msg"]
    bad = agent.raw("queues.get_by_id", body="{nope")
    assert bad.status_code == 400 and bad.json()["data"] == {}
    assert agent.raw("queues.get_all", body='{"name": NaN}').status_code == 400
    assert agent.raw("workers.get_all", {"worker_pattern": "(["}).status_code == 400
    assert agent.raw("queues.get_by_id", {"queue": "x" * 5000}).status_code == 400
    nofield = agent.raw("queues.get_by_id", {})
    assert nofield.status_code == 400 and "missing required field: queue" in nofield.json()["meta"]["result_msg"]
    huge = agent.raw("events.add_batch", method="post", body='{"task": "' + "x" * 5_000_000 + '"}', version="")
    assert huge.status_code == 413 and "MAX_REQUEST_BYTES" in huge.json()["meta"]["result_msg"]  # the envelope


def test_login_tokens_are_checked_and_revocation_ends_them(agent: Agent, agent_key: NewKey) -> None:
    payload = json.loads(base64.urlsafe_b64decode(agent.token.split(".")[1] + "=="))
    assert payload["api_version"] == "2.31" and payload["feature_set"] == "basic" and payload["exp"] > payload["iat"]
    assert agent.raw("queues.get_all", auth="Bearer " + agent.token[:-3] + "abc").status_code == 401
    assert agent.raw("queues.get_all", auth="").status_code == 200  # Basic works on any call too
    wrong = "Basic " + base64.b64encode(b"mkabc:nope").decode()
    assert agent.raw("auth.login", version="", auth=wrong).status_code == 401
    apikey_revoke(actor=SYSTEM, access_key=agent_key.key.access_key)
    assert agent.raw("queues.get_all").status_code == 401


def test_queue_names_tags_and_the_paused_queue(agent: Agent, make_queue: Callable[..., Queue]) -> None:
    q = make_queue("a100 x8", tags=["gpu"])
    found = agent.call("queues.get_all", {"name": "a100\\ x8", "only_fields": ["name", "id", "tags"]})["queues"]
    assert found == [{"id": q.pk, "name": "a100 x8", "tags": ["gpu"]}]
    Queue.objects.filter(pk=q.pk).update(paused=True)
    tags = agent.call("queues.get_all", {"id": [q.pk], "only_fields": ["id", "tags"]})["queues"][0]["tags"]
    assert tags == ["gpu", "force_workers:off"]
    assert agent.raw("queues.get_all", {"name": "(["}).status_code == 400

    for i in range(3):
        exp = experiment_create(actor=SYSTEM_USER(), spec={"name": f"e{i}", "script": SCRIPT})
        experiment_enqueue(actor=SYSTEM_USER(), experiment_id=exp.pk, queue_id=q.pk, priority=i)
    listed = agent.call("queues.get_all", {"id": [q.pk], "max_task_entries": 2})["queues"][0]["entries"]
    assert [Experiment.objects.get(pk=e["task"]).name for e in listed] == ["e2", "e1"]  # claim order, capped
    assert agent.raw("queues.get_default").status_code == 400  # no queue carries the default system tag here


def test_register_claim_bind_run_log_and_complete(agent: Agent, queue: Queue, enqueue: Callable[..., str]) -> None:
    agent.call("workers.register", {"worker": "gpu-box:0", "queues": [queue.pk]}, version="")
    worker = Worker.objects.get(name="gpu-box:0")
    assert worker.kind == WorkerKind.CLEARML and worker.hostname == "gpu-box"
    assert agent.raw("workers.get_runtime_properties", {"worker": "gpu-box:0"}, version="").status_code == 200
    assert agent.call("queues.get_next_task", {"queue": queue.pk}, version="v2.14") == {}
    task = enqueue(name="literal script")
    command_task = enqueue(name="argv", command=["python", "-c", "print(1)"])
    entry = agent.call("queues.get_next_task", {"queue": queue.pk}, version="v2.14")["entry"]
    assert entry["task"] == task  # the argv command stays for a native agent
    assert agent.call("queues.get_next_task", {"queue": queue.pk}, version="v2.14") == {}
    attempt = Attempt.objects.get(experiment_id=task)
    assert attempt.worker_id is None and Experiment.objects.get(pk=task).status == Status.IN_PROGRESS
    for _ in range(2):  # the daemon and its child both say started, with force
        assert agent.call("tasks.started", {"task": task, "force": True})["fields"]["status"] == "in_progress"
    got = agent.call("tasks.get_by_id", {"task": task})["task"]
    assert got["script"]["diff"] == SCRIPT and got["script"]["repository"] == "" and got["script"]["entry_point"]
    agent.call("tasks.dequeue", {"task": task, "new_status": "in_progress"}, version="")
    agent.call("tasks.edit", {"task": task, "force": True, "runtime": {"_exec_agent_hostname": "gpu-box"}}, version="")
    assert Experiment.objects.get(pk=task).runtime == {"_exec_agent_hostname": "gpu-box"}
    image = {"image": "nvidia/cuda:12.4", "arguments": "", "setup_shell_script": ""}
    agent.call("tasks.edit", {"task": task, "force": True, "container": image}, version="")  # docker mode's default
    read = agent.call("tasks.get_all", {"id": [task], "only_fields": ["runtime", "container"]}, version="v2.15")[
        "tasks"
    ][0]
    assert read["container"] == image and read["runtime"]["_exec_agent_hostname"] == "gpu-box"
    stats = {"cpu_usage": [42.5], "memory_used": 2048, "memory_free": 1024, "gpu_usage": [90, 80],
             "gpu_memory_used": [1000, 2000], "network_rx": 1.5, "network_tx": 0.5}  # fmt: skip
    agent.call("workers.status_report", {"worker": "gpu-box:0", "timestamp": int(timezone.now().timestamp()) * 1000,
                                         "task": task, "queue": queue.pk, "machine_stats": stats}, version="")  # fmt: skip
    attempt.refresh_from_db()
    assert attempt.worker_name == "gpu-box:0"
    events = [
        {"type": "log", "task": task, "msg": "line one", "level": "info", "timestamp": 1},
        {"type": "log", "task": task, "msg": "line two\n", "level": "info", "timestamp": 2},
        {"type": "training_stats_scalar", "task": task, "iter": 7, "metric": "loss", "variant": "train", "value": 0.5},
        {"type": "plot", "task": task, "iter": 7},
    ]
    body = "\n".join(json.dumps(e) for e in events)
    added = agent.call("events.add_batch", method="post", content_type="application/json-lines", body=body, version="")
    assert added["added"] == 4
    assert (
        "".join(LogChunk.objects.filter(attempt=attempt).order_by("seq").values_list("text", flat=True))
        == "line one\nline two\n"
    )
    agent.call("tasks.set_requirements", {"task": task, "requirements": {"pip": "numpy==2.0\n"}})
    done = agent.call("tasks.completed", {"task": task, "status_reason": "worker execution done"})
    assert done["fields"]["status"] == "completed"
    exp = Experiment.objects.get(pk=task)
    assert exp.last_iteration == 7 and exp.last_metrics == {"loss/train": 0.5}
    attempt.refresh_from_db()
    assert attempt.frozen_requirements == "numpy==2.0\n" and attempt.outcome == "completed"
    listed = agent.call("workers.get_all", {"last_seen": 0})["workers"]
    assert listed[0]["id"] == "gpu-box:0" and listed[0]["queues"][0]["name"] == "default"
    assert Experiment.objects.get(pk=command_task).status == Status.QUEUED
    agent.call("workers.unregister", {"worker": "gpu-box:0"}, version="")
    agent.call("workers.unregister", {"worker": "gpu-box:0"}, version="")  # twice, as the agent does


def test_an_unbound_claim_is_retried_and_a_bound_one_is_fenced(
    agent: Agent, queue: Queue, enqueue: Callable[..., str], admin_user: User
) -> None:
    task = enqueue(name="orphan", retry_policy={"worker_lost": 1})
    agent.call("queues.get_next_task", {"queue": queue.pk})
    later = timezone.now() + timezone.timedelta(seconds=600)
    assert attempts_unbound_expire(now=later) == 1
    exp = Experiment.objects.get(pk=task)
    assert exp.status == Status.QUEUED and exp.retry_count == 0  # it never started: no retry used
    agent.call("workers.register", {"worker": "gpu-box:0", "queues": [queue.pk]})
    agent.call("queues.get_next_task", {"queue": queue.pk})
    agent.call("workers.status_report", {"worker": "gpu-box:0", "task": task})
    other = Agent(apikey_create(actor=SYSTEM, user=admin_user, role=Role.AGENT, name="other"), host="elsewhere")
    other.login()
    refused = other.raw("tasks.completed", {"task": task})
    assert refused.status_code == 403 and Experiment.objects.get(pk=task).status == Status.IN_PROGRESS
    same_key_elsewhere = Agent(agent_key_of(agent), host="another-box")
    same_key_elsewhere.login()
    fenced = same_key_elsewhere.raw("tasks.completed", {"task": task})
    assert fenced.status_code == 403 and "runs on worker gpu-box:0" in fenced.json()["meta"]["result_msg"]
    stolen = other.raw("workers.status_report", {"worker": "thief:0", "task": task})
    assert stolen.status_code == 200 and Attempt.objects.get(experiment_id=task, number=2).worker_name == "gpu-box:0"


def test_stop_on_a_live_worker_reads_stopping_then_the_agent_says_stopped(
    agent: Agent, admin_user: User, queue: Queue, enqueue: Callable[..., str]
) -> None:
    agent.call("workers.register", {"worker": "gpu-box:0", "queues": [queue.pk]})
    task = enqueue(name="long")
    agent.call("queues.get_next_task", {"queue": queue.pk})
    agent.call("tasks.started", {"task": task, "force": True})
    agent.call("workers.status_report", {"worker": "gpu-box:0", "task": task})
    admin = Agent(apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN, name="ui"))
    admin.login()
    admin.call("tasks.stop", {"task": task})
    polled = agent.call("tasks.get_all", {"id": [task], "only_fields": ["status", "status_message"]}, version="v2.14")
    assert polled["tasks"] == [{"id": task, "status": "in_progress", "status_message": "stopping"}]
    agent.call("tasks.stopped", {"task": task, "status_reason": "task was stopped by tasks.stop"})
    assert Experiment.objects.get(pk=task).status == Status.STOPPED
    agent.call("tasks.stopped", {"task": task})  # a repeat is fine


def test_tasks_enqueue_by_queue_name_and_verify_watched(agent: Agent, admin_user: User, queue: Queue) -> None:
    admin = Agent(apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN, name="sdk"))
    admin.login()
    exp = Experiment.objects.create(name="from sdk", owner=admin_user, script=SCRIPT)
    answer = admin.call("tasks.enqueue", {"task": exp.pk, "queue_name": "fresh queue", "verify_watched_queue": True})
    assert answer["queued"] == 1 and answer["queue_watched"] is False
    assert Experiment.objects.get(pk=exp.pk).queue.name == "fresh queue"  # type: ignore[union-attr]
    assert admin.call("tasks.dequeue", {"task": exp.pk})["fields"]["status"] == "created"


def test_a_call_refused_half_way_writes_nothing(admin_user: User, queue: Queue) -> None:
    admin = Agent(apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN, name="sdk"))
    admin.login()
    exp = Experiment.objects.create(name="queued", owner=admin_user, script=SCRIPT, status=Status.QUEUED, queue=queue)
    edit = {"task": exp.pk, "runtime": {"note": "x"}, "script": {"entry_point": "other.py"}}
    r = admin.raw("tasks.edit", edit, version="")
    # the script of a queued task cannot change, so its runtime does not either
    assert r.status_code == 400 and "only a created experiment" in r.json()["meta"]["result_msg"], r.json()
    assert Experiment.objects.get(pk=exp.pk).runtime == {}
    running = Experiment.objects.create(name="running", owner=admin_user, script=SCRIPT, status=Status.IN_PROGRESS)
    r = admin.raw("tasks.enqueue", {"task": running.pk, "queue_name": "new queue"}, version="")
    assert r.status_code == 400 and "cannot enqueue" in r.json()["meta"]["result_msg"], r.json()
    assert not Queue.objects.filter(name="new queue").exists()  # the queue it named is not left behind


def test_agent_keys_do_what_an_agent_needs_and_nothing_more(
    agent: Agent, queue: Queue, enqueue: Callable[..., str]
) -> None:
    task = enqueue(name="someone's")
    assert agent.raw("queues.create", {"name": "agents-queue"}).status_code == 403
    assert agent.raw("tasks.stop", {"task": task}).status_code == 403
    assert agent.raw("tasks.edit", {"task": task, "script": {"diff": "print(2)"}}).status_code == 403
    assert Experiment.objects.get(pk=task).status == Status.QUEUED


def test_expired_tokens_and_paused_queues(agent: Agent, agent_key: NewKey, make_queue: Callable[..., Queue],
                                          enqueue: Callable[..., str]) -> None:  # fmt: skip
    old = token_issue(access_key=agent_key.key.access_key, user_id=agent_key.key.user_id, username="x", role="agent",
                      expiry_s=-5)  # fmt: skip
    assert agent.raw("queues.get_all", auth=f"Bearer {old}").status_code == 401
    q = make_queue("paused-q", paused=True)
    enqueue("paused-q", name="waits")
    assert agent.call("queues.get_next_task", {"queue": q.pk}) == {}


def test_a_clearml_task_script_maps_to_our_code_fields_both_ways(admin_user: User, queue: Queue) -> None:
    admin = Agent(apikey_create(actor=SYSTEM, user=admin_user, role=Role.ADMIN, name="sdk"))
    admin.login()
    exp = Experiment.objects.create(name="edit me", owner=admin_user, script="print(1)\n")
    git = {"repository": "https://git.example/ml.git", "branch": "main", "version_num": "abc123", "entry_point": "train.py",
           "working_dir": "src", "diff": "diff --git a/x b/x\n", "requirements": {"pip": "torch==2.5\n"}}  # fmt: skip
    admin.call("tasks.edit", {"task": exp.pk, "script": git})
    exp.refresh_from_db()
    assert (exp.repository, exp.branch, exp.commit, exp.entry_point, exp.working_dir) == (
        "https://git.example/ml.git", "main", "abc123", "train.py", "src")  # fmt: skip
    assert exp.diff.startswith("diff --git") and exp.requirements == "torch==2.5\n"
    read = admin.call("tasks.get_by_id", {"task": exp.pk})["task"]["script"]
    assert {k: read[k] for k in git if k != "requirements"} == {k: v for k, v in git.items() if k != "requirements"}
    assert read["requirements"] == {"pip": "torch==2.5\n"}
    admin.call(
        "tasks.edit",
        {"task": exp.pk, "script": {"repository": "", "diff": "print('literal')\n", "entry_point": "run.py"}},
    )
    exp.refresh_from_db()
    assert exp.script == "print('literal')\n" and exp.repository == "" and exp.diff == ""
    assert admin.call("tasks.get_by_id", {"task": exp.pk})["task"]["script"]["diff"] == "print('literal')\n"
    admin.call("tasks.edit", {"task": exp.pk, "container": {"image": "python:3.12", "arguments": "--ipc=host"}})
    assert Experiment.objects.get(pk=exp.pk).container_args == ["--ipc=host"]
