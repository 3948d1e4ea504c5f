"""`make run`: migrate, first-run set-up, then the ASGI server, a celery worker with beat and a local agent.

Every child runs in its own process group; Ctrl-C (or SIGTERM) stops all of them. If the
server or celery dies the others are stopped too, so nothing is left running behind the
prompt. The local agent is a worker like any other: if it dies (a crash, a `kill -9` to see
fencing at work) it is started again, as systemd would, and the server retries its runs;
after AGENT_RESTARTS deaths within a minute it is left down and the server keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = os.environ.get("MUSTER_HOST", "127.0.0.1")
PORT = os.environ.get("MUSTER_PORT", "8000")
VAR = Path(os.environ.get("MUSTER_VAR_DIR") or ROOT / "var")
AGENT_RESTARTS = 5


def manage(*args: str) -> str:
    return subprocess.run([PY, "manage.py", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def wait_until_up(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):  # noqa: S310 - our own URL
                return
        except OSError:
            time.sleep(0.2)


def login_cli(url: str, key: str) -> str:
    """Point the `muster` CLI at this server unless it is already logged in elsewhere."""
    sys.path.insert(0, str(ROOT))
    from agent.config import config_path, save, saved

    current = saved().get("server")
    if current and current != url:
        return f"logged in to {current} already; run `muster login --server {url}` to switch"
    save(url, key)
    return f"logged in as the admin ({config_path()})"


def proxy_flags(trusted: str) -> list[str]:
    """uvicorn trusts X-Forwarded-For/-Proto only from TRUSTED_PROXIES (by default from 127.0.0.1,
    so any local process could pick its address for the login throttle): none unless configured."""
    trusted = ",".join(part.strip() for part in trusted.split(",") if part.strip())
    return ["--proxy-headers", "--forwarded-allow-ips", trusted] if trusted else ["--no-proxy-headers"]


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens there (another `make run`, say)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def main() -> int:
    if port_taken(HOST, int(PORT)):
        print(
            f"something already listens on {HOST}:{PORT} (another `make run`?): stop it, "
            "or choose another port with MUSTER_PORT=8001 make run",
            file=sys.stderr,
            flush=True,
        )
        return 1
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
    os.environ.setdefault("DEBUG", "true")
    os.environ.setdefault("SITE_URL", f"http://{HOST}:{PORT}")
    VAR.mkdir(parents=True, exist_ok=True)
    print("migrating the database …", flush=True)
    manage("migrate", "--no-input", "-v", "0")
    manage("collectstatic", "--no-input", "-v", "0")
    state = json.loads(manage("bootstrap").strip().splitlines()[-1])
    print(manage("sync_actions").strip(), flush=True)
    children: list[subprocess.Popen[bytes]] = []
    launch: dict[int, tuple[str, list[str], dict[str, str] | None]] = {}  # pid -> how to start it again

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        print(f"starting {name}: {' '.join(argv)}", flush=True)
        child = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, env=env)
        children.append(child)
        launch[child.pid] = (name, argv, env)
        return child

    start(
        "server",
        [
            PY,
            "-m",
            "uvicorn",
            "orchestration.asgi:application",
            "--host",
            HOST,
            "--port",
            PORT,
            "--log-level",
            "warning",
            "--timeout-keep-alive",  # agents keep their connection between reports (orchestration/gunicorn_conf.py)
            "50",
            *proxy_flags(os.environ.get("TRUSTED_PROXIES", "")),
        ],
    )
    start(
        "celery worker + beat",
        [
            PY,
            "-m",
            "celery",
            "-A",
            "orchestration",
            "worker",
            "--beat",
            "--loglevel",
            "WARNING",
            "--concurrency",
            "2",
            "--schedule",
            str(VAR / "celerybeat-schedule"),
        ],
    )
    url = f"http://{HOST}:{PORT}"
    wait_until_up(url)
    # The local agent: its key travels in the environment, never on the command line.
    agent: subprocess.Popen[bytes] | None = start(
        "local agent",
        [str(Path(PY).parent / "muster"), "agent", "run", "--server", url, "--queue", "default",
         "--name", "local", "--state-dir", str(VAR / "agent"), "--log-level", "warning"],
        env={**os.environ, "MUSTER_API_KEY": state["agent_key"]},
    )  # fmt: skip
    cli_note = login_cli(url, state["api_key"])
    print(
        f"\n  Muster is running at {url}/\n"
        f"  admin login: {state['username']} / {state['password']}   (log in at {url}/ ; Django admin at /admin/)\n"
        f"  API key:     {state['api_key']}\n"
        f"  agent key:   {state['agent_key']}\n"
        f"  API docs:    {url}/api/docs/\n"
        f"  CLI:         {cli_note}\n"
        f"               try: .venv/bin/muster enqueue -- python -c \"print('hi')\"; .venv/bin/muster status\n"
        f"  (credentials are also in {VAR / 'bootstrap.json'}; Ctrl-C stops everything)\n",
        flush=True,
    )

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    agent_deaths: list[float] = []
    while not stopping:
        for child in list(children):
            if child.poll() is None:
                continue
            if child is agent:
                children.remove(child)
                now = time.monotonic()
                agent_deaths = [t for t in agent_deaths if now - t < 60] + [now]
                if len(agent_deaths) >= AGENT_RESTARTS:
                    print(f"the local agent exited with {child.returncode} {len(agent_deaths)} times in a "
                          "minute; leaving it down (the server keeps running)", flush=True)  # fmt: skip
                    agent = None
                    continue
                print(f"the local agent exited with {child.returncode}; starting it again", flush=True)
                time.sleep(1)
                name, argv, env = launch[child.pid]
                agent = start(name, argv, env)
                continue
            print(f"a child exited with {child.returncode}; stopping the others", flush=True)
            code = child.returncode or 1
            stopping = True
        time.sleep(0.3)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the leader stops its own children cleanly
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
