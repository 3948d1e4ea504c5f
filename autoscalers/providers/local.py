"""Local "machines": agent processes on the server's own host, so that a new user sees
autoscaling work with no cloud account. Each machine is one `muster agent run` process in its
own session, started with its own agent key; its record (pid and process start time, which rule
out a reused pid) lives in a folder of the app under VAR_DIR/autoscalers/.

Ending one sends SIGTERM: the agent drains (its runs get their stop grace) and exits, as a cloud
machine powers off when its agent exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psutil

from autoscalers.providers.base import CloudError, CloudMachine, ErrorClass, LaunchSpec

AGENT_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "MUSTER_RUN_AS", "MUSTER_WORK_DIR")


class LocalProvider:
    def __init__(self, folder: Path, app_id: str):
        self.folder = folder / app_id
        self.app_id = app_id

    def _record(self, instance_id: str) -> Path:
        return self.folder / f"{instance_id}.json"

    def _alive(self, rec: dict[str, object]) -> bool:
        with contextlib.suppress(ChildProcessError, ValueError, KeyError):  # reap our ended child: no zombies
            os.waitpid(int(str(rec["pid"])), os.WNOHANG)
        try:
            proc = psutil.Process(int(str(rec["pid"])))
            return abs(proc.create_time() - float(str(rec["started"]))) < 1 and proc.status() != psutil.STATUS_ZOMBIE
        except (psutil.Error, KeyError, ValueError):
            return False

    def launch(self, spec: LaunchSpec) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._record(spec.instance_id)
        if path.exists():  # the same launch again: the machine it started is the answer
            rec = json.loads(path.read_text())
            return f"local-{rec['pid']}"
        key_file = self.folder / f"{spec.instance_id}.key"  # its own key, in a file of mode 600
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(spec.agent_key)
        argv = [sys.executable, "-m", "muster_agent", "agent", "run", "--server", spec.server_url,
                "--name", spec.name, "--cpu-only", "--key-file", str(key_file),
                "--state-dir", str(self.folder / spec.instance_id)]  # fmt: skip
        for queue in spec.queues:
            argv += ["--queue", queue]
        env = {k: os.environ[k] for k in AGENT_ENV_KEEP if k in os.environ}
        env |= {str(k): str(v) for k, v in spec.environment.items()}
        log = (self.folder / f"{spec.instance_id}.log").open("ab")
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own agent, argv built here
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as e:
            raise CloudError(ErrorClass.CONFIG, f"cannot start a local agent: {e}") from e
        finally:
            log.close()
        started = psutil.Process(proc.pid).create_time()
        rec = {"pid": proc.pid, "started": started, "name": spec.name, "instance": spec.instance_id}
        path.write_text(json.dumps(rec))
        return f"local-{proc.pid}"

    def machines(self) -> list[CloudMachine]:
        out: list[CloudMachine] = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*.json")):
            rec = json.loads(path.read_text())
            alive = self._alive(rec)
            launched = datetime.fromtimestamp(float(rec["started"]), tz=UTC)
            out.append(CloudMachine(f"local-{rec['pid']}", str(rec["instance"]), "running" if alive else "terminated",
                                    launched_at=launched))  # fmt: skip
        return out

    def terminate(self, cloud_id: str) -> None:
        for path in self.folder.glob("*.json"):
            rec = json.loads(path.read_text())
            if f"local-{rec['pid']}" == cloud_id and self._alive(rec):
                os.killpg(int(rec["pid"]), signal.SIGTERM)

    def console(self, cloud_id: str) -> str:
        for path in self.folder.glob("*.json"):
            rec = json.loads(path.read_text())
            if f"local-{rec['pid']}" == cloud_id:
                log = path.with_suffix(".log")
                return log.read_text(errors="replace")[-65536:] if log.exists() else ""
        return ""
