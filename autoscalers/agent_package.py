"""The agent as a wheel, served by the server, so that a machine an autoscaler starts installs it
from here and needs no package registry (its boot script: `pip install --find-links
SERVER/agent/wheels/ muster-agent[gpu]`).

The wheel is built from `muster_agent/` with the standard library (a pure-Python wheel is a zip
with its metadata: nothing to download, nothing to compile), once per content. Its dependencies'
wheels (psutil, uv, nvidia-ml-py) come from `scripts/agent-wheels.sh`, which downloads them into
AGENT_WHEELS_DIR for the machines' platforms and Pythons; the index lists whatever is there.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import tomllib
import zipfile
from pathlib import Path

from django.conf import settings

SOURCE = Path(__file__).resolve().parent.parent / "muster_agent"
WHEEL_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]+\.whl$")


def wheels_dir() -> Path:
    return Path(settings.AGENT_WHEELS_DIR)


def _files() -> list[Path]:
    return sorted(
        p for p in SOURCE.rglob("*.py") if "build" not in p.relative_to(SOURCE).parts and "__pycache__" not in p.parts
    )


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def agent_wheel() -> Path:
    """The agent's wheel for the current code, built on first use and kept in the wheels folder."""
    project = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    version = project["version"]
    content = hashlib.sha256()
    for path in _files():
        content.update(str(path.relative_to(SOURCE)).encode() + b"\0" + path.read_bytes())
    build = content.hexdigest()[:12]
    folder = wheels_dir()
    name = f"muster_agent-{version}-1{build}-py3-none-any.whl"
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("muster_agent-*.whl"):
        old.unlink()
    dist = f"muster_agent-{version}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        "Name: muster-agent",
        f"Version: {version}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '>=3.10')}",
        *(f"Requires-Dist: {d}" for d in project.get("dependencies", [])),
    ]
    for extra, deps in (project.get("optional-dependencies") or {}).items():
        metadata.append(f"Provides-Extra: {extra}")
        metadata += [f'Requires-Dist: {d}; extra == "{extra}"' for d in deps]
    scripts = project.get("scripts") or {}
    members: dict[str, bytes] = {f"muster_agent/{p.relative_to(SOURCE).as_posix()}": p.read_bytes() for p in _files()}
    members[f"{dist}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    members[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: muster\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    members[f"{dist}/entry_points.txt"] = (
        "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    ).encode()
    record = [f"{member},{_digest(data)},{len(data)}" for member, data in members.items()]
    members[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data in members.items():
            info = zipfile.ZipInfo(member, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
    partial = target.with_suffix(".part")
    partial.write_bytes(buffer.getvalue())
    partial.replace(target)
    return target


def wheel_names() -> list[str]:
    """Every wheel the machines may install from here: the agent's, then its dependencies'."""
    agent_wheel()
    return sorted(p.name for p in wheels_dir().glob("*.whl"))


def wheel_path(name: str) -> Path | None:
    if not WHEEL_NAME_RE.match(name):
        return None
    path = wheels_dir() / name
    return path if path.is_file() else None
