"""The pure rules of genealogy.auth: token hashing and the store, the role table, Host and Origin."""

from __future__ import annotations

import stat

import pytest

from genealogy import auth
from genealogy.settings import Settings


def test_store_keeps_only_hashes_and_verifies(tmp_path):
    store = auth.TokenStore(tmp_path / "auth" / "tokens.json")
    token, entry = store.create("reader", "dashboard")
    text = store.path.read_text()
    assert token not in text and token[4:] not in text
    assert entry.sha256 == auth.hash_token(token) and entry.sha256 in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert auth.TokenStore(store.path).verify(token).role == "reader"   # a fresh reader of the file
    assert store.verify(token + "x") is None and store.verify("") is None
    assert store.revoke(entry.id[:6]) == [entry]
    assert store.verify(token) is None
    with pytest.raises(ValueError):
        store.create("root")


def test_tokens_are_random_and_long():
    a, b = auth.new_token(), auth.new_token()
    assert a != b and len(a) >= 40


@pytest.mark.parametrize("method, path, role", [
    ("GET", "/recall", "reader"), ("GET", "/status", "reader"), ("GET", "/dashboards/x", "reader"),
    ("POST", "/capture", "capture"), ("POST", "/events", "capture"),
    ("POST", "/sql", "admin"), ("POST", "/reprocess", "admin"), ("POST", "/something-new", "admin"),
    ("DELETE", "/recall", "admin"), ("GET", "/health", None)])
def test_role_table(method, path, role):
    assert auth.required_role(method, path) == role


def test_admin_implies_every_role_and_the_others_only_their_own():
    assert all(auth.allows("admin", r) for r in auth.ROLES)
    assert not auth.allows("reader", "capture") and not auth.allows("capture", "reader")
    assert not auth.allows("reader", "admin") and not auth.allows("capture", "admin")


def test_host_check():
    allowed = auth.allowed_hosts(Settings(http_host="0.0.0.0", http_allowed_hosts="genealogy.plant.local, 10.1.2.3"))
    for ok in ("localhost:8642", "127.0.0.1:8642", "[::1]:8642", "genealogy.plant.local", "10.1.2.3:8642", "LOCALHOST"):
        assert auth.host_problem(ok, allowed) is None, ok
    for bad in ("evil.example:8642", "0.0.0.0:8642", "", None, "genealogy.plant.local.evil.example"):
        assert auth.host_problem(bad, allowed), bad


def test_origin_check():
    assert auth.origin_problem("GET", "localhost:8642", "http://evil.example", None) is None  # reads are not state changes
    assert auth.origin_problem("POST", "localhost:8642", None, None) is None                   # not a browser
    assert auth.origin_problem("POST", "localhost:8642", "http://localhost:8642", None) is None
    assert auth.origin_problem("POST", "localhost:8642", "http://evil.example", None)
    assert auth.origin_problem("POST", "localhost:8642", "null", None)
    assert auth.origin_problem("POST", "localhost:8642", "http://localhost:9999", None)
    assert auth.origin_problem("POST", "localhost:8642", None, "cross-site")


def test_bind_check(tmp_path):
    loopback = Settings(data_dir=tmp_path, http_host="127.0.0.1", auth="off")
    auth.check_bind(loopback)
    for host in ("0.0.0.0", "10.1.2.3", "genealogy.plant.local"):
        with pytest.raises(auth.AuthNotConfigured, match="auth=off|GENEALOGY_AUTH=off"):
            auth.check_bind(Settings(data_dir=tmp_path, http_host=host, auth="off"))
        with pytest.raises(auth.AuthNotConfigured, match="no API token"):
            auth.check_bind(Settings(data_dir=tmp_path, http_host=host))
    auth.TokenStore.for_settings(Settings(data_dir=tmp_path)).create("admin")
    auth.check_bind(Settings(data_dir=tmp_path, http_host="0.0.0.0"))


def test_stack_admin_token_is_reused_while_valid(tmp_path):
    s = Settings(data_dir=tmp_path)
    first = auth.ensure_admin_token(s)
    assert stat.S_IMODE(auth.admin_token_path(s).stat().st_mode) == 0o600
    assert auth.ensure_admin_token(s) == first
    auth.admin_token_path(s).write_text("stale")
    second = auth.ensure_admin_token(s)
    assert second != first
    store = auth.TokenStore.for_settings(s)
    assert store.verify(first) is None and store.verify(second).role == "admin"
    assert len(store.entries()) == 1
