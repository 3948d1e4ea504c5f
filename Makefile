# Muster: `make run` starts everything on SQLite; `make test` runs the whole suite.
SHELL := /bin/bash
PY := $(shell scripts/find-python)
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON := $(PY)

.PHONY: setup system-packages test-packages run test test-fast lint typecheck migrations-check bench clean schema

$(UV):
	$(PY) -m venv .tools && .tools/bin/pip install --quiet uv

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PY)
	touch $@

## setup: what running needs from apt (when missing) and the virtual environment
setup: system-packages $(VENV)/.synced

system-packages:
	@scripts/system-packages.sh run

# What the whole suite needs besides: PostgreSQL, Redis, podman, chromium (apt, when missing).
test-packages:
	@scripts/system-packages.sh test

## run: migrate SQLite, first-run admin/queue/key, then the ASGI server, celery worker and beat
run: setup
	exec $(VENV)/bin/python scripts/run.py

## test: lint, types, migrations check, then the suite on SQLite and on PostgreSQL
test: setup test-packages
	scripts/test.sh

# The core suite on SQLite in a minute or two: no live stacks, browsers, containers or slow tests.
test-fast: setup
	env -u DATABASE_URL -u REDIS_URL $(VENV)/bin/pytest -q -p no:cacheprovider -m "not slow and not live and not browser and not container and not clearml_agent"

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(VENV)/.synced
	DJANGO_SETTINGS_MODULE=orchestration.settings_test $(VENV)/bin/mypy

migrations-check: $(VENV)/.synced
	DJANGO_SETTINGS_MODULE=orchestration.settings_test $(VENV)/bin/python manage.py makemigrations --check --dry-run

## bench: every benchmark in bench/ (PostgreSQL and Redis started when not given)
bench: setup test-packages
	scripts/bench.sh

clean:
	rm -rf $(VENV) .tools var/test-* .pytest_cache .mypy_cache .ruff_cache

## schema: regenerate the committed OpenAPI schema (a test fails when it drifts)
schema: $(VENV)/.synced
	DJANGO_SETTINGS_MODULE=orchestration.settings_test $(VENV)/bin/python manage.py spectacular --urlconf orchestration.schema_urls --validate --fail-on-warn > docs/openapi.yaml
