"""The agents' two hot endpoints served straight from the ASGI entry point.

`POST /api/v1/workers/{name}/claim/` and `…/report/` arrive from every agent every few
seconds. Through Django's handler a request that does nothing costs about 1.1 ms of
server CPU here (request and response objects, the middleware chain, URL resolving, a
second thread hop for request_finished) against 0.14 ms for uvicorn itself
(docs/BENCHMARKS.md): a third of a report's cost, and none of it does anything for these
two endpoints, which take only an API key, a path and a JSON body, set no cookie and
render no page.

So the production entry point (orchestration/asgi.py) hands exactly those requests here:
POST, the exact path, and a request that Django's middleware lets through to a view (an
allowed Host, no HTTPS redirect due). They run the same functions the Django views run
(workers/claim_view.py: claim, workers/report_view.py: report), on the same reused request
thread behind the same gate, and answer with the headers that settings.MIDDLEWARE itself
adds to a JSON answer for that Host and scheme (run once per pair, then remembered);
tests/test_fastpath.py compares the two answers for the same requests. Anything else
(another method, a trailing-slash redirect, a bad Host) goes to Django as before.
FAST_PATH=false sends everything to Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.asgi import ASGIRequest
from django.core.serializers.json import DjangoJSONEncoder
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.module_loading import import_string

from core.api import error_body, too_large
from orchestration.threads import REQUEST_THREADS
from workers.claim_view import claim
from workers.report_view import report

ROUTE = re.compile(r"^/api/v1/workers/(?P<name>[^/]+)/(?P<endpoint>claim|report)/$")
logger = logging.getLogger("django.request")
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Answer = tuple[int, dict[str, Any]]


class Disconnected(Exception):
    """The client went away before its body arrived."""


class BodyTooLarge(Exception):
    """The body is over DATA_UPLOAD_MAX_MEMORY_SIZE."""


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


# What Django's middleware makes of a fast answer, by the request's parts it may depend on
# (its scheme and its Host and proxy headers): the headers it adds, or None where it answers
# otherwise (a disallowed Host, an HTTPS redirect due), so that Django serves that request.
# A server sees a handful of keys; cleared when a setting changes (tests).
_verdicts: dict[tuple[str, ...], list[tuple[bytes, bytes]] | None] = {}
VERDICTS_MAX = 64
KEY_HEADERS = (b"host", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-ssl", b"forwarded")


@receiver(setting_changed)
def _forget_verdicts(**_kwargs: Any) -> None:
    _verdicts.clear()


def _json_answer(_request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"{}", content_type="application/json")


def _middleware_chain() -> Callable[[HttpRequest], HttpResponseBase]:
    """settings.MIDDLEWARE around a view that answers JSON, built by the middleware protocol
    (each takes the next callable), as Django's handler builds its own."""
    handler: Callable[[HttpRequest], HttpResponseBase] = _json_answer
    for path in reversed(settings.MIDDLEWARE):
        try:
            handler = import_string(path)(handler)
        except MiddlewareNotUsed:
            continue
    return handler


def _verdict(scope: dict[str, Any]) -> list[tuple[bytes, bytes]] | None:
    """The headers the middleware adds to this request's JSON answer, or None if it would not let
    the view answer. Django decides: the request is Django's own, built from the scope, and the
    chain is settings.MIDDLEWARE itself, so a header middleware added later applies here too."""
    proxy = settings.SECURE_PROXY_SSL_HEADER
    proxied = proxy[0].removeprefix("HTTP_").lower().replace("_", "-").encode() if proxy else b""
    key = (str(scope.get("scheme", "")), *(_header(scope, name) for name in (*KEY_HEADERS, proxied)))
    if key in _verdicts:
        return _verdicts[key]
    try:
        response = _middleware_chain()(ASGIRequest(scope, io.BytesIO()))
    except Exception:  # DisallowedHost and the like: Django answers that request itself
        verdict = None
    else:
        answered = isinstance(response, HttpResponse) and response.status_code == 200 and response.content == b"{}"
        skip = {"content-type", "content-length"}
        verdict = (
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.items() if k.lower() not in skip]
            if answered
            else None
        )
    if len(_verdicts) < VERDICTS_MAX:
        _verdicts[key] = verdict
    return verdict


@dataclass(frozen=True)
class Fast:
    """A request the fast path serves: which endpoint, for which worker, with which headers."""

    endpoint: str
    name: str
    headers: list[tuple[bytes, bytes]]


def route(scope: dict[str, Any]) -> Fast | None:
    """The endpoint, the worker's name and the middleware's headers when this request is one
    the fast path serves, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or not settings.FAST_PATH:
        return None
    path: str = scope["path"]
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    match = ROUTE.match(path)
    if match is None:
        return None
    headers = _verdict(scope)
    if headers is None:
        return None
    return Fast(match["endpoint"], match["name"], headers)


async def _read_body(receive: Receive) -> bytes:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def serve(fast: Fast, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer one claim or report (route() said this request is one, and with which headers)."""
    try:
        body = await _read_body(receive)
    except Disconnected:
        return
    except BodyTooLarge:
        status, answer = too_large()
    else:
        authorization = _header(scope, b"authorization")
        executor = REQUEST_THREADS.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                if fast.endpoint == "claim":
                    query = dict(_query(scope))
                    answered = await _unless_gone(claim(authorization, fast.name, query.get("wait")), receive)
                else:
                    answered = await _unless_gone(sync_to_async(report)(authorization, fast.name, body), receive)
            if answered is None:
                return  # the agent went away: a dead agent's long-poll neither waits nor claims on
            status, answer = answered
        except Exception:
            logger.exception("Internal Server Error: %s", scope["path"])
            status, answer = 500, error_body("server_error", "internal server error")
        finally:
            REQUEST_THREADS.give(executor)
    if 400 <= status < 500:
        logger.warning("%s: %s", http.HTTPStatus(status).phrase, scope["path"])
    content = json.dumps(answer, cls=DjangoJSONEncoder).encode()
    length = str(len(content)).encode()
    sent = [(b"content-type", b"application/json"), (b"content-length", length), *fast.headers]
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": content})


async def _unless_gone(work: Awaitable[Answer], receive: Receive) -> Answer | None:
    """The work's answer, or None once the client disconnects (the work is cancelled, as Django does)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _query(scope: dict[str, Any]) -> list[tuple[str, str]]:
    raw: bytes = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []
