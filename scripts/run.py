"""`make run`: migrate, first-run set-up, then the ASGI server, a celery worker with beat and a local agent.

Every child runs in its own process group; Ctrl-C (or SIGTERM) stops all of them. If the
server or celery dies the others are stopped too, so nothing is left running behind the
prompt. The local agent is a worker like any other: if it dies (a crash, a `kill -9` to see
fencing at work) it is started again, as systemd would, and the server retries its runs;
after AGENT_RESTARTS deaths within a minute it is left down and the server keeps running.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
HOST = os.environ.get("MUSTER_HOST", "127.0.0.1")
PORT = os.environ.get("MUSTER_PORT", "8000")
VAR = Path(os.environ.get("MUSTER_VAR_DIR") or ROOT / "var")
AGENT_STOP_S = 120  # the runs' default stop grace (60 s), the spool's few seconds, and room
AGENT_RESTARTS = 5


def manage(*args: str) -> str:
    return subprocess.run([PY, "manage.py", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


def wait_until_up(url: str, timeout: float = 30) -> None:
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
    # Imported here: the repository goes on sys.path just above (this script runs from scripts/).
    from muster_agent.config import config_path, save, saved  # noqa: PLC0415

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


RUN_USER = "muster-run"
# What of this process's environment the local agent gets: never the server's settings (SECRET_KEY,
# DATABASE_URL …), which runs must not see (the agent passes runs an allowlist of its own as well).
AGENT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "TMPDIR")
AGENT_ENV_PREFIXES = ("MUSTER_AGENT_", "MUSTER_CHILD_", "MUSTER_PASS_ENV", "UV_")


def run_user() -> tuple[str | None, str]:
    """As root: the unprivileged user runs execute as (created on first use); else none, and why."""
    if os.geteuid() != 0:
        return None, "as your own user (start make run as root to run them as an unprivileged user)"

    name = os.environ.get("MUSTER_RUN_AS") or RUN_USER
    try:
        pwd.getpwnam(name)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        if made.returncode != 0:
            raise SystemExit(
                f"could not create the user {name} that experiments run as ({made.stderr.strip() or 'useradd failed'}); "
                "create an unprivileged user and name it with MUSTER_RUN_AS"
            ) from None
        print(f"created the user {name} that experiments run as", flush=True)
    return name, f"as the unprivileged user {name}"


def agent_work_dir() -> Path:
    """The runs' working folders: outside this tree (runs never see the server's files), one per VAR."""
    given = os.environ.get("MUSTER_WORK_DIR")
    if given:
        return Path(given)

    tag = hashlib.sha256(str(VAR.resolve()).encode()).hexdigest()[:12]
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path(tempfile.gettempdir())  # noqa: S108 - our own folder
    return base / f"muster-{tag}" / "work"


def key_file(token: str) -> Path:
    """The agent key in VAR/agent.key, mode 600 from the start."""
    path = VAR / "agent.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    path.chmod(0o600)
    return path


def agent_environment(key: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in AGENT_ENV or k.startswith(AGENT_ENV_PREFIXES)}
    for name in os.environ.get("MUSTER_PASS_ENV", "").split(","):
        if name and name in os.environ:
            env[name] = os.environ[name]
    return {**env, "MUSTER_API_KEY_FILE": str(key)}


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens there (another `make run`, say)."""
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
    os.environ.setdefault("PUBLIC_URL", f"http://{HOST}:{PORT}")  # what the Local autoscaler's agents reach
    VAR.mkdir(parents=True, exist_ok=True)
    VAR.chmod(0o700)  # the database, the credentials and the agent's spool: this account's alone
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
    # The runs' user and folders, for the local agent and the Local autoscaler's agents alike
    # (celery starts those, and they take MUSTER_RUN_AS and MUSTER_WORK_DIR from its environment).
    run_as, isolation_note = run_user()
    work_dir = agent_work_dir()
    os.environ["MUSTER_WORK_DIR"] = str(work_dir)
    if run_as:
        os.environ["MUSTER_RUN_AS"] = run_as
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
    # The local agent: its key in a file only this account reads (never in argv or its environment),
    # its runs as an unprivileged user when this is root, in folders outside this tree.
    agent: subprocess.Popen[bytes] | None = start(
        "local agent",
        [str(Path(PY).parent / "muster"), "agent", "run", "--server", url, "--queue", "default",
         "--name", "local", "--state-dir", str(VAR / "agent"), "--work-dir", str(work_dir),
         *(["--run-as", run_as] if run_as else []), "--log-level", "warning"],
        env=agent_environment(key_file(state["agent_key"])),
    )  # fmt: skip
    cli_note = login_cli(url, state["api_key"])
    print(
        f"\n  Muster is running at {url}/\n"
        f"  admin login: {state['username']} / {state['password']}   (log in at {url}/ ; Django admin at /admin/)\n"
        f"  API key:     {state['api_key']}\n"
        f"  agent key:   {state['agent_key']}\n"
        f"  API docs:    {url}/api/docs/\n"
        f"  CLI:         {cli_note}\n"
        f"               try: .venv/bin/muster enqueue -- python3 -c \"print('hi')\"; .venv/bin/muster status\n"
        f"  runs:        {isolation_note}, in {work_dir}\n"
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
    if agent is not None and agent.poll() is None:
        stop_agent(agent)
    stop_local_machines()
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


def stop_local_machines() -> None:
    """The Local autoscaler's agents (started by celery in sessions of their own) stop with
    make run: SIGTERM drains each; the next run's autoscaler sees them gone and ends their rows."""
    for record in (VAR / "autoscalers").glob("*/*.json"):
        try:
            rec = json.loads(record.read_text())
            pid, started = int(rec["pid"]), float(rec["started"])
            if abs(psutil.Process(pid).create_time() - started) < 1:
                os.killpg(pid, signal.SIGTERM)
        except (ValueError, KeyError, OSError, psutil.Error):
            continue


def stop_agent(agent: subprocess.Popen[bytes]) -> None:
    """Stop the local agent first, while the server still hears it: a first SIGTERM drains, a
    second stops its runs with their own signal and grace (60 s unless an experiment says
    otherwise); it then reports their end and unregisters. SIGKILL only after AGENT_STOP_S."""
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=1)  # a second signal too soon after the first could merge with it
        return
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGTERM)
    print(f"stopping the local agent's runs (their stop grace; at most {AGENT_STOP_S} s)", flush=True)
    try:
        agent.wait(timeout=AGENT_STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
