"""Runs on this machine (real child processes) and GPU monitoring through a stand-in NVML."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

import tests.fake_nvml as nvml
from muster_agent.monitor import Gpus, Sampler
from muster_agent.runner import Ending, Run, RunContext, reap_orphans
from muster_agent.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, spec: dict[str, Any], gpus: list[int] | None = None) -> Run:
    ctx = RunContext(
        worker="w1",
        server="http://127.0.0.1:9",
        spool=Spool(tmp_path / "spool"),
        work_root=tmp_path / "work",
        report_socket=str(tmp_path / "none.sock"),
        python=sys.executable,
    )
    claim = {
        # A fresh id per run: the tests find a run's processes by it, so two suites at once never meet.
        "attempt": {"id": uuid.uuid4().hex, "number": 1, "token": "tok", "queue": "default"},
        "experiment": {"id": "e" * 32, "stop_signal": "SIGTERM", "stop_grace_s": 1, **spec},
    }
    return Run(ctx, claim, gpus or [], "channel-token")


def _drive(run: Run, *, until: float = 30) -> None:
    deadline = time.monotonic() + until
    while time.monotonic() < deadline:
        try:
            kids = psutil.Process().children(recursive=True)
        except psutil.Error:
            kids = []
        run.refresh_pids(kids)
        if run.tick(time.monotonic()):
            return
        time.sleep(0.05)
    raise AssertionError("the run did not end")


def _messages(run: Run) -> list[dict[str, Any]]:
    spool = run.ctx.spool
    out = []
    while (h := spool.head(run.id)) is not None:
        out.append(h[1])
        spool.done(h[0])
    return out


def test_a_script_runs_with_its_environment_and_iterations(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MUSTER_API_KEY", "the-agent-key")
    script = textwrap.dedent(
        """
        import os
        print("cuda", os.environ["CUDA_VISIBLE_DEVICES"])
        print("key", os.environ.get("MUSTER_API_KEY"))
        print("param", os.environ["MUSTER_PARAMETERS"])
        print("MUSTER_ITERATION=7")
        print("secret", os.environ["TOKEN"])
        """
    )
    run = _run(tmp_path, {"script": script, "parameters": {"lr": 0.1}, "secret_env": {"TOKEN": "s3"}}, gpus=[1, 3])
    run.start()
    _drive(run)
    msgs = _messages(run)
    text = "".join(c["text"] for m in msgs if m["kind"] == "logs" for c in m["body"]["chunks"])
    assert "cuda 1,3\n" in text and "key None\n" in text and 'param {"lr": 0.1}' in text and "secret s3" in text
    assert msgs[0]["kind"] == "start"
    assert any(m["kind"] == "progress" and m["body"]["iteration"] == 7 for m in msgs)
    finish = msgs[-1]
    assert finish["kind"] == "finish" and finish["body"]["outcome"] == "completed"
    assert finish["body"]["exit_code"] == 0


def test_a_failing_command_reports_its_exit_code(tmp_path: Path) -> None:
    run = _run(tmp_path, {"command": [sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"]})
    run.start()
    _drive(run)
    finish = _messages(run)[-1]["body"]
    assert (finish["outcome"], finish["exit_code"], finish["failure_class"]) == ("failed", 3, "user_error")


GRANDCHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    if os.fork() == 0:
        os.setsid()                                   # leaves the run's process group
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and ignores the polite signal
        if os.fork() == 0:
            time.sleep(600)
        time.sleep(600)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("started", flush=True)
    time.sleep(600)
    """
)


def _run_processes(attempt_id: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("MUSTER_ATTEMPT_ID") == attempt_id and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def test_stop_kills_every_process_even_setsid_ones_that_ignore_sigterm(tmp_path: Path) -> None:
    run = _run(tmp_path, {"command": [sys.executable, "-c", GRANDCHILD]})
    run.start()
    deadline = time.monotonic() + 20
    while len(_run_processes(run.id)) < 3 and time.monotonic() < deadline:
        run.refresh_pids(psutil.Process().children(recursive=True))
        time.sleep(0.05)
    run.refresh_pids(psutil.Process().children(recursive=True))
    assert len(_run_processes(run.id)) == 3
    started = time.monotonic()
    run.request_stop(Ending("stopped", "stopped", "stopped by a user"))
    _drive(run)
    assert time.monotonic() - started >= 0.9  # the grace period was given
    assert _run_processes(run.id) == []
    assert _messages(run)[-1]["body"]["outcome"] == "stopped"


def test_max_runtime_ends_a_run_as_a_timeout(tmp_path: Path) -> None:
    run = _run(tmp_path, {"command": ["sleep", "60"], "max_runtime_s": 1})
    run.start()
    _drive(run)
    finish = _messages(run)[-1]["body"]
    assert (finish["outcome"], finish["failure_class"]) == ("failed", "timeout")


def test_a_command_that_cannot_start_fails_cleanly(tmp_path: Path) -> None:
    run = _run(tmp_path, {"command": ["/no/such/program"]})
    run.start()
    _drive(run)
    msgs = _messages(run)
    assert msgs[-1]["body"]["outcome"] == "failed"
    assert "cannot start" in "".join(c["text"] for m in msgs if m["kind"] == "logs" for c in m["body"]["chunks"])


@pytest.fixture
def fake_nvml(monkeypatch: Any) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))

    return nvml


