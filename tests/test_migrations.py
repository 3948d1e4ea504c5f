"""Migrations keep data: a database made before orchestration/'s models moved keeps every row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.apps import apps as current_apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.models import ApiKey, UserSecret
from actions.models import CustomAction
from core.models import AuditEvent, ServiceBeat
from workers.models import Worker

# The last migrations before the move: the state of a database that today's code made.
BEFORE_THE_MOVE = [
    ("orchestration", "0005_custom_action"),
    ("workers", "0005_clearml_runtime"),
    ("accounts", None),
    ("core", None),
    ("actions", None),
]
AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _migrate(targets: list[tuple[str, str | None]]) -> Any:
    """Migrate to these targets; the models of that state."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state([t for t in targets if t[1] is not None]).apps


def _latest() -> list[tuple[str, str | None]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()  # type: ignore[no-any-return]


def _old_rows(old: Any) -> dict[str, int]:
    """One of everything that lived in orchestration/, linked as in use."""
    user = old.get_model("auth", "User").objects.create(username="carol")
    queue = old.get_model("queues", "Queue").objects.create(name="gpu")
    key = old.get_model("orchestration", "ApiKey").objects.create(
        access_key="mk_carol", digest="d" * 64, user=user, role="agent", worker_prefix="carol-"
    )
    key.allowed_queues.add(queue)
    worker = old.get_model("workers", "Worker").objects.create(
        name="carol-1", api_key=key, owner=user, registered_at=AT, last_seen_at=AT, live_until=AT
    )
    old.get_model("orchestration", "UserSecret").objects.create(owner=user, name="HF_TOKEN", ciphertext="c")
    old.get_model("orchestration", "AuditEvent").objects.create(
        at=AT, actor=user, actor_label="carol", object_type="queue", object_id=str(queue.pk), action="create"
    )
    old.get_model("orchestration", "ServiceBeat").objects.create(name="api", alive_at=AT, up_since=AT)
    old.get_model("orchestration", "CustomAction").objects.create(
        object_type="queue", name="page", url="https://example.invalid/${id}", secret_ciphertext="s"
    )
    content_type = old.get_model("contenttypes", "ContentType").objects.get(app_label="orchestration", model="apikey")
    permission = old.get_model("auth", "Permission").objects.get(content_type=content_type, codename="view_apikey")
    user.user_permissions.add(permission)
    return {"user": user.pk, "queue": queue.pk, "key": key.pk, "worker": worker.pk, "permission": permission.pk}


@pytest.mark.django_db(transaction=True)
def test_a_database_made_before_the_move_keeps_every_row_and_link() -> None:
    latest = _latest()
    try:
        made = _made_before_the_move()
    finally:
        _migrate(latest)  # also when the set-up fails: the next test needs today's tables
    _check_after_the_move(made)


def _made_before_the_move() -> dict[str, int]:
    old = _migrate(BEFORE_THE_MOVE)
    # The old content types exist as in any database made then (post_migrate made them).
    content_types = old.get_model("contenttypes", "ContentType").objects
    for model in ("apikey", "usersecret", "auditevent", "servicebeat", "customaction"):
        content_types.get_or_create(app_label="orchestration", model=model)
    auth_permission = old.get_model("auth", "Permission").objects
    auth_permission.get_or_create(
        content_type=content_types.get(app_label="orchestration", model="apikey"),
        codename="view_apikey",
        defaults={"name": "Can view api key"},
    )
    return _old_rows(old)


def _check_after_the_move(made: dict[str, int]) -> None:
    key = ApiKey.objects.get(pk=made["key"])
    assert (key.access_key, key.user_id, key.role, key.worker_prefix) == ("mk_carol", made["user"], "agent", "carol-")
    assert list(key.allowed_queues.values_list("pk", flat=True)) == [made["queue"]]
    assert Worker.objects.get(pk=made["worker"]).api_key_id == key.pk
    assert UserSecret.objects.filter(owner_id=made["user"], name="HF_TOKEN", ciphertext="c").exists()
    event = AuditEvent.objects.get(object_id=str(made["queue"]))
    assert (event.actor_id, event.action, event.at) == (made["user"], "create", AT)
    assert ServiceBeat.objects.get(name="api").alive_at == AT
    assert CustomAction.objects.get(name="page").secret_ciphertext == "s"
    # Permissions granted on the old models still name the same (moved) content type.
    permission = current_apps.get_model("auth", "Permission").objects.get(pk=made["permission"])
    assert (permission.content_type.app_label, permission.content_type.model) == ("accounts", "apikey")
    assert not current_apps.get_model("contenttypes", "ContentType").objects.filter(app_label="orchestration").exists()
    # New rows take ids after the old ones (the sequences came along with the tables), and the
    # foreign keys pointing at moved tables still work (SQLite keeps references by table name).
    new_key = ApiKey.objects.create(access_key="mk_new", digest="e" * 64, user_id=made["user"])
    assert new_key.pk > key.pk
    new_key.allowed_queues.add(made["queue"])
    Worker.objects.create(
        name="carol-2", api_key=new_key, owner_id=made["user"], registered_at=AT, last_seen_at=AT, live_until=AT
    )
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA foreign_key_check")
            assert cursor.fetchall() == []
