"""Who may use a queue: people enqueue to it, workers serve it. Each rule is written here once.

- A person may enqueue to a queue that names no groups, or one of their groups (admins: all).
- A worker serves a queue when its key's owner may enqueue to it (admins: all), and, for an
  agent key limited to some queues, when the queue is one of them.

The serving rule is one SQL condition (SERVABLE_SQL), so the claim applies it inside the
statement that locks the worker (workers/claim_sql.py, one round trip on PostgreSQL) and the
ORM paths (SQLite, the ClearML facade, key creation, registration) apply the same text.
tests/test_isolation.py checks both against may_enqueue over every kind of owner and key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from django.db import connection

from core.errors import Forbidden, InvalidInput
from queues.selectors import queue_find

if TYPE_CHECKING:  # no model at import time: bench/dispatch.py reads SERVABLE_SQL without Django set up
    from django.contrib.auth.models import User

    from accounts.actor import Actor
    from queues.models import Queue

# {queue}, {owner} and {key} are SQL expressions: the queue's id, the worker's owner (a user
# id, NULL for a worker the system registered) and the key it registered with (NULL: none).
SERVABLE_SQL = """(
  (NOT EXISTS (SELECT 1 FROM accounts_apikey_allowed_queues ka WHERE ka.apikey_id = {key})
   OR EXISTS (SELECT 1 FROM accounts_apikey_allowed_queues ka
              WHERE ka.apikey_id = {key} AND ka.queue_id = {queue}))
  AND ({owner} IS NULL
   OR EXISTS (SELECT 1 FROM auth_user u WHERE u.id = {owner} AND (u.is_superuser OR u.is_staff))
   OR NOT EXISTS (SELECT 1 FROM queues_queue_groups qg WHERE qg.queue_id = {queue})
   OR EXISTS (SELECT 1 FROM queues_queue_groups qg JOIN auth_user_groups ug ON ug.group_id = qg.group_id
              WHERE qg.queue_id = {queue} AND ug.user_id = {owner}))
)"""


def servable_sql(*, queue: str, owner: str, key: str) -> str:
    """SERVABLE_SQL over the given column expressions (never user input: names and placeholders only)."""
    return SERVABLE_SQL.format(queue=queue, owner=owner, key=key)


def may_enqueue(actor: Actor, queue: Queue) -> bool:
    """Whether the actor may put experiments into this queue."""
    if actor.is_admin:
        return True
    allowed = list(queue.groups.values_list("id", flat=True))
    return not allowed or bool(actor.group_ids.intersection(allowed))


# SERVABLE_SQL names the owner and the key several times: the order to bind them in by position.
_ARG_ORDER = [
    part
    for part in SERVABLE_SQL.format(queue="q.id", owner="\x00owner\x00", key="\x00key\x00").split("\x00")
    if part in ("owner", "key")
]


def servable_queue_ids(*, owner_id: int | None, key_id: int | None, queue_ids: Iterable[str]) -> set[str]:
    """Which of these queues a worker registered by this owner with this key may serve."""
    ids = list(dict.fromkeys(queue_ids))
    if not ids:
        return set()
    condition = servable_sql(queue="q.id", owner="%s", key="%s")
    args = [owner_id if name == "owner" else key_id for name in _ARG_ORDER]
    marks = ", ".join(["%s"] * len(ids))
    sql = f"SELECT q.id FROM queues_queue q WHERE q.id IN ({marks}) AND {condition}"  # noqa: S608 - fixed text
    with connection.cursor() as cur:
        cur.execute(sql, [*ids, *args])
        return {row[0] for row in cur.fetchall()}


def actor_servable_queue_ids(actor: Actor, queue_ids: Iterable[str]) -> set[str]:
    """The queues a worker registered by this actor (its user and key) may serve."""
    ids = set(queue_ids)
    if actor.user_id is None and actor.key is None:
        return ids  # the system
    return servable_queue_ids(owner_id=actor.user_id, key_id=actor.key.pk if actor.key else None, queue_ids=ids)


def actor_serves(actor: Actor, queue_id: str | None) -> bool:
    """Whether a worker of this actor's key may serve the queue."""
    return queue_id is not None and bool(actor_servable_queue_ids(actor, [queue_id]))


def key_queues_resolve(*, owner: User, refs: Sequence[str]) -> list[str]:
    """An agent key's queue limit: the queues these references name, each one its owner may use.

    A key never lets its worker serve more than its owner may enqueue to (the claim checks it again).
    """

    ids: list[str] = []
    for ref in refs:
        queue = queue_find(ref)
        if queue is None:
            raise InvalidInput(f"unknown queue {ref}", field="allowed_queues")
        ids.append(queue.pk)
    refused = set(ids) - servable_queue_ids(owner_id=owner.pk, key_id=None, queue_ids=ids)
    if refused:
        raise Forbidden(f"{owner.get_username()} may not enqueue to queue {min(refused)}", field="allowed_queues")
    return ids
