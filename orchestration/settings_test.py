"""The test suite's settings: production's (orchestration/settings.py), changed only where a
test run must differ. pytest and the tools (mypy, makemigrations, `make schema`) load this
module; a test that starts a server process gives it orchestration.settings (tests/live.py).

What stays zero here is what a test reads back at once after a request: reports written
inline, counters sent at once, every key checked again. The tests of those delays set them
to real values themselves (test_reports.py, test_counters.py, test_isolation.py, the live
stacks in tests/live.py and test_claim_wait.py's production server).
"""

from __future__ import annotations

from core.env import envint
from orchestration.settings import *  # noqa: F403 - production's, then the differences

# A fast hash: tests make users by the hundred; the real hashers are Django's, untouched.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Long-polls in tests end within seconds.
CLAIM_WAIT_MAX_S = envint("CLAIM_WAIT_MAX_S", 2, minimum=0)
REPORT_FLUSH_S = 0.0
COUNTER_FLUSH_S = 0.0
AUTH_CACHE_S = 0.0
