"""Logs: sequenced chunks, idempotent retries, repaired text, a head-and-tail cap."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from django.test import override_settings

from accounts.actor import Actor
from core.errors import StaleLease
from experiments import services
from experiments.models import Experiment, LogChunk
from experiments.selectors import LogPage, log_page
from queues.models import Queue
from tests.race import race
from workers.dispatch import Claim, dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def claim(
    make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], queue: Queue, agent_actor: Actor
) -> Claim:
    make_experiment(queue=queue)
    claimed = dispatch_claim(actor=agent_actor, worker=make_worker(queues=[queue]))
    assert claimed is not None
    return claimed


def append(actor: Actor, claim: Claim, chunks: list[tuple[int, str]]) -> int:
    return services.attempt_append_logs(
        actor=actor, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token, chunks=chunks
    )


def text_of(claim: Claim) -> str:
    page = log_page(experiment=claim.experiment, attempt_id=claim.attempt.pk, after=None, limit=10_000)
    return "".join(str(c["text"]) for c in page.chunks)


def test_chunks_are_stored_in_sequence_and_a_retry_is_a_no_op(claim: Claim, agent_actor: Actor) -> None:
    assert append(agent_actor, claim, [(1, "b\n"), (0, "a\n")]) == 2
    assert append(agent_actor, claim, [(0, "a\n"), (1, "b\n"), (2, "c\n")]) == 1
    assert text_of(claim) == "a\nb\nc\n"
    page = log_page(experiment=claim.experiment, attempt_id=None, after=0)
    assert [c["seq"] for c in page.chunks] == [1, 2] and page.next_after == 2


def test_nul_and_invalid_unicode_are_replaced(claim: Claim, agent_actor: Actor) -> None:
    append(agent_actor, claim, [(0, "a\x00b \udcff end")])
    assert text_of(claim) == "a\ufffdb \ufffd end"


MARKER = re.compile(r"\[… ([\d,]+) bytes \(([\d,]+) lines?\) dropped here to keep this log under its size cap …\]\n")


def _chunks(text: str, size: int) -> list[str]:
    """Text cut mid-line into pieces of uneven sizes around `size`, as an agent's batches cut it
    (a quiet second sends a little, a busy one a lot)."""
    pieces, i, n = [], 0, 0
    while i < len(text):
        step = (size, size // 5 + 1, size * 2)[n % 3]
        pieces.append(text[i : i + step])
        i, n = i + step, n + 1
    return pieces


def _capped(claim: Claim, actor: Actor, text: str, size: int, per_call: int = 1) -> str:
    pieces = _chunks(text, size)
    for start in range(0, len(pieces), per_call):
        append(actor, claim, [(seq, pieces[seq]) for seq in range(start, min(start + per_call, len(pieces)))])
    return text_of(claim)


@override_settings(LOG_HEAD_BYTES=4096, LOG_TAIL_BYTES=8192)
@pytest.mark.parametrize("chunk", [64, 333, 4000])
def test_a_flood_of_short_lines_reads_as_one_log_with_one_marker(claim: Claim, agent_actor: Actor, chunk: int) -> None:
    lines = [f"line {i:05d} {'x' * (i % 37)}\n" for i in range(3000)]
    text = _capped(claim, agent_actor, "".join(lines), chunk, per_call=5)
    markers = MARKER.findall(text)
    assert len(markers) == 1
    head, tail = MARKER.split(text)[0], MARKER.split(text)[-1]
    head_lines, tail_lines = head.splitlines(keepends=True), tail.splitlines(keepends=True)
    # Whole lines on both sides of the marker, the head from the first line on, the tail to the last.
    assert head_lines == lines[: len(head_lines)]
    assert tail_lines == lines[len(lines) - len(tail_lines) :]
    dropped_bytes, dropped_lines = (int(n.replace(",", "")) for n in markers[0])
    assert dropped_lines == len(lines) - len(head_lines) - len(tail_lines)
    assert dropped_bytes == len("".join(lines).encode()) - len(head.encode()) - len(tail.encode())
    assert len(head.encode()) <= 4096 and len(tail.encode()) <= 8192
    claim.attempt.refresh_from_db()
    assert claim.attempt.log_truncated


@override_settings(LOG_HEAD_BYTES=4096, LOG_TAIL_BYTES=8192)
def test_one_huge_line_keeps_its_beginning_and_its_end(claim: Claim, agent_actor: Actor) -> None:
    text = "start " + "y" * 100_000 + " end\n"
    out = _capped(claim, agent_actor, text, 1000)
    assert out.startswith("start y") and out.endswith("y end\n")
    assert len(MARKER.findall(out)) == 1


@override_settings(LOG_HEAD_BYTES=4096, LOG_TAIL_BYTES=8192)
def test_binary_output_is_repaired_and_capped_once(claim: Claim, agent_actor: Actor) -> None:
    raw = bytes(range(256)) * 200
    text = raw.decode("utf-8", errors="surrogateescape")
    out = _capped(claim, agent_actor, text, 700)
    assert "\x00" not in out and len(MARKER.findall(out)) == 1


@override_settings(LOG_HEAD_BYTES=4096, LOG_TAIL_BYTES=8192)
def test_a_reader_that_follows_sees_the_marker_once(claim: Claim, agent_actor: Actor) -> None:
    """Reading page by page as the log grows: one marker for the reader who comes from the head,
    none for one who already read what was later dropped."""
    lines = [f"row {i:05d} {'z' * 40}\n" for i in range(2000)]
    pieces = _chunks("".join(lines), 500)
    seen, after = [], None
    for seq, piece in enumerate(pieces):
        append(agent_actor, claim, [(seq, piece)])
        if seq % 7 == 0 or seq == len(pieces) - 1:
            page = log_page(experiment=claim.experiment, attempt_id=claim.attempt.pk, after=after, limit=10_000)
            seen += [str(c["text"]) for c in page.chunks]
            after = page.next_after
    followed = "".join(seen)
    assert len(MARKER.findall(followed)) <= 1
    late = log_page(experiment=claim.experiment, attempt_id=claim.attempt.pk, after=None, limit=10_000)
    assert len(MARKER.findall("".join(str(c["text"]) for c in late.chunks))) == 1


def _follow(copy: dict[int, str], page: LogPage) -> str:
    """What the page's live log does with an answer (static/muster/app.js, tailLog): add the new
    chunks, drop what the window says the server dropped, take the trimmed ends, put the marker."""
    for chunk in page.chunks:
        copy.setdefault(int(str(chunk["seq"])), str(chunk["text"]))
    w = page.window
    if w is None:
        return "".join(copy[seq] for seq in sorted(copy))
    for seq in list(copy):
        if (w.head_end is None or seq > w.head_end) and (w.kept_from is None or seq < w.kept_from):
            del copy[seq]
    for seq, text in ((w.head_end, w.head_text), (w.kept_from, w.kept_text)):
        if seq is not None and seq in copy:
            copy[seq] = text
    head = [copy[s] for s in sorted(copy) if w.head_end is not None and s <= w.head_end]
    rest = [copy[s] for s in sorted(copy) if w.head_end is None or s > w.head_end]
    return "".join(head) + w.marker + "".join(rest)


@override_settings(LOG_HEAD_BYTES=4096, LOG_TAIL_BYTES=8192)
@pytest.mark.parametrize("every", [1, 3, 40])
def test_a_live_follower_that_keeps_its_copy_in_the_window_shows_what_is_stored(
    claim: Claim, agent_actor: Actor, every: int
) -> None:
    """At every read, the follower's copy is the stored log, whether it keeps up or falls far behind."""
    lines = [f"row {i:05d} {'z' * (i % 50)}\n" for i in range(1500)]
    pieces = _chunks("".join(lines), 700)
    copy: dict[int, str] = {}
    after = None
    for seq, piece in enumerate(pieces):
        append(agent_actor, claim, [(seq, piece)])
        if seq % every == 0 or seq == len(pieces) - 1:
            page = log_page(
                experiment=claim.experiment, attempt_id=claim.attempt.pk, after=after, limit=10_000, mark=False
            )
            after = page.next_after
            assert _follow(copy, page) == text_of(claim), f"after chunk {seq}"
    assert len(MARKER.findall(text_of(claim))) == 1


