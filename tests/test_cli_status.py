"""`genealogy status` exits non-zero with the reason when the service says it is unhealthy (the sink
cannot write, or its thread died): a script polling status must not take counts for readiness."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

REASON = "the sink cannot write to ClickHouse: Code: 243. DB::Exception: Cannot reserve 1.00 MiB, not enough space"
STATUS = {"store": "clickhouse server", "uptime_s": 1.0, "workers_ready": [], "counts": {"edges": 5},
          "dead_letters": [], "healthy": False, "unhealthy_reason": REASON}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        code, body = (503, {"ok": False, "reason": REASON}) if self.path.startswith("/health") else (200, STATUS)
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def unhealthy_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.parametrize("as_json", [False, True])
def test_status_exits_1_and_says_why_when_unhealthy(unhealthy_service, tmp_path, as_json):
    # A deployment on a real Kafka: no embedded stack, the service at http_host:http_port.
    env = {**os.environ, "GENEALOGY_BOOTSTRAP_SERVERS": "127.0.0.1:1", "GENEALOGY_HTTP_PORT": str(unhealthy_service),
           "GENEALOGY_DATA_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "genealogy.cli", "status", *(["--json"] if as_json else [])],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "cannot write to ClickHouse" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
