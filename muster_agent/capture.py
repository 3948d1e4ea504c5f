"""`muster run`: capture what an experiment needs from the git repository it is started in.

The remote, branch and commit; the uncommitted changes as a binary diff against HEAD
(staged and unstaged); untracked files are refused (add them to git, or ignore them);
the working directory relative to the repository root; the requirements (a uv.lock
exported, else requirements.txt, else `pip freeze` of this environment with --freeze);
this Python's version.
"""

from __future__ import annotations

import ast
import gzip
import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

MAX_DIFF_BYTES = 8 * 1024 * 1024


class CaptureError(Exception):
    """The repository cannot be captured as it is; the message says what to do."""


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise CaptureError("git is not installed") from None
    if check and out.returncode != 0:
        raise CaptureError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"git {args[0]} failed")
    return out.stdout if out.returncode == 0 else ""


def requirements_of(root: Path, *, freeze: bool) -> str:
    if freeze:
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        out = subprocess.run(
            [uv, "pip", "freeze", "--python", sys.executable], capture_output=True, text=True, timeout=300, check=False
        )
        if out.returncode != 0:
            raise CaptureError(f"pip freeze failed: {out.stderr.strip()[-200:]}")
        return out.stdout
    if (root / "uv.lock").is_file():
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        out = subprocess.run(
            [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header"],
            cwd=root, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise CaptureError(f"uv export of uv.lock failed: {out.stderr.strip()[-200:]}")
        return out.stdout
    if (root / "requirements.txt").is_file():
        return (root / "requirements.txt").read_text()
    if (root / "pyproject.toml").is_file():
        return "".join(d + "\n" for d in pyproject_dependencies((root / "pyproject.toml").read_text()))
    return ""


def pyproject_dependencies(text: str) -> list[str]:
    """[project].dependencies of a pyproject.toml (tomllib on 3.11+, a careful reader on 3.10)."""
    try:
        import tomllib  # noqa: PLC0415 - Python 3.11+ only; the agent also runs on 3.10
    except ImportError:  # Python 3.10
        return _dependencies_without_tomllib(text)
    try:
        project = tomllib.loads(text).get("project") or {}
    except tomllib.TOMLDecodeError as e:
        raise CaptureError(f"pyproject.toml is not valid TOML: {e}") from None
    deps = project.get("dependencies") or []
    return [str(d) for d in deps]


def _dependencies_without_tomllib(text: str) -> list[str]:
    section = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
    if section is None:
        return []
    match = re.search(r"^dependencies\s*=\s*(\[.*?\])", section.group(1), re.MULTILINE | re.DOTALL)
    if match is None:
        return []
    body = re.sub(r"#[^\n\"']*$", "", match.group(1), flags=re.MULTILINE)  # comments after items
    try:
        return [str(d) for d in ast.literal_eval(body)]
    except (ValueError, SyntaxError):
        raise CaptureError("cannot read [project].dependencies in pyproject.toml") from None


def entry_point_of(command: list[str]) -> str:
    """The script a command runs (`python train.py …` -> train.py), for the record."""
    for i, arg in enumerate(command):
        if arg.endswith(".py") and (i == 0 or Path(command[0]).name.startswith("python")):
            return arg
        if arg == "-m" and i + 1 < len(command):
            return command[i + 1]
    return ""


def capture(cwd: Path, *, freeze: bool = False) -> dict[str, Any]:
    cwd = cwd.resolve()
    root = Path(_git(cwd, "rev-parse", "--show-toplevel").strip())
    remotes = _git(root, "remote").split()
    if not remotes:
        raise CaptureError("this repository has no remote: add one (git remote add origin URL) and push")
    remote = "origin" if "origin" in remotes else remotes[0]
    url = _git(root, "remote", "get-url", remote).strip()
    commit = _git(root, "rev-parse", "HEAD").strip()
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()
    untracked = _git(root, "ls-files", "--others", "--exclude-standard").split("\n")
    untracked = [f for f in untracked if f]
    if untracked:
        shown = ", ".join(untracked[:5]) + (f" and {len(untracked) - 5} more" if len(untracked) > 5 else "")
        raise CaptureError(
            f"untracked files would not reach the worker: {shown}; git add them, ignore them, or use --snapshot"
        )
    if not _git(root, "branch", "-r", "--contains", commit, check=False).strip():
        print(f"muster: warning: commit {commit[:12]} is not on any remote branch; push it, or the run will fail",
              file=sys.stderr)  # fmt: skip
    diff = _git(root, "diff", "--binary", "HEAD")
    if len(diff.encode()) > MAX_DIFF_BYTES:
        raise CaptureError(f"the uncommitted changes are larger than {MAX_DIFF_BYTES // 2**20} MiB; commit them")
    working_dir = str(cwd.relative_to(root)) if cwd != root else ""
    return {
        "repository": url,
        "branch": "" if branch == "HEAD" else branch,
        "commit": commit,
        "diff": diff,
        "working_dir": working_dir,
        "requirements": requirements_of(root, freeze=freeze),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def snapshot_tarball(cwd: Path, *, max_bytes: int = 100 * 1024 * 1024) -> tuple[Path, bytes]:
    """(repository root, a gzipped tar of its tracked files and the untracked ones git does not ignore).

    Deterministic (sorted names, zero times and owners), so the same tree has the same digest
    and is uploaded once.
    """

    root = Path(_git(cwd.resolve(), "rev-parse", "--show-toplevel").strip())
    names = sorted({n for n in _git(root, "ls-files", "-z", "-co", "--exclude-standard").split("\0") if n})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            path = root / name
            if not path.is_file() or path.is_symlink():
                continue  # deleted in the working tree, or a link: not part of the snapshot
            info = tar.gettarinfo(str(path), arcname=name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with path.open("rb") as f:
                tar.addfile(info, f)
            if raw.tell() > max_bytes:
                raise CaptureError(f"the snapshot is larger than {max_bytes // 2**20} MiB; commit and push instead")
    data = gzip.compress(raw.getvalue(), mtime=0)
    return root, data


def capture_snapshot(cwd: Path, *, freeze: bool = False) -> tuple[dict[str, Any], bytes]:
    """The spec of a snapshot run (no remote needed) and the tarball to upload."""
    root, data = snapshot_tarball(cwd)
    here = cwd.resolve()
    spec = {
        "working_dir": str(here.relative_to(root)) if here != root else "",
        "requirements": requirements_of(root, freeze=freeze),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    }
    return spec, data
