"""What a run sees of its agent (muster_agent/isolation.py): its environment, its user, the folders it reaches.

The whole of it, as a run of an ordinary user under `make run` as root, is tests/test_make_run.py's probe.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from muster_agent import isolation
from muster_agent.isolation import RunUser, base_environment, can_reach, run_path

NOBODY = RunUser(name="nobody", uid=65534, gid=65534, groups=(65534,), home="/nonexistent")


def test_a_run_gets_only_the_allowlisted_variables_of_the_agent() -> None:
    agent_env = {
        "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "SECRET_KEY": "s3cret", "DATABASE_URL": "pg://x",
        "MUSTER_API_KEY": "mk.x", "MUSTER_API_KEY_FILE": "/etc/k", "HTTPS_PROXY": "http://proxy:3128",
    }  # fmt: skip
    env = base_environment(agent_env, None)
    assert env == {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    passed = base_environment(agent_env, None, ("HTTPS_PROXY", "MUSTER_API_KEY"))
    assert passed["HTTPS_PROXY"] == "http://proxy:3128" and "MUSTER_API_KEY" not in passed, "never the key"


def test_another_users_run_gets_its_own_identity_and_only_the_path_it_can_use(tmp_path: Path) -> None:
    private = tmp_path / "private-bin"
    private.mkdir(mode=0o700)
    env = base_environment({"PATH": f"{private}:/usr/bin:/bin", "HOME": "/root"}, NOBODY)
    assert env["PATH"] == "/usr/bin:/bin"
    assert (env["USER"], env["LOGNAME"], env["HOME"]) == ("nobody", "nobody", "/nonexistent")
    assert run_path(str(private), NOBODY) == isolation.SAFE_PATH


def test_can_reach_follows_every_folder_above(tmp_path: Path) -> None:
    outer = tmp_path / "outer"
    inner = outer / "inner"
    inner.mkdir(parents=True)
    tmp_path.chmod(0o755)
    outer.chmod(0o711)
    inner.chmod(0o755)
    (inner / "f").write_text("x")
    (inner / "f").chmod(0o644)
    parents_open = all(p.stat().st_mode & 0o001 for p in tmp_path.parents)
    assert can_reach(inner / "f", NOBODY) is parents_open
    assert not can_reach(outer, NOBODY), "a folder it may search but not read"
    assert not can_reach(inner, NOBODY, write=True)
    outer.chmod(0o700)
    assert not can_reach(inner / "f", NOBODY)


def test_an_unknown_run_user_is_refused_with_how_to_make_it() -> None:
    with pytest.raises(isolation.IsolationError, match="useradd"):
        isolation.run_user("no-such-user-for-muster")


def test_the_agents_own_user_means_no_switch() -> None:
    assert isolation.run_user(pwd.getpwuid(os.geteuid()).pw_name) is None
    if os.geteuid() != 0:
        assert isolation.run_user(None) is None


def test_an_undumpable_process_hides_its_environment_from_its_own_user() -> None:
    """The agent's key may be in its environment (MUSTER_API_KEY): a run of the same user cannot read it.

    Both sides run as one user: this test's own, or, as root (which may read anything), nobody.
    """
    as_root = os.geteuid() == 0
    python = "/usr/bin/python3" if as_root else sys.executable
    if not Path(python).exists():
        pytest.fail(f"{python} is needed to run both sides as nobody")
    folder = Path(tempfile.mkdtemp(prefix="muster-undumpable-"))
    try:
        folder.chmod(0o755)
        shutil.copy(Path(isolation.__file__), folder / "isolation.py")
        (folder / "isolation.py").chmod(0o644)
        same_user: dict[str, int] = {"user": NOBODY.uid, "group": NOBODY.gid} if as_root else {}
        target = (
            "import sys, time; sys.path.insert(0, sys.argv[1]); import isolation; "
            "isolation.make_undumpable(); print('ready', flush=True); time.sleep(30)"
        )
        child = subprocess.Popen(
            [python, "-c", target, str(folder)], env={"MUSTER_API_KEY": "mk.hidden", "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, cwd=folder, **same_user,  # type: ignore[call-overload]
        )  # fmt: skip
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
            reader = "import sys; print(open(f'/proc/{sys.argv[1]}/environ', 'rb').read().count(b'mk.hidden'))"
            peek = subprocess.run(
                [python, "-c", reader, str(child.pid)], capture_output=True, text=True, cwd=folder,
                **same_user,  # type: ignore[call-overload]
            )  # fmt: skip
            assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek.stdout
        finally:
            child.kill()
            child.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
