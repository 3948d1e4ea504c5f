"""The boot script of a cloud machine (EC2 user data, the GCE startup script): the app's files,
environment and init script, then the agent, from this server (the machine needs no package
registry), on its resource's queues, in container mode when the app asks; when the agent exits
(drained, or told to), the machine powers itself off, so an idle machine stops billing even if
the server never calls terminate."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoscalers.models import AutoscalerApp
    from autoscalers.providers.base import LaunchSpec

AGENT_WHEELS_PATH = "/agent/wheels/"


def boot_script(app: AutoscalerApp, spec: LaunchSpec) -> str:
    q = shlex.quote
    lines = ["#!/bin/bash", "# Muster autoscaler boot script (written by the server; runs as root).", "set -u"]
    for path, content in sorted((app.files or {}).items()):
        lines += [f"mkdir -p {q(str(path).rsplit('/', 1)[0] or '/')}", f"cat > {q(str(path))} <<'MUSTER_FILE'",
                  str(content), "MUSTER_FILE"]  # fmt: skip
    env = {**spec.environment, "MUSTER_SERVER": spec.server_url, "MUSTER_API_KEY": spec.agent_key}
    lines += [f"export {name}={q(value)}" for name, value in sorted(env.items())]
    if app.init_script.strip():
        lines += ["# the app's init script", app.init_script.rstrip()]
    lines += [
        "python3 -m venv /opt/muster-agent",
        # From this server's wheels (the agent's and, once scripts/agent-wheels.sh ran, its
        # dependencies'): no registry needed; one that can be reached fills any gap.
        f"/opt/muster-agent/bin/pip install --quiet --find-links {q(spec.server_url + AGENT_WHEELS_PATH)} "
        f"{q('muster-agent[gpu]' if spec.gpu_count else 'muster-agent')}",
    ]
    agent = ["/opt/muster-agent/bin/muster", "agent", "run", "--name", spec.name]
    for queue in spec.queues:
        agent += ["--queue", queue]
    if spec.gpu_count == 0:
        agent.append("--cpu-only")
    if spec.spot and app.provider in ("aws", "gcp"):
        agent += ["--spot-notice", app.provider]  # the cloud's notice stops the runs as interrupted
    if app.container_mode:
        agent += ["--container-engine", "docker"]
        if app.default_container_image:
            agent += ["--default-image", app.default_container_image]
    if app.extra_agent_config.strip():
        lines += ["mkdir -p /etc/muster", "cat > /etc/muster/agent.toml <<'MUSTER_CONF'",
                  app.extra_agent_config.rstrip(), "MUSTER_CONF"]  # fmt: skip
    lines += [" ".join(q(a) for a in agent), "shutdown -h now  # the agent exited: stop billing"]
    return "\n".join(lines) + "\n"
