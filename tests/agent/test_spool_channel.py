"""The spool, the report channel with the muster module, configuration and the HTTP client."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from muster_agent import config
from muster_agent.capture import _dependencies_without_tomllib, entry_point_of, pyproject_dependencies
from muster_agent.channel import Channel
from muster_agent.cli import parser
from muster_agent.client import ApiError, Client, ServerAway
from muster_agent.runner import SDK_DIR
from muster_agent.spool import Spool

ROOT = Path(__file__).resolve().parents[2]


def test_spool_keeps_order_across_reopen_and_forgets_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open_attempt("a1", {"token": "t"})
    for i in range(3):
        spool.put("a1", "logs", {"chunks": [{"seq": i, "text": f"line {i}\n"}]})
    spool.put("a1", "finish", {"outcome": "completed"})
    head = spool.head("a1")
    assert head is not None
    spool.done(head[0])
    again = Spool(tmp_path)  # the agent restarted: the rest is still there, in order
    kinds = []
    while (h := again.head("a1")) is not None:
        kinds.append((h[1]["kind"], h[1]["body"].get("chunks", [{}])[0].get("seq")))
        again.done(h[0])
    assert kinds == [("logs", 1), ("logs", 2), ("finish", None)]
    assert again.meta("a1") == {"token": "t"}
    again.put("a1", "logs", {"chunks": [{"seq": 3, "text": "x"}]})
    assert again.head("a1")[1]["body"]["chunks"][0]["seq"] == 3
    again.close_attempt("a1")
    assert again.attempts() == [] and again.bytes == 0


def test_a_full_spool_drops_log_text_but_never_the_end(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=300)
    spool.open_attempt("a1", {"token": "t"})
    assert spool.put("a1", "logs", {"chunks": [{"seq": 0, "text": "x" * 100}]}, droppable=True)
    assert not spool.put("a1", "logs", {"chunks": [{"seq": 1, "text": "y" * 400}]}, droppable=True)
    assert spool.put("a1", "finish", {"outcome": "completed"})
    assert spool.take_dropped("a1") > 400
    assert spool.pending("a1") == 2


def test_muster_report_reaches_the_run_with_its_token_only(tmp_path: Path) -> None:
    channel = Channel()
    got: list[tuple[Any, dict[str, float]]] = []
    token = channel.register(lambda it, sc: got.append((it, sc)))
    code = (
        "import muster, os\n"
        "print(muster.report(iteration=3, loss=0.5, acc=1, bad=float('nan'), name='x'))\n"
        "os.environ['MUSTER_REPORT_TOKEN'] = 'forged'\n"
        "print(muster.report(iteration=4))\n"
    )
    env = {**os.environ, "PYTHONPATH": SDK_DIR, "MUSTER_REPORT_SOCKET": channel.path, "MUSTER_REPORT_TOKEN": token}
    env.pop("MUSTER_API_KEY", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    channel.close()
    assert out.stdout.split() == ["True", "False"], out.stderr
    assert got == [(3, {"loss": 0.5, "acc": 1.0})]


def test_muster_report_outside_an_agent_does_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSTER_")}
    env["PYTHONPATH"] = SDK_DIR
    out = subprocess.run(
        [sys.executable, "-c", "import muster; print(muster.report(iteration=1, loss=2))"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.strip() == "False"


def test_the_key_comes_from_the_environment_or_a_private_file(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MUSTER_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("MUSTER_API_KEY", raising=False)
    monkeypatch.delenv("MUSTER_API_KEY_FILE", raising=False)
    monkeypatch.setenv("MUSTER_SERVER", "http://127.0.0.1:9")
    with pytest.raises(config.ConfigError, match="no API key"):
        config.load()
    monkeypatch.setenv("MUSTER_API_KEY", "from-env")
    assert config.load().key == "from-env"
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o644)
    with pytest.raises(config.ConfigError, match="readable by others"):
        config.load(key_file=str(key_file))
    key_file.chmod(0o600)
    assert config.load(key_file=str(key_file)).key == "from-file"
    with pytest.raises(config.ConfigError, match="CA bundle"):
        config.load(ca_bundle=str(tmp_path / "missing.pem"))
    saved_path = config.save("http://example.invalid:1", "saved-key")
    assert saved_path.stat().st_mode & 0o077 == 0
    monkeypatch.delenv("MUSTER_API_KEY")
    monkeypatch.delenv("MUSTER_SERVER")
    assert (config.load().server, config.load().key) == ("http://example.invalid:1", "saved-key")


def test_the_agent_takes_no_key_on_its_command_line() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["agent", "run", "--key", "secret"])


class _Handler(BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []

    def do_POST(self) -> None:
        status, body = self.answers.pop(0)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_client_tells_errors_from_outages() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Client(f"http://127.0.0.1:{server.server_port}", "k")
    _Handler.answers[:] = [
        (200, b'{"ok": true}'),
        (409, json.dumps({"error": {"code": "stale_lease", "message": "kill it", "kill": True}}).encode()),
        (503, b"<html>restarting</html>"),
        (500, b'{"error": {"code": "server_error", "message": "boom"}}'),
    ]
    assert client.request("POST", "x/", {}) == {"ok": True}
    with pytest.raises(ApiError) as err:
        client.request("POST", "x/", {})
    assert (err.value.status, err.value.code) == (409, "stale_lease")
    with pytest.raises(ServerAway):
        client.request("POST", "x/", {})
    with pytest.raises(ServerAway):
        client.request("POST", "x/", {})
    server.shutdown()
    server.server_close()
    with pytest.raises(ServerAway):
        client.request("POST", "x/", {})


def test_the_agent_imports_no_django() -> None:
    code = (
        "import sys, muster_agent.worker, muster_agent.cli, muster_agent.monitor, muster_agent.runner\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('django', 'rest_framework', 'celery')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tls_with_a_private_ca_bundle(tmp_path: Path) -> None:
    """The agent verifies the server against --ca-bundle; without it a private certificate is refused."""

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_port}"
    try:
        _Handler.answers[:] = [(200, b'{"secure": true}')]
        assert Client(url, "k", ca_bundle=str(cert)).request("POST", "x/", {}) == {"secure": True}
        with pytest.raises(ServerAway, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            Client(url, "k").request("POST", "x/", {})
    finally:
        server.shutdown()
        server.server_close()


def test_requirements_from_a_pyproject_without_a_lock() -> None:
    text = (
        '[build-system]\nrequires = ["setuptools"]\n\n[project]\nname = "demo"\n'
        'dependencies = [\n    "numpy>=1.26",  # arrays\n    "torch==2.5.1",\n]\n\n[tool.x]\ndependencies = ["no"]\n'
    )
    assert pyproject_dependencies(text) == ["numpy>=1.26", "torch==2.5.1"]
    assert _dependencies_without_tomllib(text) == ["numpy>=1.26", "torch==2.5.1"]  # the Python 3.10 path
    assert pyproject_dependencies('[project]\nname = "x"\n') == []


def test_the_entry_point_is_read_from_the_command() -> None:
    assert entry_point_of(["python", "src/train.py", "--lr", "1"]) == "src/train.py"
    assert entry_point_of(["python3", "-m", "pkg.train"]) == "pkg.train"
    assert entry_point_of(["./run.sh"]) == ""
