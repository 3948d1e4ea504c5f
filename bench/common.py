"""Shared plumbing for the benches: services, a fresh database, the production server."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def spare_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def services() -> Iterator[dict[str, str]]:
    """DATABASE_URL and REDIS_URL from the environment, or a throw-away PostgreSQL and Redis."""
    if os.environ.get("DATABASE_URL", "").startswith("postgres") and os.environ.get("REDIS_URL"):
        yield {"DATABASE_URL": os.environ["DATABASE_URL"], "REDIS_URL": os.environ["REDIS_URL"]}
        return
    out = subprocess.run([str(ROOT / "scripts" / "test-services.sh")], check=True, capture_output=True, text=True)
    env = dict(line.split("=", 1) for line in out.stdout.strip().splitlines())
    try:
        yield env
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "test-services.sh"), "stop", env["MUSTER_TEST_SERVICES_DIR"]], check=False
        )


def fresh_database(base_url: str, name: str) -> str:
    """Drop and create `name` on the server of base_url; return its URL."""

    admin_url = base_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + "/" + name


# Production mode (DEBUG off) over plain HTTP on loopback: a real key, no HTTPS redirect or secure cookies.
BENCH_SETTINGS = {
    "DJANGO_SETTINGS_MODULE": "orchestration.settings",
    "SECRET_KEY": "bench-only-key-" + "0123456789abcdefghij" * 3,
    "HTTPS_ONLY": "false",
}


def prepared_database(svc: dict[str, str], name: str, **extra: str) -> tuple[dict[str, str], dict[str, str]]:
    """A fresh, migrated and bootstrapped database `name`: (the server's environment, bootstrap.json)."""

    env = {
        "DATABASE_URL": fresh_database(svc["DATABASE_URL"], name),
        "REDIS_URL": svc["REDIS_URL"],
        **BENCH_SETTINGS,
        "ALLOWED_HOSTS": "127.0.0.1",
        "MUSTER_VAR_DIR": str(ROOT / "var" / "bench"),
        "LOG_LEVEL": "WARNING",
        **extra,
    }
    manage(env, "migrate", "--no-input", "-v", "0")
    manage(env, "collectstatic", "--no-input", "-v", "0")  # as a deployment has them (DEBUG off serves these)
    boot = json.loads(manage(env, "bootstrap").strip().splitlines()[-1])
    return env, boot


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [PY, "manage.py", *args], cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True, text=True
    ).stdout


@contextlib.contextmanager
def production_server(env: dict[str, str], *, workers: int) -> Iterator[str]:
    """gunicorn with uvicorn workers as in production (orchestration/gunicorn_conf.py, DEBUG off), on a spare port."""
    port = spare_port()
    argv = [
        str(Path(PY).parent / "gunicorn"), "-c", "python:orchestration.gunicorn_conf", "orchestration.asgi:application",
        "-w", str(workers), "-b", f"127.0.0.1:{port}",
        "--log-level", "warning", "--graceful-timeout", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env, "DEBUG": "false"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("the server exited at start")
            time.sleep(0.3)
        else:
            raise RuntimeError("the server did not become ready")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, {shutil.which('gunicorn') or 'gunicorn'}"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
