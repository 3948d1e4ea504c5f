"""What a run may see of its agent: an allowlisted environment, its own Unix user, folders it can reach.

- A run's environment is built from nothing: a few variables of the agent's (PASS_ENV, plus
  what `--pass-env` names), then the experiment's own, its owner's secrets and the documented
  MUSTER_* variables. Nothing else of the agent's or the server's environment reaches it.
- The agent's key never reaches a run: it is read from a file (MUSTER_API_KEY_FILE) that only
  the agent's user can read, and the agent makes itself non-dumpable, so even a process of
  the same user cannot read /proc/<agent>/environ or its memory.
- An agent started as root runs experiments as an unprivileged user (`--run-as`, by default
  `muster-run`), in folders that user can reach, with only the PATH entries it can use.
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("muster.agent")

# Variables of the agent that never reach a child, whatever else is passed on.
PRIVATE_ENV = ("MUSTER_API_KEY", "MUSTER_API_KEY_FILE", "MUSTER_CONFIG")
# The agent's variables a run gets (locale, time zone, terminal, PATH filtered for the run's user).
PASS_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM")
DEFAULT_RUN_USER = "muster-run"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PR_SET_DUMPABLE = 4


class IsolationError(RuntimeError):
    """The agent cannot isolate its runs as configured (a missing user, an unreachable folder)."""


@dataclass(frozen=True)
class RunUser:
    """The Unix user runs execute as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def run_user(name: str | None) -> RunUser | None:
    """The user runs execute as: `name`; as root with none given, DEFAULT_RUN_USER; else the agent's own (None)."""
    if name is None and os.geteuid() != 0:
        return None
    name = name or DEFAULT_RUN_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise IsolationError(
            f"the user {name!r} that runs experiments does not exist: create it "
            f"(useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {name}) "
            "or name another with --run-as"
        ) from None
    if entry.pw_uid == os.geteuid():
        return None  # the agent's own user: nothing to switch
    if entry.pw_uid == 0:
        raise IsolationError("--run-as root would give every experiment the machine: name an unprivileged user")
    groups = tuple(sorted({entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)}))
    return RunUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, home=entry.pw_dir)


def can_reach(path: str | Path, user: RunUser, *, write: bool = False) -> bool:
    """Whether `user` can get to `path` by the permission bits: search every folder above it, and
    read (and search, for a folder; write, when asked) the path itself."""
    target = Path(path)
    try:
        for folder in reversed(target.parents):
            if not _allows(folder.stat(), user, stat.S_IXUSR):
                return False
        info = target.stat()
    except OSError:
        return False
    need = stat.S_IRUSR | (stat.S_IWUSR if write else 0) | (stat.S_IXUSR if stat.S_ISDIR(info.st_mode) else 0)
    return _allows(info, user, need)


def _allows(info: os.stat_result, user: RunUser, need: int) -> bool:
    """Whether the owner, group or other bits (whichever apply to `user`) grant `need` (given as owner bits)."""
    if info.st_uid == user.uid:
        shift = 0
    elif info.st_gid in user.groups:
        shift = 3
    else:
        shift = 6
    bits = need >> shift
    return info.st_mode & bits == bits


def run_path(path: str, user: RunUser | None) -> str:
    """The agent's PATH without the folders the run's user cannot use (a root-only pyenv, say)."""
    entries = [p for p in path.split(os.pathsep) if p]
    if user is not None:
        entries = [p for p in entries if can_reach(p, user)]
    return os.pathsep.join(entries) or SAFE_PATH


def base_environment(agent_env: dict[str, str], user: RunUser | None, pass_env: tuple[str, ...] = ()) -> dict[str, str]:
    """The part of a run's environment that comes from the agent: PASS_ENV and what --pass-env names."""
    env = {k: agent_env[k] for k in (*PASS_ENV, *pass_env) if k in agent_env and k not in PRIVATE_ENV}
    env["PATH"] = run_path(agent_env.get("PATH", SAFE_PATH), user)
    if user is not None:
        env.update({"USER": user.name, "LOGNAME": user.name, "HOME": user.home})
    elif "HOME" in agent_env:
        env["HOME"] = agent_env["HOME"]
    return env


def as_user(user: RunUser | None) -> dict[str, Any]:
    """subprocess keyword arguments that start a child as `user` (none for the agent's own)."""
    if user is None:
        return {}
    return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}


def give_to(path: Path, user: RunUser) -> None:
    """Make a run's folder (and everything in it) its user's."""
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(root, name), user.uid, user.gid)


def make_undumpable() -> None:
    """Keep same-user processes (a run under the agent's own user) out of /proc/<agent>/environ and memory."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE) failed: errno %s", ctypes.get_errno())
    except (OSError, AttributeError):
        log.warning("cannot make the agent non-dumpable on this system")
