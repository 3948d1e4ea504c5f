"""A bounded on-disk outbox per attempt: every message to the server is written here first.

Messages (start, logs, progress, finish) are files named by a sequence number inside the
attempt's folder and are delivered in order by one sender thread, each exactly once as
far as the server can tell: log batches carry their sequence number, start and finish
are idempotent on the server, and a message is deleted only after the server took it.
When the server is away the agent keeps writing here; when the spool is full, log text
is dropped (and a note says how much) but start, progress and finish never are.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class Spool:
    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.next_name: dict[str, int] = {}
        self.bytes = sum(f.stat().st_size for f in self.root.glob("*/*.json"))
        self.dropped: dict[str, int] = {}

    def _dir(self, attempt_id: str) -> Path:
        return self.root / attempt_id

    def open_attempt(self, attempt_id: str, meta: dict[str, Any]) -> None:
        """Create the attempt's folder with what the sender needs to deliver (token, ids)."""
        d = self._dir(attempt_id)
        d.mkdir(parents=True, exist_ok=True)
        _write_atomic(d / "meta", json.dumps(meta).encode())

    def put(self, attempt_id: str, kind: str, body: dict[str, Any], *, droppable: bool = False) -> bool:
        """Queue a message; False when it was dropped because the spool is full (log text only)."""
        data = json.dumps({"kind": kind, "body": body}).encode()
        with self.lock:
            if droppable and self.bytes + len(data) > self.max_bytes:
                self.dropped[attempt_id] = self.dropped.get(attempt_id, 0) + len(data)
                return False
            d = self._dir(attempt_id)
            n = self.next_name.get(attempt_id)
            if n is None:
                existing = sorted(d.glob("*.json"))
                n = int(existing[-1].stem) + 1 if existing else 0
            self.next_name[attempt_id] = n + 1
            _write_atomic(d / f"{n:012d}.json", data)
            self.bytes += len(data)
            self.changed.notify_all()
            return True

    def take_dropped(self, attempt_id: str) -> int:
        with self.lock:
            return self.dropped.pop(attempt_id, 0)

    def attempts(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "meta").exists())

    def meta(self, attempt_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self._dir(attempt_id) / "meta").read_bytes())
        return meta

    def head(self, attempt_id: str) -> tuple[Path, dict[str, Any]] | None:
        files = sorted(self._dir(attempt_id).glob("*.json"))
        if not files:
            return None
        return files[0], json.loads(files[0].read_bytes())

    def done(self, path: Path) -> None:
        """The server took the message: remove it."""
        with self.lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return
            self.bytes -= size

    def pending(self, attempt_id: str) -> int:
        return len(list(self._dir(attempt_id).glob("*.json")))

    def close_attempt(self, attempt_id: str) -> None:
        """Forget an attempt (delivered, or refused by the server)."""
        with self.lock:
            d = self._dir(attempt_id)
            freed = sum(f.stat().st_size for f in d.glob("*.json"))
            shutil.rmtree(d, ignore_errors=True)
            self.bytes -= freed
            self.next_name.pop(attempt_id, None)
            self.dropped.pop(attempt_id, None)
            self.changed.notify_all()

    def wait(self, timeout: float) -> None:
        with self.lock:
            self.changed.wait(timeout)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