def test_a_two_gpu_report_carries_every_field(fake_nvml: Any, tmp_path: Path) -> None:
    gpus = Gpus(fake_nvml, None)
    assert [g["index"] for g in gpus.inventory] == [0, 1]
    assert gpus.inventory[0] == {"index": 0, "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81920}
    sampler = Sampler(gpus, disk_path=str(tmp_path), runs=dict)
    for _ in range(3):
        sampler.sample_once()
        time.sleep(0.05)
    machine = sampler.take()[0]
    for key in ("cpu_percent", "cpu_per_core", "memory_used_mb", "memory_free_mb", "network_rx_bps",
                "network_tx_bps", "disk_read_bps", "disk_write_bps", "disk_free_mb", "gpus"):  # fmt: skip
        assert machine.get(key) is not None, key
    assert len(machine["cpu_per_core"]) == psutil.cpu_count()
    g0, g1 = machine["gpus"]
    assert set(g0) == {"index", "util", "memory_used_mb", "memory_free_mb", "temperature_c", "ecc_errors"}
    assert (g0["memory_used_mb"], g1["memory_used_mb"], g1["temperature_c"], g1["ecc_errors"]) == (10240, 30720, 56, 1)
    assert 40 <= g0["util"] <= 43 and 70 <= g1["util"] <= 73


def test_only_the_agents_own_gpus_are_read(fake_nvml: Any) -> None:
    assert [g["index"] for g in Gpus(fake_nvml, [1]).inventory] == [1]


def test_no_nvml_means_no_gpu_fields_and_no_error(tmp_path: Path) -> None:
    sampler = Sampler(Gpus(None), disk_path=str(tmp_path), runs=dict)
    sampler.sample_once()
    machine, _ = sampler.take()
    assert "gpus" not in machine


def test_repeated_nvml_errors_switch_gpu_monitoring_off(fake_nvml: Any, monkeypatch: Any) -> None:
    gpus = Gpus(fake_nvml, None)
    monkeypatch.setenv("FAKE_NVML_FAIL_AFTER", "0")
    for _ in range(3):
        assert gpus.sample() == {}
    assert gpus.enabled is False


def test_per_run_usage_covers_its_process_tree(tmp_path: Path) -> None:
    run = _run(tmp_path, {"command": [sys.executable, "-c", "x = bytearray(50 * 2**20); import time; time.sleep(5)"]})
    run.start()
    sampler = Sampler(Gpus(None), disk_path=str(tmp_path), runs=lambda: {run.id: run})
    deadline = time.monotonic() + 10
    mem = 0.0
    while time.monotonic() < deadline and mem < 50:
        run.refresh_pids(psutil.Process().children(recursive=True))
        sampler.sample_once()
        per_run = sampler.take()[1]
        mem = per_run[0]["memory_mb"] if per_run else 0
        time.sleep(0.1)
    run.request_stop(Ending("stopped"), grace=0)
    _drive(run)
    assert mem >= 50
    os.environ.pop("FAKE_NVML_FAIL_AFTER", None)
    assert signal.SIGKILL  # the stop used SIGKILL at once (grace 0)


def test_secret_values_are_masked_in_the_shipped_output(tmp_path: Path) -> None:
    code = "import os, hashlib; v = os.environ['HF_TOKEN']; print('token', v); print(hashlib.sha256(v.encode()).hexdigest())"
    run = _run(tmp_path, {"command": [sys.executable, "-c", code], "secret_env": {"HF_TOKEN": "hf_supersecret"}})
    run.start()
    _drive(run)
    text = "".join(c["text"] for m in _messages(run) if m["kind"] == "logs" for c in m["body"]["chunks"])
    assert "hf_supersecret" not in text and "token ***" in text

    assert hashlib.sha256(b"hf_supersecret").hexdigest() in text  # the run itself saw the real value


def test_the_gpu_check_script_prints_what_the_agent_would_report() -> None:
    env = {**os.environ, "MUSTER_AGENT_NVML": "tests.fake_nvml", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu-check.py"), "--seconds", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    machine = json.loads(out.stdout[out.stdout.index('{\n  "machine"') :])["machine"]
    assert [g["index"] for g in machine["gpus"]] == [0, 1] and machine["gpus"][1]["temperature_c"] == 56


def test_the_orphan_reaper_never_robs_a_fresh_child_of_its_exit_code() -> None:
    """A child that exits before its owner waits (a quick git, a quick run) keeps its exit code."""

    proc = subprocess.Popen(["sh", "-c", "exit 3"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:  # exited, not yet waited for
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.01)
    reap_orphans(set())  # as if the ticker's snapshot did not know this child yet
    assert proc.wait(timeout=10) == 3
