"""The query service facing a network, on the real embedded stack: tokens and roles, Host and
Origin checks, the refusal to bind beyond loopback without auth, and the input limits of
capture and ingest. Every attack must leave the store's row counts as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import urllib3

from genealogy import auth
from genealogy.client import ServiceClient
from tests.support.stack import cli, free_port, start_stack, wait_drained

pytestmark = pytest.mark.integration

ROUTES = [("GET", "/status"), ("GET", "/recall?lot=X"), ("GET", "/trace?serial=X"), ("GET", "/linkage"),
          ("GET", "/granularity"), ("POST", "/sql"), ("POST", "/capture"), ("POST", "/events"),
          ("POST", "/reprocess"), ("GET", "/no-such-route")]
SQL = {"sql": "SELECT 1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("security"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def admin(stack):
    return ServiceClient.for_settings(stack.settings)


def token(stack, role: str) -> str:
    result = cli(stack, "token", "create", "--role", role, "--label", f"test {role}", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["token"]


def raw(stack, method, path, body=b"{}", **headers):
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=120))
    response = http.request(method, f"{stack.settings.service_url}{path}", body=body if method == "POST" else None,
                            headers={"Content-Type": "application/json", **headers})
    return response.status, json.loads(response.data), response.headers


def counts(admin) -> dict:
    return admin.get("/status")[1]["counts"]


def test_no_token_is_401_json_everywhere_but_health(stack):
    for method, path in ROUTES:
        status, body, headers = raw(stack, method, path)
        assert status == 401 and "error" in body, (method, path, status, body)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = raw(stack, "GET", "/health")
    assert status == 200 and body["ok"] is True and set(body) == {"ok", "sink_assigned", "instance"}
    assert raw(stack, "GET", "/status", Authorization="Bearer gen_not-a-token")[0] == 401


def test_reader_reads_and_changes_nothing(stack, admin):
    before = counts(admin)
    bearer = {"Authorization": f"Bearer {token(stack, 'reader')}"}
    assert raw(stack, "GET", "/status", **bearer)[0] == 200
    assert raw(stack, "GET", "/linkage", **bearer)[0] == 200
    for path, body in (("/sql", json.dumps(SQL).encode()), ("/capture", b"{}"), ("/events", b"{}"), ("/reprocess", b"{}")):
        status, answer, _ = raw(stack, "POST", path, body, **bearer)
        assert status == 403 and "reader" in answer["error"], (path, status, answer)
    assert counts(admin) == before


def test_capture_captures_but_does_not_read(stack, admin):
    bearer = {"Authorization": f"Bearer {token(stack, 'capture')}"}
    status, body, _ = raw(stack, "POST", "/capture", b'{"type": "ObjectEvent"}', **bearer)
    assert status in (202, 400), body  # accepted for mapping (the event is a reject): not refused
    for method, path in (("GET", "/recall?lot=X"), ("GET", "/status"), ("POST", "/sql"), ("POST", "/reprocess")):
        status, body, _ = raw(stack, method, path, json.dumps(SQL).encode(), **bearer)
        assert status == 403, (method, path, status, body)


def test_admin_may_do_everything(stack, admin):
    assert admin.post("/sql", SQL)[0] == 200
    assert admin.get("/status")[0] == 200
    assert admin.post("/reprocess", {})[0] == 200


def test_wrong_host_is_refused(stack, admin):
    before = counts(admin)
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    for method, path in (("GET", "/status"), ("POST", "/sql"), ("POST", "/reprocess")):
        status, body, _ = raw(stack, method, path, json.dumps(SQL).encode(), Host=f"rebound.evil.example:{stack.settings.http_port}", **bearer)
        assert status == 403 and "Host" in body["error"], (path, body)
    assert counts(admin) == before


def test_cross_origin_post_is_refused(stack, admin):
    before = counts(admin)
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    for path in ("/sql", "/capture", "/reprocess"):
        status, body, _ = raw(stack, "POST", path, json.dumps(SQL).encode(), Origin="http://evil.example", **bearer)
        assert status == 403 and "Origin" in body["error"], (path, body)
    same = f"http://127.0.0.1:{stack.settings.http_port}"
    assert raw(stack, "POST", "/sql", json.dumps(SQL).encode(), Origin=same, **bearer)[0] == 200
    assert counts(admin) == before


def test_errors_are_json(stack, admin):
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    status, body, _ = raw(stack, "POST", "/sql", b"{not json", **bearer)
    assert status == 400 and "error" in body
    status, body, _ = raw(stack, "GET", "/no-such-route", **bearer)
    assert status == 404 and "error" in body


def test_tokens_file_holds_no_token(stack):
    created = token(stack, "reader")
    text = stack.settings.tokens_path.read_text()
    assert created not in text and auth.read_admin_token(stack.settings) not in text
    assert auth.hash_token(created) in text
    assert oct(stack.settings.tokens_path.stat().st_mode & 0o777) == "0o600"
    assert oct(auth.admin_token_path(stack.settings).stat().st_mode & 0o777) == "0o600"
    listed = cli(stack, "token", "list", "--json")
    assert listed.returncode == 0 and created not in listed.stdout


def test_revoked_token_is_refused_at_once(stack):
    result = json.loads(cli(stack, "token", "create", "--role", "reader", "--json").stdout)
    bearer = {"Authorization": f"Bearer {result['token']}"}
    assert raw(stack, "GET", "/status", **bearer)[0] == 200
    assert cli(stack, "token", "revoke", result["id"]).returncode == 0
    assert raw(stack, "GET", "/status", **bearer)[0] == 401


@pytest.mark.parametrize("mode", ["tokens", "off"])
def test_non_loopback_bind_without_auth_is_refused(tmp_path, mode):
    env = {**os.environ, "GENEALOGY_DATA_DIR": str(tmp_path), "GENEALOGY_HTTP_HOST": "0.0.0.0",
           "GENEALOGY_HTTP_PORT": str(free_port()), "GENEALOGY_AUTH": mode}
    result = subprocess.run([sys.executable, "-m", "genealogy.cli", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0" in result.stderr and "Traceback" not in result.stderr
