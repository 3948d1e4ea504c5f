"""Code and environments rebuilt on a real agent: `muster run` in a git repository (file:// remotes, offline wheels)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import live
from tests.live import Stack

pytestmark = [pytest.mark.live, pytest.mark.slow]
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """This module's live stack. Builds (git, uv, containers) take seconds of CPU on a 2-core box and
    liveness is not under test here, so workers get a roomier timeout than the 4 s elsewhere."""
    yield from live.module_stack(tmp_path_factory, "builds", WORKER_TIMEOUT="15")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    ).stdout


def make_wheel(folder: Path, name: str = "musterdemo", version: str = "1.0") -> Path:
    """A pure-Python wheel written by hand: the environments are built offline from this folder."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        f"{name}/__init__.py": f"VALUE = 'from {name} {version}'\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: muster-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }  # fmt: skip
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project with a remote (file://), one commit pushed, and a local wheelhouse."""
    base = tmp_path_factory.mktemp("code")
    remote, work = base / "remote.git", base / "work"
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(remote)], check=True)
    work.mkdir()
    _git(work, "init", "-q", "-b", "main")
    (work / "src").mkdir()
    (work / "src" / "train.py").write_text(
        "import os, sys, musterdemo\n"
        "print('version', 'committed')\n"
        "print('lr', sys.argv[2])\n"
        "print('params', os.environ['MUSTER_PARAMS'])\n"
        "print(musterdemo.VALUE)\n"
    )
    (work / "requirements.txt").write_text("musterdemo==1.0\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "first")
    _git(work, "remote", "add", "origin", f"file://{remote}")
    _git(work, "push", "-q", "-u", "origin", "main")
    wheels = base / "wheels"
    make_wheel(wheels)
    return {"remote": remote, "work": work, "wheels": wheels}


def _muster(st: Stack, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    env.update({"MUSTER_SERVER": st.url, "MUSTER_API_KEY": st.admin_key, "PYTHONPATH": str(live.ROOT)})
    return subprocess.run(
        [sys.executable, "-m", "muster_agent", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _explain(st: Stack, r: subprocess.CompletedProcess[str]) -> str:
    """What the server knows of the run the CLI made, for a failure's message."""
    found = re.search(r"muster: ([0-9a-f]{32})", r.stderr)
    if not found:
        return ""
    exp = st.experiment(found.group(1))
    return f"\nstatus {exp['status']}: {exp['status_message']}; attempts {st.attempts(found.group(1))}"


def _agent(st: Stack, name: str, queue: str, repo: dict[str, Path]) -> None:
    st.start_agent(name, [queue], "--cpu-only", "--find-links", str(repo["wheels"]), env={"UV_OFFLINE": "1"})


def test_an_uncommitted_change_reaches_the_worker_and_the_environment_is_reused(
    st: Stack, repo: dict[str, Path]
) -> None:
    q = "code-run"
    st.queue(q)
    _agent(st, "code-1", q, repo)
    train = repo["work"] / "src" / "train.py"
    train.write_text(train.read_text().replace("'committed'", "'changed here'"))
    try:
        r = _muster(st, repo["work"] / "src", "run", "--queue", q, "--param", "lr=0.5", "--follow", "--",
                    "python", "train.py", "--lr", "${lr}")  # fmt: skip
    finally:
        _git(repo["work"], "checkout", "--", "src/train.py")
    assert r.returncode == 0, r.stdout + r.stderr + _explain(st, r)
    assert "version changed here" in r.stdout and "lr 0.5" in r.stdout and "from musterdemo 1.0" in r.stdout
    assert '"lr": 0.5' in r.stdout
    assert "applying the uncommitted changes" in r.stdout and "building the environment" in r.stdout

    again = _muster(st, repo["work"] / "src", "run", "--queue", q, "--param", "lr=1", "--follow", "--",
                    "python", "train.py", "--lr", "${lr}")  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert "version committed" in again.stdout and "reusing the environment" in again.stdout
    assert "fetching" in again.stdout  # the mirror is cached: fetched, not cloned


def test_a_diff_that_does_not_apply_is_a_build_failure(st: Stack, repo: dict[str, Path]) -> None:
    q = "code-bad-diff"
    st.queue(q)
    _agent(st, "code-2", q, repo)
    commit = _git(repo["work"], "rev-parse", "HEAD").strip()
    bad = "--- a/src/train.py\n+++ b/src/train.py\n@@ -1,1 +1,1 @@\n-no such line\n+print('x')\n"
    exp = st.enqueue(
        q, repository=f"file://{repo['remote']}", commit=commit, diff=bad, command=["python", "src/train.py"]
    )
    done = st.wait_status(exp["id"], "failed", "completed", timeout=120)
    assert done["status"] == "failed"
    attempt = st.attempts(exp["id"])[0]
    assert attempt["failure_class"] == "build" and "does not apply" in attempt["message"]
    assert "does not apply" in st.logs(exp["id"])


def test_a_rerun_rebuilds_the_same_frozen_environment(st: Stack, repo: dict[str, Path]) -> None:
    q = "code-rerun"
    st.queue(q)
    _agent(st, "code-3", q, repo)
    r = _muster(st, repo["work"], "run", "--queue", q, "--json", "--wait", "--", "python", "src/train.py", "--lr", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    exp_id = json.loads(r.stdout)["id"]
    st.admin.request("POST", f"experiments/{exp_id}/rerun/", {})
    st.wait_status(exp_id, "completed", "failed", timeout=120)
    live.wait_for(lambda: len(st.attempts(exp_id)) == 2 and st.attempts(exp_id)[-1]["finished_at"], timeout=120)
    first, second = st.attempts(exp_id)
    assert "musterdemo==1.0" in first["frozen_requirements"]
    assert first["frozen_requirements"] == second["frozen_requirements"]


def test_muster_run_refuses_untracked_files_and_a_repository_without_remote(st: Stack, repo: dict[str, Path],
                                                                            tmp_path: Path) -> None:  # fmt: skip
    stray = repo["work"] / "notes.txt"
    stray.write_text("not added")
    try:
        r = _muster(st, repo["work"], "run", "--", "python", "x.py")
    finally:
        stray.unlink()
    assert r.returncode == 2 and "untracked files" in r.stderr and "notes.txt" in r.stderr
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    _git(lonely, "init", "-q")
    (lonely / "a.py").write_text("print(1)\n")
    _git(lonely, "add", ".")
    _git(lonely, "commit", "-q", "-m", "x")
    r = _muster(st, lonely, "run", "--", "python", "a.py")
    assert r.returncode == 2 and "no remote" in r.stderr
    assert _muster(st, tmp_path, "run", "--", "python", "a.py").returncode == 2  # not a repository at all


def test_a_snapshot_run_needs_no_remote(st: Stack, repo: dict[str, Path], tmp_path: Path) -> None:
    q = "code-snapshot"
    st.queue(q)
    _agent(st, "code-4", q, repo)
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    _git(tree, "init", "-q")
    (tree / "pkg" / "main.py").write_text("import helper\nprint(helper.WORD)\n")
    _git(tree, "add", ".")
    _git(tree, "commit", "-q", "-m", "x")
    (tree / "pkg" / "helper.py").write_text("WORD = 'untracked but not ignored'\n")  # never committed
    (tree / ".gitignore").write_text("secret.txt\n")
    (tree / "pkg" / "secret.txt").write_text("ignored")
    r = _muster(st, tree / "pkg", "run", "--snapshot", "--queue", q, "--follow", "--", "python", "main.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "untracked but not ignored" in r.stdout and "unpacking snapshot" in r.stdout
    again = _muster(st, tree / "pkg", "run", "--snapshot", "--queue", q, "--follow", "--", "python", "-c",
                    "import os; print(sorted(os.listdir('.')))")  # fmt: skip
    assert "'secret.txt'" not in again.stdout and "is cached on this worker" in again.stdout
