"""Reads about experiments, attempts and logs."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Max, Min, Q, QuerySet

from accounts.secrets import secret_env_decrypt, secrets_for_run
from core.errors import NotFound
from experiments.models import SPEC_FIELDS, Attempt, Experiment, LogChunk


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
class LogPage:
    attempt: str | None
    truncated: bool
    chunks: list[dict[str, object]]
    next_after: int | None


def log_page(*, experiment: Experiment, attempt_id: str | None, after: int | None, limit: int = 500) -> LogPage:
    """Log chunks of an attempt (default: the current one) after a sequence number."""
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
    # The marker goes once, before the first tail chunk kept, to a reader coming from the head:
    # one who already read the tail chunks since dropped missed nothing.
    marked_seq = None
    if attempt.log_truncated:
        bounds = LogChunk.objects.filter(attempt=attempt).aggregate(
            head_end=Max("seq", filter=Q(in_tail=False)), tail_start=Min("seq", filter=Q(in_tail=True))
        )
        head_end = bounds["head_end"]
        if after is None or head_end is None or after <= head_end:
            marked_seq = bounds["tail_start"]
    chunks: list[dict[str, object]] = []
    for seq, stored in qs.values_list("seq", "text")[:limit]:
        if seq == marked_seq:
            marker = truncation_marker(attempt.log_dropped_bytes, attempt.log_dropped_lines)
            chunks.append({"seq": seq, "text": marker + stored})
        else:
            chunks.append({"seq": seq, "text": stored})
    next_after = int(chunks[-1]["seq"]) if chunks else after  # type: ignore[call-overload]
    return LogPage(attempt=attempt.pk, truncated=attempt.log_truncated, chunks=chunks, next_after=next_after)


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
