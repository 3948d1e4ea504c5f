#!/usr/bin/env bash
# Every bench in bench/, each ending with a RESULT line (see docs/BENCHMARKS.md).
# Each starts a throw-away PostgreSQL and Redis unless DATABASE_URL and REDIS_URL are set.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p var/bench/staticfiles
for bench in bench/dispatch.py bench/latency.py bench/fleet.py bench/request_cpu.py bench/pages.py bench/autoscale.py; do
    echo "== $bench"
    .venv/bin/python "$bench" 2> >(grep -v -e 'No directory at' -e 'mw_instance' >&2)
done
