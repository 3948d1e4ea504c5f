"""Rebuild an experiment's code and environment on this worker: git, the diff, a uv environment.

- code: one bare mirror per remote under <state>/git (fetched, not cloned, when cached),
  a shared clone of it checked out at the exact commit, the uncommitted diff applied
  (checked first: a diff that does not apply fails the build before anything runs);
- environment: a uv virtual environment per (Python version, requirements) hash under
  <state>/venvs, built once (into a temporary folder, renamed when complete) and reused;
  its frozen package list goes back to the server with the attempt's end.

Every step is logged into the run's output with its time; failures raise BuildError,
which the run reports with failure class "build".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from muster_agent.isolation import PRIVATE_ENV, RunUser, as_user

GIT_TIMEOUT_S = 1800
INSTALL_TIMEOUT_S = 3600


class BuildError(Exception):
    """The experiment's code or environment could not be rebuilt here; the message says why."""


def find_uv() -> str | None:
    """uv: MUSTER_AGENT_UV, then PATH, then next to this Python (the agent's dependency)."""
    for candidate in (os.environ.get("MUSTER_AGENT_UV"), shutil.which("uv"), str(Path(sys.executable).parent / "uv")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock between runs (and agents) that build into the same cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Builder:
    def __init__(
        self,
        state: Path,
        emit: Callable[[str], None],
        *,
        find_links: str | None = None,
        user: RunUser | None = None,
    ):
        self.state = Path(state)
        self.emit = emit
        self.find_links = find_links or os.environ.get("MUSTER_AGENT_FIND_LINKS") or None
        # Builds run the experiment's code too (a package's setup.py): as the run's user when there is
        # one, with the agent's tool settings (uv's, git's, pyenv's) but never its key (muster_agent/isolation.py).
        self.user = user
        self.env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        self.env.setdefault("UV_CACHE_DIR", str(self.state / "uv-cache"))
        if user is not None:
            self.env["HOME"] = str(self.state)  # git's and uv's own files, in the folder the user owns

    # -- plumbing ------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.emit(f"muster: {what} …\n")
        started = time.monotonic()
        try:
            yield
        except BuildError as e:
            self.emit(f"muster: {what} failed after {time.monotonic() - started:.1f} s: {e}\n")
            raise
        self.emit(f"muster: {what} done in {time.monotonic() - started:.1f} s\n")

    def _run(self, argv: list[str], *, what: str, cwd: Path | None = None, stdin: str | None = None,
             timeout: float = GIT_TIMEOUT_S, env: dict[str, str] | None = None, quiet: bool = False) -> str:  # fmt: skip
        try:
            out = subprocess.run(
                argv, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
                env={**self.env, "GIT_TERMINAL_PROMPT": "0", **(env or {})}, **as_user(self.user),
            )  # fmt: skip
        except FileNotFoundError:
            raise BuildError(f"{argv[0]} is not installed on this worker") from None
        except subprocess.TimeoutExpired:
            raise BuildError(f"{what} took longer than {timeout:.0f} s") from None
        if out.returncode != 0:
            detail = (out.stderr or out.stdout).strip().splitlines()
            if not quiet:  # a quiet try's caller says in one line what it does instead
                self.emit("".join(f"  {line}\n" for line in detail[-20:]))
            raise BuildError(f"{what} failed: {detail[-1] if detail else 'exit code ' + str(out.returncode)}")
        return str(out.stdout)

    # -- code ----------------------------------------------------------------------------

    def checkout(self, spec: dict[str, Any], dest: Path) -> None:
        url = str(spec["repository"])
        rev = spec.get("commit") or spec.get("branch") or "HEAD"
        mirror = self.state / "git" / (hashlib.sha256(url.encode()).hexdigest()[:20] + ".git")
        with _locked(mirror.with_suffix(".lock")):
            if (mirror / "HEAD").exists():
                with self.step(f"fetching {url} (cached mirror)"):
                    self._run(["git", "--git-dir", str(mirror), "remote", "update", "--prune"], what="git fetch")
            else:
                with self.step(f"cloning {url} (first time on this worker)"):
                    shutil.rmtree(mirror, ignore_errors=True)
                    self._run(["git", "clone", "--mirror", "--quiet", url, str(mirror)], what="git clone")
        with self.step(f"checking out {str(rev)[:12]}"):
            self._run(["git", "clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(dest)],
                      what="git clone of the mirror")  # fmt: skip
            self._run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", str(rev)],
                      cwd=dest, what=f"git checkout {rev}")  # fmt: skip
        diff = spec.get("diff") or ""
        if diff.strip():
            with self.step(f"applying the uncommitted changes ({len(diff.splitlines())} lines of diff)"):
                if not diff.endswith("\n"):
                    diff += "\n"
                self._run(["git", "apply", "--check", "--whitespace=nowarn", "-"], cwd=dest, stdin=diff,
                          what="the diff does not apply; git apply --check")  # fmt: skip
                self._run(["git", "apply", "--whitespace=nowarn", "-"], cwd=dest, stdin=diff, what="git apply")

    def unpack_snapshot(self, sha256: str, dest: Path, fetch: Callable[[str], bytes]) -> None:
        """A snapshot tarball (cached by its digest, checked) extracted safely into dest."""

        cached = self.state / "snapshots" / f"{sha256}.tar.gz"
        if not cached.exists():
            with self.step(f"downloading snapshot {sha256[:12]}"):
                try:
                    data = fetch(sha256)
                except Exception as e:  # the client's errors: not found, refused, server away
                    raise BuildError(f"could not download the snapshot: {e}") from None
                if hashlib.sha256(data).hexdigest() != sha256:
                    raise BuildError("the snapshot's content does not match its SHA-256")
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(f".{sha256}.{os.getpid()}")
                tmp.write_bytes(data)
                tmp.replace(cached)
        else:
            self.emit(f"muster: snapshot {sha256[:12]} is cached on this worker\n")
        with self.step(f"unpacking snapshot {sha256[:12]}"):
            dest.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(cached, "r:gz") as tar:
                    tar.extractall(dest, filter="data")  # no absolute paths, links out or devices
            except (tarfile.TarError, OSError) as e:
                raise BuildError(f"the snapshot cannot be unpacked: {e}") from None

    # -- environment ---------------------------------------------------------------------

    def environment(self, spec: dict[str, Any]) -> Path:
        """The virtual environment for this spec: reused when built before, else built now."""
        uv = find_uv()
        if uv is None:
            raise BuildError("uv is not installed on this worker (pip install uv, or set MUSTER_AGENT_UV)")
        python = str(spec.get("python_version") or "").strip()
        requirements = str(spec.get("requirements") or "").strip()
        key = hashlib.sha256(f"{python}\n{requirements}".encode()).hexdigest()[:20]
        path = self.state / "venvs" / key
        with _locked(path.with_suffix(".lock")):
            if (path / ".complete").exists():
                self.emit(f"muster: reusing the environment {key} (Python {python or 'default'}, cached)\n")
                return path
            with self.step(f"building the environment {key}"):
                tmp = path.with_name(f"{key}.building-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                self._make_venv(uv, python, tmp)
                if requirements:
                    req = tmp / "requirements.txt"
                    req.write_text(requirements + "\n")
                    argv = [uv, "pip", "install", "--quiet", "--python", str(tmp / "bin" / "python"), "-r", str(req)]
                    if self.find_links:
                        argv += ["--find-links", self.find_links]
                    self._run(argv, what="installing the requirements", timeout=INSTALL_TIMEOUT_S)
                (tmp / ".complete").write_text(key)
                shutil.rmtree(path, ignore_errors=True)
                tmp.rename(path)
        return path

    def _make_venv(self, uv: str, python: str, dest: Path) -> None:
        base = [uv, "venv", "--quiet", "--python-preference", "only-system", str(dest)]
        if python:
            try:
                self._run([*base, "--python", python], what=f"a Python {python} environment", quiet=True)
                return
            except BuildError:
                self.emit(f"muster: Python {python} is not on this worker; using {sys.version.split()[0]}\n")
                shutil.rmtree(dest, ignore_errors=True)
        self._run([*base, "--python", self.fallback_python()], what="a virtual environment")

    def fallback_python(self) -> str:
        """The agent's own Python, or for another user the first python3 on that user's PATH."""
        if self.user is None:
            return sys.executable
        found: str | None = shutil.which("python3", path=self.env.get("PATH"))
        return found or "python3"

    def freeze(self, venv: Path) -> str:
        uv = find_uv()
        if uv is None:
            return ""
        try:
            return self._run([uv, "pip", "freeze", "--python", str(venv / "bin" / "python")], what="pip freeze")
        except BuildError:
            return ""
