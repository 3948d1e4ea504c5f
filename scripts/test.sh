#!/usr/bin/env bash
# The whole check: ruff, mypy, migrations, then pytest on SQLite and on PostgreSQL.
# Without DATABASE_URL a throw-away PostgreSQL cluster and Redis are started (and stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
echo "== ruff"; $V/ruff check . && $V/ruff format --check .
echo "== mypy"; $V/mypy
echo "== migrations"; $V/python manage.py makemigrations --check --dry-run
mkdir -p var

echo "== pytest on SQLite"
env -u DATABASE_URL -u REDIS_URL $V/pytest -q -p no:cacheprovider "$@"

echo "== pytest on PostgreSQL"
started=""
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    out=$(scripts/test-services.sh)
    while IFS= read -r line; do export "$line"; done <<<"$out"
    started=$MUSTER_TEST_SERVICES_DIR
    trap 'scripts/test-services.sh stop "$started"' EXIT
fi
$V/pytest -q -p no:cacheprovider "$@"
