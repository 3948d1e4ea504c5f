"""The web pages through Django's test client: access, every action, inline errors, constant query counts."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.actor import SYSTEM, Actor
from actions.models import CustomAction
from actions.services import action_issue, action_render, actions_sync
from core.errors import Forbidden
from experiments import queueing
from experiments.models import Attempt, Experiment, Status
from orchestration.asgi import _sync_actions
from queues import positions
from queues.models import Queue, QueueEntry
from workers.dispatch import dispatch_claim
from workers.models import AttemptStat, Rollup, Worker, WorkerStat
from workers.timeseries import stats_sample

pytestmark = pytest.mark.django_db


@pytest.fixture
def web(admin_user: User) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.fixture
def alice_web(alice: User) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def slots(n: int) -> list[dict[str, Any]]:
    return [{"index": i, "model": "nvidia a100", "memory_mb": 81920} for i in range(n)]


def toast(response: Any) -> dict[str, Any]:
    return json.loads(response["HX-Trigger"])["toast"]  # type: ignore[no-any-return]


def order(queue: Queue) -> list[str]:
    return list(positions.ordered(queue.pk).values_list("experiment__name", flat=True))


# -- the shell ---------------------------------------------------------------------------------


def test_pages_need_a_login_and_the_login_page_signs_in(client: Client, admin_user: User) -> None:
    for url in ("/", "/orchestration/workers/", "/orchestration/queues/", "/experiments/", "/settings/"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/login/"), url
    assert client.get("/orchestration/graphs/workers/").status_code == 401
    r = client.post("/login/", {"username": "root", "password": "wrong"})
    assert r.status_code == 200 and b"Please enter a correct username" in r.content
    r = client.post("/login/", {"username": "root", "password": "pw-admin-123"})
    assert r.status_code == 302
    page = client.get("/orchestration/workers/")
    assert page.status_code == 200
    for vendored in (b"vendor/htmx-2.0.11.min.js", b"vendor/plotly-basic-4.1.1.min.js", b"muster/app.js"):
        assert vendored in page.content
    assert b"http://" not in page.content.split(b"<body")[0].replace(b"http://www.w3.org", b"")  # no CDN


def test_logins_are_throttled(client: Client, admin_user: User) -> None:
    codes = [client.post("/login/", {"username": "root", "password": "nope"}).status_code for _ in range(12)]
    assert codes[-1] == 429


def test_settings_page_makes_shows_once_and_revokes_keys_and_keeps_secrets_secret(web: Client) -> None:
    r = web.post("/settings/keys/", {"name": "laptop", "role": "user", "expires_in_days": "30"})
    assert r.status_code == 200 and toast(r)["level"] == "ok"
    token = r.content.decode().split('id="new-token">')[1].split("<")[0]
    assert web.get("/settings/").content.decode().count(token) == 0  # shown once
    access = token.split(".")[0]
    r = web.post(f"/settings/keys/{access}/revoke/")
    assert r.status_code == 200 and b"revoked" in r.content
    assert web.post("/settings/keys/", {"expires_in_days": "0"}).status_code == 400
    r = web.post("/settings/secrets/", {"name": "WANDB_API_KEY", "value": "s3cret-value"})
    assert r.status_code == 200 and b"WANDB_API_KEY" in r.content and b"s3cret-value" not in r.content
    bad = web.post("/settings/secrets/", {"name": "1bad name", "value": "x"})
    assert bad.status_code == 400 and "environment variable name" in toast(bad)["text"]
    assert web.post("/settings/secrets/WANDB_API_KEY/delete/").status_code == 200


# -- queues ------------------------------------------------------------------------------------


def test_queue_create_rename_pause_clear_delete_from_the_page(
    web: Client, queue: Queue, make_experiment: Callable[..., Experiment]
) -> None:
    r = web.post("/orchestration/queues/new/", {"name": "a100 x8"})
    assert r.status_code == 200 and toast(r)["text"] == "Queue a100 x8 created"
    dup = web.post("/orchestration/queues/new/", {"name": "A100 X8"})
    assert dup.status_code == 409 and b"already exists" in dup.content and b'value="A100 X8"' in dup.content
    short = web.post("/orchestration/queues/new/", {"name": "ab"})
    assert short.status_code == 400 and b"3 to 100 characters" in short.content
    q = Queue.objects.get(name="a100 x8")
    r = web.post(f"/orchestration/queues/{q.pk}/tags/", {"tags": "force_workers:off, gpu"})
    assert r.status_code == 204 and Queue.objects.get(pk=q.pk).tags == ["force_workers:off", "gpu"]
    assert web.post(f"/orchestration/queues/{q.pk}/rename/", {"name": "a100-big"}).status_code == 200
    assert web.post(f"/orchestration/queues/{q.pk}/rename/", {"name": "default"}).status_code == 409
    assert web.post(f"/orchestration/queues/{q.pk}/pause/", {"paused": "true"}).status_code == 204
    q.refresh_from_db()
    assert q.name == "a100-big" and q.paused
    exps = [make_experiment(queue=q, name=f"e{i}") for i in range(3)]
    r = web.post(f"/orchestration/queues/{q.pk}/clear/")
    assert r.status_code == 204 and toast(r)["text"] == "Cleared: 3 experiments dequeued"
    assert {e.status for e in Experiment.objects.filter(pk__in=[x.pk for x in exps])} == {Status.CREATED}
    make_experiment(queue=q, name="pending")
    r = web.post(f"/orchestration/queues/{q.pk}/delete/")
    assert r.status_code == 204 and "1 pending" in toast(r)["text"]
    assert not Queue.objects.filter(pk=q.pk).exists()
    assert Experiment.objects.get(name="pending").status == Status.CREATED
    gone = web.post(f"/orchestration/queues/{q.pk}/delete/")
    assert gone.status_code == 404 and "does not exist" in toast(gone)["text"]


def test_a_user_sees_no_admin_actions_and_the_server_refuses_them(alice_web: Client, queue: Queue) -> None:
    page = alice_web.get("/orchestration/queues/").content.decode()
    assert "NEW QUEUE" not in page and "Rename</button>" not in page and "Delete</button>" not in page
    for url, data in (
        ("/orchestration/queues/new/", {"name": "mine"}),
        (f"/orchestration/queues/{queue.pk}/delete/", {}),
        (f"/orchestration/queues/{queue.pk}/pause/", {"paused": "true"}),
        (f"/orchestration/queues/{queue.pk}/rename/", {"name": "renamed"}),
    ):
        r = alice_web.post(url, data)
        assert r.status_code == 403 and "only admins" in toast(r)["text"], url
    assert Queue.objects.filter(name="default", paused=False).exists()
    assert not Queue.objects.filter(name="mine").exists()


def test_queue_panel_orders_moves_reorders_and_dequeues(
    web: Client, queue: Queue, make_queue: Callable[..., Queue], make_experiment: Callable[..., Experiment]
) -> None:
    exps = {n: make_experiment(queue=queue, name=n) for n in "abcde"}
    panel = web.get(f"/orchestration/queues/{queue.pk}/panel/").content.decode()
    assert [panel.index(f">{n}</a>") for n in "abcde"] == sorted(panel.index(f">{n}</a>") for n in "abcde")
    url = f"/orchestration/queues/{queue.pk}/move/"
    assert web.post(url, {"experiments": exps["e"].pk, "to": "top"}).status_code == 200
    assert web.post(url, {"experiments": exps["a"].pk, "to": "bottom"}).status_code == 200
    assert web.post(url, {"experiments": exps["b"].pk, "to": "position", "value": "2"}).status_code == 200  # a drag
    assert order(queue) == ["e", "c", "b", "d", "a"]
    bad = web.post(url, {"experiments": exps["b"].pk, "to": "position", "value": "two"})
    assert bad.status_code == 400 and "whole number" in toast(bad)["text"]
    assert web.post(url, {"to": "top"}).status_code == 400
    typo = web.post(url, {"experiments": exps["c"].pk, "to": "queue", "value": "brand-nwe"})
    assert typo.status_code == 404 and "does not exist" in toast(typo)["text"]
    assert not Queue.objects.filter(name="brand-nwe").exists()
    make_queue("brand-new")
    r = web.post(url, {"experiments": f"{exps['c'].pk},{exps['d'].pk}", "to": "queue", "value": "brand-new"})
    assert r.status_code == 200 and toast(r)["text"] == "Moved 2 to brand-new"
    assert order(Queue.objects.get(name="brand-new")) == ["c", "d"]
    r = web.post(f"/orchestration/queues/{queue.pk}/dequeue/", {"experiments": [exps["e"].pk, exps["a"].pk]})
    assert r.status_code == 200 and toast(r)["text"] == "Dequeued 2"
    assert order(queue) == ["b"]


def test_queue_table_and_panel_query_counts_do_not_grow_with_the_data(
    web: Client,
    make_queue: Callable[..., Queue],
    make_experiment: Callable[..., Experiment],
    make_worker: Callable[..., Worker],
) -> None:
    def counts() -> list[int]:
        q = Queue.objects.order_by("created_at").first()
        assert q is not None
        out = []
        for url in ("/orchestration/queues/", "/orchestration/queues/rows/", f"/orchestration/queues/{q.pk}/panel/",
                    f"/orchestration/queues/?queue={q.pk}", "/orchestration/graphs/queues/?metric=wait&span=1d"):  # fmt: skip
            with CaptureQueriesContext(connection) as ctx:
                assert web.get(url).status_code == 200, url
            out.append(len(ctx))
        return out

    first = make_queue("q-0")
    make_experiment(queue=first, name="x")
    make_worker("w-0", [first])
    stats_sample()
    small = counts()
    for i in range(1, 6):
        q = make_queue(f"q-{i}")
        make_worker(f"w-{i}", [q, first], instance_id=f"i{i}")
        for j in range(4):
            make_experiment(queue=q if j % 2 else first, name=f"x{i}{j}")
    stats_sample()
    assert counts() == small and min(small) > 0, small


# -- workers -----------------------------------------------------------------------------------


def test_worker_table_panel_edit_queues_and_drain(
    web: Client, queue: Queue, make_queue: Callable[..., Queue], make_worker: Callable[..., Worker]
) -> None:
    make_queue("gpu")
    make_worker("gpu-box:0", [queue], gpu_slots=slots(8))
    page = web.get("/orchestration/workers/?worker=gpu-box:0").content.decode()
    assert "Workers Utilization" in page and "gpu-box:0" in page and "No queues currently" not in page
    assert re.search(r'id="worker-free">8 of 8 GPUs · [\d.]+ of [\d.]+ CPUs?<', page)
    make_worker("cpu-box:0", [queue])
    cpu_only = web.get("/orchestration/workers/?worker=cpu-box:0").content.decode()
    assert re.search(r'id="worker-free">[\d.]+ of [\d.]+ CPUs?<', cpu_only)  # no "0 of 0 GPU"
    r = web.post("/orchestration/workers/gpu-box:0/queues/", {"queues": "gpu, default"})
    assert r.status_code == 200 and "now listens to gpu, default" in toast(r)["text"]
    w = Worker.objects.get(name="gpu-box:0")
    assert [link.queue.name for link in w.queue_links.order_by("order")] == ["gpu", "default"]
    bad = web.post("/orchestration/workers/gpu-box:0/queues/", {"queues": "nope"})
    assert bad.status_code in (400, 404) and "nope" in toast(bad)["text"]
    assert web.post("/orchestration/workers/gpu-box:0/drain/", {"drain": "true"}).status_code == 200
    w.refresh_from_db()
    assert w.draining
    assert web.post("/orchestration/workers/gpu-box:0/queues/", {"queues": ""}).status_code == 200
    assert "No queues currently assigned" in web.get("/orchestration/workers/gpu-box:0/panel/").content.decode()
    assert web.get("/orchestration/workers/nobody/panel/").status_code == 404


def test_a_user_cannot_drain_or_rewire_workers(
    alice_web: Client, queue: Queue, make_worker: Callable[..., Worker]
) -> None:
    make_worker("box:0", [queue])
    page = alice_web.get("/orchestration/workers/?worker=box:0").content.decode()
    assert "Edit queues" not in page and ">Drain<" not in page
    assert alice_web.post("/orchestration/workers/box:0/drain/", {"drain": "true"}).status_code == 403
    assert alice_web.post("/orchestration/workers/box:0/queues/", {"queues": ""}).status_code == 403
    assert not Worker.objects.get(name="box:0").draining


def _report(worker: str, at_offset_s: int, **values: Any) -> None:
    WorkerStat.objects.create(
        worker=Worker.objects.get(name=worker), at=timezone.now() - timezone.timedelta(seconds=at_offset_s), **values
    )


def test_graphs_answer_plotly_traces_for_each_metric_and_gpu(
    web: Client, queue: Queue, make_worker: Callable[..., Worker]
) -> None:
    make_worker("g:0", [queue], gpu_slots=slots(2))
    for i in range(5):
        gpus = [
            {"index": 0, "util": 10.0 + i, "memory_used_mb": 100.0},
            {"index": 1, "util": 50.0, "memory_used_mb": 300.0},
        ]
        _report(
            "g:0", 60 * i, cpu_percent=20.0, memory_used_mb=1024.0, gpus=gpus, network_rx_bps=5.0, network_tx_bps=7.0
        )
    usage = web.get("/orchestration/graphs/workers/?worker=g:0&metric=usage").json()
    assert [t["name"] for t in usage["traces"]] == ["CPU Usage", "GPU Usage"] and usage["y_title"] == "Usage %"
    assert usage["traces"][0]["y"] == [20.0] * 5
    per_gpu = web.get("/orchestration/graphs/workers/?worker=g:0&metric=usage&per_gpu=1").json()
    assert [t["name"] for t in per_gpu["traces"]] == ["CPU Usage", "GPU 0 Usage", "GPU 1 Usage"]
    assert per_gpu["traces"][2]["y"] == [50.0] * 5
    memory = web.get("/orchestration/graphs/workers/?worker=g:0&metric=memory").json()
    assert memory["traces"][0]["y"][0] == 1.0 and memory["y_title"] == "Memory (GiB)"  # GiB, as capacity reads
    vram = web.get("/orchestration/graphs/workers/?worker=g:0&metric=vram").json()
    assert vram["traces"][0]["y"][0] == round(400 / 1024, 3) and vram["has_gpus"]
    network = web.get("/orchestration/graphs/workers/?worker=g:0&metric=network").json()
    assert [t["name"] for t in network["traces"]] == ["Network Receive", "Network Transmit"]
    assert web.get("/orchestration/graphs/workers/?worker=nobody").status_code == 404
    stats_sample()
    fleet = web.get("/orchestration/graphs/workers/?span=30d").json()
    assert [t["name"] for t in fleet["traces"]] == ["Total Workers", "Active Workers"]
    assert fleet["traces"][0]["y"] == [] or len(fleet["traces"][0]["y"]) <= 1000  # a month reads rollups only
    sample = web.get("/orchestration/graphs/workers/?span=3h").json()
    assert sample["traces"][0]["y"] == [1]
    assert Rollup.objects.filter(kind="fleet").exists()


@pytest.mark.parametrize(
    "url",
    [
        "/orchestration/graphs/workers/?span=3h",
        "/orchestration/graphs/workers/?span=3h&worker=g:0&metric=memory",
        "/orchestration/graphs/queues/?span=3h&metric=wait",
        "/orchestration/graphs/queues/?span=3h&metric=length",
    ],
)
def test_every_graph_starts_at_its_first_sample_and_spans_at_least_ten_minutes(
    web: Client, queue: Queue, make_worker: Callable[..., Worker], url: str
) -> None:
    """Young data fills the graph (the axis starts at the first sample, not 3 hours back), and a
    single point must not zoom the time axis to a millisecond."""
    make_worker("g:0", [queue])
    _report("g:0", 0, cpu_percent=20.0, memory_used_mb=1024.0)
    stats_sample()
    start, end = (datetime.fromisoformat(x) for x in web.get(url).json()["x_range"])
    assert timedelta(minutes=10) - timedelta(seconds=5) < end - start <= timedelta(minutes=10)
    assert abs(end - timezone.now()) < timedelta(seconds=30)


def test_a_graph_of_older_data_starts_at_its_first_sample_within_the_span(
    web: Client, queue: Queue, make_worker: Callable[..., Worker]
) -> None:
    make_worker("g:0", [queue])
    _report("g:0", 3600, cpu_percent=20.0)
    _report("g:0", 0, cpu_percent=30.0)
    data = web.get("/orchestration/graphs/workers/?span=3h&worker=g:0").json()
    start, end = (datetime.fromisoformat(x) for x in data["x_range"])
    assert start == datetime.fromisoformat(data["traces"][0]["x"][0]) and end - start < timedelta(hours=1, minutes=1)
    whole = web.get("/orchestration/graphs/workers/?span=3h&worker=g:0").json()["traces"][0]["y"]
    assert whole == [20.0, 30.0]


def test_a_worker_without_gpus_says_so_and_offers_no_gpu_lines(
    web: Client, queue: Queue, make_worker: Callable[..., Worker]
) -> None:
    make_worker("cpu:0", [queue])
    _report("cpu:0", 0, cpu_percent=20.0, memory_used_mb=512.0)
    vram = web.get("/orchestration/graphs/workers/?worker=cpu:0&metric=vram").json()
    assert vram["traces"] == [] and vram["empty_text"] == "This worker has no GPUs" and vram["has_gpus"] is False
    usage = web.get("/orchestration/graphs/workers/?worker=cpu:0&metric=usage&per_gpu=1").json()
    assert [t["name"] for t in usage["traces"]] == ["CPU Usage"]
    page = web.get("/orchestration/workers/?worker=cpu:0").content.decode()
    assert re.search(r"<label[^>]*data-needs-gpus[^>]*hidden", page)


# -- experiments --------------------------------------------------------------------------------


def test_experiment_list_filters_pages_and_bulk_actions(
    web: Client, alice_web: Client, queue: Queue, make_experiment: Callable[..., Experiment], admin_actor: Actor
) -> None:
    for i in range(55):
        make_experiment(queue=queue if i % 2 else None, name=f"run-{i:02d}", project="vision" if i < 10 else "")
    page = web.get("/experiments/").content.decode()
    assert page.count('data-select value="') == 50 and "Older" in page
    cursor = page.split('data-state-key="cursor" data-state-value="')[-1].split('"')[0]
    older = web.get("/experiments/rows/", {"cursor": cursor}).content.decode()
    assert older.count('data-select value="') == 5 and "run-00" in older
    queued = web.get("/experiments/rows/", {"status": "queued"}).content.decode()
    assert queued.count('data-select value="') == 27
    assert (
        web.get("/experiments/rows/", {"project": "vision", "search": "run-0"})
        .content.decode()
        .count("data-select value")
        == 10
    )
    ids = list(Experiment.objects.filter(status=Status.QUEUED).values_list("pk", flat=True)[:3])
    mine = make_experiment(actor=admin_actor, queue=queue, name="admins")
    r = alice_web.post("/experiments/bulk/", {"action": "dequeue", "experiments": [*ids, mine.pk]})
    assert r.status_code == 204 and toast(r)["text"].startswith("dequeue: 3 of 4 done; 1 refused")
    assert Experiment.objects.filter(pk__in=ids, status=Status.CREATED).count() == 3
    assert web.post("/experiments/bulk/", {"action": "explode", "experiments": ids}).status_code == 400


def test_experiment_detail_says_why_it_waits_and_offers_only_allowed_actions(
    web: Client, bob: User, queue: Queue, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker]
) -> None:
    first = make_experiment(queue=queue, name="first")
    exp = make_experiment(queue=queue, name="second", gpus=4)
    page = web.get(f"/experiments/{exp.pk}/").content.decode()
    assert "2 of 2 in default" in page and "no live worker listens to this queue" in page
    make_worker("small:0", [queue], gpu_slots=slots(2))
    assert "no listening worker has 4 GPUs" in web.get(f"/experiments/{exp.pk}/status/").content.decode()
    Queue.objects.filter(pk=queue.pk).update(paused=True)
    assert "the queue is paused" in web.get(f"/experiments/{exp.pk}/status/").content.decode()
    bob_web = Client()
    bob_web.force_login(bob)
    theirs = bob_web.get(f"/experiments/{first.pk}/").content.decode()
    assert "Stop</button>" not in theirs and "Dequeue</button>" not in theirs and "Clone</button>" in theirs
    assert bob_web.post(f"/experiments/{first.pk}/stop/").status_code == 403
    r = web.post(f"/experiments/{first.pk}/dequeue/")
    assert r.status_code == 200 and toast(r)["text"] == "dequeue: done"
    r = web.post(f"/experiments/{first.pk}/enqueue/", {"queue": "nowhere"})
    assert r.status_code == 404
    clone = web.post(f"/experiments/{first.pk}/clone/")
    assert clone.status_code == 204 and clone["HX-Redirect"].startswith("/experiments/")
    assert web.post(f"/experiments/{first.pk}/explode/").status_code == 400
    assert web.get("/experiments/0123456789abcdef0123456789abcdef/").status_code == 404
    log = web.get(f"/experiments/{first.pk}/log/").json()
    assert log == {"attempt": None, "chunks": [], "window": None, "after": None, "status": "created"}
    graph = web.get(f"/experiments/{first.pk}/graph/?metric=memory").json()
    assert [t["name"] for t in graph["traces"]] == ["Memory"]  # no GPU line for a run with no GPU data


def test_the_create_form_validates_inline_and_enqueues(web: Client, queue: Queue) -> None:
    bad = web.post("/experiments/new/", {"name": "x", "command": "python train.py", "parameters": "{nope"})
    assert bad.status_code == 400 and b"parameters: not JSON" in bad.content and b'value="x"' in bad.content
    bad = web.post("/experiments/new/", {"name": "x", "command": "python t.py", "gpus": "1.5"})
    assert bad.status_code == 400 and b"gpus must be 0, a fraction below 1, or a whole number" in bad.content
    bad = web.post("/experiments/new/", {"name": "x", "command": "python 't.py"})
    assert bad.status_code == 400 and b"command:" in bad.content
    # Every problem at once, each under its field.
    bad = web.post("/experiments/new/", {"name": "x", "command": "python 't.py", "priority": "high", "env": "[1"})
    page = bad.content.decode()
    assert bad.status_code == 400 and page.count('class="field-error"') == 3
    assert "command:" in page and "valid integer" in page and "env: not JSON" in page
    assert not Experiment.objects.filter(name="x").exists()
    bad = web.post("/experiments/new/", {"name": "x", "command": "python t.py", "queue": "nowhere"})
    assert bad.status_code == 404 and b"queue &#x27;nowhere&#x27; does not exist" in bad.content
    assert not Experiment.objects.exists()
    ok = web.post(
        "/experiments/new/",
        {
            "name": "train",
            "command": "python train.py --lr 0.1",
            "queue": "default",
            "parameters": '{"lr": 0.1}',
            "gpus": "1",
        },
    )
    assert ok.status_code == 302
    exp = Experiment.objects.get(name="train")
    assert exp.command == ["python", "train.py", "--lr", "0.1"] and exp.status == Status.QUEUED and exp.gpus == 1
    assert exp.parameters == {"lr": 0.1} and QueueEntry.objects.filter(experiment=exp).exists()


def test_experiment_pages_query_counts_do_not_grow(
    web: Client, queue: Queue, make_experiment: Callable[..., Experiment]
) -> None:
    def counts(exp: Experiment) -> list[int]:
        out = []
        for url in ("/experiments/", "/experiments/rows/?status=queued", f"/experiments/{exp.pk}/",
                    f"/experiments/{exp.pk}/status/", "/orchestration/workers/", "/orchestration/workers/rows/"):  # fmt: skip
            with CaptureQueriesContext(connection) as ctx:
                assert web.get(url).status_code == 200, url
            out.append(len(ctx))
        return out

    exp = make_experiment(queue=queue, name="probe")
    small = counts(exp)
    for i in range(30):
        make_experiment(queue=queue, name=f"more-{i}")
    assert counts(exp) == small


# -- custom actions -----------------------------------------------------------------------------


NASTY = '"&/<'


def test_substitution_escapes_for_url_json_form_and_headers() -> None:
    action = CustomAction(
        object_type="queue", name="hook", method="POST", url="https://ops.example/q/${id}?name=${name}",
        payload='{"id": "${id}", "name": "${name}"}', headers={"X-Name": "${name}\r\nX-Evil: 1 ü"},
    )  # fmt: skip
    req = action_render(action, object_id="abc", object_name=NASTY)
    assert req.url == "https://ops.example/q/abc?name=%22%26%2F%3C"
    assert json.loads(req.body) == {"id": "abc", "name": NASTY}
    assert req.headers["X-Name"] == '"&/<  X-Evil: 1 %C3%BC' and req.headers["Content-Type"] == "application/json"
    action.payload, action.headers = "name=${name}&id=${id}", {}
    form = action_render(action, object_id="abc", object_name=NASTY)
    assert form.body == "name=%22%26%2F%3C&id=abc" and form.headers["Content-Type"].startswith("application/x-www-form")
    action.url = "javascript:alert(1)//${id}"
    with pytest.raises(Exception, match="http or https"):
        action_render(action, object_id="abc", object_name="n")


class _Hook:
    """A loopback HTTP endpoint that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                hook.seen.append({"path": self.path, "body": body, "headers": dict(self.headers)})
                self.send_response(201)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def hook() -> Iterator[_Hook]:
    h = _Hook()
    yield h
    h.server.shutdown()


