"""One attempt on this machine: a child process group in a fresh folder, its logs, progress and end.

The child starts a new session (its own process group); the agent is a subreaper, so
processes that leave the group with setsid() are re-parented to the agent and still
found: every process of a run carries MUSTER_ATTEMPT_ID in its environment, and the run
remembers every pid it has seen. Stop: the experiment's signal to the group, its grace
period, then SIGKILL to everything of the run that is left; the run is over only when
nothing of it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from muster_agent import container, launcher
from muster_agent.build import Builder, BuildError, find_uv
from muster_agent.cgroups import RunGroup
from muster_agent.isolation import PRIVATE_ENV, RunUser, base_environment, give_to
from muster_agent.ledger import Ledger
from muster_agent.spool import Spool

log = logging.getLogger("muster.agent")

ITERATION_LINE = re.compile(rb"^MUSTER_ITERATION=(\d{1,18})\s*$")
SDK_DIR = str(Path(__file__).resolve().parent / "sdk")
BATCH_BYTES = 256 * 1024


@dataclass
class Ending:
    """Why a run is being stopped and what to report when it is over."""

    outcome: str  # completed | failed | stopped
    failure_class: str = ""
    message: str = ""
    report: bool = True  # False when the server has given the attempt to someone else


@dataclass
class RunContext:
    worker: str
    server: str
    spool: Spool
    work_root: Path
    report_socket: str
    python: str = field(default_factory=lambda: os.environ.get("MUSTER_CHILD_PYTHON") or "python3")
    keep_workdirs: bool = False
    state_dir: Path = field(default_factory=lambda: Path("."))  # git mirrors and environments live here
    find_links: str | None = None
    fetch_snapshot: Callable[[str], bytes] | None = None  # sha256 -> the tarball
    container_engine: str | None = None  # podman | docker: runs go into containers
    default_image: str | None = None
    gpu_passthrough: str = "none"  # cdi | docker | none
    run_user: RunUser | None = None  # runs execute as this user (muster_agent/isolation.py); None: the agent's own
    pass_env: tuple[str, ...] = ()  # more of the agent's variables a run gets (--pass-env)
    sdk_dir: str = SDK_DIR  # the `muster` module put on the run's PYTHONPATH
    build_dir: Path | None = None  # git mirrors and environments; state_dir when None
    ledger: Ledger | None = None  # the runs on disk, for a restarted agent to end (muster_agent/ledger.py)
    cgroup_base: Path | None = None  # where each run gets its own cgroup (muster_agent/cgroups.py); None: none


def signal_number(name: str) -> int:
    name = (name or "SIGTERM").upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(signal, name, signal.SIGTERM))


class Run:
    def __init__(self, ctx: RunContext, claim: dict[str, Any], gpu_indices: list[int], token_for_channel: str):
        self.ctx = ctx
        self.attempt: dict[str, Any] = claim["attempt"]
        self.spec: dict[str, Any] = claim["experiment"]
        self.id: str = self.attempt["id"]
        self.token: str = self.attempt["token"]
        self.gpu_indices = gpu_indices
        self.gpus: float = float(self.spec.get("gpus") or 0)
        self.channel_token = token_for_channel
        self.workdir = ctx.work_root / self.id
        self.proc: subprocess.Popen[bytes] | None = None
        self.known: dict[int, float] = {}  # pid -> create time, every process of this run seen so far
        self.not_ours: set[tuple[int, float]] = set()
        self.lock = threading.Lock()
        self.buffer = bytearray()
        self.seq = 0
        self.iteration: int | None = None
        self.metrics: dict[str, float] = {}
        self.progress_dirty = False
        self.started_at = time.monotonic()
        self.ending: Ending | None = None
        self.kill_at: float | None = None
        self.finished = False
        self.exit_code: int | None = None
        self.reader: threading.Thread | None = None
        self.result = Ending("failed")
        # True until the process exists (or the build ended): the ticker, which may see the run
        # before start() has spawned it, must not take "no process yet" for "its process ended".
        self.building = True
        self.venv: Path | None = None
        self.container_name: str | None = None
        self.group: RunGroup | None = None  # the run's cgroup, where the agent may make one
        secrets = [str(v).encode() for v in (self.spec.get("secret_env") or {}).values()]
        self.masks = sorted((v for v in secrets if len(v) >= 4), key=len, reverse=True)

    # -- start ---------------------------------------------------------------------------

    def argv(self) -> list[str]:
        command = self.spec.get("command") or []
        script = self.spec.get("script") or ""
        if isinstance(command, str):
            command = ["/bin/sh", "-c", command]
        if command:
            params = {str(k): str(v) for k, v in (self.spec.get("parameters") or {}).items()}
            return [string.Template(str(c)).safe_substitute(params) for c in command]
        if script:
            entry = self.spec.get("entry_point") or ("script.sh" if script.startswith("#!/bin/") else "script.py")
            path = self.workdir / Path(entry).name
            path.write_text(script)
            if script.startswith("#!"):
                path.chmod(0o755)
                return [str(path)]
            if path.suffix == ".sh":
                return ["/bin/bash", str(path)]
            return [self.ctx.python, str(path)]
        return ["/bin/true"]

    def environment(self) -> dict[str, str]:
        """Allowlisted: a few of the agent's variables, the experiment's, its owner's secrets, MUSTER_*."""
        env = base_environment(dict(os.environ), self.ctx.run_user, self.ctx.pass_env)
        env.update({str(k): str(v) for k, v in (self.spec.get("env") or {}).items()})
        env.update({str(k): str(v) for k, v in (self.spec.get("secret_env") or {}).items()})
        env.update(
            {
                "MUSTER_EXPERIMENT_ID": str(self.spec["id"]),
                "MUSTER_ATTEMPT_ID": self.id,
                "MUSTER_ATTEMPT_NUMBER": str(self.attempt.get("number", 1)),
                "MUSTER_QUEUE": str(self.attempt.get("queue", "")),
                "MUSTER_WORKER": self.ctx.worker,
                "MUSTER_SERVER": self.ctx.server,
                "MUSTER_PARAMETERS": json.dumps(self.spec.get("parameters") or {}),
                "MUSTER_PARAMS": json.dumps(self.spec.get("parameters") or {}),
                "MUSTER_REPORT_SOCKET": self.ctx.report_socket,
                "MUSTER_REPORT_TOKEN": self.channel_token,
                "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in self.gpu_indices),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.ctx.sdk_dir, env.get("PYTHONPATH", "")) if p)
        return env

    def start(self) -> None:
        try:
            self._start()
        except Exception as e:  # never leave it "starting" forever: the ticker ends it as a failed build
            log.exception("starting %s failed", self.id)
            self.ending = self.ending or Ending("failed", "build", f"the agent could not start it: {e}")
            self.building = False

    def _record(self, **fields: Any) -> None:
        if self.ctx.ledger is not None:
            self.ctx.ledger.record(self.id, **fields)

    def _start(self) -> None:
        # On disk before the server hears it started: a restarted agent ends what this leaves behind.
        self._record(
            experiment=self.spec["id"], token=self.token, slots=self.gpu_indices, agent_pid=os.getpid(),
            stop_signal=self.spec.get("stop_signal") or "SIGTERM", stop_grace_s=self.spec.get("stop_grace_s") or 0,
        )  # fmt: skip
        self.ctx.spool.open_attempt(self.id, {"token": self.token, "experiment": self.spec["id"]})
        self.ctx.spool.put(self.id, "start", {"token": self.token})
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        if self.image or self.spec.get("repository") or self.spec.get("snapshot"):
            # Rebuilding code and environment can take minutes: in its own thread, so reports go on.
            self.building = True
            threading.Thread(target=self._build_then_spawn, name=f"build-{self.id[:8]}", daemon=True).start()
            return
        cwd = self.workdir / (self.spec.get("working_dir") or "")
        cwd.mkdir(parents=True, exist_ok=True)
        try:
            self._spawn(cwd, self.environment())
        finally:
            self.building = False

    def _build_then_spawn(self) -> None:
        builder = Builder(
            self.ctx.build_dir or self.ctx.state_dir, lambda text: self._emit(text.encode()),
            find_links=self.ctx.find_links, user=self.ctx.run_user,
        )  # fmt: skip
        if self.ctx.run_user is not None:
            give_to(self.workdir, self.ctx.run_user)  # the build writes the code there as the run's user
        code = self.workdir / "code"
        try:
            if self.image and not self.ctx.container_engine:
                raise BuildError("this agent runs no containers (start it with --container-engine)")
            if self.spec.get("snapshot"):
                if self.ctx.fetch_snapshot is None:
                    raise BuildError("this agent cannot download snapshots")
                builder.unpack_snapshot(str(self.spec["snapshot"]), code, self.ctx.fetch_snapshot)
            elif self.spec.get("repository"):
                builder.checkout(self.spec, code)
            if self.image:
                self._start_container(code)
                self.building = False
                return
            venv = builder.environment(self.spec)
        except BuildError as e:
            self.ending = self.ending or Ending("failed", "build", str(e))
            self.building = False
            return
        except Exception as e:  # a bug here must end the run, not leave it building forever
            log.exception("building %s failed", self.id)
            self.ending = self.ending or Ending("failed", "build", f"the agent could not build it: {e}")
            self.building = False
            return
        self.venv = venv
        env = self.environment()
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        cwd = code / (self.spec.get("working_dir") or "")
        if self.ending is None:  # not stopped while it was building
            if not cwd.is_dir():
                self._emit(
                    f"muster: the working directory {self.spec.get('working_dir')} is not in the repository\n".encode()
                )
                self.ending = Ending("failed", "build", "the working directory is not in the repository")
            else:
                self._spawn(cwd, env)
        self.building = False

    @property
    def image(self) -> str | None:
        """The image this run goes into: its own, else the agent's default when it runs containers."""
        own = self.spec.get("container_image") or None
        if own:
            return str(own)
        return self.ctx.default_image if self.ctx.container_engine else None

    def _start_container(self, code: Path) -> None:
        assert self.image is not None and self.ctx.container_engine is not None
        try:
            extra = container.check_args(list(self.spec.get("container_args") or []))
        except container.ContainerError as e:
            raise BuildError(str(e)) from None
        requirements = str(self.spec.get("requirements") or "").strip()
        if requirements:
            (self.workdir / "requirements.txt").write_text(requirements + "\n")
        wd = str(self.spec.get("working_dir") or "")
        in_tree = bool(self.spec.get("repository") or self.spec.get("snapshot"))
        cwd_inside = f"{container.WORKSPACE}/code/{wd}".rstrip("/") if in_tree else (wd or container.WORKSPACE)
        host_env = self.environment()
        keep = set(self.spec.get("env") or {}) | set(self.spec.get("secret_env") or {})
        env = {k: v for k, v in host_env.items() if k.startswith("MUSTER_") or k in keep or k == "PYTHONUNBUFFERED"}
        self.container_name = f"muster-{self.id}"
        self._record(container=self.container_name)
        argv = [a.replace(str(self.workdir), container.WORKSPACE) for a in self.argv()]
        spec = container.ContainerSpec(
            engine=self.ctx.container_engine, image=self.image, name=self.container_name, workdir=self.workdir,
            cwd_inside=cwd_inside, channel_dir=str(Path(self.ctx.report_socket).parent), sdk_dir=SDK_DIR,
            uv=find_uv(), cache_dir=self.ctx.state_dir / "cache", gpu_indices=self.gpu_indices,
            gpu_passthrough=self.ctx.gpu_passthrough, env=env, command=argv,
            setup_script=str(self.spec.get("setup_script") or ""), requirements=bool(requirements), extra=extra,
        )  # fmt: skip
        command = container.run_command(spec)
        self._emit(f"muster: running in {self.ctx.container_engine} image {self.image}\n".encode())
        engine_env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        self._spawn(self.workdir, {**engine_env, "MUSTER_ATTEMPT_ID": self.id}, argv=command, as_agent=True)

    def _spawn(self, cwd: Path, env: dict[str, str], argv: list[str] | None = None, *, as_agent: bool = False) -> None:
        """Start the run's process group: as the run's user unless it is the container engine's client."""
        user = None if as_agent else self.ctx.run_user
        argv = argv or self.argv()
        if user is not None:
            give_to(self.workdir, user)
        if self.ctx.cgroup_base is not None:
            self.group = RunGroup.create(self.ctx.cgroup_base, self.id)
        spec = {
            "argv": argv, "cwd": str(cwd), "env": env, "attempt": self.id, "agent_pid": os.getpid(),
            "user": [user.uid, user.gid, list(user.groups)] if user is not None else None,
            "cgroup": str(self.group.path) if self.group is not None else None,
            "stop_signal": self.spec.get("stop_signal") or "SIGTERM", "stop_grace_s": self.spec.get("stop_grace_s") or 0,
        }  # fmt: skip
        try:
            _check_executable(argv[0], cwd, env)  # the launcher execs it: its failure would read as an exit code
            proc = SPAWNER.submit(_launch, spec).result()
        except OSError as e:
            self._emit(f"muster agent: cannot start {self.spec.get('command') or 'the script'}: {e}\n".encode())
            self.ending = Ending("failed", "user_error", f"cannot start: {e.strerror or e}")
            return
        self.proc = proc
        self.known[proc.pid] = _create_time(proc.pid)
        self._record(  # the launcher leads the run's process group; the cgroup where there is one
            pid=proc.pid, create_time=self.known[proc.pid], cgroup=spec["cgroup"]
        )
        self.reader = threading.Thread(target=self._read, name=f"out-{self.id[:8]}", daemon=True)
        self.reader.start()
        log.info("started %s (experiment %s) pid %s gpus %s", self.id, self.spec["id"], self.proc.pid, self.gpu_indices)

    # -- output and progress -------------------------------------------------------------

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in iter(lambda: self.proc.stdout.readline(65536), b""):  # type: ignore[union-attr]
            m = ITERATION_LINE.match(line)
            if m:
                self.progress(int(m.group(1)), {})
            self._emit(line)

    def _emit(self, data: bytes) -> None:
        for secret in self.masks:  # secret values never reach the server's logs
            if secret in data:
                data = data.replace(secret, b"***")
        with self.lock:
            self.buffer += data
            full = len(self.buffer) >= BATCH_BYTES
        if full:
            self.flush()

    def progress(self, iteration: int | None, scalars: dict[str, float]) -> None:
        with self.lock:
            if iteration is not None and (self.iteration is None or iteration > self.iteration):
                self.iteration = iteration
                self.progress_dirty = True
            if scalars:
                self.metrics.update(scalars)
                self.progress_dirty = True

    def flush(self) -> None:
        """Move buffered output and progress into the spool (called every second and at the end)."""
        spool = self.ctx.spool
        with self.lock:
            data = bytes(self.buffer)
            self.buffer.clear()
            progress = None
            if self.progress_dirty:
                progress = {"token": self.token, "iteration": self.iteration, "metrics": dict(self.metrics)}
                self.progress_dirty = False
                self.metrics.clear()
        if data:
            dropped = spool.take_dropped(self.id)
            text = data.decode("utf-8", errors="replace")
            if dropped:
                text = f"[muster agent: about {dropped} bytes of output dropped: the spool was full]\n" + text
            for start in range(0, len(text), BATCH_BYTES):
                body = {"token": self.token, "chunks": [{"seq": self.seq, "text": text[start : start + BATCH_BYTES]}]}
                if spool.put(self.id, "logs", body, droppable=True):
                    self.seq += 1
        if progress is not None:
            spool.put(self.id, "progress", progress)

    # -- processes -----------------------------------------------------------------------

    def refresh_pids(self, agent_descendants: list[psutil.Process]) -> None:
        """Remember every process of this run: the child's tree and re-parented orphans with our marker."""
        roots: list[psutil.Process] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                roots.append(psutil.Process(self.proc.pid))
            except psutil.Error:
                pass
        found: dict[int, float] = {}
        for root in roots:
            try:
                for p in [root, *root.children(recursive=True)]:
                    found[p.pid] = p.create_time()
            except psutil.Error:
                continue
        for p in agent_descendants:
            try:
                key = (p.pid, p.create_time())
            except psutil.Error:
                continue
            if p.pid in found or key in self.not_ours or self.known.get(p.pid) == key[1]:
                continue
            try:
                marker = p.environ().get("MUSTER_ATTEMPT_ID")
            except psutil.Error:
                continue
            if marker == self.id:
                found[p.pid] = key[1]
            else:
                self.not_ours.add(key)
        if self.group is not None:  # whatever it forked or setsid'd into, it is still in its cgroup
            for pid in self.group.pids():
                if pid not in found and pid not in self.known:
                    found[pid] = _create_time(pid)
        for pid, ctime in list(self.known.items()):
            if not _alive(pid, ctime):
                del self.known[pid]
        self.known.update(found)

    def pids(self) -> set[int]:
        return set(self.known)

    def alive(self) -> list[int]:
        return [pid for pid, ctime in list(self.known.items()) if _alive(pid, ctime)]

    def _signal_all(self, sig: int) -> None:
        if self.group is not None:
            if sig == signal.SIGKILL:
                self.group.kill()  # all at once: nothing forks its way out between two kills
            else:
                self.group.signal(sig)
        if self.container_name and self.ctx.container_engine:
            container.kill(self.ctx.container_engine, self.container_name, signal.Signals(sig).name)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self.alive():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def request_stop(self, ending: Ending, *, grace: float | None = None) -> None:
        """Signal the run; SIGKILL follows after the grace period (the experiment's by default).

        A second request never lengthens the wait; a kill (report=False) replaces the ending.
        """
        if self.ending is None or not ending.report:
            self.ending = ending
        sig = signal_number(self.spec.get("stop_signal") or "SIGTERM")
        wait = max(0.0, float(self.spec.get("stop_grace_s") or 0) if grace is None else grace)
        deadline = time.monotonic() + wait
        if self.kill_at is not None and deadline >= self.kill_at:
            return
        log.info("stopping %s (%s): SIGKILL in %ss", self.id, ending.message or ending.outcome, wait)
        self._signal_all(sig if wait > 0 else signal.SIGKILL)
        self.kill_at = deadline

    # -- lifecycle -----------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """Advance the run; True once it is over (nothing of it runs) and its end is spooled."""
        if self.finished:
            return True
        if self.building:
            return False  # a stop asked meanwhile is honoured when the build ends
        max_runtime = self.spec.get("max_runtime_s")
        if max_runtime and self.ending is None and now - self.started_at > float(max_runtime):
            self.request_stop(Ending("failed", "timeout", f"ran longer than its max runtime of {max_runtime} s"))
        if self.kill_at is not None and now >= self.kill_at:
            self._signal_all(signal.SIGKILL)
        main_done = self.proc is None or self.proc.poll() is not None
        if not main_done:
            return False
        if self.exit_code is None and self.proc is not None:
            self.exit_code = self.proc.returncode
            if self.kill_at is None:
                # The main process ended on its own: what it left behind gets a short grace, then SIGKILL.
                if self.alive():
                    self._signal_all(signal.SIGTERM)
                self.kill_at = now + 2
        if self.alive():
            return False
        if self.reader is not None:
            self.reader.join(timeout=5)
        self._finish()
        return True

    def _finish(self) -> None:
        self.finished = True
        if self.container_name and self.ctx.container_engine:
            container.remove(self.ctx.container_engine, self.container_name)
        self.flush()
        ending = self.ending or self._ending_from_exit()
        self.result = ending
        if ending.report:
            summary = {"runtime_s": round(time.monotonic() - self.started_at, 3), "gpus": self.gpu_indices}
            body: dict[str, Any] = {
                "token": self.token,
                "outcome": ending.outcome,
                "exit_code": self.exit_code,
                "message": ending.message[:500],
                "resource_summary": summary,
            }
            if ending.failure_class:
                body["failure_class"] = ending.failure_class
            if self.venv is not None:
                body["frozen_requirements"] = Builder(self.ctx.state_dir, lambda _: None).freeze(self.venv)
            self.ctx.spool.put(self.id, "finish", body)
        else:
            self.ctx.spool.close_attempt(self.id)
        if not self.ctx.keep_workdirs:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self.group is not None:
            self.group.remove()
        if self.ctx.ledger is not None:
            self.ctx.ledger.forget(self.id)  # nothing of it runs any more (tick saw to that)
        log.info("finished %s: %s (exit code %s)", self.id, ending.outcome, self.exit_code)

    def _ending_from_exit(self) -> Ending:
        code = self.exit_code
        if code == 0:
            return Ending("completed")
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            if code == -signal.SIGKILL:
                return Ending("failed", "oom", f"killed by {name} (the kernel's out-of-memory killer?)")
            return Ending("failed", "user_error", f"killed by {name}")
        return Ending("failed", "user_error", f"exited with code {code}")


def _launch(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start a run's launcher (muster_agent/launcher.py) and hand it the run's spec through a pipe:
    never argv (readable by every user) and never its environment (a root process must not load
    what a user's variables point to)."""
    proc = subprocess.Popen(
        launcher.command(),
        cwd="/",
        env={"LANG": "C.UTF-8"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # it leads the run's process group
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; its exit code says so
    return proc


def _check_executable(program: str, cwd: Path, env: dict[str, str]) -> None:
    """Raise what Popen would for a program that cannot be started (missing, not executable)."""
    if os.sep in program:
        path = program if os.path.isabs(program) else str(cwd / program)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    elif shutil.which(program, path=env.get("PATH")) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


# Every launcher is started from this one thread, which lives as long as the agent: the kernel
# sends a parent-death signal when the *thread* that started the child ends, so a launcher
# started from a build's short-lived thread would end its run the moment that thread finished.
SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spawn")


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _alive(pid: int, ctime: float) -> bool:
    try:
        p = psutil.Process(pid)
        return bool(p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def set_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


# Zombie children first seen at (pid, create time) -> monotonic time.
_ZOMBIES: dict[tuple[int, float], float] = {}
ZOMBIE_GRACE_S = 5.0


def reap_orphans(own: set[int]) -> None:
    """Collect the exit status of orphans re-parented to this subreaper.

    Our own children (a run's main process, git, uv, podman) are waited for by whoever
    started them, within a fraction of a second; reaping one of those here would rob it of
    its exit code (Python then reports 0). So a zombie child is reaped only when it is
    still unreaped ZOMBIE_GRACE_S after it was first seen, and never one in `own`.
    """
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return
    now = time.monotonic()
    current: set[tuple[int, float]] = set()
    for child in children:
        if child.pid in own:
            continue
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                continue
            key = (child.pid, child.create_time())
        except psutil.Error:
            continue
        current.add(key)
        first = _ZOMBIES.setdefault(key, now)
        if now - first >= ZOMBIE_GRACE_S:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(child.pid, os.WNOHANG)
    for key in list(_ZOMBIES):
        if key not in current:
            del _ZOMBIES[key]
