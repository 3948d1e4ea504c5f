#!/usr/bin/env bash
# The whole check: ruff, mypy, migrations, then pytest on SQLite and on PostgreSQL.
# Without DATABASE_URL a throw-away PostgreSQL cluster and Redis are started (and stopped).
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
echo "== ruff"
$V/ruff check .
$V/ruff format --check .
echo "== the layers (import-linter, pyproject.toml)"
$V/lint-imports --no-cache
# Tools load the test settings (orchestration/settings_test.py): no production key needed to check the code.
echo "== mypy"; DJANGO_SETTINGS_MODULE=orchestration.settings_test $V/mypy
echo "== migrations"; DJANGO_SETTINGS_MODULE=orchestration.settings_test $V/python manage.py makemigrations --check --dry-run
mkdir -p var

echo "== the agent alone on Python 3.10 (installed from muster_agent/, no Django)"
PY310=$(scripts/find-python310) || { echo "no Python 3.10 found (pyenv install 3.10)" >&2; exit 1; }
UV=$(command -v uv || echo .tools/bin/uv)
if [ ! -x var/venv310/bin/python ] || [ muster_agent/pyproject.toml -nt var/venv310/.installed ]; then
    rm -rf var/venv310
    $UV venv -q -p "$PY310" var/venv310
    touch var/venv310/.installed
fi
$UV pip install -q --python var/venv310/bin/python --reinstall-package muster-agent ./muster_agent pytest
rm -rf muster_agent/build muster_agent/*.egg-info
var/venv310/bin/python -m pytest -q -c tests/agent/pytest.ini tests/agent

echo "== clearml-agent 3.0.3 and 1.9.2 for the compatibility tests (installed once, offline afterwards)"
scripts/clearml-agents.sh

echo "== the container image for the podman tests (built once, cached)"
out=$(scripts/test-image.sh)
while IFS= read -r line; do export "$line"; done <<<"$out"

echo "== pytest on SQLite"
env -u DATABASE_URL -u REDIS_URL $V/pytest -q -p no:cacheprovider "$@"

echo "== pytest on PostgreSQL"
started=""
if [ -z "${DATABASE_URL:-}" ] || [ -z "${REDIS_URL:-}" ]; then
    # Start what is missing; a DATABASE_URL or REDIS_URL that was given is kept.
    given_db=${DATABASE_URL:-}
    given_redis=${REDIS_URL:-}
    out=$(scripts/test-services.sh)
    while IFS= read -r line; do export "$line"; done <<<"$out"
    started=$MUSTER_TEST_SERVICES_DIR
    trap 'scripts/test-services.sh stop "$started"' EXIT
    [ -n "$given_db" ] && export DATABASE_URL=$given_db
    [ -n "$given_redis" ] && export REDIS_URL=$given_redis
fi
case "${DATABASE_URL}" in
    postgres*) ;;
    *) echo "DATABASE_URL must point at PostgreSQL for the second run" >&2; exit 1 ;;
esac
$V/pytest -q -p no:cacheprovider "$@"
