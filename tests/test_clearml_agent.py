"""Unmodified clearml-agent releases (3.0.3 and 1.9.2, installed by scripts/clearml-agents.sh) against
a live Muster: they register, run what our API and ClearML's tasks.enqueue queue, honour priority
between their queues, abort on our stop, report failures, send machine stats, obey
`force_workers:off`, unregister on SIGTERM, and never share an experiment with a native agent.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import live
from tests.live import Stack, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.clearml_agent]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from live.module_stack(tmp_path_factory, "clearml", WORKER_TIMEOUT="10")


@pytest.fixture(autouse=True)
def _agents_end_with_their_test(cs: Stack) -> Iterator[None]:
    """A test that fails half-way does not leave its agents serving the next test's queues."""
    before = len(cs.agents)
    yield
    for proc in cs.agents[before:]:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_clearml_agent(stack: Stack, version: str, name: str, queues: list[str]) -> subprocess.Popen[bytes]:
    binary = ROOT / "var" / f"clearml-agent-{version}" / "bin" / "clearml-agent"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: scripts/clearml-agents.sh installs it (make test runs it)")
    access, secret = stack.agent_key.split(".", 1)
    home = stack.dir / f"clearml-{name}"  # beside the stack's logs: a failure report shows its errors
    home.mkdir()
    config = home / "clearml.conf"
    config.write_text(
        f'api {{ api_server: "{stack.url}/clearml", web_server: "{stack.url}", files_server: "{stack.url}",\n'
        f'  credentials {{ access_key: "{access}", secret_key: "{secret}" }} }}\n'
        f'agent {{ worker_name: "{name}", disable_agent_update_check: true, venvs_dir: "{home}/venvs",\n'
        f"  vcs_cache {{ enabled: false }}, package_manager {{ type: pip }} }}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML", "MUSTER", "DATABASE_URL", "REDIS_URL"))}
    env.update({
        "HOME": str(home), "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "1", "CLEARML_AGENT_QUEUE_POLL_FREQ_SEC": "1",
        "CLEARML_AGENT_STATUS_REPORT_FREQ_SEC": "2", "CLEARML_AGENT_DISABLE_SSH_MOUNT": "1",
    })  # fmt: skip
    log = open(home / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [str(binary), "--config-file", str(config), "daemon", "--queue", *queues, "--foreground"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    stack.agents.append(proc)
    wait_for(lambda: stack.worker(f"{name}:0"), timeout=60, what=f"clearml-agent {version} to register")
    return proc


def script(lines: int, *, sleep: float = 0.1, exit_code: int = 0) -> str:
    return (f"import sys, time\nfor i in range({lines}):\n    print(f'line {{i}}', flush=True)\n"
            f"    time.sleep({sleep})\nsys.exit({exit_code})\n")  # fmt: skip


def started(stack: Stack, exp_id: str) -> str:
    return str(stack.attempts(exp_id)[-1]["started_at"])


def facade(stack: Stack, endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
    access, secret = stack.admin_key.split(".", 1)
    basic = "Basic " + base64.b64encode(f"{access}:{secret}".encode()).decode()
    request = urllib.request.Request(  # noqa: S310 - the live stack
        f"{stack.url}/clearml/{endpoint}", data=json.dumps(data).encode(), method="POST",
        headers={"Authorization": basic, "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 - the live stack
        return json.load(answer)["data"]  # type: ignore[no-any-return]


def test_clearml_agent_3_serves_our_queues(cs: Stack) -> None:
    for q in ("cl-hi", "cl-lo"):
        cs.queue(q)
    proc = start_clearml_agent(cs, "3.0.3", "cla3", ["cl-hi", "cl-lo"])
    worker = cs.worker("cla3:0")
    assert worker is not None and worker["kind"] == "clearml"
    # Enqueued through our API: runs to completion with its log.
    first = cs.enqueue("cl-lo", name="from our API", script=script(5))
    done = cs.wait_status(first["id"], "completed", "failed", timeout=90)
    assert done["status"] == "completed" and done["exit_code"] == 0
    assert [f"line {i}" for i in range(5)] == [x for x in cs.logs(first["id"]).splitlines() if x.startswith("line")]
    assert cs.attempts(first["id"])[0]["worker"] == "cla3:0"
    # Enqueued through ClearML's tasks.enqueue.
    made = cs.admin.request("POST", "experiments/", {"name": "via tasks.enqueue", "script": script(2)})["experiment"]
    assert facade(cs, "tasks.enqueue", {"task": made["id"], "queue_name": "cl-hi"})["queued"] == 1
    assert cs.wait_status(made["id"], "completed", "failed", timeout=90)["status"] == "completed"
    # Priority between its queues: while it is busy, a later cl-hi task overtakes an earlier cl-lo one.
    blocker = cs.enqueue("cl-lo", name="blocker", script=script(30, sleep=0.2))
    cs.wait_status(blocker["id"], "in_progress", timeout=60)
    low = cs.enqueue("cl-lo", name="low", script=script(1))
    high = cs.enqueue("cl-hi", name="high", script=script(1))
    for e in (blocker, low, high):
        cs.wait_status(e["id"], "completed", timeout=120)
    assert started(cs, high["id"]) < started(cs, low["id"])
    # A failing script is failed, with its exit code.
    failing = cs.enqueue("cl-lo", name="fails", script=script(1, exit_code=3))
    failed = cs.wait_status(failing["id"], "completed", "failed", timeout=90)
    assert failed["status"] == "failed" and failed["exit_code"] == 3
    # Our stop aborts it.
    long = cs.enqueue("cl-lo", name="long", script=script(600, sleep=0.2))
    cs.wait_status(long["id"], "in_progress", timeout=60)
    wait_for(lambda: "line 3" in cs.logs(long["id"]), timeout=60, what="the long run to print")
    cs.admin.request("POST", f"experiments/{long['id']}/stop/", {})
    assert cs.wait_status(long["id"], "stopped", timeout=60)["status"] == "stopped"
    # Machine stats reach its worker's series.
    points = wait_for(lambda: cs.admin.request("GET", "workers/cla3:0/stats/", params={"span": "3h"})["points"],
                      timeout=30, what="stored machine stats")  # fmt: skip
    assert any(p.get("cpu_percent") is not None for p in points)
    # force_workers:off on its queue: it stops taking work there until the tag goes.
    hi = next(q for q in cs.admin.request("GET", "queues/") if q["name"] == "cl-hi")
    cs.admin.request("PATCH", f"queues/{hi['id']}/", {"tags": ["force_workers:off"]})
    # clearml-agent reads its queues' tags itself, once a loop: let it see the tag before the
    # work arrives (on a loaded machine, a loop that began before the tag took it).
    cs.wait_rounds("cla3:0", rounds=2, timeout=90)
    held = cs.enqueue("cl-hi", name="held", script=script(1))

    cs.wait_rounds("cla3:0", rounds=3, timeout=90)  # it asked for work and reported, three times over
    assert cs.experiment(held["id"])["status"] == "queued"
    cs.admin.request("PATCH", f"queues/{hi['id']}/", {"tags": []})
    assert cs.wait_status(held["id"], "completed", timeout=90)["status"] == "completed"
    # SIGTERM: it unregisters.
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    wait_for(lambda: cs.worker("cla3:0") is None, timeout=30, what="the worker to unregister")


def test_clearml_agent_1_9_2_runs_fails_and_stops(cs: Stack) -> None:
    cs.queue("cl-old")
    proc = start_clearml_agent(cs, "1.9.2", "cla1", ["cl-old"])
    ok = cs.enqueue("cl-old", name="old ok", script=script(3))
    bad = cs.enqueue("cl-old", name="old bad", script=script(1, exit_code=2))
    assert cs.wait_status(ok["id"], "completed", "failed", timeout=90)["status"] == "completed"
    assert "line 2" in cs.logs(ok["id"])
    assert cs.wait_status(bad["id"], "completed", "failed", timeout=90)["exit_code"] == 2
    long = cs.enqueue("cl-old", name="old long", script=script(600, sleep=0.2))
    cs.wait_status(long["id"], "in_progress", timeout=60)
    cs.admin.request("POST", f"experiments/{long['id']}/stop/", {})
    assert cs.wait_status(long["id"], "stopped", timeout=60)["status"] == "stopped"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_native_and_a_clearml_agent_never_take_the_same_experiment(cs: Stack) -> None:
    cs.queue("cl-shared")
    start_clearml_agent(cs, "3.0.3", "clshare", ["cl-shared"])
    cs.start_agent("native-share", ["cl-shared"], "--cpu-only")
    ids = [cs.enqueue("cl-shared", name=f"shared {i}", script=script(2))["id"] for i in range(8)]
    for exp_id in ids:
        assert cs.wait_status(exp_id, "completed", "failed", timeout=180)["status"] == "completed"
    workers = []
    for exp_id in ids:
        attempts = cs.attempts(exp_id)
        assert len(attempts) == 1, attempts  # one attempt each: nobody took it twice
        workers.append(attempts[0]["worker"])
    assert set(workers) <= {"clshare:0", "native-share"}
