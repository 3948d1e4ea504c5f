"""Snapshots: stored by digest, bounded, checked, readable by agents and their owner only."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _snapshot_dir(settings: Any, tmp_path: Path) -> None:
    settings.SNAPSHOT_DIR = tmp_path / "snapshots"


def _put(client: APIClient, data: bytes, sha: str | None = None) -> Any:
    sha = sha or hashlib.sha256(data).hexdigest()
    return client.generic("PUT", f"/api/v1/snapshots/{sha}/", data, content_type="application/gzip")


def test_upload_once_read_back_by_agents_and_the_owner(
    alice_api: APIClient, bob_api: APIClient, agent_api: APIClient, queue: Any
) -> None:
    data = b"\x1f\x8b pretend tarball" * 100
    sha = hashlib.sha256(data).hexdigest()
    r = _put(alice_api, data)
    assert r.status_code == 201 and r.json() == {"sha256": sha, "size": len(data), "created": True}
    assert _put(alice_api, data).json()["created"] is False  # the same content: stored once
    # An agent reads it once an experiment that runs it is in a queue its key serves.
    assert agent_api.get(f"/api/v1/snapshots/{sha}/").status_code == 403
    body = {"name": "snap", "snapshot": sha, "entry_point": "train.py", "queue": "default"}
    assert alice_api.post("/api/v1/experiments/", body, format="json").status_code == 201
    for client in (alice_api, agent_api):
        got = client.get(f"/api/v1/snapshots/{sha}/")
        assert got.status_code == 200 and b"".join(got.streaming_content) == data
    assert bob_api.get(f"/api/v1/snapshots/{sha}/").status_code == 403
    assert agent_api.generic("PUT", f"/api/v1/snapshots/{sha}/", data).status_code == 403
    assert alice_api.get(f"/api/v1/snapshots/{'0' * 64}/").status_code == 404


def test_a_bad_upload_is_a_400_and_leaves_nothing(alice_api: APIClient, settings: Any) -> None:
    r = _put(alice_api, b"content", sha="f" * 64)
    assert r.status_code == 400 and r.json()["error"]["field"] == "sha256"
    assert _put(alice_api, b"x", sha="not-a-digest").json()["error"]["field"] == "sha256"
    settings.SNAPSHOT_MAX_BYTES = 2048
    r = _put(alice_api, b"y" * 5000)
    assert r.status_code == 400 and "at most" in r.json()["error"]["message"]
    assert not [p for p in Path(settings.SNAPSHOT_DIR).rglob("*") if p.is_file()]


def test_an_experiment_names_an_uploaded_snapshot(alice_api: APIClient) -> None:
    body = {"name": "s", "command": ["python", "main.py"], "snapshot": "a" * 64}
    r = alice_api.post("/api/v1/experiments/", body, format="json")
    assert r.status_code == 400 and r.json()["error"]["field"] == "snapshot"
    data = b"tar"
    _put(alice_api, data)
    body["snapshot"] = hashlib.sha256(data).hexdigest()
    assert alice_api.post("/api/v1/experiments/", body, format="json").status_code == 201
    both = {**body, "repository": "file:///x"}
    assert alice_api.post("/api/v1/experiments/", both, format="json").json()["error"]["field"] == "snapshot"
