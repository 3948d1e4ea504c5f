"""`make run` as a new user meets it: everything starts, the CLI is logged in, a run completes, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from bench.common import spare_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.sqlite_only]


def _ours(var: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            # The server and celery carry MUSTER_VAR_DIR; the agent gets no server settings, but its
            # state folder is in VAR.
            mine = p.environ().get("MUSTER_VAR_DIR") == str(var) or f"{var}/agent" in p.cmdline()
            if mine and p.pid != os.getpid():
                found.append(p)
        except psutil.Error:
            continue
    return found


def _login(url: str, *, forwarded: str) -> int:
    request = urllib.request.Request(  # noqa: S310 - our own URL
        url + "/api/v1/auth/login/",
        data=json.dumps({"username": "admin", "password": "wrong-password"}).encode(),
        headers={"Content-Type": "application/json", "X-Forwarded-For": forwarded},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def _an_ordinary_users_probe_finds_no_credentials(
    env: dict[str, str], var: Path, banner: str, muster: list[str]
) -> None:
    """Issue 13, point 2: a run read the admin's password, the server's settings and the agent's key."""
    made = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from django.contrib.auth.models import User; from accounts.actor import SYSTEM; "
         "from accounts.services import apikey_create; "
         "print(apikey_create(actor=SYSTEM, user=User.objects.create_user('mallory')).token)"],
        cwd=ROOT, env={**env, "DEBUG": "true"}, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    mallory = {**env, "MUSTER_API_KEY": made.stdout.strip().splitlines()[-1], "COLUMNS": "200"}
    mallory["MUSTER_SERVER"] = banner.split("Muster is running at ")[1].split(maxsplit=1)[0].rstrip("/")
    mallory["MUSTER_CONFIG"] = str(var / "no-such-config.json")  # the key above, not the admin's saved login
    probe = (ROOT / "tests" / "probe.py").read_text()
    strict = "strict" if os.geteuid() == 0 else "same-user"
    out = subprocess.run(
        [*muster, "enqueue", "--", "python3", "-c", probe, str(var), str(ROOT), strict],
        env=mallory, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    exp_id = out.stdout.split()[0]
    subprocess.run([*muster, "status", exp_id, "--wait"], env=mallory, capture_output=True, timeout=120)
    logs = subprocess.run([*muster, "logs", exp_id], env=mallory, capture_output=True, text=True, timeout=60).stdout
    assert "PROBE CLEAN" in logs, logs
    state = json.loads((var / "bootstrap.json").read_text())
    for secret in (state["password"], state["api_key"], state["agent_key"]):
        assert secret not in logs
    if os.geteuid() == 0:
        assert "as the unprivileged user muster-run" in banner


def test_make_run_serves_a_first_experiment_and_stops_cleanly(tmp_path: Path) -> None:
    var, home = tmp_path / "var", tmp_path / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE") and not k.startswith("MUSTER_")
    }
    env.update({"MUSTER_VAR_DIR": str(var), "MUSTER_PORT": str(spare_port()), "HOME": str(home)})
    run = subprocess.Popen(
        [sys.executable, "scripts/run.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    banner = []
    try:
        assert run.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = run.stdout.readline()
            banner.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(banner)
        assert "Muster is running at http://127.0.0.1:" in text and "admin login: admin / " in text, text
        assert "logged in as the admin" in text
        muster = [str(Path(sys.executable).parent / "muster")]
        cli_env = {**env, "COLUMNS": "200"}
        out = subprocess.run(
            [*muster, "enqueue", "--", "python3", "-c", "print('hi')"], env=cli_env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        exp_id = out.stdout.split()[0]
        waited = subprocess.run([*muster, "status", exp_id, "--wait"], env=cli_env, capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert waited.returncode == 0 and "completed" in waited.stdout, waited.stdout + waited.stderr
        logs = subprocess.run([*muster, "logs", exp_id], env=cli_env, capture_output=True, text=True, timeout=60)
        assert logs.stdout.strip() == "hi"
        workers = subprocess.run([*muster, "workers"], env=cli_env, capture_output=True, text=True, timeout=60)
        assert "local" in workers.stdout
        _an_ordinary_users_probe_finds_no_credentials(env, var, text, muster)

        def agents() -> list[psutil.Process]:
            return [p for p in _ours(var) if {"agent", "run", "local"} <= set(p.cmdline())]

        # A user kills the local agent: make run starts it again and the server keeps serving.
        (killed,) = agents()
        killed.kill()
        restarted = []
        while time.monotonic() < deadline + 60 and not restarted:
            line = run.stdout.readline()
            restarted = [line] if "local agent exited with -9; starting it again" in line else []
        assert restarted, "make run did not start the local agent again"
        for _ in range(100):
            if [p.pid for p in agents()] not in ([], [killed.pid]):
                break
            time.sleep(0.1)
        assert [p.pid for p in agents()] != [killed.pid] and len(agents()) == 1
        assert run.poll() is None
        again = subprocess.run([*muster, "workers"], env=cli_env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "local" in again.stdout
        url = text.split("Muster is running at ")[1].split()[0].rstrip("/")
        with urllib.request.urlopen(url + "/static/admin/css/base.css", timeout=10) as static:  # noqa: S310
            assert static.status == 200 and b"body" in static.read()  # static files through the async stack
        with urllib.request.urlopen(url + "/", timeout=10) as home:  # noqa: S310 - the pages: a login first
            assert home.url.endswith("/login/?next=/") and b'name="password"' in home.read()
        with urllib.request.urlopen(url + "/static/vendor/htmx-2.0.11.min.js", timeout=10) as vendored:  # noqa: S310
            assert vendored.status == 200
        # uvicorn believes no X-Forwarded-For from a local client: a new one per guess buys nothing.
        codes = [_login(url, forwarded=f"192.0.2.{i}") for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429], codes
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while _ours(var) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ours(var) == [], "make run left processes behind"


def test_make_run_refuses_a_port_already_in_use(tmp_path: Path) -> None:
    """A second `make run` must not print the first one's URL as its own and then fail to bind."""

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MUSTER_") and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env.update({"MUSTER_VAR_DIR": str(tmp_path / "var"), "MUSTER_PORT": str(taken.getsockname()[1])})
        done = subprocess.run(
            [sys.executable, "scripts/run.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 1
    assert "already listens on 127.0.0.1:" in done.stderr and "MUSTER_PORT" in done.stderr
    assert "Muster is running" not in done.stdout and not (tmp_path / "var").exists()  # nothing started or written
