"""The custom actions' one view: issue an action for an object."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from accounts.actor import request_actor
from actions.services import action_issue
from core.api import error_body
from core.errors import ServiceError


@login_required
@require_POST
def custom_action(request: HttpRequest, pk: int) -> JsonResponse:
    """Issue a custom action for one object: the prepared request for the browser, or the server's result."""

    try:
        answer = action_issue(actor=request_actor(request), action_id=pk, object_id=request.POST.get("object", ""))
    except ServiceError as e:
        return JsonResponse(error_body(e.code, e.message, e.field), status=e.status)
    return JsonResponse(answer)