def test_actions_sync_from_a_file_and_secret_actions_go_through_the_server_to_allowed_hosts_only(
    tmp_path: Path, hook: _Hook, web: Client, alice_web: Client, queue: Queue, settings: Any,
    monkeypatch: pytest.MonkeyPatch, admin_actor: Actor, alice_actor: Actor,
) -> None:  # fmt: skip
    monkeypatch.setenv("HOOK_TOKEN", "tok-123")
    config = tmp_path / "actions.json"
    config.write_text(json.dumps({
        "queue": [
            {"name": "Notify", "tooltip": "tell ops", "roles": ["admin"], "secret_env": "HOOK_TOKEN",
             "action": {"method": "POST", "url": hook.url + "/q/${id}", "payload": '{"name": "${name}"}',
                        "headers": {"Authorization": "Bearer ${secret}"}}},
            {"name": "Open dashboard", "action": {"method": "GET", "url": "https://grafana.example/d?q=${name}"}},
        ]
    }))  # fmt: skip
    CustomAction.objects.create(object_type="queue", name="Kept", url="https://x.example/")
    assert actions_sync(actor=SYSTEM, path=config) == {"created": 2, "updated": 0}
    assert actions_sync(actor=SYSTEM, path=config) == {"created": 0, "updated": 2}
    assert CustomAction.objects.filter(name="Kept").exists()  # the file wins only for its names
    notify = CustomAction.objects.get(name="Notify")
    assert notify.via_server and "tok-123" not in notify.secret_ciphertext
    settings.CUSTOM_ACTION_HOSTS = ["127.0.0.1"]
    r = web.post(f"/actions/{notify.pk}/run/", {"object": queue.pk})
    assert r.json() == {"mode": "server", "ok": True, "status": 201, "detail": "ok"}
    assert hook.seen[0]["path"] == f"/q/{queue.pk}" and json.loads(hook.seen[0]["body"]) == {"name": "default"}
    assert hook.seen[0]["headers"]["Authorization"] == "Bearer tok-123"
    assert alice_web.post(f"/actions/{notify.pk}/run/", {"object": queue.pk}).status_code == 404  # admins only
    assert "Notify" not in alice_web.get("/orchestration/queues/").content.decode()
    assert "Notify" in web.get("/orchestration/queues/").content.decode()
    settings.CUSTOM_ACTION_HOSTS = ["ops.example"]
    with pytest.raises(Forbidden):
        action_issue(actor=admin_actor, action_id=notify.pk, object_id=queue.pk)
    dashboard = CustomAction.objects.get(name="Open dashboard")
    browser = alice_web.post(f"/actions/{dashboard.pk}/run/", {"object": queue.pk}).json()
    assert browser == {"mode": "browser", "request": {"method": "GET", "url": "https://grafana.example/d?q=default",
                                                      "headers": {}, "body": ""}}  # fmt: skip
    assert web.post(f"/actions/{dashboard.pk}/run/", {"object": "nope"}).status_code == 404
    assert len(hook.seen) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cluster": []}))
    with pytest.raises(Exception, match="unknown object type"):
        actions_sync(actor=SYSTEM, path=bad)


def test_each_server_process_syncs_the_actions_file_as_it_starts(
    transactional_db: Any, tmp_path: Path, settings: Any
) -> None:

    config = tmp_path / "actions.toml"
    config.write_text(
        '[[worker]]\nname = "Reboot"\nroles = ["admin"]\naction = {method = "POST", url = "https://ops.example/r/${id}"}\n'
    )
    settings.CUSTOM_ACTIONS_FILE = str(config)
    asyncio.run(_sync_actions())
    assert list(CustomAction.objects.values_list("object_type", "name", "roles")) == [("worker", "Reboot", ["admin"])]
    config.write_text("not toml [")
    asyncio.run(_sync_actions())  # logged, not raised: a bad file never stops the server
    assert CustomAction.objects.count() == 1


def test_the_experiment_page_and_api_filter_with_one_filterset(
    web: Client, admin_user: User, queue: Queue, make_experiment: Callable[..., Experiment]
) -> None:
    """experiments/filters.py: the same parameters give the same rows on the page and the API,
    a queue is named by id or by name (queues' one rule), and a bad value is named on both."""
    other = Queue.objects.create(name="other-q")
    for i in range(4):
        make_experiment(queue=queue if i % 2 else other, name=f"f-{i}")
    api = Client()
    api.force_login(admin_user)
    for params in ({"queue": queue.name.upper()}, {"queue": queue.pk}, {"status": "queued,created"}, {"search": "f-1"}):
        page_ids = {
            part.split('"')[0]
            for part in web.get("/experiments/rows/", params).content.decode().split('data-select value="')[1:]
        }
        api_ids = {row["id"] for row in api.get("/api/v1/experiments/", params).json()["results"]}
        assert page_ids == api_ids and page_ids, params
    assert not web.get("/experiments/rows/", {"queue": "no-such-queue"}).content.decode().count("data-select value")
    bad = api.get("/api/v1/experiments/", {"status": "bogus"})
    assert (
        bad.status_code == 400
        and bad.json()["error"]["field"] == "status"
        and "bogus" in bad.json()["error"]["message"]
    )
    page = web.get("/experiments/rows/", {"status": "bogus"}).content.decode()
    assert "unknown status &#x27;bogus&#x27;" in page and "status:" in page


def test_the_pager_reads_which_rows_of_how_many(web: Client) -> None:
    Queue.objects.bulk_create([Queue(id=f"{i:032x}", name=f"q{i:03d}") for i in range(120)])
    first = web.get("/orchestration/queues/rows/").content.decode()
    assert re.search('class="pager-text">1\u2013100 of 120<', first)
    second = web.get("/orchestration/queues/rows/?offset=100").content.decode()
    assert re.search('class="pager-text">101\u2013120 of 120<', second)
    assert "q119" in second and "q000" not in second


def test_an_experiments_graphs_default_to_its_attempts_own_time_range(
    web: Client, queue: Queue, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker],
    agent_actor: Actor,
) -> None:  # fmt: skip
    """A 2-minute run fills its graph instead of being a sliver at the edge of a 3-hour axis."""
    exp = make_experiment(queue=queue)
    claim = dispatch_claim(actor=agent_actor, worker=make_worker(queues=[queue]))
    assert claim is not None
    ended = timezone.now() - timedelta(minutes=30)
    began = ended - timedelta(minutes=2)
    Attempt.objects.filter(pk=claim.attempt.pk).update(claimed_at=began, finished_at=ended)
    AttemptStat.objects.bulk_create(
        [
            AttemptStat(attempt_id=claim.attempt.pk, at=began + timedelta(seconds=10 * i), cpu_percent=50.0)
            for i in range(12)
        ]
    )
    run = web.get(f"/experiments/{exp.pk}/graph/?metric=usage").json()
    assert [datetime.fromisoformat(x) for x in run["x_range"]] == [began, ended]
    assert [t["name"] for t in run["traces"]] == ["CPU Usage"] and len(run["traces"][0]["y"]) == 12
    span = web.get(f"/experiments/{exp.pk}/graph/?metric=usage&span=3h").json()
    assert datetime.fromisoformat(span["x_range"][1]) > ended + timedelta(minutes=29)
    page = web.get(f"/experiments/{exp.pk}/").content.decode()
    assert '<option value="run" selected>Whole run</option>' in page


def test_a_move_to_the_top_shows_on_the_experiment_page_as_its_queue_priority(
    web: Client, queue: Queue, make_experiment: Callable[..., Experiment], admin_actor: Actor
) -> None:
    make_experiment(queue=queue, name="urgent", priority=5)
    late = make_experiment(queue=queue, name="late")
    assert 'id="queue-priority"' not in web.get(f"/experiments/{late.pk}/").content.decode()
    queueing.queue_entries_move(actor=admin_actor, queue_id=queue.pk, experiment_ids=[late.pk], to="top")
    page = web.get(f"/experiments/{late.pk}/").content.decode()
    assert 'priority 0 (<span id="queue-priority">5 in its queue, after a move</span>)' in page


def test_the_admin_names_its_models_right_keeps_the_theme_and_has_an_icon(web: Client) -> None:
    page = web.get("/admin/").content.decode()
    assert "Queue entries" in page and "Queue entrys" not in page
    assert "muster/admin_theme.js" in page and "muster/favicon.svg" in page
    assert "muster/favicon.svg" in web.get("/orchestration/workers/").content.decode()
