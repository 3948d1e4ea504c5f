"""The Local autoscaler end to end, as `make run` sets it up: a real server, celery with beat, and
agent processes it starts on this host. Five experiments enqueued to `autoscaled` start machines
(two at most), run, go idle, are drained and stopped; no agent process is left."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from tests import live
from tests.live import Stack, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow]

INSTANCES = (
    "import json; from autoscalers.models import Instance; "
    "print(json.dumps([[i.worker_name, i.state, i.started_at and i.started_at.timestamp(), "
    "i.ended_at and i.ended_at.timestamp(), i.end_reason] for i in Instance.objects.order_by('requested_at')]))"
)
DECISIONS = (
    "import json; from autoscalers.models import Decision; "
    "print(json.dumps(list(Decision.objects.order_by('at', 'id').values_list('kind', 'message'))))"
)


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    me = pwd.getpwuid(os.geteuid()).pw_name
    s = Stack(tmp_path_factory.mktemp("autoscaled"), AUTOSCALER_TICK_S="1", MUSTER_RUN_AS=me)
    s.env["PUBLIC_URL"] = s.url  # where the Local machines' agents report
    live.OPEN_STACKS.append(s)
    try:
        s.start_server()
        s.start_celery()
        yield s
    finally:
        live.OPEN_STACKS.remove(s)
        s.stop()
        for proc in local_agents():
            proc.kill()


def local_agents() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "muster_agent" in cmd and any(str(a).startswith("local-auto-") for a in cmd):
            found.append(proc)
    return found


def shell(s: Stack, code: str) -> Any:
    return json.loads(s.manage("shell", "-c", code).strip().splitlines()[-1])


def test_five_experiments_start_local_machines_that_run_them_then_stop(stack: Stack) -> None:
    stack.manage("shell", "-c", "from autoscalers.models import AutoscalerApp as A; "
                 "A.objects.filter(name='local').update(max_idle_s=3, polling_interval_s=1)")  # fmt: skip
    script = "import time\ntime.sleep(1)\nprint('trained')\n"
    ids = [stack.enqueue("autoscaled", name=f"auto-{i}", script=script)["id"] for i in range(5)]
    for exp_id in ids:
        stack.wait_status(exp_id, "completed", timeout=240)
    # Idle machines are drained and stopped; their workers leave with them.
    try:
        wait_for(lambda: all(row[1] == "terminated" for row in shell(stack, INSTANCES)), timeout=120,
                 what="every Local machine stopped")  # fmt: skip
    except AssertionError as e:
        raise AssertionError(f"{e}: {shell(stack, INSTANCES)} {shell(stack, DECISIONS)[-12:]}") from None
    wait_for(lambda: not local_agents(), timeout=30, what="no Local agent process left")
    rows = shell(stack, INSTANCES)
    assert 1 <= len(rows) <= 5
    # Never more than two at once (max instances): count overlapping lives.
    edges = sorted([(r[2], 1) for r in rows] + [(r[3], -1) for r in rows], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most <= 2, rows
    assert all(stack.worker(r[0]) is None for r in rows)  # no zombie workers
    kinds = [k for k, _ in shell(stack, DECISIONS)]
    for kind in ("launch", "registered", "drain", "terminate"):
        assert kind in kinds, kinds
    runs_on = {a["worker"] for exp_id in ids for a in stack.attempts(exp_id)}
    assert runs_on <= {r[0] for r in rows}  # the autoscaled machines ran them
