"""The parent of every run: it stays with the run, and takes the whole run along when the agent dies.

The agent starts this small process (as its own user, with an empty environment, in isolated
mode so that no PYTHON* variable is read) and writes the run's spec to its stdin: argv, working
folder, environment, user, cgroup, stop signal and grace. Nothing of the run's environment (a
user's LD_PRELOAD, PYTHONPATH, secrets) ever reaches this process or its argv.

The launcher asks the kernel for a parent-death signal (a real-time one the agent never sends),
starts the run as its user in its own process group and cgroup, and waits. The agent's stops
reach the launcher too (it leads the process group); it lets them pass, and passes the run's
exit code or death signal on as its own, so the agent sees the run's ending. When the agent
dies, the launcher ends the run as a stop would (the run's signal to its process group, to its
cgroup and to every process that names the attempt; its grace; then SIGKILL and cgroup.kill),
setsid'd and double-forked children included, and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from muster_agent.cgroups import RunGroup
from muster_agent.ledger import processes_of

AGENT_GONE = getattr(signal, "SIGRTMIN", 34) + 3  # never sent by the agent, never a stop signal
PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
EXIT_CANNOT_START = 127

# The agent runs this with `python -I -c`: the package's folder comes first on sys.path.
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from muster_agent.launcher import main; main()"
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


def command() -> list[str]:
    """How the agent starts a launcher."""
    return [sys.executable, "-I", "-c", BOOT, PACKAGE_PARENT]


def _ignore(_signum: int, _frame: Any) -> None:
    """A handler, not SIG_IGN: handlers reset to the default at exec, so the run still gets them."""


def _watch_the_agent(agent_pid: int) -> bool:
    """Ask for AGENT_GONE when the agent dies; False when it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, AGENT_GONE, 0, 0, 0)
    return os.getppid() == agent_pid


def _end(child: subprocess.Popen[bytes], group: RunGroup | None, spec: dict[str, Any]) -> None:
    """End the whole run as a stop does: its signal, its grace, then SIGKILL."""
    sig = getattr(signal, str(spec.get("stop_signal") or "SIGTERM"), signal.SIGTERM)
    grace = float(spec.get("stop_grace_s") or 0)
    entry = {"attempt": spec.get("attempt"), "pid": os.getpid(), "create_time": None}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(0), sig)  # this process group: the run and what it forked
    if group is not None:
        group.signal(sig)
    for proc in processes_of(entry):  # what left the group (setsid) but names the attempt
        with contextlib.suppress(Exception):
            proc.send_signal(sig)
    deadline = time.monotonic() + grace
    me = os.getpid()
    while time.monotonic() < deadline and (
        child.poll() is None or (group is not None and [pid for pid in group.pids() if pid != me])
    ):
        time.sleep(0.05)
    if group is not None:
        group.kill()
    for proc in processes_of(entry):
        with contextlib.suppress(Exception):
            proc.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(os.getpgid(0), signal.SIGKILL)  # this process, last


def main() -> None:
    for sig in PASSED_ON:
        signal.signal(sig, _ignore)
    gone: list[bool] = []
    signal.signal(AGENT_GONE, lambda *_: gone.append(True))
    spec: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    if not _watch_the_agent(int(spec["agent_pid"])):
        sys.exit(EXIT_CANNOT_START)  # the agent died before the run could start: start nothing
    group = RunGroup(Path(spec["cgroup"])) if spec.get("cgroup") else None
    if group is not None:
        group.add(os.getpid())  # the run is then born in it: nothing it forks gets out first
    user = spec.get("user")
    as_user = {"user": user[0], "group": user[1], "extra_groups": user[2]} if user else {}
    try:
        child = subprocess.Popen(
            spec["argv"], cwd=spec["cwd"], env=spec["env"], stdin=subprocess.DEVNULL, **as_user
        )  # the launcher's process group, stdout and stderr: the agent's pipe
    except OSError as e:
        print(f"muster agent: cannot start {spec['argv'][0]}: {e}", flush=True)
        sys.exit(EXIT_CANNOT_START)
    while True:
        try:
            code = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if gone:
                _end(child, group, spec)
                sys.exit(1)
    if code < 0:  # the run died of a signal: so does its launcher, for the agent to see
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        time.sleep(1)
        sys.exit(128 - code)
    sys.exit(code)


if __name__ == "__main__":
    main()
