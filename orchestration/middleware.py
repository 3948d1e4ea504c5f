"""Middleware that keeps an ASGI request in the event loop: static files, and Django's own.

WhiteNoise for static files without making every request synchronous.

WhiteNoise's middleware is sync-only. Under ASGI, Django then runs the rest of the chain
through async_to_sync inside a worker thread, so an async view (the long-poll claim)
would hold that thread for its whole wait: 1,000 waiting agents would starve every other
request of threads. This wrapper is async-capable: only requests under STATIC_URL go to
WhiteNoise (in a thread); everything else goes straight on, async all the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any, cast

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.middleware import clickjacking, common, csp, csrf, security
from whitenoise.middleware import WhiteNoiseMiddleware

from actions.services import browser_action_origins


class StaticFilesMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.whitenoise = WhiteNoiseMiddleware(async_to_sync(get_response) if self.is_async else get_response)
        self.prefix = "/" + settings.STATIC_URL.strip("/") + "/"

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        response: HttpResponseBase = self.whitenoise(request)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info.startswith(self.prefix):
            response: HttpResponseBase = await sync_to_async(self.whitenoise, thread_sensitive=False)(request)
            if isinstance(response, StreamingHttpResponse) and not response.is_async:
                # Read the file in a thread, chunk by chunk, instead of blocking the event loop.
                response.streaming_content = _read_in_thread(iter(cast(Iterable[bytes], response.streaming_content)))
            return response
        return await self.get_response(request)  # type: ignore[no-any-return]


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _read_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    read = sync_to_async(_next_chunk, thread_sensitive=False)
    while (chunk := await read(chunks)) is not None:
        yield chunk


# -- Django's own middleware without a thread hop per method -------------------------------
#
# Under ASGI, MiddlewareMixin runs every process_request, process_view and process_response
# through sync_to_async(thread_sensitive=True): with the stack in settings.MIDDLEWARE that is
# about a dozen hops to one thread and back per request, most of a small request's cost.
# These methods do no I/O (they read headers and cookies and set lazy objects), except the
# session's and the messages' when a view used them, so they run in the event loop, and
# only those two still hop, and only when there is something to save.


class _Inline:
    """Mixin for a MiddlewareMixin subclass: its methods run in the event loop unless `hop_*` says not."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)  # type: ignore[call-arg]
        view = getattr(self, "process_view", None)
        if getattr(self, "async_mode", False) and view is not None:
            # The handler adapts a sync process_view with a hop; a coroutine function it calls directly.
            async def process_view(request: HttpRequest, *args: Any) -> HttpResponseBase | None:
                result: HttpResponseBase | None = view(request, *args)
                return result

            self.__dict__["process_view"] = process_view  # shadows the method for this instance

    def hop_request(self, request: HttpRequest) -> bool:
        return False

    def hop_response(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response: HttpResponseBase | None = None
        before = getattr(self, "process_request", None)
        if before is not None:
            if self.hop_request(request):
                response = await sync_to_async(before, thread_sensitive=True)(request)
            else:
                response = before(request)
        response = response or await cast(Any, self).get_response(request)
        after = getattr(self, "process_response", None)
        if after is not None:
            if self.hop_response(request, response):
                response = await sync_to_async(after, thread_sensitive=True)(request, response)
            else:
                response = after(request, response)
        return response


class SecurityMiddleware(_Inline, security.SecurityMiddleware):
    pass


class CommonMiddleware(_Inline, common.CommonMiddleware):
    pass


class CsrfViewMiddleware(_Inline, csrf.CsrfViewMiddleware):
    pass


class AuthenticationMiddleware(_Inline, auth_middleware.AuthenticationMiddleware):
    pass


class XFrameOptionsMiddleware(_Inline, clickjacking.XFrameOptionsMiddleware):
    pass


class ContentSecurityPolicyMiddleware(_Inline, csp.ContentSecurityPolicyMiddleware):
    """Django's, plus: a page may connect to the hosts of the custom actions the browser issues."""

    def hop_response(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return _is_page(response)  # reading the actions' origins may query the database

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if _is_page(response) and settings.SECURE_CSP and not hasattr(response, "_csp_config"):
            origins = browser_action_origins()
            if origins:
                config = dict(settings.SECURE_CSP)
                config["connect-src"] = [*config.get("connect-src", [csp.CSP.SELF]), *sorted(origins)]
                response._csp_config = config  # type: ignore[attr-defined]
        return super().process_response(request, response)


def _is_page(response: HttpResponseBase) -> bool:
    return str(response.get("Content-Type", "")).startswith("text/html")


class SessionMiddleware(_Inline, sessions.SessionMiddleware):
    """Saving a session is a database write: that answer hops; an untouched session does not."""

    def hop_response(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.accessed or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_Inline, messages.MessageMiddleware):
    """Storing messages may load the session (a database read): only then it hops."""

    def hop_response(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and bool(storage.used or storage.added_new)
