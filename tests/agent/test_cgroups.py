"""muster_agent/cgroups.py: a run's cgroup holds what escapes its session, and ends it at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil

from muster_agent.cgroups import RunGroup, _mount_point, agent_base
from muster_agent.ledger import end_processes

# A run that double-forks into a new session and clears its environment: neither its process
# group nor the attempt variable finds the grandchild; only its cgroup does.
HIDING = textwrap.dedent(
    """
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdin.readline()  # once the test has put this process in its cgroup
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execve("/bin/sleep", ["sleep", "600"], {})
        os._exit(0)
    print("up", flush=True)
    time.sleep(600)
    """
)


def _base() -> Path | None:
    base = agent_base()
    # Where the agent runs as root under a cgroup2 mount (CI, systemd), it gets one; elsewhere none.
    assert (base is not None) == (os.geteuid() == 0 and _mount_point() is not None)
    return base


def _hiding_run(group: RunGroup) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HIDING], stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
    )
    assert group.add(proc.pid)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    assert proc.stdout.readline() == b"up\n"
    deadline = time.monotonic() + 10
    while not _hidden(group, proc):  # the grandchild, once it exec'd /bin/sleep
        assert time.monotonic() < deadline, group.pids()
        time.sleep(0.02)
    return proc


def _hidden(group: RunGroup, leader: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    for pid in group.pids():
        try:
            proc = psutil.Process(pid)
            if pid != leader.pid and proc.cmdline() == ["sleep", "600"]:
                found.append(proc)
        except psutil.Error:
            continue  # the middle one, exiting
    return found


def test_a_run_group_holds_a_hidden_grandchild_and_kills_it_with_the_rest() -> None:
    base = _base()
    if base is None:
        return  # nothing to hold: the agent falls back to process groups and the attempt variable
    group = RunGroup.create(base, uuid.uuid4().hex)
    assert group is not None
    proc = _hiding_run(group)
    try:
        hidden = _hidden(group, proc)
        assert hidden and all("MUSTER_ATTEMPT_ID" not in p.environ() for p in hidden)
        group.kill()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 5
        while group.pids():
            assert time.monotonic() < deadline, group.pids()
            time.sleep(0.02)
        assert group.remove()
    finally:
        group.kill()
        group.remove()


def test_a_restarted_agent_ends_a_previous_run_through_its_cgroup() -> None:
    base = _base()
    if base is None:
        return
    attempt = uuid.uuid4().hex
    group = RunGroup.create(base, attempt)
    assert group is not None
    proc = _hiding_run(group)
    try:
        entry = {
            "attempt": attempt, "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(),
            "stop_grace_s": 0.2, "cgroup": str(group.path),
        }  # fmt: skip
        assert end_processes(entry) >= 2  # the leader and the hidden grandchild
        proc.wait(timeout=5)
        assert group.pids() == [] and not group.path.exists()
    finally:
        group.kill()
        group.remove()
