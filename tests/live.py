"""A real Muster for tests: a server process (uvicorn), a celery worker with beat, real agents.

The database is migrated once per test session into a template (a SQLite file, or a
PostgreSQL database in the PostgreSQL run) and copied for each stack. Agents are
`python -m muster_agent agent run` processes with their key in the environment.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.common import spare_port
from muster_agent.client import ApiError, Client, ServerAway

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
_TEMPLATE: dict[str, Any] = {}
OPEN_STACKS: list[Stack] = []  # for the failure report (tests/conftest.py attaches their errors)


def error_excerpts(stack_dir: Path, *, limit: int = 6000) -> str:
    """The tracebacks and ERROR/CRITICAL lines a stack's processes logged, newest last, at most `limit` chars.

    A failure in CI shows the test's side only; this puts the server's side of it beside it.
    """
    parts: list[str] = []
    for log in sorted([*stack_dir.glob("*.log"), *stack_dir.glob("*/agent.log")]):
        lines = log.read_text(errors="replace").splitlines()
        picked: list[str] = []
        in_traceback = False
        for line in lines:
            if line.startswith("Traceback"):
                in_traceback = True
            if in_traceback or " ERROR " in line or " CRITICAL " in line:
                picked.append(line)
            if in_traceback and line and not line[0].isspace() and not line.startswith("Traceback"):
                in_traceback = False  # the exception line closes it
        if picked:
            parts.append(f"--- {log.name}\n" + "\n".join(picked[-80:]))
    text = "\n".join(parts)
    return text[-limit:]


def wait_for(check: Callable[[], Any], *, timeout: float = 30, every: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (ApiError, ServerAway) as e:
            last_error = e
        time.sleep(every)
    raise AssertionError(
        f"timed out waiting for {what or check}" + (f" (last error: {last_error})" if last_error else "")
    )


def _outer_pg() -> str | None:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith("postgres") else None


def _pg_admin(url: str) -> Any:
    return psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True)


# Live stacks run in production mode (DEBUG off) over plain HTTP on loopback: a real key (the
# template's API-key digests depend on it), no HTTPS redirect or secure cookies.
# A live stack runs production's settings module (not the tests'), with DEBUG off, a
# production-grade key and plain HTTP on loopback.
LIVE_SETTINGS = {
    "DJANGO_SETTINGS_MODULE": "orchestration.settings",
    "DEBUG": "false",
    "SECRET_KEY": "live-test-key-" + "0123456789abcdefghij" * 3,
    "HTTPS_ONLY": "false",
}


def template(base_dir: Path) -> dict[str, Any]:
    """Migrate and bootstrap once per session; later stacks copy the result."""
    if _TEMPLATE:
        return _TEMPLATE
    var = base_dir / "template-var"
    var.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MUSTER_VAR_DIR": str(var), **LIVE_SETTINGS}
    pg = _outer_pg()
    if pg:
        name = f"live_tpl_{os.getpid()}"
        with _pg_admin(pg) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        env["DATABASE_URL"] = pg.rsplit("/", 1)[0] + "/" + name
        _TEMPLATE["pg_name"] = name
    else:
        env["DATABASE_URL"] = f"sqlite:///{var / 'db.sqlite3'}"
    subprocess.run([PY, "manage.py", "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run(
        [PY, "manage.py", "bootstrap"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout
    subprocess.run([PY, "manage.py", "collectstatic", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    _TEMPLATE.update(json.loads(out.strip().splitlines()[-1]))
    _TEMPLATE["var"] = var
    return _TEMPLATE


def drop_template() -> None:
    pg = _outer_pg()
    if pg and _TEMPLATE.get("pg_name"):
        with _pg_admin(pg) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE["pg_name"]}" WITH (FORCE)')
    _TEMPLATE.clear()


class Stack:
    def __init__(self, base_dir: Path, **settings: str):
        tpl = template(base_dir)
        self.dir = base_dir / f"stack-{secrets.token_hex(4)}"
        self.var = self.dir / "var"
        self.var.mkdir(parents=True)
        (self.var / "staticfiles").symlink_to(tpl["var"] / "staticfiles")  # collected once per session
        self.port = spare_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = tpl["api_key"]
        self.agent_key = tpl["agent_key"]
        self.admin_password = tpl["password"]
        pg = _outer_pg()
        self.pg_name: str | None = None
        if pg:
            self.pg_name = f"live_{secrets.token_hex(4)}"
            with _pg_admin(pg) as conn:
                conn.execute(f'CREATE DATABASE "{self.pg_name}" TEMPLATE "{tpl["pg_name"]}"')
            db_url = pg.rsplit("/", 1)[0] + "/" + self.pg_name
        else:
            shutil.copy(tpl["var"] / "db.sqlite3", self.var / "db.sqlite3")
            db_url = f"sqlite:///{self.var / 'db.sqlite3'}"
        self.env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "MUSTER_VAR_DIR": str(self.var),
            **LIVE_SETTINGS,
            "DB_POOL": "false",
            "WORKER_TIMEOUT": "4",  # agents report every 0.5 s: 8 reports of slack on a loaded 2-core box
            "BEAT_TICK_S": "0.5",
            "CLAIM_WAIT_MAX_S": "5",
            "SERVER_BEAT_S": "0.5",
            "REPORT_FLUSH_S": "0.3",
            "COUNTER_FLUSH_S": "0.3",
            "AUTH_CACHE_S": "0",
            "PYTHONPATH": str(ROOT),
            **settings,
        }
        self.server: subprocess.Popen[bytes] | None = None
        self.celery: subprocess.Popen[bytes] | None = None
        self.celery_started = 0.0  # time.monotonic() when celery (and its liveness checker) was started
        self.agents: list[subprocess.Popen[bytes]] = []
        self.admin = Client(self.url, self.admin_key, timeout=30)
        self.agent_client = Client(self.url, self.agent_key, timeout=30)

    # -- processes -----------------------------------------------------------------------

    def start_server(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.server = subprocess.Popen(
            [PY, "-m", "uvicorn", "orchestration.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_for(lambda: self.admin.request("GET", "queues/"), timeout=60, what="the server to answer")

    def kill_server(self) -> None:
        assert self.server is not None
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()

    def start_celery(self) -> None:
        self.celery_started = time.monotonic()
        log = open(self.dir / "celery.log", "ab")  # noqa: SIM115
        self.celery = subprocess.Popen(
            [PY, "-m", "celery", "-A", "orchestration", "worker", "--beat", "--loglevel", "WARNING",
             "--concurrency", "1", "--pool", "solo", "--schedule", str(self.var / "beat-schedule")],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def start_agent(self, name: str, queues: list[str], *args: str, env: dict[str, str] | None = None,
                    url: str | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
        log = open(self.dir / f"agent-{name}.log", "ab")  # noqa: SIM115
        argv = [PY, "-m", "muster_agent", "agent", "run", "--server", url or self.url, "--name", name,
                "--state-dir", str(self.dir / f"agent-{name}"), "--report-interval", "0.5",
                "--claim-wait", "5", "--log-level", "debug"]  # fmt: skip
        for q in queues:
            argv += ["--queue", q]
        # Runs as the test's own user (as root, the agent would run them as muster-run, which
        # test_make_run's isolation probe covers): these tests read and write the runs' folders.
        own_user = pwd.getpwuid(os.geteuid()).pw_name
        agent_env = {**self.env, "MUSTER_API_KEY": self.agent_key, "MUSTER_RUN_AS": own_user, **(env or {})}
        proc = subprocess.Popen(
            [*argv, *args], cwd=ROOT, env=agent_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.agents.append(proc)
        wait_for(lambda: self.worker(name), timeout=30, what=f"agent {name} to register")
        return proc

    def manage(self, *args: str) -> str:
        """Run a management command against this stack's database."""
        done = subprocess.run(
            [PY, "manage.py", *args], cwd=ROOT, env=self.env, check=True, capture_output=True, text=True
        )
        return done.stdout

    def stop(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        kill_runs_of(self.dir)
        for proc in (self.celery, self.server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if self.pg_name:
            with _pg_admin(_outer_pg() or "") as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    # -- API helpers ---------------------------------------------------------------------

    def worker(self, name: str) -> dict[str, Any] | None:
        try:
            return self.admin.request("GET", f"workers/{name}/")  # type: ignore[no-any-return]
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def queue(self, name: str) -> dict[str, Any]:
        return self.admin.request("POST", "queues/", {"name": name})  # type: ignore[no-any-return]

    def enqueue(self, queue: str, **spec: Any) -> dict[str, Any]:
        spec.setdefault("name", "live test")
        answer = self.admin.request("POST", "experiments/", {"queue": queue, **spec})
        return answer["experiment"]  # type: ignore[no-any-return]

    def experiment(self, exp_id: str) -> dict[str, Any]:
        return self.admin.request("GET", f"experiments/{exp_id}/")  # type: ignore[no-any-return]

    def wait_rounds(self, name: str, rounds: int = 3, timeout: float = 60) -> None:
        """Until worker `name` has been heard from `rounds` more times (a report or a claim each).

        What a "still waiting" check waits for: the agent went round its loop (asked for work,
        reported) several times since, rather than a fixed time that a slow machine may not cover.
        """
        seen = [(self.worker(name) or {}).get("last_seen_at")]

        def moved() -> bool:
            now = (self.worker(name) or {}).get("last_seen_at")
            if now != seen[-1]:
                seen.append(now)
            return len(seen) > rounds

        wait_for(moved, timeout=timeout, every=0.05, what=f"worker {name} to be heard from {rounds} more times")

    def agent_log(self, name: str) -> str:
        return (self.dir / f"agent-{name}.log").read_text(errors="replace")

    def wait_status(self, exp_id: str, *statuses: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (e := self.experiment(exp_id))["status"] in statuses and e,
            timeout=timeout,
            what=f"experiment {exp_id} to be {' or '.join(statuses)}",
        )

    def logs(self, exp_id: str, attempt: str | None = None) -> str:
        text, after = [], None
        while True:
            page = self.admin.request("GET", f"experiments/{exp_id}/logs/", params={"after": after, "attempt": attempt})
            if not page["chunks"]:
                return "".join(text)
            text += [c["text"] for c in page["chunks"]]
            after = page["next_after"]

    def attempts(self, exp_id: str) -> list[dict[str, Any]]:
        return self.admin.request("GET", f"experiments/{exp_id}/attempts/?limit=500")["results"]  # type: ignore[no-any-return]


def run_processes(marker: str | None = None) -> list[psutil.Process]:
    """Every live process that belongs to a run (MUSTER_ATTEMPT_ID set; this one when given)."""
    found = []
    for p in psutil.process_iter():
        try:
            value = p.environ().get("MUSTER_ATTEMPT_ID")
            if value and (marker is None or value == marker) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_runs_of(stack_dir: Path) -> None:
    """Runs orphaned by a SIGKILLed agent (their working folder is under the stack's)."""
    for p in psutil.process_iter():
        try:
            if p.environ().get("MUSTER_ATTEMPT_ID") and str(stack_dir) in p.cwd():
                p.kill()
        except psutil.Error:
            continue


@contextlib.contextmanager
def stack(base_dir: Path, *, celery: bool = True, **settings: str) -> Iterator[Stack]:
    s = Stack(base_dir, **settings)
    OPEN_STACKS.append(s)
    try:
        s.start_server()
        if celery:
            s.start_celery()
        yield s
    finally:
        OPEN_STACKS.remove(s)
        s.stop()


def module_stack(factory: Any, name: str, **settings: str) -> Iterator[Stack]:
    """A test module's stack (a module-scoped fixture yields from it); the template goes with the last."""
    with stack(factory.mktemp(name), **settings) as s:
        yield s
    drop_template()


class DropProxy:
    """An HTTP proxy that forwards each request and, for chosen kinds, drops the answer after the
    server has acted on it (closes the connection instead): a network that fails at the worst time.

    drop maps the last path segment ("logs", "finish", "start", "progress") to how many answers to drop.
    """

    def __init__(self, upstream_port: int, drop: dict[str, int]):
        self.budget = dict(drop)
        self.dropped: dict[str, int] = dict.fromkeys(drop, 0)
        self.forwarded: dict[str, int] = {}
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    resp = upstream.getresponse()
                    data = resp.read()
                except OSError:
                    self.close_connection = True
                    return
                finally:
                    upstream.close()
                kind = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                with lock:
                    proxy.forwarded[kind] = proxy.forwarded.get(kind, 0) + 1
                    drop = proxy.budget.get(kind, 0) > 0 and resp.status < 300
                    if drop:
                        proxy.budget[kind] -= 1
                        proxy.dropped[kind] += 1
                if drop:
                    self.close_connection = True  # the server committed; the agent never hears of it
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _forward  # noqa: N815 - http.server's names

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
