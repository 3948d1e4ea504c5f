"""Reads about experiments, attempts and logs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Q, QuerySet, Subquery
from django.utils import timezone

from accounts.secrets import secret_env_decrypt, secrets_for_run
from core.errors import NotFound
from experiments.models import SPEC_FIELDS, Attempt, Experiment, LogChunk
from queues.models import QueueEntry


def truncation_marker(dropped_bytes: int, dropped_lines: int) -> str:
    """The one line a capped log shows where its middle was."""
    lines = f"{dropped_lines:,} line{'s' if dropped_lines != 1 else ''}"
    return f"[… {dropped_bytes:,} bytes ({lines}) dropped here to keep this log under its size cap …]\n"


def experiment_list() -> QuerySet[Experiment]:
    """Every experiment with its owner and queue; experiments/filters.py narrows it."""
    return Experiment.objects.select_related("owner", "queue")


def experiment_get(experiment_id: str) -> Experiment:
    try:
        return Experiment.objects.select_related("owner", "queue").get(pk=experiment_id)
    except Experiment.DoesNotExist:
        raise NotFound(f"experiment {experiment_id} does not exist", field="id") from None


def attempt_list(experiment_id: str) -> QuerySet[Attempt]:
    return Attempt.objects.filter(experiment_id=experiment_id).order_by("number")


@dataclass
class LogWindow:
    """Where a capped log's middle was, as stored now: the head ends at chunk `head_end`, the
    kept tail starts at chunk `kept_from` (None: nothing of the tail is kept). The cut may
    have trimmed a partial line off either chunk since a follower read it: their texts now
    are `head_text` and `kept_text`. A live follower drops what it showed between the two and
    shows `marker` there, and so shows what is stored."""

    head_end: int | None
    kept_from: int | None
    head_text: str
    kept_text: str
    marker: str
    dropped_bytes: int
    dropped_lines: int


@dataclass
class LogPage:
    attempt: str | None
    truncated: bool
    chunks: list[dict[str, object]]
    next_after: int | None
    window: LogWindow | None = None


def log_page(
    *, experiment: Experiment, attempt_id: str | None, after: int | None, limit: int = 500, mark: bool = True
) -> LogPage:
    """Log chunks of an attempt (default: the current one) after a sequence number.

    With `mark`, the marker is put into the text once, before the first tail chunk kept, for a
    reader coming from the head (one who already read the tail chunks since dropped missed
    nothing); the page, which keeps its copy in step with the window, asks for none.
    """
    if attempt_id:
        attempt = Attempt.objects.filter(pk=attempt_id, experiment=experiment).first()
        if attempt is None:
            raise NotFound(f"attempt {attempt_id} is not an attempt of this experiment", field="attempt")
    else:
        attempt = experiment.current_attempt
        if attempt is None:
            return LogPage(attempt=None, truncated=False, chunks=[], next_after=after)
    qs = LogChunk.objects.filter(attempt=attempt).order_by("seq")
    if after is not None:
        qs = qs.filter(seq__gt=after)
    window = _log_window(attempt) if attempt.log_truncated else None
    marked_seq = None
    if mark and window is not None and (after is None or window.head_end is None or after <= window.head_end):
        marked_seq = window.kept_from
    chunks: list[dict[str, object]] = []
    for seq, stored in qs.values_list("seq", "text")[:limit]:
        if seq == marked_seq and window is not None:
            chunks.append({"seq": seq, "text": window.marker + stored})
        else:
            chunks.append({"seq": seq, "text": stored})
    next_after = int(chunks[-1]["seq"]) if chunks else after  # type: ignore[call-overload]
    return LogPage(
        attempt=attempt.pk, truncated=attempt.log_truncated, chunks=chunks, next_after=next_after, window=window
    )


def _log_window(attempt: Attempt) -> LogWindow:
    """The two chunks either side of a capped log's cut, in one query."""
    chunks = LogChunk.objects.filter(attempt=attempt)
    head_end = chunks.filter(in_tail=False).order_by("-seq").values("seq")[:1]
    kept_from = chunks.filter(in_tail=True).order_by("seq").values("seq")[:1]
    ends = chunks.filter(Q(seq=Subquery(head_end)) | Q(seq=Subquery(kept_from))).values_list("in_tail", "seq", "text")
    sides = {in_tail: (seq, text) for in_tail, seq, text in ends}
    head, kept = sides.get(False, (None, "")), sides.get(True, (None, ""))
    return LogWindow(
        head_end=head[0],
        kept_from=kept[0],
        head_text=head[1],
        kept_text=kept[1],
        marker=truncation_marker(attempt.log_dropped_bytes, attempt.log_dropped_lines),
        dropped_bytes=attempt.log_dropped_bytes,
        dropped_lines=attempt.log_dropped_lines,
    )


# What an agent needs to run an experiment: the spec (its labels aside), its id and retry count.
RUN_FIELDS = ("id", *(f for f in SPEC_FIELDS if f != "tags"), "retry_count")


def run_spec(experiment: Experiment, owner_secrets: list[tuple[str, str]] | None = None) -> dict[str, object]:
    """What an agent needs to run an experiment, secrets included (run time only).

    The owner's per-user secrets are merged under the experiment's own secret_env (one
    query, only for the claim's answer, unless the claim's take already read them: `owner_secrets`); a re-run of code from a repository or snapshot
    gets the frozen requirements of its last attempt, so it rebuilds the same set.
    """
    spec: dict[str, object] = {name: getattr(experiment, name) for name in RUN_FIELDS}
    own = secret_env_decrypt(experiment.secret_env or {})
    spec["secret_env"] = {**secrets_for_run(experiment.owner_id, owner_secrets), **own} if experiment.owner_id else own
    if experiment.repository or experiment.snapshot:
        # A re-run rebuilds the set that ran before (the frozen list of the last attempt that has one).
        frozen = (
            Attempt.objects.filter(experiment_id=experiment.pk)
            .exclude(frozen_requirements="")
            .order_by("-number")
            .values_list("frozen_requirements", flat=True)
            .first()
        )
        if frozen:
            spec["requirements"] = frozen
    return spec


def queue_priority(experiment_id: str) -> int | None:
    """The priority of an experiment's queue entry, which a move to the top or bottom changes."""
    return QueueEntry.objects.filter(experiment_id=experiment_id).values_list("priority", flat=True).first()


def attempt_times(attempt_id: str) -> tuple[datetime, datetime]:
    """An attempt's time range: from its claim to its end, or to now while it goes."""
    claimed, finished = Attempt.objects.filter(pk=attempt_id).values_list("claimed_at", "finished_at").get()
    return claimed, finished or timezone.now()


def attempt_of(experiment_id: str, attempt_id: str | None) -> str:
    """The id of an attempt of this experiment (default: its current one); 404 otherwise."""
    exp = experiment_get(experiment_id)
    if attempt_id:
        if not Attempt.objects.filter(pk=attempt_id, experiment=exp).exists():
            raise NotFound(f"attempt {attempt_id} is not an attempt of this experiment", field="attempt")
        return attempt_id
    if exp.current_attempt_id is None:
        raise NotFound("this experiment has not run yet", field="attempt")
    return str(exp.current_attempt_id)
