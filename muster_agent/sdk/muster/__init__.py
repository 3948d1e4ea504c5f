"""Report progress to the Muster agent that runs this process. No dependencies.

    import muster
    muster.report(iteration=10, loss=0.25, accuracy=0.91)

Outside an agent (no MUSTER_REPORT_SOCKET in the environment) report() does nothing and
returns False. It never raises: a failed report must not fail a training run.
"""

from __future__ import annotations

import json
import math
import os
import socket

__all__ = ["report"]

_sock: socket.socket | None = None


def _connect() -> socket.socket | None:
    global _sock  # noqa: PLW0603 - one connection per process, reused
    if _sock is not None:
        return _sock
    path = os.environ.get("MUSTER_REPORT_SOCKET")
    if not path:
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    _sock = s
    return s


def report(iteration: int | None = None, **scalars: float) -> bool:
    """Send the current iteration and scalars; True when the agent took them."""
    global _sock  # noqa: PLW0603
    clean = {}
    for key, value in scalars.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            clean[str(key)[:200]] = number
    message = {"token": os.environ.get("MUSTER_REPORT_TOKEN", ""), "iteration": iteration, "scalars": clean}
    line = (json.dumps(message) + "\n").encode()
    for _ in range(2):  # one reconnect (the agent may have restarted its channel)
        try:
            s = _connect()
            if s is None:
                return False
            s.sendall(line)
            answer = b""
            while not answer.endswith(b"\n"):
                part = s.recv(64)
                if not part:
                    raise OSError("closed")
                answer += part
            return answer.strip() == b"ok"
        except OSError:
            if _sock is not None:
                _sock.close()
            _sock = None
    return False
