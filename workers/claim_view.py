"""The claim with long-poll: a plain async view that holds no database connection while waiting.

`POST /api/v1/workers/{name}/claim/?wait=N` (N up to CLAIM_WAIT_MAX_S). The waiter
registers with this process's wake-up hub before it checks the database, so an enqueue
between the check and the wait still wakes it. Database work runs in short synchronous
steps that give their connection back before the wait. WorkerClaimView in api.py
documents the same contract in the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.actor import Actor
from accounts.authentication import actor_from_authorization
from core.api import error_body
from core.counters import PREFIX, counter_incr
from core.errors import ServiceError
from queues.wakeup import HUB, pass_on
from workers.api import claim_payload
from workers.dispatch import dispatch_claim
from workers.selectors import worker_queue_ids_for_actor

# Claim checks made by this process (tests read it to prove there is no thundering herd).
STATS = {"checks": 0}
# The same count across every server process (in Redis when configured), read by /metrics.
CLAIM_CHECKS_KEY = PREFIX + "claim_checks"


def _release_connection() -> None:
    """Give the database connection back (to the pool) before waiting.

    Inside an atomic block (a test's transaction) the connection must stay.
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def _error(status: int, code: str, message: str, field: str | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, field), status=status)


def _authenticate(header: str, *, release: bool = True) -> Actor | None:
    try:
        return actor_from_authorization(header)
    finally:
        if release:
            _release_connection()


def _listened_queues(actor: Actor, name: str) -> list[str]:
    try:
        return worker_queue_ids_for_actor(actor=actor, name=name)
    finally:
        _release_connection()


def _prepare(header: str, name: str) -> tuple[int, dict[str, Any], Actor | None, list[str]]:
    """The key and the worker's queues in one synchronous step (the long-poll's set-up)."""
    actor = _authenticate(header, release=False)
    if actor is None:
        _release_connection()
        return 401, error_body("not_authenticated", "a valid API key is required"), None, []
    if not (actor.is_agent or actor.is_admin):
        _release_connection()
        return 403, error_body("permission_denied", "only agent keys may call this endpoint"), None, []
    try:
        return 200, {}, actor, _listened_queues(actor, name)
    except ServiceError as exc:
        return exc.status, error_body(exc.code, exc.message, exc.field, **exc.extra), None, []


def _claim_once(actor: Actor, name: str, heard: bool = True) -> dict[str, Any]:
    STATS["checks"] += 1
    try:
        claim = dispatch_claim(actor=actor, worker_name=name, heard=heard)
        counter_incr("claim_checks", *(["claims"] if claim is not None else []))
        return claim_payload(claim)
    finally:
        _release_connection()  # back to the pool before any wait


def _claim_now(header: str, name: str) -> tuple[int, dict[str, Any]]:
    """A claim that does not wait: authenticate and claim in one synchronous step."""
    actor = _authenticate(header, release=False)
    if actor is None:
        return 401, error_body("not_authenticated", "a valid API key is required")
    if not (actor.is_agent or actor.is_admin):
        return 403, error_body("permission_denied", "only agent keys may call this endpoint")
    try:
        return 200, _claim_once(actor, name)
    except ServiceError as exc:
        return exc.status, error_body(exc.code, exc.message, exc.field, **exc.extra)


def _wait_seconds(raw: str | None) -> int:
    if raw in (None, ""):
        return 0
    try:
        wait = int(raw)
    except ValueError:
        raise ValueError("wait must be a whole number of seconds") from None
    if not 0 <= wait <= 30:
        raise ValueError("wait must be between 0 and 30 seconds")
    return min(wait, settings.CLAIM_WAIT_MAX_S)


async def claim(authorization: str, name: str, wait_raw: str | None) -> tuple[int, dict[str, Any]]:
    """The claim, whatever serves it: the status and the answer's body.

    Served by claim_view under Django and, in the production server, straight from the
    ASGI entry point (orchestration/fastpath.py); both answer the same for the same request.
    """
    try:
        wait = _wait_seconds(wait_raw)
    except ValueError as exc:
        return 400, error_body("invalid", str(exc), "wait")
    if wait == 0:  # the common polling path: one step, one thread hop
        return await sync_to_async(_claim_now)(authorization, name)
    status, error, actor, queue_ids = await sync_to_async(_prepare)(authorization, name)
    if actor is None:
        return status, error
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        async with HUB.waiting(queue_ids) as waiter:
            heard = True  # the first check answers the agent's request; later ones are the server's own
            while True:
                payload = await sync_to_async(_claim_once)(actor, name, heard)
                heard = False
                remaining = deadline - loop.time()
                if payload["attempt"] is not None or remaining <= 0:
                    return 200, payload
                if waiter.message_id:  # woken, but the work did not fit here: offer it on
                    await sync_to_async(pass_on)(queue_ids, waiter.message_id)
                HUB.rearm(waiter)
                step = remaining if settings.REDIS_URL else min(remaining, settings.CLAIM_CROSS_PROCESS_CHECK_S)
                try:
                    await asyncio.wait_for(waiter.event.wait(), timeout=step)
                except TimeoutError:
                    if settings.REDIS_URL:
                        if HUB.listening(loop):
                            # Subscribed before the first look: no wake-up was missed, nothing to re-check.
                            return 200, {"attempt": None, "experiment": None}
                        deadline = loop.time()  # the listener failed: one last look, then answer empty
    except ServiceError as exc:
        return exc.status, error_body(exc.code, exc.message, exc.field, **exc.extra)


@csrf_exempt
async def claim_view(request: HttpRequest, name: str) -> HttpResponse:
    """Claim the next experiment this worker can run, waiting up to `wait` seconds for one."""
    if request.method != "POST":
        return _error(405, "method_not_allowed", f'method "{request.method}" not allowed')
    status, body = await claim(request.headers.get("Authorization", ""), name, request.GET.get("wait"))
    return JsonResponse(body, status=status, encoder=DjangoJSONEncoder)


claim_view.http_methods = ["POST"]  # type: ignore[attr-defined]  # read by the role-matrix test
