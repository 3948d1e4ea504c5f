"""Runs in containers: the command line (GPU slots, mounts, allow-list) and real podman runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from muster_agent import container
from tests import live
from tests.live import Stack, run_processes, wait_for

IMAGE = os.environ.get("MUSTER_TEST_IMAGE", "")


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """This module's live stack. Builds (git, uv, containers) take seconds of CPU on a 2-core box and
    liveness is not under test here, so workers get a roomier timeout than the 4 s elsewhere."""
    yield from live.module_stack(tmp_path_factory, "builds", WORKER_TIMEOUT="15")


def _spec(**kw: object) -> container.ContainerSpec:
    values: dict[str, object] = {
        "engine": "podman", "image": "img:1", "name": "muster-a1", "workdir": Path("/state/work/a1"), "cwd_inside": "/workspace",
        "channel_dir": "/tmp/muster-x", "sdk_dir": "/opt/sdk", "uv": "/usr/bin/uv", "cache_dir": Path("/tmp/cache-test"),
        "gpu_indices": [1, 3], "gpu_passthrough": "cdi", "env": {"MUSTER_ATTEMPT_ID": "a1", "PYTHONPATH": "/x:/y"},
        "command": ["python3", "train.py"], "setup_script": "", "requirements": False, "extra": [],
    }  # fmt: skip
    values.update(kw)
    return container.ContainerSpec(**values)  # type: ignore[arg-type]


def test_the_command_line_passes_the_gpu_slots_and_mounts() -> None:
    argv = container.run_command(_spec())
    joined = " ".join(argv)
    assert "--device nvidia.com/gpu=1" in joined and "--device nvidia.com/gpu=3" in joined
    assert "-e CUDA_VISIBLE_DEVICES=0,1" in joined  # renumbered inside the container
    assert "--ipc=host" in argv and "/state/work/a1:/workspace" in argv and "/tmp/muster-x:/run/muster" in argv
    assert "-e MUSTER_REPORT_SOCKET=/run/muster/report.sock" in joined
    assert argv[-3:] == ["img:1", "python3", "train.py"]
    docker = container.run_command(_spec(engine="docker", gpu_passthrough="docker"))
    assert "--gpus" in docker and "device=1,3" in docker
    setup = container.run_command(_spec(setup_script="apt-get moo", requirements=True))
    script = setup[-4]
    assert setup[-6:-3] == ["/bin/sh", "-c", script] and setup[-3:] == ["muster-setup", "python3", "train.py"]
    assert "apt-get moo" in script and "pip install" in script and script.endswith('exec "$@"')


@pytest.mark.parametrize(
    ("args", "ok"),
    [(["--shm-size=8g"], True), (["--cap-add=SYS_PTRACE"], True), (["--read-only"], True),
     (["--privileged"], False), (["--cap-add=SYS_ADMIN"], False), (["-v=/:/host"], False),
     (["--network=host"], False)],
)  # fmt: skip
def test_container_arguments_come_from_an_allow_list(args: list[str], ok: bool) -> None:
    if ok:
        assert container.check_args(args) == args
    else:
        with pytest.raises(container.ContainerError, match="not allowed"):
            container.check_args(args)


INSIDE = textwrap.dedent(
    """
    import hashlib, json, os, muster
    print("cuda", os.environ["CUDA_VISIBLE_DEVICES"])
    print("params", json.loads(os.environ["MUSTER_PARAMS"]))
    print("secret", hashlib.sha256(os.environ["API_TOKEN"].encode()).hexdigest())
    print("in container", os.path.exists("/run/.containerenv") or os.path.exists("/.dockerenv"))
    print("reported", muster.report(iteration=7, loss=0.5))
    """
)


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.container
@pytest.mark.postgres_only  # podman runs know no database: once is enough
def test_a_podman_run_sees_its_slots_parameters_and_secrets(st: Stack) -> None:
    assert IMAGE, "scripts/test-image.sh sets MUSTER_TEST_IMAGE (make test runs it)"
    st.queue("ctr")
    st.start_agent("ctr-1", ["ctr"], "--gpus", "0,1", "--container-engine", "podman", "--gpu-passthrough", "none")
    exp = st.enqueue("ctr", container_image=IMAGE, command=["python3", "-c", INSIDE], gpus=1,
                     parameters={"lr": 0.25}, secret_env={"API_TOKEN": "tok-123456"})  # fmt: skip
    done = st.wait_status(exp["id"], "completed", "failed", timeout=120)
    text = st.logs(exp["id"])
    assert done["status"] == "completed", text
    assert "cuda 0\n" in text and "params {'lr': 0.25}" in text and "in container True" in text
    assert hashlib.sha256(b"tok-123456").hexdigest() in text and "tok-123456" not in text
    assert "reported True" in text and done["last_iteration"] == 7


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.container
@pytest.mark.postgres_only  # podman runs know no database: once is enough
def test_stop_kills_the_container_not_just_the_client(st: Stack) -> None:
    assert IMAGE, "scripts/test-image.sh sets MUSTER_TEST_IMAGE (make test runs it)"
    st.queue("ctr-stop")
    st.start_agent("ctr-2", ["ctr-stop"], "--cpu-only", "--container-engine", "podman", "--gpu-passthrough", "none")
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
    )
    exp = st.enqueue("ctr-stop", container_image=IMAGE, command=["python3", "-c", code], stop_grace_s=1)
    wait_for(lambda: "up" in st.logs(exp["id"]), timeout=120, what="the container to start")
    attempt = st.experiment(exp["id"])["current_attempt"]
    st.admin.request("POST", f"experiments/{exp['id']}/stop/", {})
    assert st.wait_status(exp["id"], "stopped", timeout=60)["status"] == "stopped"
    ps = subprocess.run(["podman", "ps", "-a", "-q", "--filter", f"name=muster-{attempt}"],
                        capture_output=True, text=True, check=True)  # fmt: skip
    assert ps.stdout.strip() == ""
    assert run_processes(attempt) == []
