"""Entry positions: sequence appends, gap moves and a bounded local renumber.

Order inside a queue is (priority desc, position asc, id asc). Appends take the next
value of a sequence (a PostgreSQL sequence stepping by the gap; under SQLite, whose
writers are serialized, the largest position plus the gap), so a move only ever writes
the moved row, unless two neighbours have no room between them: then a small window of
the band is respaced (a few dozen rows at most), never the whole queue.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.db.models import Max, Min, Q, QuerySet

from queues.models import QueueEntry

SEQUENCE = "queues_entry_position_seq"
RENUMBER_WINDOW = 16


def next_position() -> int:
    """A position after every position handed out so far, in any queue."""
    gap: int = settings.QUEUE_POSITION_GAP
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT nextval('{SEQUENCE}')")
            return int(cursor.fetchone()[0])
    top = QueueEntry.objects.aggregate(top=Max("position"))["top"]
    return (top or 0) + gap


def next_positions(count: int) -> list[int]:
    """`count` increasing positions after every position handed out so far, in one query."""
    gap: int = settings.QUEUE_POSITION_GAP
    if count <= 0:
        return []
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval('queues_entry_position_seq') FROM generate_series(1, %s)", [count])
            return sorted(int(row[0]) for row in cursor.fetchall())
    top = QueueEntry.objects.aggregate(top=Max("position"))["top"] or 0
    return [top + gap * (i + 1) for i in range(count)]


def front_position(queue_id: str, priority: int) -> int:
    """A position before every entry of the band."""
    low = QueueEntry.objects.filter(queue_id=queue_id, priority=priority).aggregate(low=Min("position"))["low"]
    return (low if low is not None else next_position()) - settings.QUEUE_POSITION_GAP


def ordered(queue_id: str) -> QuerySet[QueueEntry]:
    return QueueEntry.objects.filter(queue_id=queue_id).order_by("-priority", "position", "id")


def index_of(entry: QueueEntry) -> int:
    """The 0-based place of an entry in its queue (one COUNT on the order index)."""
    before = Q(priority__gt=entry.priority) | Q(priority=entry.priority, position__lt=entry.position)
    before |= Q(priority=entry.priority, position=entry.position, id__lt=entry.id)
    return QueueEntry.objects.filter(Q(queue_id=entry.queue_id) & before).count()


def move_to_index(entry: QueueEntry, index: int) -> None:
    """Place an entry at `index` of its queue (clamped), touching as few rows as possible."""
    old_index = index_of(entry)
    index = max(index, 0)
    others = ordered(entry.queue_id).exclude(pk=entry.pk)
    if index == 0:
        neighbours = list(others[:1])
        prev, nxt = None, (neighbours[0] if neighbours else None)
    else:
        neighbours = list(others[index - 1 : index + 1])
        if not neighbours:  # past the end: the bottom
            last = others.reverse()[:1]
            prev, nxt = (last[0] if last else None), None
        else:
            prev = neighbours[0]
            nxt = neighbours[1] if len(neighbours) > 1 else None
    _place_between(entry, prev, nxt, moving_up=index < old_index)


def _place_between(entry: QueueEntry, prev: QueueEntry | None, nxt: QueueEntry | None, *, moving_up: bool) -> None:
    gap: int = settings.QUEUE_POSITION_GAP
    own = entry.priority
    if prev is None and nxt is None:
        return
    if prev is None:
        assert nxt is not None
        priority, position = nxt.priority, nxt.position - gap
    elif nxt is None:
        priority, position = prev.priority, next_position()
    elif prev.priority != nxt.priority:
        # A band boundary: keep the entry's own band when it is one of the two; otherwise it
        # joins the band it moved into (the one whose entries it passed).
        if own == nxt.priority or (own != prev.priority and moving_up):
            priority, position = nxt.priority, nxt.position - gap
        else:
            priority, position = prev.priority, next_position()
    elif nxt.position - prev.position >= 2:
        priority, position = prev.priority, (prev.position + nxt.position) // 2
    else:
        priority, position = prev.priority, _renumber_after(entry, prev)
    QueueEntry.objects.filter(pk=entry.pk).update(priority=priority, position=position)
    entry.priority, entry.position = priority, position


def _renumber_after(entry: QueueEntry, prev: QueueEntry) -> int:
    """Respace a small window of the band after `prev` and return a free position for `entry`."""
    window = RENUMBER_WINDOW
    band = (
        QueueEntry.objects.filter(queue_id=prev.queue_id, priority=prev.priority)
        .exclude(pk=entry.pk)
        .filter(Q(position__gt=prev.position) | Q(position=prev.position, id__gt=prev.id))
        .order_by("position", "id")
    )
    while True:
        rows = list(band[: window + 1])
        moved, boundary_row = rows[:window], rows[window:]
        boundary = boundary_row[0].position if boundary_row else next_position()
        slots = len(moved) + 2  # the entry, the window, and room before the boundary
        if boundary - prev.position >= slots:
            break
        window *= 4  # positions are 64-bit and appends leave gaps of 1024, so this ends fast
    step = (boundary - prev.position) // slots
    for i, row in enumerate(moved):
        row.position = prev.position + step * (i + 2)
    QueueEntry.objects.bulk_update(moved, ["position"])
    return prev.position + step
