"""The local channel for `muster.report()`: a Unix socket only the runs' user (and the agent) can open.

Each run gets its own random token in MUSTER_REPORT_TOKEN; a message with an unknown
token is refused, so one run cannot report as another and the agent's API key never
reaches a child.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socketserver
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from muster_agent.isolation import RunUser

log = logging.getLogger("muster.agent")
MAX_LINE = 64 * 1024

Handler = Callable[[int | None, dict[str, float]], None]


class Channel:
    def __init__(self, user: RunUser | None = None) -> None:
        # A short path: Unix socket paths are limited to about 100 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="muster-"))
        os.chmod(self.dir, 0o700)
        self.path = str(self.dir / "report.sock")
        self.handlers: dict[str, Handler] = {}
        self.lock = threading.Lock()
        channel = self

        class _Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_LINE)
                    if not line:
                        return
                    answer = channel._dispatch(line)
                    self.wfile.write(answer + b"\n")

        self.server = socketserver.ThreadingUnixStreamServer(self.path, _Handler)
        self.server.daemon_threads = True
        os.chmod(self.path, 0o600)
        if user is not None:
            # Runs execute as another user: it alone (and the agent) may open the socket; the
            # per-attempt token still says which run speaks.
            os.chmod(self.dir, 0o711)  # noqa: S103 - search only, so the run's user reaches its socket
            os.chown(self.path, user.uid, user.gid)
        self.thread = threading.Thread(target=self.server.serve_forever, name="report-channel", daemon=True)
        self.thread.start()

    def _dispatch(self, line: bytes) -> bytes:
        try:
            msg: Any = json.loads(line)
            token = str(msg.get("token", ""))
            iteration = msg.get("iteration")
            scalars = msg.get("scalars") or {}
            if iteration is not None and (not isinstance(iteration, int) or iteration < 0):
                return b"error: iteration must be a non-negative integer"
            if not isinstance(scalars, dict):
                return b"error: scalars must be an object"
        except (ValueError, AttributeError):
            return b"error: not JSON"
        with self.lock:
            handler = next((h for t, h in self.handlers.items() if secrets.compare_digest(t, token)), None)
        if handler is None:
            return b"error: unknown token"
        clean = {str(k)[:200]: float(v) for k, v in scalars.items() if isinstance(v, (int, float))}
        handler(iteration, clean)
        return b"ok"

    def register(self, handler: Handler) -> str:
        token = secrets.token_hex(16)
        with self.lock:
            self.handlers[token] = handler
        return token

    def unregister(self, token: str) -> None:
        with self.lock:
            self.handlers.pop(token, None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass
