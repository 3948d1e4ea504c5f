"""The agents' claims and reports served straight from the ASGI entry point (orchestration/fastpath.py).

Each request goes once through Django's handler (the views) and once through the fast
path, in process, over ASGI: the status, the body and the headers must be the same. Only
the exact requests the fast path knows go there; everything else reaches Django.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from accounts.actor import SYSTEM
from accounts.models import Role
from accounts.services import NewKey, apikey_create
from experiments.models import Status
from orchestration import asgi, fastpath
from orchestration.asgi import Handler, django_application
from queues.models import Queue
from queues.wakeup import HUB
from workers import claim_view, services
from workers.models import Worker

pytestmark = pytest.mark.django_db(transaction=True)

Answer = tuple[int, dict[str, str], Any]


def _scope(method: str, path: str, token: str | None, query: str = "", host: str = "127.0.0.1") -> dict[str, Any]:
    headers = [(b"host", host.encode()), (b"content-type", b"application/json")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
        "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip


async def _drive(app: Callable[..., Any], scope: dict[str, Any], body: bytes, chunk: int = 0) -> Answer:
    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    parts = parts or [b""]
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if parts:
            part = parts.pop(0)
            return {"type": "http.request", "body": part, "more_body": bool(parts)}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    answer: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
            answer["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    disconnected.set()
    return answer["status"], answer["headers"], json.loads(answer["body"])


async def _fast(scope: dict[str, Any], body: bytes, chunk: int = 0) -> Answer:
    target = fastpath.route(scope)
    assert target is not None, "the fast path should serve this request"

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await fastpath.serve(target, scope, receive, send)

    return await _drive(app, scope, body, chunk)


def both(method: str, path: str, token: str | None, body: Any = None, query: str = "") -> tuple[Answer, Answer]:
    """The same request through Django and through the fast path."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    scope = _scope(method, path, token, query)
    django = asyncio.run(_drive(django_application, dict(scope), raw))
    fast = asyncio.run(_fast(dict(scope), raw, chunk=7))  # the body in pieces, as a socket gives it
    return django, fast


def _served(fast: fastpath.Fast | None) -> tuple[str, str] | None:
    return None if fast is None else (fast.endpoint, fast.name)


def _same(django: Answer, fast: Answer) -> None:
    assert fast[0] == django[0]
    assert fast[2] == django[2]
    assert fast[1] == django[1]  # content type, length and every security header


@pytest.fixture
def worker(make_worker: Callable[..., Worker], queue: Queue) -> Worker:
    return make_worker(name="fast-0", queues=[queue], gpu_slots=[{"index": 0}])


REPORT = {"instance_id": "i-1", "interval_s": 5, "running": [], "machine": {"cpu_percent": 12.5}}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (REPORT, None),
        (b"{not json", "parse_error"),
        (b"[" * 10_000 + b"]" * 10_000, "parse_error"),  # RecursionError and a 500 once (issue 13)
        ({**REPORT, "instance_id": "\x006bk"}, "invalid"),  # NUL: PostgreSQL's DataError and a 500 once
        ({**REPORT, "interval_s": "soon"}, "invalid"),
        ({**REPORT, "machine": {"gpus": [{"util": 5}]}}, "invalid"),
        ({**REPORT, "running": [{"attempt": "nope", "token": "t"}]}, "invalid"),
    ],
)
def test_reports_are_answered_alike(worker: Worker, agent_key: NewKey, body: Any, code: str | None) -> None:
    django, fast = both("POST", "/api/v1/workers/fast-0/report/", agent_key.token, body)
    _same(django, fast)
    if code is None:
        assert fast[0] == 200 and fast[2]["kill"] == [] and fast[2]["queues"] == ["default"]
    else:
        assert fast[0] == 400 and fast[2]["error"]["code"] == code


def test_an_unknown_workers_report_with_a_nul_is_a_400_on_both_paths(agent_key: NewKey, db: Any) -> None:
    """Found by the fuzzer: the report registers an unknown worker, and PostgreSQL refused the NUL with a 500."""
    django, fast = both("POST", "/api/v1/workers/new-8/report/", agent_key.token, {"instance_id": "\x006bk"})
    _same(django, fast)
    assert fast[0] == 400 and fast[2]["error"]["field"] == "instance_id"


def test_the_field_a_bad_report_names_is_the_same(worker: Worker, agent_key: NewKey) -> None:
    django, fast = both("POST", "/api/v1/workers/fast-0/report/", agent_key.token, {**REPORT, "interval_s": -1})
    _same(django, fast)
    assert fast[2]["error"]["field"] == "interval_s"


def test_keys_and_names_are_refused_alike(worker: Worker, agent_key: NewKey, alice_key: NewKey) -> None:
    for endpoint in ("report", "claim"):
        path = f"/api/v1/workers/fast-0/{endpoint}/"
        for token, status in ((None, 401), ("nope.nope", 401), (alice_key.token, 403)):
            django, fast = both("POST", path, token, REPORT)
            _same(django, fast)
            assert fast[0] == status
    django, fast = both("POST", "/api/v1/workers/bad name!/report/", agent_key.token, REPORT)
    _same(django, fast)
    assert fast[0] == 400 and fast[2]["error"]["field"] == "name"


def test_claims_are_answered_alike(worker: Worker, agent_key: NewKey, make_experiment: Any, queue: Queue) -> None:
    path = "/api/v1/workers/fast-0/claim/"
    for query, status in (("wait=abc", 400), ("wait=99", 400), ("", 200), ("wait=1", 200)):
        django, fast = both("POST", path, agent_key.token, query=query)
        _same(django, fast)
        assert fast[0] == status
        if status == 200:
            assert fast[2] == {"attempt": None, "experiment": None}
    experiment = make_experiment(queue=queue)
    _status, _headers, answer = asyncio.run(_fast(_scope("POST", path, agent_key.token), b""))
    assert answer["experiment"]["id"] == experiment.id and answer["attempt"]["token"]
    experiment.refresh_from_db()
    assert experiment.status == Status.IN_PROGRESS


def test_a_body_over_the_limit_is_413_naming_the_setting(worker: Worker, agent_key: NewKey) -> None:
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048):
        big = {**REPORT, "instance_id": "x" * 4000}
        django, fast = both("POST", "/api/v1/workers/fast-0/report/", agent_key.token, big)
    _same(django, fast)
    assert fast[0] == 413 and "MAX_REQUEST_BYTES" in fast[2]["error"]["message"]


def test_an_error_in_the_service_is_a_json_500_and_is_logged(
    worker: Worker, agent_key: NewKey, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    def broken(**kw: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(services, "worker_report", broken)
    status, headers, body = asyncio.run(
        _fast(_scope("POST", "/api/v1/workers/fast-0/report/", agent_key.token), json.dumps(REPORT).encode())
    )
    assert status == 500 and body["error"]["code"] == "server_error"
    assert headers["content-type"] == "application/json"
    assert any("Internal Server Error" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize(
    ("method", "path", "host"),
    [
        ("GET", "/api/v1/workers/fast-0/report/", "127.0.0.1"),  # the 405 comes from the view
        ("POST", "/api/v1/workers/fast-0/report", "127.0.0.1"),  # Django's slash handling
        ("POST", "/api/v1/workers/fast-0/reports/", "127.0.0.1"),
        ("POST", "/api/v1/workers/a/b/claim/", "127.0.0.1"),
        ("POST", "/api/v1/workers/fast-0/claim/", "evil.example"),  # a Host Django would refuse
    ],
)
def test_other_requests_are_left_to_django(method: str, path: str, host: str) -> None:
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):  # override_settings clears the remembered verdicts
        assert fastpath.route(_scope(method, path, "t", host=host)) is None


def test_the_setting_and_https_redirects_send_everything_to_django() -> None:
    scope = _scope("POST", "/api/v1/workers/fast-0/claim/", "t")
    assert _served(fastpath.route(scope)) == ("claim", "fast-0")
    with override_settings(FAST_PATH=False):
        assert fastpath.route(scope) is None
    with override_settings(SECURE_SSL_REDIRECT=True):
        assert fastpath.route(scope) is None  # Django redirects it
        assert _served(fastpath.route({**scope, "scheme": "https"})) == ("claim", "fast-0")


class TraceHeader:
    """A header middleware a deployment might add after the fact."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        response = self.get_response(request)
        response["X-Served-By"] = "muster"
        return response


def test_a_header_middleware_added_later_applies_to_the_fast_answers_too(worker: Worker, agent_key: NewKey) -> None:
    raw = json.dumps({"status": "idle"}).encode()
    scope = _scope("POST", "/api/v1/workers/fast-0/report/", agent_key.token)
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, "tests.test_fastpath.TraceHeader"]):
        django = asyncio.run(_drive(Handler(), dict(scope), raw))  # a handler that loads the new list
        fast = asyncio.run(_fast(dict(scope), raw))
    assert fast[1]["x-served-by"] == "muster"
    _same(django, fast)


def test_a_claim_through_the_fast_path_skips_djangos_handler(
    worker: Worker, agent_key: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    async def counting(*args: Any) -> None:
        calls.append("django")

    monkeypatch.setattr(asgi, "django_application", counting)
    monkeypatch.setattr(asgi, "_start_beat", lambda: None)  # no heartbeat task in this short loop
    scope = _scope("POST", "/api/v1/workers/fast-0/claim/", agent_key.token)
    status, _headers, _body = asyncio.run(_drive(asgi.application, scope, b""))
    assert status == 200 and calls == []
    with override_settings(FAST_PATH=False):
        asyncio.run(_drive_no_answer(asgi.application, scope))
    assert calls == ["django"]


async def _drive_no_answer(app: Callable[..., Any], scope: dict[str, Any]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("the stand-in for Django answers nothing")

    await app(scope, receive, send)


@pytest.fixture
def alice_key(alice: Any) -> NewKey:
    return apikey_create(actor=SYSTEM, user=alice, role=Role.USER)


def test_a_long_poll_for_another_keys_worker_or_an_unknown_one_is_refused(
    worker: Worker, agent_key: NewKey, admin_user: Any
) -> None:

    other = apikey_create(actor=SYSTEM, user=admin_user, role=Role.AGENT, name="other agent")
    for token, path, status in (
        (other.token, "/api/v1/workers/fast-0/claim/", 403),
        (agent_key.token, "/api/v1/workers/nobody/claim/", 404),
    ):
        django, fast = both("POST", path, token, query="wait=1")
        _same(django, fast)
        assert fast[0] == status, fast


def test_a_long_poll_whose_agent_goes_away_stops_at_once(
    worker: Worker, agent_key: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django cancels a view when its client disconnects; the fast path must too, or a dead agent's wait
    would go on checking (and could claim work for nobody) until it times out."""

    monkeypatch.setattr(settings, "REDIS_URL", "")
    monkeypatch.setattr(settings, "CLAIM_CROSS_PROCESS_CHECK_S", 0.1)  # without Redis: a check every 0.1 s
    scope = _scope("POST", "/api/v1/workers/fast-0/claim/", agent_key.token, query="wait=30")
    target = fastpath.route(scope)
    assert target is not None
    sent: list[dict[str, Any]] = []

    async def run() -> float:
        state = {"body": False}

        async def receive() -> dict[str, Any]:
            if not state["body"]:
                state["body"] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(0.5)  # the agent is killed half a second into its wait
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        started = asyncio.get_running_loop().time()
        await fastpath.serve(target, scope, receive, send)
        return asyncio.get_running_loop().time() - started

    with override_settings(CLAIM_WAIT_MAX_S=30):
        took = asyncio.run(run())
    assert took < 15 and sent == []  # no answer to nobody, and far short of the 30 s asked for
    assert HUB.waiters == []  # its wait is gone: nothing checks on its behalf any more


def test_only_the_agents_own_request_counts_as_a_sign_of_life(
    worker: Worker, agent_key: NewKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-poll's later checks are the server's, not the agent's: they must not move last_seen_at."""

    monkeypatch.setattr(settings, "REDIS_URL", "")
    monkeypatch.setattr(settings, "CLAIM_CROSS_PROCESS_CHECK_S", 0.1)
    long_ago = timezone.now() - timedelta(seconds=3)
    Worker.objects.filter(pk=worker.pk).update(last_seen_at=long_ago)
    claim_view.STATS["checks"] = 0
    status, _headers, _body = asyncio.run(
        _fast(_scope("POST", "/api/v1/workers/fast-0/claim/", agent_key.token, query="wait=2"), b"")
    )
    assert status == 200 and claim_view.STATS["checks"] >= 10
    worker.refresh_from_db()
    first_check = worker.last_seen_at
    assert first_check > long_ago  # the request itself counted
    assert first_check < long_ago + timedelta(seconds=3) + timedelta(seconds=0.5)  # the later checks did not
