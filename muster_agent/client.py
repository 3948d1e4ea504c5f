"""A small HTTP client for the Muster API on the standard library (keep-alive per thread)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from typing import Any

from muster_agent import PROTOCOL, __version__


class ApiError(Exception):
    """The server answered with an error (4xx, or a 5xx body that is not an outage)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, body: Any = None):
        super().__init__(f"{message} ({status} {code}{', field ' + field if field else ''})")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body


class ServerAway(Exception):
    """The server could not be reached or is restarting (connection error, 502/503/504, timeout)."""


AWAY_STATUSES = {500, 502, 503, 504}


class Client:
    def __init__(self, server: str, key: str, *, ca_bundle: str | None = None, timeout: float = 30):
        parts = urllib.parse.urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the server URL must be http(s)://host[:port], not {server!r}")
        self.server = server.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base = parts.path.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.ssl_context = ssl.create_default_context(cafile=ca_bundle) if parts.scheme == "https" else None
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def abort(self) -> None:
        """End this thread's request in flight (from a signal handler): it raises ServerAway."""
        conn = getattr(self._local, "conn", None)
        self._local.aborted = True
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        auth: bool = True,
    ) -> Any:
        """JSON in, JSON out; raises ApiError for answers that are errors, ServerAway when unreachable."""
        data = json.dumps(body).encode() if body is not None else None
        status, raw = self.send(method, path, data, "application/json", params=params, timeout=timeout, auth=auth)
        return self._decode(status, raw, path)

    def upload(self, path: str, data: bytes, content_type: str, *, timeout: float | None = None) -> Any:
        """Bytes in (a snapshot), JSON out."""
        status, raw = self.send("PUT", path, data, content_type, timeout=timeout or 600)
        return self._decode(status, raw, path)

    def download(self, path: str, *, timeout: float | None = None) -> bytes:
        """Bytes out (a snapshot); errors as for request()."""
        status, raw = self.send("GET", path, None, None, timeout=timeout or 600)
        if status >= 300:
            self._decode(status, raw, path)
        return raw

    def send(
        self,
        method: str,
        path: str,
        data: bytes | None,
        content_type: str | None,
        *,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
        auth: bool = True,
    ) -> tuple[int, bytes]:
        url = self.base + "/api/v1/" + path.lstrip("/")
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {
            "Accept": "application/json",
            "User-Agent": f"muster-agent/{__version__}",
            "X-Muster-Protocol": str(PROTOCOL),
        }
        if auth:
            headers["Authorization"] = f"Bearer {self.key}"
        if data is not None and content_type:
            headers["Content-Type"] = content_type
        self._local.aborted = False  # an abort ends the request in flight, not a later one
        for attempt in range(2):  # a kept-alive connection the server closed is retried once, fresh
            conn = self._connection(timeout or self.timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if getattr(self._local, "aborted", False):
                    self._local.aborted = False
                    raise ServerAway("the request was aborted") from None
                if attempt == 1:
                    raise ServerAway(f"{self.server}: {e}") from None
            except (OSError, http.client.HTTPException) as e:
                self.close()
                self._local.aborted = False
                raise ServerAway(f"{self.server}: {e}") from None
        return status, raw

    def _decode(self, status: int, raw: bytes, path: str) -> Any:
        if status in AWAY_STATUSES:
            # Restarting, behind a proxy that lost it, or a transient fault: try again later.
            raise ServerAway(f"{self.server} answered {status}")
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                if status == 404:
                    raise ApiError(404, "not_found", f"no such resource: {path}") from None
                raise ApiError(status, "bad_response", f"the server answered {status} with no JSON") from None
        if status >= 400:
            err = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(err, dict):
                raise ApiError(
                    status, str(err.get("code", "error")), str(err.get("message", "")), err.get("field"), payload
                )
            raise ApiError(status, "error", f"the server answered {status}", None, payload)
        return payload
