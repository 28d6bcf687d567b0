"""Who may call the query service: bearer tokens with roles, and the Host / Origin checks.

Roles (``ROLES``): ``reader`` reads (GET), ``capture`` posts plant events (POST /capture,
/events), ``admin`` may do everything, including POST /sql and /reprocess. ``capture`` does not
imply ``reader``: a gateway that feeds the pipeline has no business reading the genealogy.

Tokens are 32 random bytes (``secrets.token_urlsafe``). The store (``TokenStore``, a JSON file,
mode 0600, under the data directory) keeps only their SHA-256: a token carries 256 bits of
entropy, so a fast hash is enough (slow hashes such as scrypt protect low-entropy passwords,
not random keys), and a stolen store file grants nothing. A presented token is hashed and
compared with every stored hash with ``hmac.compare_digest``.

The middleware (``middlewares``) answers, in this order and always with JSON:

* ``/health`` is open: the liveness probe; it reveals nothing but "up" and the stack's id;
* 403 when the Host header is not one of the service's names (DNS rebinding: a page on
  ``evil.example`` whose name is made to resolve to the service);
* 403 when a state-changing request (not GET/HEAD/OPTIONS) comes from a browser on another
  origin (CSRF): an ``Origin`` other than the request's own host, or ``Sec-Fetch-Site: cross-site``;
* 401 without a valid token, 403 when the token's role does not cover the route;
* any error of a handler or of aiohttp itself (404, 405, 413, a bad JSON body...) as
  ``{"error": reason}``, never an HTML page or a traceback.

``auth = "off"`` (no tokens at all) is accepted only while the service binds a loopback address
(``check_bind``): the Host and Origin checks still apply there.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from genealogy.settings import Settings

log = logging.getLogger(__name__)

ROLES = ("reader", "capture", "admin")
OPEN_PATHS = frozenset({"/health"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes whose role is not the default one (GET/HEAD/OPTIONS: reader; anything else: admin).
ROUTE_ROLES = {("POST", "/capture"): "capture", ("POST", "/events"): "capture",
               ("POST", "/sql"): "admin", ("POST", "/reprocess"): "admin"}
ADMIN_TOKEN_NAME = "admin.token"   # under <data_dir>/run, written by `genealogy up`
STACK_LABEL = "genealogy up"


class AuthNotConfigured(RuntimeError):
    """The service would face a network without authentication."""


# --- pure rules -----------------------------------------------------------------------------

# EPCIS named queries and subscriptions (genealogy.epcis_subscriptions): a reader may create and delete
# them. A named query answers what GET /events answers that reader already, and a subscription posts
# it only to destinations the operator allow-listed; deleting is further limited to the token that
# created the resource (or an admin). Matched segment by segment, so no "/queries/../sql" gets "reader".
QUERY_WRITES = re.compile(r"/queries(?:/(?!\.\.?/|\.\.?$)[^/]+(?:/subscriptions(?:/(?!\.\.?$)[^/]+)?)?)?")


def required_role(method: str, path: str) -> str | None:
    """The role a request needs; None for the open paths. Unknown non-GET routes need admin:
    deny by default, so a route added later is never open by accident."""
    if path in OPEN_PATHS:
        return None
    if method in ("POST", "DELETE") and QUERY_WRITES.fullmatch(path):
        return "reader"
    return ROUTE_ROLES.get((method, path), "reader" if method in SAFE_METHODS else "admin")


def allows(role: str, needed: str) -> bool:
    return role == "admin" or role == needed


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "gen_" + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: it may resolve to anything


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The names a request's Host may carry: localhost, the bound address (unless a wildcard)
    and GENEALOGY_HTTP_ALLOWED_HOSTS (the names and addresses clients use on the plant network)."""
    names = {"localhost", "127.0.0.1", "::1"}
    if settings.http_host not in ("", "0.0.0.0", "::"):
        names.add(settings.http_host.strip("[]").lower())
    names.update(h.strip().strip("[]").lower() for h in settings.http_allowed_hosts.split(",") if h.strip())
    return frozenset(names)


