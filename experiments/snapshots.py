"""Snapshots: content-addressed tarballs of working trees, for runs that need no git remote.

Stored under SNAPSHOT_DIR as <sha[:2]>/<sha>.tar.gz; the upload is streamed to a temporary
file, its size bounded by SNAPSHOT_MAX_BYTES and its digest checked against the name
before it is moved into place; storing the same content again is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError

from accounts.actor import Actor
from core.audit import Change, audit_record
from core.errors import Forbidden, InvalidInput, NotFound
from experiments.models import Experiment, Snapshot
from queues.access import actor_servable_queue_ids

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def snapshot_path(sha256: str) -> Path:
    return Path(settings.SNAPSHOT_DIR) / sha256[:2] / f"{sha256}.tar.gz"


def _check_name(sha256: str) -> None:
    if not SHA256.match(sha256):
        raise InvalidInput("a snapshot is named by the SHA-256 of its content (64 hex characters)", field="sha256")


def snapshot_store(*, actor: Actor, sha256: str, chunks: Iterable[bytes]) -> tuple[Snapshot, bool]:
    """Store an uploaded tarball under its digest; (snapshot, created)."""
    _check_name(sha256)
    if actor.is_agent or not actor.can_write or actor.user_id is None:
        raise Forbidden("only users and admins upload snapshots")
    existing = Snapshot.objects.filter(pk=sha256).first()
    if existing is not None and snapshot_path(sha256).exists():
        return existing, False
    target = snapshot_path(sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > settings.SNAPSHOT_MAX_BYTES:
                    raise InvalidInput(
                        f"a snapshot is at most {settings.SNAPSHOT_MAX_BYTES // 2**20} MiB; commit and push instead",
                        field="body",
                    )
                digest.update(chunk)
                f.write(chunk)
        if size == 0:
            raise InvalidInput("the snapshot is empty", field="body")
        if digest.hexdigest() != sha256:
            raise InvalidInput("the content does not match its SHA-256 name", field="sha256")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    try:
        snap = Snapshot.objects.create(sha256=sha256, size=size, owner_id=actor.user_id)
    except IntegrityError:  # the same content uploaded at the same moment
        return Snapshot.objects.get(pk=sha256), False
    audit_record(actor=actor, change=Change("snapshot", sha256, "upload", {}, {"size": size}))
    return snap, True


def snapshot_for_reading(*, actor: Actor, sha256: str) -> Path:
    """The stored file, for agents (to run it) and for its owner and admins."""
    _check_name(sha256)
    snap = Snapshot.objects.filter(pk=sha256).first()
    path = snapshot_path(sha256)
    if snap is None or not path.exists():
        raise NotFound(f"snapshot {sha256[:12]} does not exist", field="sha256")
    if actor.is_admin or (not actor.is_agent and snap.owner_id == actor.user_id):
        return path
    if actor.is_agent:
        # An agent fetches the code of experiments it may run: one of them is in a queue its key serves.
        queue_ids = Experiment.objects.filter(snapshot=sha256, queue__isnull=False).values_list("queue_id", flat=True)
        if actor_servable_queue_ids(actor, set(queue_ids)):
            return path
        raise Forbidden("no experiment in a queue this key serves runs this snapshot")
    raise Forbidden("this snapshot belongs to another user")
