"""Muster settings: every value comes from the environment (see .env.example)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from django.utils.csp import CSP

from core.env import envbool, envfloat, envint, envlist, envstr, proxy_ssl_header, secret_key_problem

# Lets annotations such as ModelAdmin[Queue] run, not only type-check.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("MUSTER_VAR_DIR", str(BASE_DIR / "var")))

# The test suite's settings (orchestration/settings_test.py, pytest's and the tools' settings
# module) import these and change only what a test run needs; this is the one switch for the
# defaults below that differ there.
TESTING = os.environ.get("DJANGO_SETTINGS_MODULE") == "orchestration.settings_test"

# The development key: fine for `make run` (DEBUG on) and tests, refused in production (below).
DEV_SECRET_KEY = "dev-insecure-change-me-" + "0" * 32
SECRET_KEY = envstr("SECRET_KEY", DEV_SECRET_KEY)
# Encrypts per-user secrets at rest; SECRET_KEY when empty. Changing it makes stored secrets unreadable.
SECRETS_KEY = envstr("SECRETS_KEY", "")
DEBUG = envbool("DEBUG", False)
PRODUCTION = not DEBUG and not TESTING
if PRODUCTION:
    # SECRET_KEY signs sessions and ClearML tokens, keys the API-key digests and (without
    # SECRETS_KEY) encrypts secrets: the server does not start with a guessable one.
    secret_key_problem(SECRET_KEY, DEV_SECRET_KEY, name="SECRET_KEY")
    if SECRETS_KEY:
        secret_key_problem(SECRETS_KEY, DEV_SECRET_KEY, name="SECRETS_KEY")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["*"] if DEBUG or TESTING else ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = envstr("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    # The kernel and accounts beneath the feature apps, the wiring on top (docs/architecture.md).
    "core",
    "accounts",
    "actions",
    "experiments",
    "queues",
    "workers",
    "autoscalers",
    "dashboard",
    "clearml_api",
    "orchestration",
]

# Django's middleware, subclassed to run in the event loop under ASGI instead of hopping to a
# thread for every method (orchestration/middleware.py); the same behaviour otherwise.
MIDDLEWARE = [
    "orchestration.middleware.SecurityMiddleware",
    "orchestration.middleware.StaticFilesMiddleware",  # WhiteNoise, async-capable (see there)
    "orchestration.middleware.SessionMiddleware",
    "orchestration.middleware.CommonMiddleware",
    "orchestration.middleware.CsrfViewMiddleware",
    "orchestration.middleware.AuthenticationMiddleware",
    "orchestration.middleware.MessageMiddleware",
    "orchestration.middleware.XFrameOptionsMiddleware",
    "orchestration.middleware.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "orchestration.urls"
WSGI_APPLICATION = "orchestration.wsgi.application"
ASGI_APPLICATION = "orchestration.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite by default (WAL, IMMEDIATE transactions, busy timeout so several
# processes can write), PostgreSQL with a connection pool when DATABASE_URL says so.
DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'muster.sqlite3'}")
_db: dict[str, Any] = dict(dj_database_url.parse(DATABASE_URL))
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": envint("SQLITE_BUSY_TIMEOUT_S", 30),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
    }
    _db["TEST"] = {"NAME": str(VAR_DIR / "test-muster.sqlite3")}
elif _db["ENGINE"] == "django.db.backends.postgresql":
    _db["CONN_MAX_AGE"] = 0
    if envbool("DB_POOL", True):
        _db["OPTIONS"] = {
            "pool": {
                "min_size": envint("DB_POOL_MIN", 2, minimum=0),
                "max_size": envint("DB_POOL_MAX", 20, minimum=1),
                "timeout": envint("DB_POOL_TIMEOUT_S", 10, minimum=1),
            }
        }
    # JIT compiles plans whose cost estimate looks big (the pages' correlated subqueries do) and
    # spends 50-100 ms doing it on queries that run in a few; an OLTP server never wants it.
    _db.setdefault("OPTIONS", {})["options"] = "-c jit=off"
DATABASES = {"default": _db}
# The claim's and the report's fixed statements are prepared on PostgreSQL (core/db.py:
# prepared_cursor): planned once per connection. Off for a pooler that cannot keep them.
DB_PREPARE = envbool("DB_PREPARE", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL", "")

CACHES: dict[str, Any] = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not (DEBUG or TESTING)
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# HTTPS: on by default in production (DEBUG off), each part can be turned off from the
# environment (a plain-HTTP test stack, a proxy that does its own redirect). HTTPS_ONLY sets
# the defaults of the others.
HTTPS_ONLY = envbool("HTTPS_ONLY", PRODUCTION)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", HTTPS_ONLY)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", HTTPS_ONLY)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", HTTPS_ONLY)
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31_536_000 if HTTPS_ONLY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS_ONLY)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)  # a commitment to browsers: opt in
# The header the TLS-terminating proxy sets (and overwrites) to say a request came over HTTPS;
# "HEADER,value" (Django's META name), "none" to trust none. The proxy must strip a client's own.
_proxy_ssl = envstr("SECURE_PROXY_SSL_HEADER", "HTTP_X_FORWARDED_PROTO,https" if HTTPS_ONLY else "none")
SECURE_PROXY_SSL_HEADER = None if _proxy_ssl.lower() == "none" else proxy_ssl_header(_proxy_ssl)
# Addresses of the proxies in front (comma-separated IPs or networks) whose X-Forwarded-For and
# X-Forwarded-Proto the ASGI server believes (gunicorn_conf.py, scripts/run.py); none by default.
TRUSTED_PROXIES = envlist("TRUSTED_PROXIES", [])
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (Django's own): pages load scripts and styles from our static files only;
# no inline script, style attribute or eval anywhere (htmx's allowEval is off, hx-on is not used).
SECURE_CSP: dict[str, list[str]] = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "font-src": [CSP.SELF],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
# Django's checks look for their own middleware classes; ours subclass them (orchestration/middleware.py)
# and orchestration/checks.py checks those instead.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
# Custom context-menu actions: a file synced by name at start-up, and the hosts that actions
# holding a secret (issued by the server) may call.
CUSTOM_ACTIONS_FILE = envstr("CUSTOM_ACTIONS_FILE", "")
# ClearML facade: how long an attempt claimed through queues.get_next_task (which names no
# worker) may wait for a worker's status_report to bind it before it is retried.
CLEARML_BIND_TIMEOUT_S = envint("CLEARML_BIND_TIMEOUT_S", 120, minimum=1)
CUSTOM_ACTION_HOSTS = envlist("CUSTOM_ACTION_HOSTS", [])

# Request limits: a body larger than this is refused with 413 before any parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = envint("MAX_REQUEST_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 2000
# Working-tree tarballs (`muster run --snapshot`), stored by their SHA-256.
SNAPSHOT_DIR = Path(envstr("SNAPSHOT_DIR", str(VAR_DIR / "snapshots")))
SNAPSHOT_MAX_BYTES = envint("SNAPSHOT_MAX_BYTES", 100 * 1024 * 1024, minimum=1024)

LOGIN_THROTTLE = envstr("LOGIN_THROTTLE", "10/min")  # password logins per client, API and admin pages
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.IsHumanUser"],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],  # with a nesting limit
    # JSON only: DRF's browsable pages carry inline scripts, which the Content-Security-Policy
    # refuses. /api/docs/ (Swagger UI, CSP-clean) is the API's browsable form.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Muster API",
    "DESCRIPTION": "Queues, experiments, workers and agents of the Muster orchestration server.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_URLCONF": "orchestration.schema_urls",
    # Served from static/, never from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "ExperimentStatusEnum": "experiments.models.Status",
        "FinishOutcomeEnum": ["completed", "failed", "stopped"],
        "KeyRoleEnum": "accounts.models.Role",
        "KeyScopeEnum": "accounts.models.KeyScope",
    },
    # The ApiKey scheme comes from orchestration/schema.py: ApiKeyScheme, named on every operation that needs it.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestration.schema.error_responses",
    ],
}

# Celery: Redis when configured, otherwise kombu's filesystem broker (no services needed).
CELERY_BROKER_DIR = VAR_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {}
else:
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DIR / "control"),
        "store_processed": False,
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_BEAT_TICK_S = envfloat("BEAT_TICK_S", 10.0)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULER = "orchestration.beat:Scheduler"  # its schedule in a dbm.dumb file (orchestration/beat.py)
CELERY_BEAT_SCHEDULE: dict[str, Any] = {
    "audit-purge": {"task": "core.audit_purge", "schedule": 3600.0},
    "experiments-purge": {"task": "experiments.records_purge", "schedule": 3600.0},
    "check-liveness": {"task": "workers.check_liveness", "schedule": CELERY_BEAT_TICK_S},
    "stats-sample": {"task": "workers.stats_sample", "schedule": envfloat("STATS_SAMPLE_S", 10.0)},
    "stats-rollup": {"task": "workers.stats_rollup", "schedule": 60.0},
    "stats-purge": {"task": "workers.stats_purge", "schedule": 3600.0},
    "autoscalers": {"task": "autoscalers.reconcile_due", "schedule": envfloat("AUTOSCALER_TICK_S", 10.0)},
}

# Domain settings.
# Long-poll claims wait at most this long.
CLAIM_WAIT_MAX_S = envint("CLAIM_WAIT_MAX_S", 30, minimum=0)
# On PostgreSQL the claim locks, picks and takes in one statement each (workers/claim_sql.py);
# off: the ORM's steps, as on SQLite (the same claim, more round trips).
CLAIM_IN_ONE_STATEMENT = envbool("CLAIM_IN_ONE_STATEMENT", True)
# Without Redis, a waiting claim re-checks the database this often (other processes' enqueues).
CLAIM_CROSS_PROCESS_CHECK_S = envfloat("CLAIM_CROSS_PROCESS_CHECK_S", 1.0)
WORKER_TIMEOUT_S = envint("WORKER_TIMEOUT", 30, minimum=1)
# Reports are written in batches this often per server process (0: inline).
REPORT_FLUSH_S = envfloat("REPORT_FLUSH_S", 1.0)
# The claim and report counters (/metrics) go to Redis in one round trip this often per process (0: at once).
COUNTER_FLUSH_S = envfloat("COUNTER_FLUSH_S", 1.0)
# The agents' claims and reports served straight from the ASGI entry point (orchestration/fastpath.py).
FAST_PATH = envbool("FAST_PATH", True)
# Under ASGI, how many requests' synchronous steps run at once per server process (the rest wait
# without contending for the GIL; orchestration/asgi.py: Gate).
REQUEST_STEPS_RUNNING = envint("REQUEST_STEPS_RUNNING", 8, minimum=1)
# Each server process records it is alive this often (liveness gives no verdicts while it is away).
SERVER_BEAT_S = envfloat("SERVER_BEAT_S", 5.0)
STOP_GRACE_DEFAULT_S = envint("STOP_GRACE_DEFAULT_S", 60, minimum=0)
LOG_HEAD_BYTES = envint("LOG_HEAD_BYTES", 1024 * 1024, minimum=1024)
LOG_TAIL_BYTES = envint("LOG_TAIL_BYTES", 4 * 1024 * 1024, minimum=1024)

# Autoscalers: the URL their machines' agents reach this server at (the Local provider's agents
# run on this host), and the interval of beat's pass over every app.
PUBLIC_URL = envstr("PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
AUTOSCALER_TICK_S = envfloat("AUTOSCALER_TICK_S", 10.0)
# The wheels machines install the agent from (GET /agent/wheels/): the agent's own, built by the
# server, and its dependencies', which scripts/agent-wheels.sh downloads for the machines' platforms.
AGENT_WHEELS_DIR = Path(envstr("AGENT_WHEELS_DIR", str(VAR_DIR / "agent-wheels")))
MAX_LOG_BATCH_BYTES = envint("MAX_LOG_BATCH_BYTES", 1024 * 1024, minimum=1024)
QUEUE_POSITION_GAP = 1024
AUDIT_RETENTION_DAYS = envint("AUDIT_RETENTION_DAYS", 365, minimum=1)
LOG_RETENTION_DAYS = envint("LOG_RETENTION_DAYS", 90, minimum=1)
USAGE_RETENTION_DAYS = envint("USAGE_RETENTION_DAYS", 3 * 365, minimum=1)
# Time series: raw report rows and samples, then 1-minute, 10-minute and 1-hour rollups.
STATS_RAW_RETENTION_HOURS = envint("STATS_RAW_RETENTION_HOURS", 48, minimum=7)
STATS_MINUTE_RETENTION_DAYS = envint("STATS_MINUTE_RETENTION_DAYS", 3, minimum=1)
STATS_TEN_MINUTE_RETENTION_DAYS = envint("STATS_TEN_MINUTE_RETENTION_DAYS", 40, minimum=1)
STATS_HOUR_RETENTION_DAYS = envint("STATS_HOUR_RETENTION_DAYS", 400, minimum=1)
API_KEY_TOUCH_INTERVAL_S = 60
# Seconds a successful key check is trusted in-process (revocation elsewhere takes this long).
AUTH_CACHE_S = envfloat("AUTH_CACHE_S", 10.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
