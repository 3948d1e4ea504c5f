"""The Celery app; beat runs the periodic reconcilers declared in CELERY_BEAT_SCHEDULE."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestration.settings")

app = Celery("muster")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _ensure_broker_folders(sender: Celery, **_kwargs: object) -> None:
    """The filesystem broker needs its folders to exist before the first message."""

    if settings.CELERY_BROKER_URL == "filesystem://":
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key]).mkdir(parents=True, exist_ok=True)
