"""A local fake of Compute Engine's REST API, enough for the real googleapiclient (compute v1, its
shipped discovery document, pointed here with client_options api_endpoint): instances insert,
get, list (a labels filter, pages), delete, the serial port, zone operations (get, wait, list with
an operationType filter), with faults on demand: an error that arrives in the operation, an
HTTP error, and a preemption (the machine goes, an operation says why).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ZONE_PATH = re.compile(r"^/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/(?P<rest>.*)$")


class FakeComputeEngine:
    def __init__(self) -> None:
        self.instances: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.request_ids: dict[str, str] = {}  # requestId -> operation name
        self.inserts = 0
        self.next_insert_errors: list[dict[str, Any]] = []  # {"op_error": CODE} or {"http": (status, reason)}
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                m = ZONE_PATH.match(url.path)
                if not m:
                    self._send(404, _error(404, "notFound", f"no route {url.path}"))
                    return
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                with fake.lock:
                    status, answer = fake.handle(method, m["zone"], m["rest"], query, body)
                self._send(status, answer)

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API ------------------------------------------------------------------------------

    def _operation(self, zone: str, kind: str, target: str, error: str = "") -> dict[str, Any]:
        name = f"operation-{uuid.uuid4().hex[:12]}"
        op: dict[str, Any] = {
            "kind": "compute#operation", "name": name, "zone": zone, "status": "DONE", "operationType": kind,
            "targetLink": f"https://compute.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{target}",
            "insertTime": datetime.now(UTC).isoformat(),
        }  # fmt: skip
        if error:
            op["error"] = {"errors": [{"code": error, "message": f"injected {error}"}]}
            op["httpErrorStatusCode"] = 503
        self.operations[name] = op
        return op

    def handle(
        self, method: str, zone: str, rest: str, query: dict[str, str], body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        parts = rest.split("/")
        if parts[0] == "instances" and len(parts) == 1 and method == "POST":
            return self._insert(zone, query, body)
        if parts[0] == "instances" and len(parts) == 1 and method == "GET":
            return self._list(query)
        if parts[0] == "instances" and len(parts) >= 2:
            name = parts[1]
            inst = self.instances.get(name)
            if inst is None:
                return 404, _error(404, "notFound", f"The resource 'instances/{name}' was not found")
            if len(parts) == 3 and parts[2] == "serialPort":
                return 200, {"kind": "compute#serialPortOutput", "contents": f"booting {name}\nstartup-script ran\n"}
            if method == "DELETE":
                del self.instances[name]
                return 200, self._operation(zone, "delete", name)
            return 200, inst
        if parts[0] == "operations" and len(parts) == 1:
            wanted = re.search(r'operationType\s*=\s*"([^"]+)"', query.get("filter", ""))
            items = [o for o in self.operations.values() if not wanted or o["operationType"] == wanted.group(1)]
            return 200, {"kind": "compute#operationList", "items": items}
        if parts[0] == "operations" and len(parts) >= 2:
            op = self.operations.get(parts[1])
            return (200, op) if op else (404, _error(404, "notFound", "no such operation"))
        return 404, _error(404, "notFound", f"no route {rest}")

    def _insert(self, zone: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request_id = query.get("requestId", "")
        if request_id in self.request_ids:  # the same request again: the same operation
            return 200, self.operations[self.request_ids[request_id]]
        self.inserts += 1
        if self.next_insert_errors:
            fault = self.next_insert_errors.pop(0)
            if "http" in fault:
                status, reason = fault["http"]
                return status, _error(status, reason, f"injected {reason}")
            op = self._operation(zone, "insert", body["name"], error=fault["op_error"])
            self.request_ids[request_id] = op["name"]
            return 200, op
        name = body["name"]
        if name in self.instances:
            return 409, _error(409, "alreadyExists", f"The resource 'instances/{name}' already exists")
        now = datetime.now(UTC).isoformat()
        self.instances[name] = {
            "kind": "compute#instance", "id": str(uuid.uuid4().int)[:19], "name": name, "status": "RUNNING",
            "zone": zone, "machineType": body.get("machineType"), "labels": body.get("labels") or {},
            "metadata": body.get("metadata"), "scheduling": body.get("scheduling"),
            "guestAccelerators": body.get("guestAccelerators"), "creationTimestamp": now, "lastStartTimestamp": now,
        }  # fmt: skip
        op = self._operation(zone, "insert", name)
        self.request_ids[request_id] = op["name"]
        return 200, op

    def _list(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        wanted = re.search(r'labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"', query.get("filter", ""))
        items = [
            i for i in self.instances.values() if not wanted or i["labels"].get(wanted.group(1)) == wanted.group(2)
        ]
        size = int(query.get("maxResults") or 500)
        start = int(query.get("pageToken") or 0)
        page: dict[str, Any] = {"kind": "compute#instanceList", "items": items[start : start + size]}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return 200, page

    # -- what the cloud does on its own ---------------------------------------------------------------

    def preempt(self, name: str) -> None:
        """A Spot machine taken back (instanceTerminationAction DELETE): it goes, an operation says why."""
        with self.lock:
            zone = self.instances.pop(name)["zone"]
            self._operation(zone, "compute.instances.preempted", name)


def _error(status: int, reason: str, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "errors": [{"reason": reason, "message": message}]}}
