"""What the experiment lifecycle asks of the machines that run attempts: three answers, no more.

Experiments sit beneath workers in the layers (docs/architecture.md): an attempt names the
worker it runs on, but the rules about machines are the workers app's: which workers are
live, what capacity an ended attempt gives back, and whose long-polls to wake when it does.
The lifecycle needs them at three moments (an enqueue warns when nobody listens, a stop is a
request when the worker is live, an attempt's end frees its worker), so it states them here
as a typed interface, and the workers app provides it when Django starts
(workers/apps.py: WorkersConfig.ready). A test checks that the one provider is the workers
app's and that it keeps this shape (tests/test_layers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from accounts.actor import Actor
    from experiments.models import Attempt


class Fleet(Protocol):
    def listens(self, queue_id: str) -> bool:
        """Whether a live worker listens to this queue (an enqueue warns when none does)."""
        ...

    def runs(self, worker_id: int) -> bool:
        """Whether this worker is live, so that a stop is a request its agent carries out."""
        ...

    def release(self, *, actor: Actor, attempt: Attempt) -> None:
        """An attempt on this worker ended: give its capacity back (audited) and wake the
        long-polls of the worker's queues. Called inside the attempt's end, after its row."""
        ...


_provider: Fleet | None = None


def fleet_provide(provider: Fleet) -> None:
    """Install the fleet; the workers app calls it once, from its AppConfig.ready()."""
    global _provider  # noqa: PLW0603 - set once at start-up, read by every lifecycle call after
    _provider = provider


def fleet() -> Fleet:
    if _provider is None:
        raise ImproperlyConfigured("no fleet: the workers app is not in INSTALLED_APPS")
    return _provider
