"""Chaos, small enough for CI: three agents, 100 short experiments and 2 long ones; one agent is
SIGKILLed mid-run and restarted, and the server goes away for longer than the worker timeout.

Every run writes a heartbeat mark to its own file (attempt id, wall clock) every 50 ms, so the
marks say when each attempt's process was alive. Afterwards: every experiment ended exactly
once (its status, its attempts and its audit trail agree), no two attempts of one experiment
were alive at the same time, and no process of any run is left.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.live import Stack, run_processes, wait_for

# On PostgreSQL only: concurrency is proved there (SQLite serializes its writers); the SQLite
# pass keeps the live agent tests of tests/test_agent_live.py.
pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.postgres_only]

RUN = textwrap.dedent(
    """
    import os, sys, time
    marks = os.path.join(sys.argv[1], os.environ["MUSTER_ATTEMPT_ID"])
    end = time.time() + float(sys.argv[2])
    with open(marks, "a") as f:
        while True:
            f.write(f"{time.time():.3f}\\n")
            f.flush()
            if time.time() >= end:
                break
            time.sleep(0.05)
    print("done", flush=True)
    """
)
SHORT, LONG = 100, 2


def _enqueue(st: Stack, queue: str, marks: Path, seconds: float, name: str) -> dict[str, Any]:
    return st.enqueue(
        queue, name=name, command=[sys.executable, "-c", RUN, str(marks), str(seconds)], cpus=0.25,
        retry_policy={"worker_lost": 5, "interrupted": 5}, stop_grace_s=1,
    )  # fmt: skip


def _alive(marks: Path, attempt: str) -> tuple[float, float] | None:
    path = marks / attempt
    if not path.exists():
        return None
    stamps = [float(line) for line in path.read_text().split()]
    return (stamps[0], stamps[-1]) if stamps else None


def test_chaos_every_experiment_ends_once_and_nothing_runs_twice(st: Stack, tmp_path: Path) -> None:
    queue = "chaos"
    st.queue(queue)
    marks = tmp_path / "marks"
    marks.mkdir()
    agents = {name: st.start_agent(name, [queue], "--cpu-only") for name in ("chaos-1", "chaos-2", "chaos-3")}
    longs = [_enqueue(st, queue, marks, 20, f"long-{i}") for i in range(LONG)]

    # SIGKILL the agent that runs the first long experiment, mid-run, and start it again.
    first = wait_for(
        lambda: (e := st.experiment(longs[0]["id"]))["status"] == "in_progress" and e["current_attempt"] and e,
        what="the first long experiment to run",
    )
    wait_for(lambda: run_processes(first["current_attempt"]), what="its process")
    victim = next(a["worker"] for a in st.attempts(first["id"]) if a["id"] == first["current_attempt"])
    os.killpg(agents[victim].pid, signal.SIGKILL)
    agents[victim].wait(timeout=10)
    shorts = [_enqueue(st, queue, marks, 0.3, f"short-{i}") for i in range(SHORT)]  # while it is down
    everything = longs + shorts
    st.start_agent(victim, [queue], "--cpu-only")

    # The server away for longer than the worker timeout, then back.
    st.wait_rounds(victim, rounds=2)  # the restarted agent is back at work: the outage then hits it too
    st.kill_server()
    outage = float(st.env["WORKER_TIMEOUT"]) + 2
    deadline = time.monotonic() + outage
    while time.monotonic() < deadline:  # the outage itself is the scenario: it has to last
        time.sleep(0.1)
    st.start_server()

    ended = {"completed", "failed", "stopped"}
    for exp in everything:
        st.wait_status(exp["id"], *ended, timeout=240)

    for exp in everything:
        final = st.experiment(exp["id"])
        assert final["status"] == "completed", final
        attempts = st.attempts(exp["id"])
        assert [a["outcome"] for a in attempts].count("completed") == 1
        assert all(a["finished_at"] for a in attempts)
        trail = st.admin.request("GET", "audit/", params={"object_type": "experiment", "object_id": exp["id"]})
        assert [e["action"] for e in trail["results"]].count("finish") == 1, trail
        spans = sorted(span for a in attempts if (span := _alive(marks, a["id"])) is not None)
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end < start, f"two attempts of {exp['name']} were alive at once: {spans}"
        for a in attempts:
            assert run_processes(a["id"]) == []
    assert len(list(marks.iterdir())) >= SHORT + LONG
    # The chaos happened: the killed agent's long run was ended and run again.
    assert len(st.attempts(longs[0]["id"])) >= 2
