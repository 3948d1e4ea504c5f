"""A claiming process for the concurrency tests: claim (and finish) until nothing is left.

Run as `python -m tests.claimer WORKER_NAME`; prints one JSON line with what it claimed.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")
    import django  # noqa: PLC0415 - a child process: settings first, then Django

    django.setup()
    # Imported here, after django.setup(): models and services need the app registry.
    from django.utils import timezone  # noqa: PLC0415

    from accounts.actor import SYSTEM  # noqa: PLC0415
    from experiments.models import Attempt  # noqa: PLC0415
    from workers.dispatch import dispatch_claim  # noqa: PLC0415
    from workers.models import Worker  # noqa: PLC0415
    from workers.services import worker_release  # noqa: PLC0415

    worker = Worker.objects.get(name=sys.argv[1])
    claimed, errors = [], []
    idle_rounds = 0
    while idle_rounds < 3:
        try:
            claim = dispatch_claim(actor=SYSTEM, worker=worker)
        except Exception as exc:  # report every failure to the test instead of dying
            errors.append(f"{exc.__class__.__name__}: {exc}")
            continue
        if claim is None:
            idle_rounds += 1
            time.sleep(0.05)
            continue
        idle_rounds = 0
        claimed.append(claim.experiment.pk)
        # Finish at once (what the agent's finish does to capacity) so the worker keeps claiming.
        Attempt.objects.filter(pk=claim.attempt.pk).update(finished_at=timezone.now())
        worker_release(actor=SYSTEM, attempt=claim.attempt)
    print(json.dumps({"claimed": claimed, "errors": errors}))


if __name__ == "__main__":
    main()
