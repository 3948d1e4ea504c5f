"""The benchmarks still run against the current schema (small sizes; timings are not asserted).

bench/dispatch.py fills experiments with raw SQL, so a new NOT NULL column breaks it
silently unless something runs it: this does, and checks its own correctness figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


def test_the_dispatch_bench_runs_and_finds_no_duplicates_and_nothing_lost() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    done = subprocess.run(
        [sys.executable, "bench/dispatch.py", "--experiments", "90", "--claimers", "3", "--server-workers", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = re.search(r"^RESULT dispatch .*duplicates=(\d+) lost=(\d+)", done.stdout, re.M)
    assert result is not None, done.stdout[-2000:]
    assert result.groups() == ("0", "0")
    assert "http: 90 claims" in done.stdout


def test_the_autoscale_bench_launches_through_the_loop_and_its_reconcile_queries_stay_flat() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    done = subprocess.run(
        [sys.executable, "bench/autoscale.py", "--rounds", "3", "--waiting", "500", "--apps", "3", "--resources", "3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-1500:]
    assert re.search(r"^RESULT autoscale enqueue_to_launch_p50_ms=\d+ .*reconcile_queries=\d+$", done.stdout, re.M)
    flat = re.search(r"(\d+) queries with 500 waiting, (\d+) with 50", done.stdout)
    assert flat is not None and flat.group(1) == flat.group(2), done.stdout[-1000:]
