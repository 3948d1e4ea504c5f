"""The agent for real: a server process, celery beat, agent processes and their child processes."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from muster_agent.client import ApiError
from tests import live
from tests.agent.test_spot import FakeMetadata
from tests.live import Stack, run_processes, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow]


def _q(st: Stack, name: str) -> str:
    st.queue(name)
    return name


PROGRESS = textwrap.dedent(
    """
    import muster, time
    for i in range(1, 201):
        print(f"line {i}")
        if i % 50 == 0:
            print(f"MUSTER_ITERATION={i}")
            muster.report(iteration=i, loss=1.0 / i)
    """
)


def test_a_run_completes_with_every_line_in_order_and_its_iterations(st: Stack) -> None:
    q = _q(st, "live-complete")
    st.start_agent("complete-1", [q], "--cpu-only")
    exp = st.enqueue(q, script=PROGRESS)
    done = st.wait_status(exp["id"], "completed", "failed")
    assert done["status"] == "completed" and done["exit_code"] == 0
    assert done["last_iteration"] == 200 and done["last_metrics"] == {"loss": 0.005}
    lines = [line for line in st.logs(exp["id"]).splitlines() if line.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, 201)]


def test_a_failing_run_fails_with_its_exit_code(st: Stack) -> None:
    q = _q(st, "live-fail")
    st.start_agent("fail-1", [q], "--cpu-only")
    exp = st.enqueue(q, command=[sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"])
    done = st.wait_status(exp["id"], "failed", "completed")
    assert (done["status"], done["exit_code"]) == ("failed", 3)
    assert "oops" in st.logs(exp["id"])


STUBBORN = textwrap.dedent(
    """
    import os, signal, time
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(600)
    """
)


def test_stop_mid_run_leaves_no_process_of_it(st: Stack) -> None:
    q = _q(st, "live-stop")
    st.start_agent("stop-1", [q], "--cpu-only")
    exp = st.enqueue(q, script=STUBBORN, stop_grace_s=1)
    st.wait_status(exp["id"], "in_progress")
    wait_for(lambda: len(run_processes(st.experiment(exp["id"])["current_attempt"])) == 2,
             what="the run and its setsid grandchild")  # fmt: skip
    st.admin.request("POST", f"experiments/{exp['id']}/stop/", {})
    done = st.wait_status(exp["id"], "stopped", timeout=30)
    assert done["status"] == "stopped"
    for attempt in st.attempts(exp["id"]):
        assert run_processes(attempt["id"]) == []  # every process of the run is gone, the setsid one too


def test_two_runs_pack_onto_a_two_slot_agent_and_four_gpus_never_fit(st: Stack) -> None:
    q = _q(st, "live-gpus")
    script = "import os, time; print('gpus=' + os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(3)"
    big = st.enqueue(q, script="print('too big')", gpus=4, priority=10)
    a = st.enqueue(q, script=script, gpus=1)
    b = st.enqueue(q, script=script, gpus=1)
    st.start_agent("gpus-1", [q], "--gpus", "0,1")
    wait_for(
        lambda: st.experiment(a["id"])["status"] == st.experiment(b["id"])["status"] == "in_progress",
        what="both to run at once",
    )
    for exp in (a, b):
        st.wait_status(exp["id"], "completed")
    seen = sorted(st.logs(e["id"]).strip() for e in (a, b))
    assert seen == ["gpus=0", "gpus=1"]
    assert st.experiment(big["id"])["status"] == "queued"


def test_a_killed_agent_is_lost_and_its_run_retried_elsewhere(st: Stack) -> None:
    timeout = float(st.env["WORKER_TIMEOUT"])
    # The checker gives no verdict in its first two timeouts (a restart never fails runs): start
    # after that grace (celery's own start-up, up to 4 s here, included), so the bound below is the rule's.
    time.sleep(max(0.0, st.celery_started + 4 + 2 * timeout - time.monotonic()))
    q = _q(st, "live-lost")
    doomed = st.start_agent("lost-1", [q], "--cpu-only")
    exp = st.enqueue(q, script="import time; print('go', flush=True); time.sleep(4); print('done')",
                     retry_policy={"worker_lost": 2})  # fmt: skip
    st.wait_status(exp["id"], "in_progress")
    first = st.attempts(exp["id"])[0]
    wait_for(lambda: "go" in st.logs(exp["id"]), what="the first attempt to print")
    os.killpg(doomed.pid, signal.SIGKILL)
    lost_at = time.monotonic()
    wait_for(lambda: st.worker("lost-1")["status"] == "lost", timeout=20, what="the worker to be lost")
    assert time.monotonic() - lost_at < 2 * timeout + 3  # two timeouts and a beat tick or so
    wait_for(lambda: st.experiment(exp["id"])["status"] == "queued", what="the retry to be queued")
    st.start_agent("lost-2", [q], "--cpu-only")
    done = st.wait_status(exp["id"], "completed", "failed")
    assert done["status"] == "completed" and done["retry_count"] == 1
    attempts = st.attempts(exp["id"])
    assert [a["outcome"] for a in attempts] == ["failed", "completed"] or [a["outcome"] for a in attempts] == [
        "completed", "failed"]  # fmt: skip
    # The old agent's late word, with the lease token it still holds in its spool, is refused.
    old_token = json.loads((st.dir / "agent-lost-1" / "spool" / first["id"] / "meta").read_text())["token"]
    with pytest.raises(ApiError) as late:
        st.agent_client.request("POST", f"attempts/{first['id']}/finish/", {"token": old_token, "outcome": "completed"})
    assert (late.value.status, late.value.code) == (409, "stale_lease")
    assert late.value.body["error"]["kill"] is True


def test_the_server_killed_and_restarted_mid_run_loses_nothing(st: Stack) -> None:
    q = _q(st, "live-restart")
    st.start_agent("restart-1", [q], "--cpu-only")
    script = "import time\nfor i in range(60):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.1)\n"
    exp = st.enqueue(q, script=script)
    st.wait_status(exp["id"], "in_progress")
    wait_for(lambda: "tick 5" in st.logs(exp["id"]), what="some output")
    st.kill_server()
    time.sleep(3)  # the run goes on and finishes while the server is away
    st.start_server()
    done = st.wait_status(exp["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed" and done["retry_count"] == 0
    assert len(st.attempts(exp["id"])) == 1
    ticks = [line for line in st.logs(exp["id"]).splitlines() if line.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(60)]


def test_three_agents_on_two_queues_honor_priority_and_fairness(st: Stack) -> None:
    hi, lo = _q(st, "live-hi"), _q(st, "live-lo")
    cpus = os.cpu_count() or 1
    quick = {"script": "print('x')", "cpus": cpus}  # one run at a time per agent

    def started_order(ids: list[str]) -> list[str]:
        exps = [st.experiment(i) for i in ids]
        return [e["id"] for e in sorted(exps, key=lambda e: e["started_at"])]

    lo1 = st.enqueue(lo, name="lo1", **quick)
    lo2 = st.enqueue(lo, name="lo2", priority=5, **quick)
    hi1 = st.enqueue(hi, name="hi1", **quick)
    hi2 = st.enqueue(hi, name="hi2", **quick)
    st.start_agent("strict-1", [hi, lo], "--cpu-only")
    ids = [e["id"] for e in (lo1, lo2, hi1, hi2)]
    for i in ids:
        st.wait_status(i, "completed")
    assert started_order(ids) == [hi1["id"], hi2["id"], lo2["id"], lo1["id"]]  # queue order, then priority
    st.admin.request("PATCH", "workers/strict-1/", {"drain": True})

    fair = [st.enqueue(q, name=f"{q}-{i}", **quick) for q in (hi, lo) for i in range(2)]
    st.start_agent("fair-1", [hi, lo], "--cpu-only", "--order-fairness")
    for e in fair:
        st.wait_status(e["id"], "completed")
    order = [st.experiment(i)["queue_name"] for i in started_order([e["id"] for e in fair])]
    assert order in (["live-hi", "live-lo", "live-hi", "live-lo"], ["live-lo", "live-hi", "live-lo", "live-hi"])
    st.admin.request("PATCH", "workers/fair-1/", {"drain": True})

    st.start_agent("lo-only-1", [lo], "--cpu-only")
    only_hi = st.enqueue(hi, name="hi-left", **quick)
    only_lo = st.enqueue(lo, name="lo-taken", **quick)
    st.wait_status(only_lo["id"], "completed")
    st.wait_rounds("lo-only-1")  # it went back for work (and found none it may take) several times
    assert st.experiment(only_hi["id"])["status"] == "queued"


def test_the_fake_nvml_two_gpu_report_reaches_the_server(st: Stack) -> None:
    q = _q(st, "live-nvml")
    st.start_agent("nvml-1", [q], env={"MUSTER_AGENT_NVML": "tests.fake_nvml"})
    worker = st.worker("nvml-1")
    assert worker is not None and worker["gpus"] == 2
    stats = wait_for(
        lambda: (s := st.admin.request("GET", "workers/nvml-1/stats/", params={"span": "3h"}))["points"] and s,
        what="a stored report",
    )
    last = stats["points"][-1]
    gpus = last["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    for g in gpus:
        assert {"util", "memory_used_mb", "memory_free_mb", "temperature_c", "ecc_errors"} <= set(g)
    for key in ("cpu_percent", "memory_used_mb", "memory_free_mb", "network_rx_bps", "disk_free_mb"):
        assert last[key] is not None, key


def test_answers_lost_after_the_server_committed_store_logs_and_status_once(st: Stack) -> None:
    q = _q(st, "live-drops")
    proxy = live.DropProxy(st.port, {"start": 1, "logs": 3, "progress": 1, "finish": 2})
    try:
        st.start_agent("drops-1", [q], "--cpu-only", url=proxy.url)
        script = "import time\nfor i in range(40):\n    print(f'row {i}', flush=True)\n    time.sleep(0.05)\nprint('MUSTER_ITERATION=40')\n"
        exp = st.enqueue(q, script=script)
        done = st.wait_status(exp["id"], "completed", "failed", timeout=90)
        # The first finish already committed on the server; the agent retries until it hears an answer.
        wait_for(
            lambda: proxy.forwarded.get("finish", 0) >= 3, what="the agent hearing its finish answered", timeout=60
        )
    finally:
        proxy.close()
    assert proxy.dropped == {"start": 1, "logs": 3, "progress": 1, "finish": 2}
    assert done["status"] == "completed" and done["last_iteration"] == 40 and done["retry_count"] == 0
    rows = [line for line in st.logs(exp["id"]).splitlines() if line.startswith("row")]
    assert rows == [f"row {i}" for i in range(40)]
    attempts = st.attempts(exp["id"])
    assert len(attempts) == 1 and attempts[0]["outcome"] == "completed"


def _cli(st: Stack, home: Path, *args: str, key: str | None = None, env: dict[str, str] | None = None) -> Any:
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    cli_env.update({"MUSTER_CONFIG": str(home / "config.json"), "PYTHONPATH": str(live.ROOT), "COLUMNS": "200"})
    if key:
        cli_env["MUSTER_API_KEY"] = key
    cli_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "muster_agent", *args],
        cwd=live.ROOT,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_cli_command_against_the_live_server(st: Stack, tmp_path: Path) -> None:
    q = _q(st, "live-cli")
    st.start_agent("cli-1", [q], "--cpu-only")
    r = _cli(
        st, tmp_path, "login", "--server", st.url, "--username", "admin", env={"MUSTER_PASSWORD": st.admin_password}
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "config.json").stat().st_mode & 0o077 == 0

    r = _cli(st, tmp_path, "queues", "--json")
    assert r.returncode == 0 and "live-cli" in [row["name"] for row in json.loads(r.stdout)]
    r = _cli(st, tmp_path, "queues")
    assert r.returncode == 0 and "live-cli" in r.stdout
    r = _cli(st, tmp_path, "workers", "--json")
    assert "cli-1" in [w["name"] for w in json.loads(r.stdout)]

    r = _cli(st, tmp_path, "enqueue", "--queue", q, "--json", "--", "python3", "-c", "print('hi from cli')")
    assert r.returncode == 0, r.stderr
    exp_id = json.loads(r.stdout)["experiment"]["id"]
    r = _cli(st, tmp_path, "logs", exp_id, "-f")
    assert r.returncode == 0 and "hi from cli" in r.stdout
    r = _cli(st, tmp_path, "status", exp_id, "--json")
    assert json.loads(r.stdout)["status"] == "completed"
    r = _cli(st, tmp_path, "status")
    assert r.returncode == 0 and exp_id in r.stdout

    r = _cli(st, tmp_path, "rerun", exp_id, "--set", "lr=0.5", "--json")
    assert r.returncode == 0, r.stderr
    clone = json.loads(r.stdout)["experiment"]
    assert clone["id"] != exp_id and clone["parameters"] == {"lr": 0.5}
    assert _cli(st, tmp_path, "status", clone["id"], "--wait").returncode == 0

    r = _cli(st, tmp_path, "enqueue", "--queue", q, "--", "python3", "-c", "import sys; sys.exit(4)")
    failing = r.stdout.split()[0]
    assert _cli(st, tmp_path, "logs", failing, "-f").returncode == 1

    r = _cli(st, tmp_path, "enqueue", "--queue", q, "--json", "--", "sleep", "60")
    sleeper = json.loads(r.stdout)["experiment"]["id"]
    st.wait_status(sleeper, "in_progress")
    assert _cli(st, tmp_path, "stop", sleeper).returncode == 0
    assert _cli(st, tmp_path, "status", sleeper, "--wait").returncode == 7

    idle_q = _q(st, "live-cli-idle")
    r = _cli(st, tmp_path, "enqueue", "--queue", idle_q, "--", "true")
    assert "no live worker" in r.stderr.lower() or r.returncode == 0
    waiting = r.stdout.split()[0]
    r = _cli(st, tmp_path, "dequeue", waiting, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["experiment"]["status"] != "queued"

    # The autoscalers (an admin's key): the Local app the first run made, shown, stopped and started, exported and imported.
    r = _cli(st, tmp_path, "autoscalers", key=st.admin_key)
    assert r.returncode == 0 and "local" in r.stdout and "autoscaled" in r.stdout, r.stderr
    r = _cli(st, tmp_path, "autoscalers", "show", "local", key=st.admin_key)
    assert r.returncode == 0 and "local (local): running" in r.stdout and "autoscaled -> agent" in r.stdout
    assert "stopped" in _cli(st, tmp_path, "autoscalers", "stop", "local", key=st.admin_key).stdout
    assert "running" in _cli(st, tmp_path, "autoscalers", "start", "local", key=st.admin_key).stdout
    exported = json.loads(_cli(st, tmp_path, "autoscalers", "export", "local", key=st.admin_key).stdout)
    (tmp_path / "copy.json").write_text(json.dumps({**exported, "name": "local-copy", "workers_prefix": "copy"}))
    r = _cli(st, tmp_path, "autoscalers", "import", str(tmp_path / "copy.json"), key=st.admin_key)
    assert r.returncode == 0 and "local-copy created" in r.stdout, r.stderr
    assert "stop" in _cli(st, tmp_path, "autoscalers", "console", "local", key=st.admin_key).stdout
    assert _cli(st, tmp_path, "autoscalers", "show", "nothing-here", key=st.admin_key).returncode == 2

    assert _cli(st, tmp_path, "status", "0" * 32).returncode == 3
    assert _cli(st, tmp_path, "dequeue", exp_id).returncode in (0, 5)
    assert _cli(st, tmp_path, "enqueue", "--queue", q).returncode == 2
    r = _cli(st, tmp_path, "queues", key="mk0000.nope")
    assert r.returncode == 4 and "muster:" in r.stderr
    r = _cli(st, tmp_path, "queues", "--server", "http://127.0.0.1:9")
    assert r.returncode == 6 and "cannot reach" in r.stderr


def test_sigterm_drains_and_a_second_sigterm_stops_the_runs(st: Stack) -> None:
    q = _q(st, "live-sigterm")
    agent = st.start_agent("term-1", [q], "--cpu-only")
    cpus = os.cpu_count() or 1
    first = st.enqueue(q, script="import time; time.sleep(3); print('finished')", cpus=cpus)
    st.wait_status(first["id"], "in_progress")
    # In progress on the server is not yet running on the agent (the claim's answer may be on its
    # way; a SIGTERM then gives the claim back unstarted, tested below): wait for the process.
    first_attempt = wait_for(lambda: st.experiment(first["id"])["current_attempt"])
    wait_for(lambda: run_processes(first_attempt), what="the first run's process")
    agent.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: no new work" in st.agent_log("term-1"), what="the agent to start draining")
    second = st.enqueue(q, script="print('never here')", cpus=cpus)
    assert st.wait_status(first["id"], "completed")["status"] == "completed"  # the run was let finish
    assert agent.wait(timeout=30) == 0
    assert st.worker("term-1") is None  # it said goodbye
    assert st.experiment(second["id"])["status"] == "queued"  # and took nothing new

    agent = st.start_agent("term-2", [q], "--cpu-only")
    st.wait_status(second["id"], "completed")
    third = st.enqueue(q, script="import time; print('long', flush=True); time.sleep(60)", stop_grace_s=1)
    st.wait_status(third["id"], "in_progress")
    attempt = wait_for(lambda: st.experiment(third["id"])["current_attempt"])
    wait_for(lambda: run_processes(attempt), what="the run's process")
    agent.send_signal(signal.SIGTERM)
    wait_for(lambda: "draining: no new work" in st.agent_log("term-2"), what="the first signal's drain")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    assert run_processes(attempt) == []
    after = st.experiment(third["id"])
    assert after["status"] == "queued" and after["retry_count"] == 0  # interrupted: back to the front, no retry used
    first_try = st.attempts(third["id"])[0]
    assert first_try["failure_class"] == "interrupted", first_try  # the message says which path ended it
    st.admin.request("POST", f"experiments/{third['id']}/dequeue/", {})


def test_a_box_that_fails_quickly_again_and_again_drains_itself(st: Stack) -> None:
    q = _q(st, "live-selfdrain")
    st.start_agent("flaky-1", [q], "--cpu-only", "--drain-after", "3")
    for _ in range(3):
        exp = st.enqueue(q, command=["/bin/false"])
        st.wait_status(exp["id"], "failed")
    worker = wait_for(lambda: (w := st.worker("flaky-1")) and w["draining"] and w, what="the drain")
    assert "3 runs in a row failed" in worker["drain_reason"]
    left = st.enqueue(q, command=["/bin/true"])
    st.wait_rounds("flaky-1")  # it kept reporting, draining, and took nothing
    assert st.experiment(left["id"])["status"] == "queued"


def test_a_users_secret_reaches_the_run_and_never_its_log(st: Stack) -> None:
    q = _q(st, "live-secrets")
    st.start_agent("secrets-1", [q], "--cpu-only")
    st.admin.request("PUT", "secrets/WANDB_API_KEY/", {"value": "wandb-0123456789"})
    code = "import os, hashlib; v = os.environ['WANDB_API_KEY']; print('key', v); print(hashlib.sha256(v.encode()).hexdigest())"
    exp = st.enqueue(q, command=[sys.executable, "-c", code])
    assert st.wait_status(exp["id"], "completed", "failed")["status"] == "completed"
    text = st.logs(exp["id"])
    assert "wandb-0123456789" not in text and "key ***" in text
    assert hashlib.sha256(b"wandb-0123456789").hexdigest() in text
    assert "wandb-0123456789" not in json.dumps(st.experiment(exp["id"]))


ESCAPING_RUN = """import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()  # out of the run's process group and session
    if os.fork() == 0:  # and re-parented: only the attempt's variable still names it
        time.sleep(600)
    os._exit(0)
print('up', flush=True)
time.sleep(600)
"""


def test_a_restarted_agent_ends_the_runs_its_killed_instance_left(st: Stack) -> None:
    q = _q(st, "live-phoenix")
    agent = st.start_agent("phoenix-1", [q], "--cpu-only")
    exp = st.enqueue(q, script=ESCAPING_RUN, retry_policy={"worker_lost": 2}, stop_grace_s=1)
    st.wait_status(exp["id"], "in_progress")
    first = wait_for(lambda: st.experiment(exp["id"])["current_attempt"])

    def recorded_pid() -> int | None:
        try:
            return int(json.loads((st.dir / "agent-phoenix-1" / "runs" / f"{first}.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None  # not written yet

    leader = wait_for(recorded_pid, what="the run's process in the agent's ledger")

    def escaped() -> list[Any]:
        """The grandchild: out of the leader's session, and no longer the leader's child."""
        found = []
        for proc in run_processes(first):
            try:
                if proc.pid != leader and proc.ppid() != leader and os.getsid(proc.pid) != os.getsid(leader):
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    wait_for(escaped, what="the run's escaped grandchild")
    os.killpg(agent.pid, signal.SIGKILL)  # the agent's group: its runs have sessions of their own
    agent.wait(timeout=10)
    # The run's launcher outlives the agent by the run's grace (1 s) at most: it ends the whole
    # run, the grandchild that left its session included, without waiting for a restart.
    wait_for(lambda: not run_processes(first), timeout=15, what="the run to die with its agent")

    st.start_agent("phoenix-1", [q], "--cpu-only")  # the same name and state folder, as make run restarts it
    wait_for(lambda: not run_processes(first), what="the previous instance's runs to end")
    second = wait_for(lambda: (a := st.experiment(exp["id"])["current_attempt"]) and a != first and a,
                      what="attempt 2")  # fmt: skip
    wait_for(lambda: run_processes(second), what="attempt 2's process")
    assert run_processes(first) == []  # attempt 2 runs alone
    assert st.attempts(exp["id"])[0]["failure_class"] == "worker_lost"
    st.admin.request("POST", f"experiments/{exp['id']}/stop/", {})
    assert st.wait_status(exp["id"], "stopped")["status"] == "stopped"
    wait_for(lambda: not run_processes(second), what="nothing of the stopped run")
    assert list((st.dir / "agent-phoenix-1" / "runs").glob("*.json")) == []


def test_an_agent_that_cannot_reach_the_server_stops_when_told(st: Stack, tmp_path: Path) -> None:
    """Registering against a server that is not there: SIGTERM ends the agent at once."""
    agent = subprocess.Popen(
        [sys.executable, "-m", "muster_agent", "agent", "run", "--server", "http://127.0.0.1:9", "--name", "nowhere-1",
         "--state-dir", str(tmp_path / "state"), "--cpu-only"],
        cwd=live.ROOT, env={**st.env, "MUSTER_API_KEY": st.agent_key, "MUSTER_RUN_AS": pwd.getpwuid(os.geteuid()).pw_name},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: agent.poll() is None and (tmp_path / "state" / "spool").is_dir(), what="the agent to start")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()


def test_a_drain_with_the_server_away_ends_within_its_bound(st: Stack) -> None:
    """SIGTERM while the server is down: the run finishes, its end waits in the spool (at most 30 s),
    the agent exits; its next start delivers what is left."""
    q = _q(st, "live-drain-away")
    agent = st.start_agent("away-1", [q], "--cpu-only")
    exp = st.enqueue(q, script="import time; print('go', flush=True); time.sleep(1); print('done')")
    st.wait_status(exp["id"], "in_progress")
    attempt = wait_for(lambda: st.experiment(exp["id"])["current_attempt"])
    wait_for(lambda: run_processes(attempt), what="the run's process")
    st.kill_server()
    try:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0  # the run's second, then at most 30 s of delivery
        assert run_processes(attempt) == []
        spooled = st.dir / "agent-away-1" / "spool" / attempt
        assert spooled.is_dir()  # its end, not delivered yet
    finally:
        st.start_server()
    st.start_agent("away-1", [q], "--cpu-only")
    done = st.wait_status(exp["id"], "completed", "failed")
    assert done["status"] == "completed" and done["retry_count"] == 0  # its own end, delivered before registering
    assert len(st.attempts(exp["id"])) == 1


def test_an_agent_restarted_after_a_crash_stops_when_told(st: Stack) -> None:
    """A killed instance left spool folders of attempts the server already ended (only their
    `meta`): they are forgotten, and a SIGTERM stops the new instance at once."""
    q = _q(st, "live-stale-spool")
    stale = st.dir / "agent-stale-1" / "spool" / ("f" * 32)
    stale.mkdir(parents=True)
    (stale / "meta").write_text(json.dumps({"token": "gone", "experiment": "e" * 32}))
    agent = st.start_agent("stale-1", [q], "--cpu-only")
    wait_for(lambda: not stale.exists(), what="the stale spool folder to be forgotten")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    assert st.worker("stale-1") is None  # it unregistered


def test_a_spot_notice_stops_the_runs_as_interrupted_and_they_go_back_to_the_front(st: Stack) -> None:

    metadata = FakeMetadata()
    try:
        q = _q(st, "live-spot")
        st.start_agent("spot-1", [q], "--cpu-only", "--spot-notice", "aws", "--spot-metadata-url", metadata.url)
        exp = st.enqueue(q, name="long", command=["sleep", "120"])
        st.wait_status(exp["id"], "in_progress", timeout=30)
        metadata.action = {"action": "terminate", "time": "2026-12-07T20:00:00Z"}
        after = wait_for(lambda: (e := st.experiment(exp["id"]))["status"] == "queued" and e, timeout=30,
                         what="the run back in its queue")  # fmt: skip
        assert after["retry_count"] == 0  # the cloud's doing: no retry used
        (first,) = st.attempts(exp["id"])
        assert first["failure_class"] == "interrupted" and "spot instance" in first["message"], first
        assert "stopping every run as interrupted" in st.agent_log("spot-1")
    finally:
        metadata.server.shutdown()
