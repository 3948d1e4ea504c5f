"""A cgroup (v2) per run, where the agent may create them: every process of the run, whatever it
forks, double-forks or setsids into, stays in it, and `cgroup.kill` ends them all at once.

The run's cgroup is a child of the agent's own (`<agent's cgroup>/muster-<attempt>`); the run's
main process is moved into it as soon as it exists (a child it forks in that first instant stays
outside, and is still found by its MUSTER_ATTEMPT_ID). Where cgroup v2 is not mounted or the
agent's cgroup is not writable (an unprivileged agent, most containers), there are none, and the
process group and the attempt variable do the work alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("muster.agent")


def _mount_point() -> Path | None:
    """Where the cgroup2 file system is mounted (the unified hierarchy of a hybrid host included)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


def _own_path() -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def agent_base() -> Path | None:
    """The agent's own cgroup directory, if it may create children there; else None."""
    mount, own = _mount_point(), _own_path()
    if mount is None or own is None:
        return None
    base = mount / own.lstrip("/")
    probe = base / f"muster-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return base


class RunGroup:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, base: Path, attempt_id: str) -> RunGroup | None:
        path = base / f"muster-{attempt_id}"
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            log.warning("no cgroup for %s: %s", attempt_id, e)
            return None
        return cls(path)

    def add(self, pid: int) -> bool:
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as e:  # it already exited, or the move is not allowed
            log.debug("could not move %s into %s: %s", pid, self.path, e)
            return False
        return True

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def signal(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL every process in it at once (cgroup.kill, Linux 5.14 and later), else one by one."""
        try:
            (self.path / "cgroup.kill").write_text("1")
        except OSError:
            self.signal(signal.SIGKILL)

    def remove(self) -> bool:
        """Remove the emptied cgroup; False while something is still in it."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
