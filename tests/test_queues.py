"""Queue operations and entry positions, including a move in a 100,000-entry queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.actor import Actor
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.models import AuditEvent
from experiments import queueing
from experiments.models import Experiment, Status
from queues import positions, services
from queues.models import Queue, QueueEntry
from queues.selectors import queue_find, queue_peek, queues_find

pytestmark = pytest.mark.django_db


def order(queue: Queue) -> list[str]:
    return list(positions.ordered(queue.pk).values_list("experiment__name", flat=True))


@pytest.fixture
def filled(queue: Queue, make_experiment: Callable[..., Experiment]) -> list[Experiment]:
    return [make_experiment(queue=queue, name=n) for n in "abcde"]


def test_admins_create_queues_with_unique_names_ignoring_case(admin_actor: Actor) -> None:
    services.queue_create(actor=admin_actor, name="GPU-a100 x8")
    with pytest.raises(Conflict, match="already exists"):
        services.queue_create(actor=admin_actor, name="gpu-A100 X8")


@pytest.mark.parametrize("name", ["ab", "x" * 101, "tab\there", "nul\x00", "   "])
def test_bad_queue_names_are_refused(admin_actor: Actor, name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        services.queue_create(actor=admin_actor, name=name)
    assert err.value.field == "name"


def test_users_cannot_manage_queues(alice_actor: Actor, queue: Queue) -> None:
    for call in (
        lambda: services.queue_create(actor=alice_actor, name="mine"),
        lambda: services.queue_update(actor=alice_actor, queue_id=queue.pk, changes={"name": "x1x"}),
        lambda: services.queue_set_paused(actor=alice_actor, queue_id=queue.pk, paused=True),
        lambda: queueing.queue_clear(actor=alice_actor, queue_id=queue.pk),
        lambda: queueing.queue_delete(actor=alice_actor, queue_id=queue.pk),
    ):
        with pytest.raises(Forbidden):
            call()


def test_rename_checks_the_new_name(admin_actor: Actor, queue: Queue, make_queue: Callable[..., Queue]) -> None:
    make_queue("taken")
    with pytest.raises(Conflict):
        services.queue_update(actor=admin_actor, queue_id=queue.pk, changes={"name": "TAKEN"})
    services.queue_update(actor=admin_actor, queue_id=queue.pk, changes={"name": "renamed"})
    queue.refresh_from_db()
    assert queue.name == "renamed"
    assert AuditEvent.objects.filter(object_id=queue.pk, action="rename").exists()


def test_pause_and_resume_repeat_as_no_ops(admin_actor: Actor, queue: Queue) -> None:
    services.queue_set_paused(actor=admin_actor, queue_id=queue.pk, paused=True)
    services.queue_set_paused(actor=admin_actor, queue_id=queue.pk, paused=True)
    services.queue_set_paused(actor=admin_actor, queue_id=queue.pk, paused=False)
    assert list(AuditEvent.objects.filter(object_id=queue.pk).values_list("action", flat=True).order_by("id")) == [
        "create",
        "pause",
        "resume",
    ]


def test_clear_dequeues_everything_back_to_created(admin_actor: Actor, queue: Queue, filled: list[Experiment]) -> None:
    assert queueing.queue_clear(actor=admin_actor, queue_id=queue.pk) == 5
    assert not QueueEntry.objects.exists()
    assert set(Experiment.objects.values_list("status", flat=True)) == {Status.CREATED}
    assert AuditEvent.objects.filter(object_type="experiment", action="clear").count() == 5


def test_delete_dequeues_pending_experiments(admin_actor: Actor, queue: Queue, filled: list[Experiment]) -> None:
    assert queueing.queue_delete(actor=admin_actor, queue_id=queue.pk) == 5
    assert not Queue.objects.exists()
    assert set(Experiment.objects.values_list("status", flat=True)) == {Status.CREATED}


def test_appends_keep_arrival_order_and_priority_comes_first(
    queue: Queue, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment(queue=queue, name="low1")
    make_experiment(queue=queue, name="high", priority=5)
    make_experiment(queue=queue, name="low2")
    assert order(queue) == ["high", "low1", "low2"]
    peek = queue_peek(queue.pk)
    assert peek is not None and peek.experiment.name == "high"


def ids(exps: list[Experiment], names: str) -> list[str]:
    by = {e.name: e.pk for e in exps}
    return [by[n] for n in names]


@pytest.mark.parametrize(
    ("names", "to", "value", "expected"),
    [
        ("d", "top", None, "dabce"),
        ("a", "top", None, "abcde"),
        ("b", "bottom", None, "acdeb"),
        ("e", "bottom", None, "abcde"),
        ("e", "position", 1, "aebcd"),
        ("a", "position", 4, "bcdea"),
        ("a", "position", 99, "bcdea"),
        ("c", "by", -1, "acbde"),
        ("c", "by", 1, "abdce"),
        ("c", "by", -10, "cabde"),
        ("c", "by", 10, "abdec"),
        ("de", "top", None, "deabc"),
        ("ab", "bottom", None, "cdeab"),
    ],
)
def test_moves_within_a_queue(
    admin_actor: Actor, queue: Queue, filled: list[Experiment], names: str, to: str, value: int | None, expected: str
) -> None:
    queueing.queue_entries_move(
        actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, names), to=to, value=value
    )
    assert "".join(order(queue)) == expected


def test_moving_past_another_priority_takes_that_priority(
    admin_actor: Actor, queue: Queue, make_experiment: Callable[..., Experiment]
) -> None:
    hi = make_experiment(queue=queue, name="hi", priority=10)
    lo = make_experiment(queue=queue, name="lo")
    queueing.queue_entries_move(actor=admin_actor, queue_id=queue.pk, experiment_ids=[lo.pk], to="top")
    assert order(queue) == ["lo", "hi"]
    assert QueueEntry.objects.get(experiment=lo).priority == 10
    queueing.queue_entries_move(actor=admin_actor, queue_id=queue.pk, experiment_ids=[hi.pk], to="top")
    assert order(queue) == ["hi", "lo"]


def test_move_to_another_queue_by_id_or_name_and_never_to_a_typo(
    admin_actor: Actor, queue: Queue, filled: list[Experiment], make_queue: Callable[..., Queue]
) -> None:
    other = make_queue("other")
    queueing.queue_entries_move(
        actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "bd"), to="queue", target_queue=other.pk
    )
    assert order(other) == ["b", "d"] and order(queue) == ["a", "c", "e"]
    queueing.queue_entries_move(
        actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "a"), to="queue", target_queue="OTHER"
    )
    assert order(other) == ["b", "d", "a"]
    with pytest.raises(NotFound, match="'othre' does not exist"):
        queueing.queue_entries_move(
            actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "c"), to="queue", target_queue="othre"
        )
    assert not Queue.objects.filter(name="othre").exists(), "an admin's typo made no queue"
    assert order(queue) == ["c", "e"]


def test_users_move_only_their_own_and_cannot_create_queues(
    alice_actor: Actor, queue: Queue, filled: list[Experiment]
) -> None:
    queueing.queue_entries_move(actor=alice_actor, queue_id=queue.pk, experiment_ids=ids(filled, "e"), to="top")
    with pytest.raises(NotFound):
        queueing.queue_entries_move(
            actor=alice_actor, queue_id=queue.pk, experiment_ids=ids(filled, "e"), to="queue", target_queue="nope"
        )


def test_bulk_dequeue(admin_actor: Actor, queue: Queue, filled: list[Experiment]) -> None:
    assert queueing.queue_entries_dequeue(actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "ace")) == 3
    assert order(queue) == ["b", "d"]


def test_unknown_entries_and_targets_are_refused(admin_actor: Actor, queue: Queue, filled: list[Experiment]) -> None:
    with pytest.raises(NotFound):
        queueing.queue_entries_move(actor=admin_actor, queue_id=queue.pk, experiment_ids=["f" * 32], to="top")
    with pytest.raises(InvalidInput):
        queueing.queue_entries_move(
            actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "a"), to="sideways"
        )
    with pytest.raises(InvalidInput):
        queueing.queue_entries_move(actor=admin_actor, queue_id=queue.pk, experiment_ids=ids(filled, "a"), to="by")


def _seed(queue: Queue, owner_id: int, n: int, *, gap: int) -> None:
    """n queued experiments and their entries, made in SQL (the ORM takes a minute for 100k)."""
    now = timezone.now()
    fields = [f for f in Experiment._meta.concrete_fields if f.name != "id"]
    proto = Experiment(name="", owner_id=owner_id, status=Status.QUEUED, queue=queue, created_at=now, updated_at=now)
    values = [f.get_db_prep_save(f.pre_save(proto, add=True), connection) for f in fields]
    cols = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    name_col = [f.name for f in fields].index("name")
    select = ", ".join("'e' || n" if i == name_col else "%s" for i in range(len(fields)))
    series = "WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < %s) "
    hexid = "lpad(to_hex(n), 32, '0')" if connection.vendor == "postgresql" else "printf('%%032x', n)"
    with connection.cursor() as cur:
        cur.execute(
            f"INSERT INTO experiments_experiment (id, {cols}) {series} SELECT {hexid}, {select} FROM s",
            [n - 1, *[v for i, v in enumerate(values) if i != name_col]],
        )
        cur.execute(
            "INSERT INTO queues_queueentry (queue_id, experiment_id, priority, position, added_at, gpus, gpu_type,"
            f" cpus, memory_mb, needs) {series} SELECT %s, {hexid}, 0, (n + 1) * %s, %s, 0, '', 1, 0, 1 FROM s",
            [n - 1, queue.pk, gap, now],
        )


def _writes(ctx: CaptureQueriesContext) -> list[str]:
    return [
        q["sql"] for q in ctx.captured_queries if q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE"))
    ]


@pytest.mark.slow
# Committed as it goes: inside one test transaction, PostgreSQL would queue 100,000
# deferred foreign-key checks for the end of the test and run them one by one.
@pytest.mark.django_db(transaction=True)
def test_a_move_in_a_100000_entry_queue_touches_a_few_rows(admin_actor: Actor, queue: Queue, alice: Any) -> None:
    _seed(queue, alice.pk, 100_000, gap=1024)
    target = QueueEntry.objects.filter(queue=queue).order_by("position")[80_000]
    before = dict(QueueEntry.objects.values_list("pk", "position"))
    with CaptureQueriesContext(connection) as ctx:
        queueing.queue_entries_move(
            actor=admin_actor, queue_id=queue.pk, experiment_ids=[target.experiment_id], to="position", value=10
        )
    after = dict(QueueEntry.objects.values_list("pk", "position"))
    changed = [pk for pk in after if after[pk] != before[pk]]
    assert changed == [target.pk]
    assert len(ctx.captured_queries) <= 12
    assert positions.index_of(QueueEntry.objects.get(pk=target.pk)) == 10
    # Moves to the top and bottom are as cheap.
    with CaptureQueriesContext(connection) as ctx:
        queueing.queue_entries_move(
            actor=admin_actor, queue_id=queue.pk, experiment_ids=[target.experiment_id], to="bottom"
        )
    assert len(ctx.captured_queries) <= 12 and len(_writes(ctx)) <= 2


def test_with_no_gap_left_a_bounded_window_is_renumbered(admin_actor: Actor, queue: Queue, alice: Any) -> None:
    _seed(queue, alice.pk, 2_000, gap=1024)
    # Pack entries 90 to 139 tightly, as many moves into one spot would leave them.
    packed = list(positions.ordered(queue.pk)[90:140])
    for i, entry in enumerate(packed):
        entry.position = packed[0].position + i
    QueueEntry.objects.bulk_update(packed, ["position"])
    target = QueueEntry.objects.filter(queue=queue).order_by("position")[1500]
    before = dict(QueueEntry.objects.values_list("pk", "position"))
    queueing.queue_entries_move(
        actor=admin_actor, queue_id=queue.pk, experiment_ids=[target.experiment_id], to="position", value=100
    )
    after = dict(QueueEntry.objects.values_list("pk", "position"))
    changed = [pk for pk in after if after[pk] != before[pk]]
    assert len(changed) <= 1 + 4 * positions.RENUMBER_WINDOW
    assert positions.index_of(QueueEntry.objects.get(pk=target.pk)) == 100
    names = list(positions.ordered(queue.pk).values_list("experiment__name", flat=True))
    expected = [f"e{i}" for i in range(2000) if i != 1500]
    expected.insert(100, "e1500")
    assert names == expected


def test_repeated_midpoint_moves_stay_ordered(admin_actor: Actor, queue: Queue, alice: Any) -> None:
    _seed(queue, alice.pk, 50, gap=1024)
    for i in range(40):  # halving a 1024 gap runs out after ten moves: renumbering takes over
        entry = positions.ordered(queue.pk)[49]
        queueing.queue_entries_move(
            actor=admin_actor, queue_id=queue.pk, experiment_ids=[entry.experiment_id], to="position", value=1
        )
        assert positions.index_of(QueueEntry.objects.get(pk=entry.pk)) == 1, i
    pos = list(positions.ordered(queue.pk).values_list("position", flat=True))
    assert pos == sorted(pos) and len(set(pos)) == len(pos)


def test_a_bulk_move_to_another_queue_costs_the_same_queries_for_10_or_200(
    admin_actor: Actor, queue: Queue, make_queue: Callable[..., Queue], alice: Any
) -> None:
    other = make_queue("other")
    _seed(queue, alice.pk, 210, gap=1024)
    ids = list(positions.ordered(queue.pk).values_list("experiment_id", flat=True))
    counts = []
    for selection in (ids[:10], ids[10:210]):
        with CaptureQueriesContext(connection) as ctx:
            queueing.queue_entries_move(
                actor=admin_actor, queue_id=queue.pk, experiment_ids=selection, to="queue", target_queue=other.pk
            )
        counts.append(len(ctx.captured_queries))
    assert counts[1] - counts[0] <= 1  # the same statements; bulk_update may split one more batch
    assert list(positions.ordered(other.pk).values_list("experiment_id", flat=True)) == ids


def test_a_queue_is_found_by_id_or_by_name_and_an_id_wins(make_queue: Callable[..., Queue]) -> None:
    """queues/selectors.py: queue_find is the one "id or name" rule (the API, the CLI's keys, ClearML, moves)."""
    plain = make_queue("Plain")
    impostor = make_queue(plain.pk)  # a queue whose name is another queue's id
    assert queue_find(plain.pk) == plain
    assert queue_find("pLAIN") == plain
    assert queue_find(impostor.pk) == impostor
    assert queue_find("nope") is None and queue_find("") is None


def test_a_workers_queue_list_follows_the_same_rule_in_one_query(
    make_queue: Callable[..., Queue], django_assert_num_queries: Any
) -> None:
    """Registration's batch lookup (workers/services.py: resolve_queues) is queues_find: the same rule."""

    plain = make_queue("Plain")
    impostor = make_queue(plain.pk)
    refs = [plain.pk, "pLAIN", impostor.pk, "nope", impostor.name.upper()]
    with django_assert_num_queries(1):
        found = queues_find(refs)
    # The impostor's name in capitals is no id (ids are lowercase hex): it names the impostor.
    assert found == {plain.pk: plain, "pLAIN": plain, impostor.pk: impostor, impostor.name.upper(): impostor}
    for ref, queue in found.items():
        assert queue_find(ref) == queue
