"""Runs in containers (podman or docker): the command line, and killing the container on stop.

The attempt's folder is mounted at /workspace (the code, when it was checked out or
unpacked, is /workspace/code); the report channel's folder at /run/muster; the `muster`
module at /opt/muster/sdk; the agent's uv at /opt/muster/bin/uv; caches (uv, Hugging Face)
under the agent's state folder. `--ipc=host` gives PyTorch's data loaders their shared
memory. GPUs: CDI devices with podman (`--device nvidia.com/gpu=N`), `--gpus device=…`
with docker, and CUDA_VISIBLE_DEVICES renumbered from 0 inside. The experiment's
container_args pass only through an allow-list.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

SDK_MOUNT = "/opt/muster/sdk"
UV_MOUNT = "/opt/muster/bin/uv"
CHANNEL_MOUNT = "/run/muster"
WORKSPACE = "/workspace"
GIT_MOUNT = "/opt/muster/git"
# Extra arguments an experiment may ask for: name (and the values allowed, None = any).
ALLOWED_ARGS: dict[str, set[str] | None] = {
    "--shm-size": None,
    "--ulimit": None,
    "--tmpfs": None,
    "--read-only": set(),
    "--cap-add": {"SYS_PTRACE", "SYS_NICE", "IPC_LOCK"},
    "--user": None,
    "--env": None,
}


class ContainerError(Exception):
    """The experiment asked for something this agent does not allow in a container."""


def check_args(args: list[str]) -> list[str]:
    """The experiment's container_args, each `--name=value` or `--flag`, checked against the allow-list."""
    out = []
    for arg in args:
        name, sep, value = str(arg).partition("=")
        if name not in ALLOWED_ARGS:
            allowed = ", ".join(sorted(ALLOWED_ARGS))
            raise ContainerError(f"container argument {name!r} is not allowed here (allowed: {allowed})")
        values = ALLOWED_ARGS[name]
        if values is not None and ((sep and value not in values) or (not sep and values)):
            raise ContainerError(f"container argument {arg!r} is not allowed here")
        out.append(str(arg))
    return out


@dataclass
class ContainerSpec:
    engine: str  # podman | docker
    image: str
    name: str
    workdir: Path  # the attempt's folder on the host
    cwd_inside: str
    channel_dir: str
    sdk_dir: str
    uv: str | None
    cache_dir: Path
    gpu_indices: list[int]
    gpu_passthrough: str  # cdi | docker | none
    env: dict[str, str]
    command: list[str]
    setup_script: str
    requirements: bool
    extra: list[str]


def run_command(c: ContainerSpec) -> list[str]:
    argv = [c.engine, "run", "--rm", "--name", c.name, "--ipc=host", "--pull=never",
            "--label", "muster=1", "-w", c.cwd_inside,
            "-v", f"{c.workdir}:{WORKSPACE}", "-v", f"{c.channel_dir}:{CHANNEL_MOUNT}",
            "-v", f"{c.sdk_dir}:{SDK_MOUNT}:ro"]  # fmt: skip
    for sub, inside in (
        ("uv", "/root/.cache/uv"),
        ("huggingface", "/root/.cache/huggingface"),
        ("pip", "/root/.cache/pip"),
    ):
        (c.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        argv += ["-v", f"{c.cache_dir / sub}:{inside}"]
    if c.uv:
        argv += ["-v", f"{c.uv}:{UV_MOUNT}:ro"]
    mirrors = c.cache_dir.parent / "git"
    if mirrors.is_dir():  # the git mirror cache, for runs that fetch more (submodules, other repos)
        argv += ["-v", f"{mirrors}:{GIT_MOUNT}:ro"]
    if c.gpu_passthrough == "cdi":
        for i in c.gpu_indices:
            argv += ["--device", f"nvidia.com/gpu={i}"]
    elif c.gpu_passthrough == "docker" and c.gpu_indices:
        argv += ["--gpus", "device=" + ",".join(str(i) for i in c.gpu_indices)]
    env = dict(c.env)
    # Passed-through GPUs are numbered from 0 inside; without passthrough the slots keep their numbers.
    numbers = list(range(len(c.gpu_indices))) if c.gpu_passthrough != "none" else c.gpu_indices
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in numbers)
    env["PYTHONPATH"] = SDK_MOUNT  # host paths mean nothing inside
    env["MUSTER_REPORT_SOCKET"] = f"{CHANNEL_MOUNT}/report.sock"
    env["HOME"] = "/root"
    for key in ("PATH", "VIRTUAL_ENV", "PWD", "OLDPWD", "SHELL", "TERM", "LANG"):
        env.pop(key, None)
    for key, value in sorted(env.items()):
        argv += ["-e", f"{key}={value}"]
    argv += c.extra
    steps = []
    if c.setup_script.strip():
        steps.append(c.setup_script.strip())
    if c.requirements and c.uv:
        steps.append(f"{UV_MOUNT} pip install --system --break-system-packages --quiet -r {WORKSPACE}/requirements.txt")
    if steps:
        script = " && ".join(f"( {s} )" for s in steps) + ' && exec "$@"'
        argv += [c.image, "/bin/sh", "-c", script, "muster-setup", *c.command]
    else:
        argv += [c.image, *c.command]
    return argv


def kill(engine: str, name: str, signal_name: str) -> None:
    """Signal the container itself (its processes are not the agent's children)."""
    subprocess.run([engine, "kill", "--signal", signal_name, name], capture_output=True, timeout=60, check=False)


def remove(engine: str, name: str) -> None:
    subprocess.run([engine, "rm", "-f", "--ignore", name] if engine == "podman" else [engine, "rm", "-f", name],
                   capture_output=True, timeout=120, check=False)  # fmt: skip


def describe(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
