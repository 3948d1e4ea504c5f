"""muster_agent/build.py: a Python the worker lacks is one clear line, not uv's errors."""

from __future__ import annotations

import sys
from pathlib import Path

from muster_agent.build import Builder


def test_a_python_version_the_worker_lacks_falls_back_in_one_line(tmp_path: Path) -> None:
    said: list[str] = []
    venv = Builder(tmp_path, said.append).environment({"python_version": "3.99"})
    assert (venv / "bin" / "python").exists()
    text = "".join(said)
    assert f"Python 3.99 is not on this worker; using {sys.version.split()[0]}" in text
    assert "error" not in text.lower() and "failed" not in text.lower(), text
