"""The agents' two hot endpoints served straight from the ASGI entry point.

`POST /api/v1/workers/{name}/claim/` and `…/report/` arrive from every agent every few
seconds. Through Django's handler a request that does nothing costs about 1.1 ms of
server CPU here (request and response objects, the middleware chain, URL resolving, a
second thread hop for request_finished) against 0.14 ms for uvicorn itself
(docs/BENCHMARKS.md): a third of a report's cost, and none of it does anything for these
two endpoints, which take only an API key, a path and a JSON body, set no cookie and
render no page.

So the production entry point (orchestration/asgi.py) hands exactly those requests here:
POST, the exact path, an allowed Host, no HTTPS redirect due. They run the same
functions the Django views run (workers/claim_view.py: claim, workers/report_view.py:
report), on the same reused request thread behind the same gate, and answer with the
same headers the middleware would add; tests/test_fastpath.py compares the two answers
for the same requests. Anything else (another method, a trailing-slash redirect, a bad
Host) goes to Django as before. FAST_PATH=false sends everything to Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http.request import split_domain_port, validate_host
from django.utils.csp import build_policy

from core.api import error_body, too_large
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


_host_ok: dict[str, bool] = {}  # a server sees a handful of Host values


def _allowed_host(host: str) -> bool:
    """Host is checked as Django's request.get_host() would (USE_X_FORWARDED_HOST goes to Django)."""
    known = _host_ok.get(host)
    if known is None:
        domain, _port = split_domain_port(host)
        known = bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)
        if len(_host_ok) < 64:
            _host_ok[host] = known
    return known


def route(scope: dict[str, Any]) -> tuple[str, str] | None:
    """The endpoint and worker name when this request is one the fast path serves, else None."""
    if scope["type"] != "http" or scope["method"] != "POST" or not settings.FAST_PATH:
        return None
    path: str = scope["path"]
    root = scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root) :]
    match = ROUTE.match(path)
    if match is None:
        return None
    if settings.USE_X_FORWARDED_HOST or not _allowed_host(_header(scope, b"host")):
        return None
    if settings.SECURE_SSL_REDIRECT and not _secure(scope):
        return None
    return match["endpoint"], match["name"]


def _secure(scope: dict[str, Any]) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        header, value = proxy
        wire = header.removeprefix("HTTP_").lower().replace("_", "-").encode()
        return _header(scope, wire).split(",")[0].strip() == value
    return False


def _headers(scope: dict[str, Any], body: bytes) -> list[tuple[bytes, bytes]]:
    """What the Django view's answer carries: its own headers and the security middleware's."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if settings.X_FRAME_OPTIONS:
        headers.append((b"x-frame-options", settings.X_FRAME_OPTIONS.encode()))
    if settings.SECURE_HSTS_SECONDS and _secure(scope):
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append((b"strict-transport-security", hsts.encode()))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    if settings.SECURE_CSP:
        headers.append((b"content-security-policy", _csp_header()))
    return headers


_csp_built: dict[int, bytes] = {}


def _csp_header() -> bytes:
    """The policy ContentSecurityPolicyMiddleware sends (ours has no nonce: built once per setting)."""
    config = settings.SECURE_CSP
    built = _csp_built.get(id(config))
    if built is None:
        built = _csp_built[id(config)] = build_policy(config, None).encode()
    return built


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


async def serve(endpoint: str, name: str, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer one claim or report (route() said this request is one)."""
    from orchestration.asgi import REQUEST_THREADS  # the module that imports this one

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
                if endpoint == "claim":
                    query = dict(_query(scope))
                    answered = await _unless_gone(claim(authorization, name, query.get("wait")), receive)
                else:
                    answered = await _unless_gone(sync_to_async(report)(authorization, name, body), receive)
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
    await send({"type": "http.response.start", "status": status, "headers": _headers(scope, content)})
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
    from urllib.parse import parse_qsl

    raw: bytes = scope.get("query_string", b"")
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else []
