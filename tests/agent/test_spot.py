"""The cloud's notice that it takes the machine back, read from a fake metadata server the way
EC2 (IMDSv2) and GCE serve it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from muster_agent.spot import SpotWatch


class FakeMetadata:
    def __init__(self) -> None:
        self.action: dict[str, str] | None = None  # EC2's instance-action, once the cloud decides
        self.preempted = False  # GCE's instance/preempted
        self.tokens: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    fake.tokens.append("tok")
                    return self._send(200, "tok")
                return self._send(400, "")

            def do_GET(self) -> None:
                if self.path == "/latest/meta-data/spot/instance-action":
                    if self.headers.get("X-aws-ec2-metadata-token") != "tok":
                        return self._send(401, "")
                    return self._send(200, json.dumps(fake.action)) if fake.action else self._send(404, "")
                if self.path == "/computeMetadata/v1/instance/preempted":
                    if self.headers.get("Metadata-Flavor") != "Google":
                        return self._send(403, "")
                    return self._send(200, "TRUE" if fake.preempted else "FALSE")
                return self._send(404, "")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def metadata() -> Iterator[FakeMetadata]:
    fake = FakeMetadata()
    yield fake
    fake.server.shutdown()


def test_ec2_says_nothing_then_gives_its_two_minutes(metadata: FakeMetadata) -> None:
    watch = SpotWatch("aws", metadata.url)
    assert watch.notice() is None
    metadata.action = {"action": "terminate", "time": "2026-12-07T20:00:00Z"}
    assert watch.notice() == "EC2 will terminate this spot instance at 2026-12-07T20:00:00Z"
    assert metadata.tokens  # IMDSv2: a session token first


def test_gce_flips_preempted_to_true(metadata: FakeMetadata) -> None:
    watch = SpotWatch("gcp", metadata.url)
    assert watch.notice() is None
    metadata.preempted = True
    assert watch.notice() == "GCE is preempting this machine"


def test_no_metadata_server_is_no_notice() -> None:
    assert SpotWatch("aws", "http://127.0.0.1:9").notice() is None
    with pytest.raises(ValueError, match="aws or gcp"):
        SpotWatch("azure")