def test_a_log_page_reads_a_capped_logs_window_in_one_query(
    claim: Claim, agent_actor: Actor, django_assert_num_queries: Callable[..., Any]
) -> None:
    with override_settings(LOG_HEAD_BYTES=1024, LOG_TAIL_BYTES=1024):
        append(agent_actor, claim, [(seq, f"line {seq:04d} {'q' * 200}\n") for seq in range(40)])
    claim.experiment.refresh_from_db()
    with django_assert_num_queries(3):  # the attempt, the window, the chunks
        page = log_page(experiment=claim.experiment, attempt_id=None, after=None)
    assert page.window is not None and page.window.head_end is not None and page.window.kept_from is not None
    assert page.window.head_end < page.window.kept_from and page.window.dropped_lines > 0


def test_a_stale_token_cannot_write_logs(claim: Claim, agent_actor: Actor) -> None:
    with pytest.raises(StaleLease):
        services.attempt_append_logs(actor=agent_actor, attempt_id=claim.attempt.pk, token="nope", chunks=[(0, "x")])
    assert not LogChunk.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_writers_without_sequence_numbers_at_once_lose_no_line(claim: Claim, agent_actor: Actor) -> None:
    """ClearML's events carry no sequence, and the agent and the SDK in the task send them at once."""
    attempt = claim.attempt

    def write(i: int) -> None:
        services.attempt_append_text(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token,
                                     text=f"writer {i}\n")  # fmt: skip

    for round_ in range(3):
        assert race(*(partial(write, round_ * 8 + i) for i in range(8))) == []
    lines = sorted(text_of(claim).splitlines())
    assert lines == sorted(f"writer {i}" for i in range(24))
    assert sorted(LogChunk.objects.filter(attempt=attempt).values_list("seq", flat=True)) == list(range(1, 25))
