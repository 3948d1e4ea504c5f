"""Run by an ordinary user's experiment under `make run` (tests/test_make_run.py): look for every
credential the server or the agent holds, the ways issue 13 found them, and print what was found.

argv: the server's VAR folder, the repository root (an attacker may well know both), and
"strict" when make run runs as root (runs as another user: nothing may be found) or "same-user"
(runs share the account: only the run's environment and the agent's are checked, the agent
being non-dumpable; files of the same account are readable by design).
"""

import os
import sys
from pathlib import Path

SUSPECT_ENV = ("SECRET_KEY", "SECRETS_KEY", "DATABASE_URL", "REDIS_URL", "MUSTER_API_KEY", "MUSTER_API_KEY_FILE",
               "DJANGO_SETTINGS_MODULE", "MUSTER_CONFIG")  # fmt: skip
found = []


def note(what):
    found.append(what)
    print("PROBE FOUND:", what, flush=True)


def try_read(path):
    try:
        data = Path(path).read_bytes()
    except OSError:
        return
    note(f"read {path} ({len(data)} bytes): {data[:200]!r}")


var, root, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
agent_pids = set()
for proc in Path("/proc").iterdir():
    try:
        if proc.name.isdigit() and b"agent\x00run" in (proc / "cmdline").read_bytes():
            agent_pids.add(proc.name)
    except OSError:
        continue
# 1. The first-run credentials and the agent's key, relative to the working folder and absolute.
here = Path.cwd()
for up in [here, *here.parents] if mode == "strict" else []:
    for name in ("bootstrap.json", "agent.key", "muster.sqlite3", "var/bootstrap.json", "var/agent.key"):
        try_read(up / name)
if mode == "strict":
    for name in ("bootstrap.json", "agent.key", "muster.sqlite3", "agent/spool"):
        try_read(var / name)
    try_read(root / ".env")
# 2. The server's settings and the agent's key in the run's own environment.
for name in SUSPECT_ENV:
    if name in os.environ:
        note(f"environment {name}={os.environ[name][:60]}")
# 3. Every other process's environment (the agent's, the server's).
for proc in Path("/proc").iterdir():
    if not proc.name.isdigit() or int(proc.name) == os.getpid():
        continue
    if mode != "strict" and proc.name not in agent_pids:
        continue
    try:
        environ = (proc / "environ").read_bytes()
    except OSError:
        continue
    for name in SUSPECT_ENV:
        if (name + "=").encode() in environ:
            note(f"/proc/{proc.name}/environ holds {name}")
if not agent_pids:
    note("no agent process seen (the probe looked in the wrong place)")
print("PROBE CLEAN" if not found else f"PROBE FOUND {len(found)}", flush=True)