def host_name(host_header: str) -> str:
    """``name:port`` / ``[v6]:port`` -> name, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_problem(host_header: str | None, allowed: frozenset[str]) -> str | None:
    if not host_header:
        return "the request has no Host header"
    if host_name(host_header) not in allowed:
        return f"Host {host_header!r} is not a name of this service (set GENEALOGY_HTTP_ALLOWED_HOSTS)"
    return None


def origin_problem(method: str, host_header: str | None, origin: str | None, fetch_site: str | None) -> str | None:
    """Why a browser request from another origin may not change state here (None: it may)."""
    if method in SAFE_METHODS:
        return None
    if fetch_site and fetch_site.lower() == "cross-site":
        return "cross-site requests may not change state (Sec-Fetch-Site: cross-site)"
    if origin is None:
        return None  # not a browser, or a same-origin navigation of an old one: the token decides
    netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
    if not netloc or netloc != (host_header or "").strip().lower():
        return f"Origin {origin!r} is not this service ({host_header!r}): cross-origin requests may not change state"
    return None


def check_bind(settings: Settings, store: "TokenStore | None" = None) -> None:
    """Refuse to face a network without authentication (``AuthNotConfigured``)."""
    if is_loopback(settings.http_host):
        return
    if settings.auth == "off":
        raise AuthNotConfigured(
            f"refusing to listen on {settings.http_host}: GENEALOGY_AUTH=off is only allowed on a loopback address "
            "(127.0.0.1, ::1, localhost); use GENEALOGY_AUTH=tokens and create a token with `genealogy token create`")
    store = store or TokenStore.for_settings(settings)
    if not store.entries():
        raise AuthNotConfigured(
            f"refusing to listen on {settings.http_host}: no API token exists in {store.path}; create one with "
            "`genealogy token create --role admin` (or bind GENEALOGY_HTTP_HOST=127.0.0.1)")


# --- token storage ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    id: str            # the first 12 hex digits of the hash: names a token for list / revoke
    role: str
    sha256: str
    label: str
    created: float

    def public(self) -> dict:
        return {"id": self.id, "role": self.role, "label": self.label,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created))}


class TokenStore:
    """Hashed tokens in a JSON file (mode 0600). Re-read when the file changes, so a token created
    or revoked by `genealogy token` counts at the running service's next request."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stamp: tuple | None = None
        self._entries: list[Entry] = []

    @classmethod
    def for_settings(cls, settings: Settings) -> "TokenStore":
        return cls(settings.tokens_path)

    def entries(self) -> list[Entry]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return []
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            data = json.loads(self.path.read_text() or "[]")
            self._entries = [Entry(**e) for e in data]
            self._stamp = stamp
        return self._entries

    def verify(self, token: str) -> Entry | None:
        """The entry of a presented token; every stored hash is compared, in constant time each."""
        digest = hash_token(token)
        found = None
        for entry in self.entries():
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found

    def create(self, role: str, label: str = "") -> tuple[str, Entry]:
        """A new token (returned once, never stored) and its entry."""
        if role not in ROLES:
            raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        token = new_token()
        digest = hash_token(token)
        entry = Entry(id=digest[:12], role=role, sha256=digest, label=label, created=time.time())
        self._write([*self.entries(), entry])
        return token, entry

    def revoke(self, token_id: str) -> list[Entry]:
        """Remove the tokens whose id starts with ``token_id`` (at least 6 characters); returns them."""
        if len(token_id) < 6:
            raise ValueError("give at least 6 characters of the token id")
        gone = [e for e in self.entries() if e.id.startswith(token_id)]
        if gone:
            self._write([e for e in self.entries() if e not in gone])
        return gone

    def _write(self, entries: list[Entry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        # Created 0600 from the start: never a moment where another user could read the hashes.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([e.__dict__ for e in entries], f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def write_secret(path: Path, text: str) -> None:
    """A file only its owner can read (0600 from creation on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def admin_token_path(settings: Settings) -> Path:
    return settings.data_dir / "run" / ADMIN_TOKEN_NAME


def read_admin_token(settings: Settings) -> str | None:
    try:
        return admin_token_path(settings).read_text().strip() or None
    except OSError:
        return None


def ensure_admin_token(settings: Settings) -> str:
    """The stack's admin token in <data_dir>/run/admin.token (0600): the one there if it is still
    valid, else a new one (the previous stack token, if any, is revoked)."""
    store = TokenStore.for_settings(settings)
    token = read_admin_token(settings)
    if token and (entry := store.verify(token)) is not None and entry.role == "admin":
        return token
    for stale in [e for e in store.entries() if e.label == STACK_LABEL]:
        store.revoke(stale.id)
    token, _ = store.create("admin", STACK_LABEL)
    write_secret(admin_token_path(settings), token)
    return token


# --- the middleware -----------------------------------------------------------------------------

def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def middlewares(settings: Settings, store: TokenStore | None = None) -> list:
    """The service's middlewares: JSON errors outermost, then Host/Origin, then the token.
    Refuses (``AuthNotConfigured``) settings that would face a network without authentication."""
    store = store or TokenStore.for_settings(settings)
    check_bind(settings, store)
    hosts = allowed_hosts(settings)

    @web.middleware
    async def json_errors(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.content_type == "application/json":  # a handler's own JSON answer
                raise
            return _error(exc.status, exc.reason if exc.text in (None, "", f"{exc.status}: {exc.reason}") else exc.text)
        except ValueError as exc:  # e.g. a POST body that is not JSON
            return _error(400, f"bad request: {exc}")
        except Exception as exc:
            log.exception("request %s %s failed", request.method, request.path)
            return _error(500, f"{type(exc).__name__}: {exc}")

    @web.middleware
    async def guard(request: web.Request, handler):
        needed = required_role(request.method, request.path)
        if needed is None:
            return await handler(request)
        host = request.headers.get("Host")
        problem = host_problem(host, hosts) or origin_problem(
            request.method, host, request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"))
        if problem:
            return _error(403, problem)
        if settings.auth == "off":
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "authentication required: send Authorization: Bearer <token> "
                               "(`genealogy token create`)", **{"WWW-Authenticate": 'Bearer realm="genealogy"'})
        entry = store.verify(token.strip())
        if entry is None:
            return _error(401, "the token is not valid (unknown or revoked)",
                          **{"WWW-Authenticate": 'Bearer realm="genealogy", error="invalid_token"'})
        if not allows(entry.role, needed):
            return _error(403, f"a {entry.role} token may not {request.method} {request.path} (needs {needed})")
        request["token_entry"] = entry   # who made a named query or subscription (only they, or an admin, delete it)
        return await handler(request)

    return [json_errors, guard]
