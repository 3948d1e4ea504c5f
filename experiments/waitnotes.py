"""More reasons a queued experiment waits, from apps above the experiments in the layers (the
autoscalers: "starting a machine for it", "no launch: the day's cap"). They register a function
when Django starts (autoscalers/apps.py); the experiment's page adds what they say to its
"why it waits" (experiments/pages.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from experiments.models import Experiment

log = logging.getLogger(__name__)
WAIT_NOTES: list[Callable[[Experiment], list[str]]] = []


def wait_notes(exp: Experiment) -> list[str]:
    notes: list[str] = []
    for note in WAIT_NOTES:
        try:
            notes += note(exp)
        except Exception:  # a note is a courtesy: the page shows without it
            log.warning("a wait note failed", exc_info=True)
    return notes
