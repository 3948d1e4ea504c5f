"""Admin helpers: the admin's actor, and admin actions that call services with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from accounts.actor import Actor, actor_for_user
from core.errors import ServiceError


def admin_actor(request: HttpRequest) -> Actor:
    return actor_for_user(request.user)


def service_action(
    description: str, call: Callable[[Actor, Any], Any]
) -> Callable[[admin.ModelAdmin[Any], HttpRequest, QuerySet[Any]], None]:
    """An admin action that calls a service once per selected row and reports the result."""

    def action(modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Model]) -> None:
        actor = admin_actor(request)
        done, failed = 0, []
        for obj in queryset:
            try:
                call(actor, obj)
                done += 1
            except ServiceError as exc:
                failed.append(f"{obj}: {exc.message}")
        if done:
            modeladmin.message_user(request, f"{description}: {done} done.", messages.SUCCESS)
        for text in failed[:20]:
            modeladmin.message_user(request, text, messages.ERROR)

    action.short_description = description  # type: ignore[attr-defined]
    action.__name__ = description.lower().replace(" ", "_").replace("/", "_")
    return action
