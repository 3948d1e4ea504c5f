"""The runs this agent started, on disk: what a restarted agent must end before it takes work.

A run's processes are not the agent's to lose. When the agent dies (SIGKILL, an OOM kill,
a crash), its runs are re-parented and go on; the server fails their attempts and may hand
the experiment to this very agent again, and without this file the same experiment would
then run twice on the same GPUs. So each run gets one JSON file under `<state>/runs/`,
written before the server hears that it started and updated when its process exists:
attempt, lease token, process group, the leader's start time (a reused PID is never taken
for it), GPU slots, container, stop signal and grace. The file goes when nothing of the
run is left. A starting agent reads what a previous instance left, ends those processes
(the run's stop signal, its grace, then SIGKILL), and queues the attempt's end for the
server (a 409 when the server already ended it is fine) before it claims anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from muster_agent.cgroups import RunGroup

log = logging.getLogger("muster.agent")

MARKER = "MUSTER_ATTEMPT_ID"  # in every run's environment; its children inherit it
MAX_GRACE_S = 300.0  # a restart never waits longer than this for a previous run to stop


class Ledger:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, attempt_id: str) -> Path:
        return self.root / f"{attempt_id}.json"

    def record(self, attempt_id: str, **fields: Any) -> None:
        """Add to the attempt's entry (atomically: a crash leaves the old entry or the new one)."""
        entry = {**self.entry(attempt_id), **fields, "attempt": attempt_id}
        path = self._path(attempt_id)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(entry, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def entry(self, attempt_id: str) -> dict[str, Any]:
        try:
            data = json.loads(self._path(attempt_id).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def forget(self, attempt_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(attempt_id).unlink()

    def entries(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.root.glob("*.json")):
            entry = self.entry(path.stem)
            if entry.get("attempt") == path.stem:
                out.append(entry)
        return out


def processes_of(entry: dict[str, Any]) -> list[psutil.Process]:
    """Every live process of a recorded run: its leader (same PID and start time), the members of
    the leader's process group, and any process whose environment names the attempt (a child
    that left the group with setsid or a double fork keeps the variable)."""
    attempt = entry.get("attempt")
    pid, started = entry.get("pid"), entry.get("create_time")
    leader_alive = False
    if isinstance(pid, int) and isinstance(started, (int, float)):
        with contextlib.suppress(psutil.Error):
            leader_alive = psutil.Process(pid).create_time() == started
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if leader_alive and os.getpgid(proc.pid) == pid:
                found[proc.pid] = proc
                continue
            if proc.environ().get(MARKER) == attempt:
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue
    return list(found.values())


def end_processes(entry: dict[str, Any], *, kill_container: Callable[[str, str], None] | None = None) -> int:
    """End what is left of a recorded run: its stop signal, its grace, then SIGKILL. How many processes."""
    group = RunGroup(Path(entry["cgroup"])) if entry.get("cgroup") else None
    procs = processes_of(entry)
    if group is not None:
        known = {p.pid for p in procs}
        for pid in group.pids():
            if pid not in known:
                with contextlib.suppress(psutil.Error):
                    procs.append(psutil.Process(pid))
    container_name = entry.get("container")
    if not procs and not container_name:
        if group is not None:
            group.remove()
        return 0
    name = str(entry.get("stop_signal") or "SIGTERM")
    sig = getattr(signal, name, signal.SIGTERM) if name.startswith("SIG") else signal.SIGTERM
    grace = min(MAX_GRACE_S, max(0.0, float(entry.get("stop_grace_s") or 0)))
    log.warning(
        "ending %s process(es) of attempt %s left by a previous agent: %s, SIGKILL after %ss",
        len(procs), entry.get("attempt"), signal.Signals(sig).name, grace,
    )  # fmt: skip
    if container_name and kill_container is not None:
        kill_container(str(container_name), signal.Signals(sig).name)
    _signal(procs, sig)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    if group is not None:
        group.kill()  # every process in it, those forked while we waited included
    if alive:
        _signal(alive, signal.SIGKILL)
        _, alive = psutil.wait_procs(alive, timeout=5)
    for late in processes_of(entry):  # forked while we waited
        _signal([late], signal.SIGKILL)
    if group is not None:
        deadline = time.monotonic() + 5
        while not group.remove() and time.monotonic() < deadline:
            time.sleep(0.05)
    if alive:
        log.error("could not end %s process(es) of attempt %s", len(alive), entry.get("attempt"))
    return len(procs)


def _signal(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def wait_gone(entry: dict[str, Any], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while processes_of(entry):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True
