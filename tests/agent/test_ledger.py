"""muster_agent/ledger.py and the agent's start and stop: a restarted agent ends what its killed
instance left, spooled attempts with nothing left to send go, and a signal ends every wait."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from muster_agent.client import Client
from muster_agent.ledger import Ledger, end_processes, processes_of
from muster_agent.worker import Agent, Options

STUBBORN = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    print('up', flush=True)
    time.sleep(600)
    """
)


def _start(attempt: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUBBORN],
        env={**os.environ, "MUSTER_ATTEMPT_ID": attempt},
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    return proc


def _entry(ledger: Ledger, attempt: str, proc: subprocess.Popen[bytes], grace: float) -> dict[str, Any]:
    ledger.record(attempt, token="tok", experiment="e" * 32, stop_signal="SIGTERM", stop_grace_s=grace)
    ledger.record(attempt, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())
    return ledger.entry(attempt)


def test_the_ledger_keeps_entries_until_forgotten(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "runs")
    ledger.record("a1", token="t", slots=[0, 1])
    ledger.record("a1", pid=123)
    ledger.record("a2", token="u")
    assert [e["attempt"] for e in ledger.entries()] == ["a1", "a2"]
    assert ledger.entry("a1") == {"attempt": "a1", "token": "t", "slots": [0, 1], "pid": 123}
    ledger.forget("a1")
    ledger.forget("a1")  # again: nothing to do
    (tmp_path / "runs" / "broken.json").write_text("{")  # a torn write never stops a start
    assert [e["attempt"] for e in ledger.entries()] == ["a2"]


def test_a_recorded_run_and_its_escaped_child_end_after_the_grace(tmp_path: Path) -> None:
    attempt = uuid.uuid4().hex
    proc = _start(attempt)
    entry = _entry(Ledger(tmp_path / "runs"), attempt, proc, grace=0.5)
    try:
        deadline = time.monotonic() + 10
        while len(processes_of(entry)) < 2:  # the leader and the child that left its session
            assert time.monotonic() < deadline
            time.sleep(0.05)
        started = time.monotonic()
        assert end_processes(entry) == 2
        assert time.monotonic() - started >= 0.5  # SIGTERM first, SIGKILL after the grace
        assert processes_of(entry) == []
        proc.wait(timeout=5)  # (its status went to the ledger's own wait: this process is its parent)
    finally:
        for p in processes_of(entry):
            p.kill()


def test_a_reused_pid_is_not_taken_for_the_run(tmp_path: Path) -> None:
    """The leader's start time must match: a process with the recorded PID but another start
    time, and no attempt variable, is left alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        entry = {"attempt": uuid.uuid4().hex, "pid": bystander.pid, "create_time": 1.0, "stop_grace_s": 0}
        assert processes_of(entry) == []
        assert end_processes(entry) == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def _agent(tmp_path: Path) -> Agent:
    user = os.environ.get("USER") or "root"
    options = Options(name="w1", state_dir=tmp_path / "state", cpu_only=True, run_as=user)
    return Agent(Client("http://127.0.0.1:9", "mk0000.x"), options)


def test_a_starting_agent_ends_the_previous_instances_runs_and_queues_their_end(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    attempt = uuid.uuid4().hex
    proc = _start(attempt)
    _entry(agent.ledger, attempt, proc, grace=0)
    try:
        assert agent.end_previous_runs() == 1
        proc.wait(timeout=5)  # (its status went to the ledger's own wait: this process is its parent)
        assert processes_of({"attempt": attempt}) == []
        assert agent.ledger.entries() == []
        head = agent.spool.head(attempt)
        assert head is not None
        message = head[1]
        assert message["kind"] == "finish"
        assert message["body"]["token"] == "tok" and message["body"]["failure_class"] == "worker_lost"
    finally:
        for p in processes_of({"attempt": attempt}):
            p.kill()


def test_a_spooled_attempt_with_nothing_to_send_is_forgotten_unless_a_run_owns_it(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.spool.open_attempt("gone", {"token": "t"})  # a killed instance's: delivered, then it died
    agent.spool.open_attempt("mine", {"token": "u"})
    agent.claimed["mine"] = "u"  # a claim of this instance, before its first message
    assert agent._forgotten("gone") is True
    assert agent._forgotten("mine") is False
    assert agent.spool.attempts() == ["mine"]


def test_a_signal_ends_registration_against_a_server_that_is_away(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    done: list[bool] = []
    thread = threading.Thread(target=lambda: done.append(agent.register()))
    thread.start()
    agent.on_sigterm(signal.SIGTERM, None)
    thread.join(timeout=5)
    assert done == [False]


@pytest.mark.parametrize("count", [1, 2])
def test_a_draining_agent_with_no_runs_leaves_its_claim_loop(tmp_path: Path, count: int) -> None:
    agent = _agent(tmp_path)
    agent.spool.open_attempt("undelivered", {"token": "t"})
    agent.spool.put("undelivered", "finish", {"token": "t", "outcome": "completed"})  # the server is away
    for _ in range(count):
        agent.on_sigterm(signal.SIGTERM, None)
    thread = threading.Thread(target=agent.claim_loop)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()  # shutdown() delivers what it can, within its bound
