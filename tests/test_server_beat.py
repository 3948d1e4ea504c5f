"""The server's own heartbeat: every server process beats, and liveness reads it.

While the server is away no agent can report, so the liveness checker gives no verdicts;
once it is back every worker gets two timeouts from `up_since`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone

from core.models import ServiceBeat
from core.servicebeat import away_after, server_beat, server_state
from experiments.models import Experiment
from queues.models import Queue
from tests.race import race
from workers.models import Worker
from workers.services import worker_check_liveness


@pytest.mark.django_db
def test_beats_move_alive_at_and_a_gap_of_three_intervals_moves_up_since() -> None:
    t0 = timezone.now()
    assert server_state(t0) == (False, None)  # no server ever beat: no opinion
    server_beat(t0)
    row = ServiceBeat.objects.get()
    assert row.alive_at == row.up_since == t0
    t1 = t0 + away_after() / 2
    server_beat(t1)
    server_beat(t0)  # a late beat never moves alive_at back
    row.refresh_from_db()
    assert (row.alive_at, row.up_since) == (t1, t0)
    assert server_state(t1 + away_after() / 2) == (False, t0)
    t2 = t1 + away_after() + timedelta(seconds=1)
    assert server_state(t2) == (True, t0)  # away: the last beat is too old
    server_beat(t2)
    row.refresh_from_db()
    assert (row.alive_at, row.up_since) == (t2, t2)  # back: it came up again now


@pytest.mark.django_db
def test_no_liveness_verdicts_while_the_server_is_away_and_two_timeouts_after_it_is_back(
    make_worker: Callable[..., Worker], make_experiment: Callable[..., Experiment], queue: Queue
) -> None:
    worker = make_worker(queues=[queue])
    long_ago = worker.last_seen_at - timedelta(hours=1)
    silent = worker.last_seen_at + timedelta(seconds=3 * worker.effective_timeout_s)
    server_beat(worker.last_seen_at)
    # The server's last beat is older than three intervals: it is away, its agents' silence says nothing.
    assert worker_check_liveness(since=long_ago, now=silent) == {"unresponsive": 0, "lost": 0}
    server_beat(silent)  # back: up_since is now, so the workers have two timeouts from here
    assert worker_check_liveness(since=long_ago, now=silent + timedelta(seconds=1)) == {"unresponsive": 0, "lost": 0}
    later = silent + timedelta(seconds=2 * worker.effective_timeout_s + 1)
    beat = silent
    while beat < later:  # the server beats all along
        beat += away_after() / 2
        server_beat(beat)
    assert worker_check_liveness(since=long_ago, now=later) == {"unresponsive": 0, "lost": 1}


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_first_beats_of_several_server_processes_at_once_make_one_row() -> None:
    now = timezone.now()
    errors = race(*(partial(server_beat, now + timedelta(milliseconds=i)) for i in range(8)))
    assert errors == []  # before: "duplicate key value violates unique constraint" from all but one
    row = ServiceBeat.objects.get()
    assert row.alive_at == now + timedelta(milliseconds=7)
