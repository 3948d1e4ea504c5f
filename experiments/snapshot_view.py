"""`PUT /api/v1/snapshots/{sha256}/` (a tarball, streamed) and `GET` of the same (agents, its owner)."""

from __future__ import annotations

from collections.abc import Iterator

from django.http import FileResponse, HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.authentication import actor_from_authorization
from core.api import error_body
from core.errors import ServiceError
from experiments.snapshots import snapshot_for_reading, snapshot_store

CHUNK = 1024 * 1024


def _chunks(request: HttpRequest) -> Iterator[bytes]:
    while chunk := request.read(CHUNK):
        yield chunk


@csrf_exempt
def snapshot_view(request: HttpRequest, sha256: str) -> HttpResponseBase:
    actor = actor_from_authorization(request.headers.get("Authorization", ""))
    if actor is None:
        return JsonResponse(error_body("not_authenticated", "a valid API key is required"), status=401)
    try:
        if request.method == "PUT":
            snap, created = snapshot_store(actor=actor, sha256=sha256, chunks=_chunks(request))
            return JsonResponse(
                {"sha256": snap.sha256, "size": snap.size, "created": created}, status=201 if created else 200
            )
        if request.method == "GET":
            path = snapshot_for_reading(actor=actor, sha256=sha256)
            return FileResponse(path.open("rb"), content_type="application/gzip")
    except ServiceError as exc:
        return JsonResponse(error_body(exc.code, exc.message, exc.field, **exc.extra), status=exc.status)
    return JsonResponse(error_body("method_not_allowed", f'method "{request.method}" not allowed'), status=405)


snapshot_view.http_methods = ["GET", "PUT"]  # type: ignore[attr-defined]  # read by the role-matrix test
