"""WhiteNoise for static files without making every request synchronous.

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
from django.http import HttpRequest, HttpResponseBase, StreamingHttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware


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
