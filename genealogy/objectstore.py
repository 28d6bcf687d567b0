"""A local, durable S3-compatible object store: where the embedded broker keeps its log.

The embedded Tansu broker offers two storage engines, ``memory://`` (lost at every stop) and
``s3://``. This serves the part of the S3 API that Tansu's engine uses, over files in one
directory, so that the broker's topics, consumer offsets and Faust's changelogs (the join
state) survive a stop, a ``kill -9`` and, with ``fsync`` on, a power cut:

* ``PUT /bucket`` (create), ``PUT /bucket/key`` with the conditional headers Tansu relies on
  (``If-None-Match: *`` to create only, ``If-Match: <etag>`` to replace only that version;
  412 otherwise), ``GET`` / ``HEAD`` (with ``Range``), ``DELETE``;
* ``GET /bucket?list-type=2`` (prefix, delimiter, continuation token, start-after, max-keys);
* ``POST /bucket?delete`` (DeleteObjects), which DeleteTopics uses.

An object is written to a temporary file, fsynced, renamed over its key, and its directory
fsynced, before the PUT is answered: an acknowledged write is on disk, and a reader sees the
old or the new object, never half of one. Conditional PUTs are serialised by one lock, since
Tansu uses them as compare-and-swap on its metadata. Keys map to paths under the root; a key
that would leave the root (``..``, absolute) is refused. Loopback only, no authentication:
the broker is its one client (``genealogy.stack`` starts both).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from datetime import datetime, timezone
from email.utils import formatdate
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from aiohttp import web

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_KEYS = 1000
ETAG_SUFFIX = ".etag"  # the object's ETag beside it, so a restart does not rehash every object


class ObjectStore:
    def __init__(self, root: Path, fsync: bool = True):
        self.root = root.resolve()
        self.fsync = fsync
        self.lock = asyncio.Lock()

    # --- paths ----------------------------------------------------------------------

    def bucket_dir(self, bucket: str) -> Path:
        if not bucket or "/" in bucket or bucket.startswith("."):
            raise web.HTTPBadRequest(text=_error("InvalidBucketName", bucket), content_type="application/xml")
        return self.root / bucket

    def object_path(self, bucket: str, key: str) -> Path:
        path = (self.bucket_dir(bucket) / "o" / key).resolve()
        if not key or key.endswith("/") or key.endswith(ETAG_SUFFIX) or not path.is_relative_to(self.bucket_dir(bucket) / "o"):
            raise web.HTTPBadRequest(text=_error("InvalidArgument", key), content_type="application/xml")
        return path

    # --- writes ---------------------------------------------------------------------

    def _write(self, path: Path, data: bytes) -> str:
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        path.parent.mkdir(parents=True, exist_ok=True)
        for target, content in ((path.with_name(path.name + ETAG_SUFFIX), etag.encode()), (path, data)):
            tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            with open(tmp, "wb") as f:
                f.write(content)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, target)
        if self.fsync:
            _fsync_dir(path.parent)
        return etag

    def etag(self, path: Path) -> str | None:
        try:
            return path.with_name(path.name + ETAG_SUFFIX).read_text()
        except FileNotFoundError:
            if not path.exists():
                return None
            return f'"{hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()}"'

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ETAG_SUFFIX).unlink(missing_ok=True)

    # --- handlers -------------------------------------------------------------------

    async def put(self, request: web.Request) -> web.Response:
        bucket, key = request.match_info["bucket"], request.match_info.get("key", "")
        if not key:
            self.bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
            return web.Response(status=200)
        path = self.object_path(bucket, key)
        data = await request.read()
        async with self.lock:
            current = self.etag(path)
            if request.headers.get("If-None-Match") == "*" and current is not None:
                return _xml_error(412, "PreconditionFailed", key)
            if "If-Match" in request.headers and request.headers["If-Match"] not in (current, "*"):
                return _xml_error(412, "PreconditionFailed", key)
            if request.headers.get("If-Match") == "*" and current is None:
                return _xml_error(412, "PreconditionFailed", key)
            etag = await asyncio.get_running_loop().run_in_executor(None, self._write, path, data)
        return web.Response(status=200, headers={"ETag": etag})

    async def get(self, request: web.Request) -> web.StreamResponse:
        bucket, key = request.match_info["bucket"], request.match_info.get("key", "")
        if not key:
            if "delete" in request.query:
                raise web.HTTPMethodNotAllowed("GET", ["POST"])
            return await self.list(request, bucket)
        path = self.object_path(bucket, key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return _xml_error(404, "NoSuchKey", key)
        headers = {"ETag": self.etag(path) or "", "Last-Modified": formatdate(path.stat().st_mtime, usegmt=True),
                   "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        status, body = 200, data
        if "Range" in request.headers:
            start, end = _byte_range(request.headers["Range"], len(data))
            if start is None:
                return _xml_error(416, "InvalidRange", key)
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        path = self.object_path(request.match_info["bucket"], request.match_info.get("key", ""))
        async with self.lock:
            self._delete(path)
        return web.Response(status=204)

    async def post(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        if "delete" not in request.query or request.match_info.get("key"):
            return _xml_error(400, "InvalidRequest", "only DeleteObjects is supported")
        try:
            doc = ElementTree.fromstring(await request.read())
        except ElementTree.ParseError:
            return _xml_error(400, "MalformedXML", bucket)
        keys = [el.text or "" for el in doc.iter() if _local(el.tag) == "Key"]
        async with self.lock:
            for key in keys:
                self._delete(self.object_path(bucket, key))
        deleted = "".join(f"<Deleted><Key>{escape(k)}</Key></Deleted>" for k in keys)
        return _xml(f'<DeleteResult xmlns="{S3_NS}">{deleted}</DeleteResult>')

    async def list(self, request: web.Request, bucket: str) -> web.Response:
        q = request.query
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        after = q.get("continuation-token") or q.get("start-after") or ""
        try:
            max_keys = max(0, min(int(q.get("max-keys", MAX_KEYS)), MAX_KEYS))
        except ValueError:
            return _xml_error(400, "InvalidArgument", "max-keys")
        base = self.bucket_dir(bucket) / "o"
        if not self.bucket_dir(bucket).is_dir():
            return _xml_error(404, "NoSuchBucket", bucket)
        keys = sorted(k for k in _keys(base, prefix) if k.startswith(prefix) and k > after)
        contents, prefixes, last, truncated = [], [], "", False
        for key in keys:
            if delimiter and delimiter in key[len(prefix):]:
                common = key[:len(prefix) + key[len(prefix):].index(delimiter) + len(delimiter)]
                if prefixes and prefixes[-1] == common:
                    continue
                entry = ("p", common)
            else:
                entry = ("k", key)
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if entry[0] == "p":
                prefixes.append(entry[1])
                last = entry[1] + "\U0010ffff"  # past every key under this prefix
            else:
                path = base / key
                stat = path.stat()
                modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                contents.append(f"<Contents><Key>{escape(key)}</Key><LastModified>{modified}</LastModified>"
                                f"<ETag>{escape(self.etag(path) or '')}</ETag><Size>{stat.st_size}</Size>"
                                f"<StorageClass>STANDARD</StorageClass></Contents>")
                last = key
        body = (f'<ListBucketResult xmlns="{S3_NS}"><Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>'
                f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
                + (f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "")
                + f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
                + "".join(contents)
                + "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in prefixes)
                + (f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" if truncated else "")
                + "</ListBucketResult>")
        return _xml(body)


def make_app(store: ObjectStore) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    for path in ("/{bucket}", "/{bucket}/", "/{bucket}/{key:.+}"):
        app.router.add_route("PUT", path, store.put)
        app.router.add_route("GET", path, store.get)
        app.router.add_route("HEAD", path, store.get)
        app.router.add_route("DELETE", path, store.delete)
        app.router.add_route("POST", path, store.post)
    return app


def serve(root: Path, port: int, fsync: bool = True) -> None:
    """Run the store on 127.0.0.1:port until SIGINT or SIGTERM (``genealogy objectstore``)."""
    root.mkdir(parents=True, exist_ok=True)
    web.run_app(make_app(ObjectStore(root, fsync)), host="127.0.0.1", port=port, print=None, access_log=None)


# --- helpers ----------------------------------------------------------------------------

def _keys(base: Path, prefix: str = ""):
    """Keys under ``base`` that may start with ``prefix``: only the prefix's directory is walked
    (Tansu lists one partition's records at a time)."""
    start = (base / prefix.rsplit("/", 1)[0]) if "/" in prefix else base
    if not start.resolve().is_relative_to(base.resolve()) or not start.is_dir():
        return
    for dirpath, _, files in os.walk(start):
        for name in files:
            if not name.endswith(ETAG_SUFFIX) and not name.startswith("."):
                yield os.path.relpath(os.path.join(dirpath, name), base).replace(os.sep, "/")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _byte_range(header: str, size: int) -> tuple[int | None, int]:
    """'bytes=a-b', 'bytes=a-' or 'bytes=-n' -> (first, last) inclusive; (None, 0) if unsatisfiable."""
    try:
        unit, spec = header.split("=", 1)
        first, last = spec.split(",", 1)[0].split("-", 1)
        if unit.strip() != "bytes":
            return None, 0
        if first == "":
            n = int(last)
            start, end = max(size - n, 0), size - 1
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None, 0
    return (start, end) if 0 <= start <= end < size else (None, 0)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _error(code: str, resource: str) -> str:
    return f"<Error><Code>{code}</Code><Message>{code}</Message><Resource>{escape(resource)}</Resource></Error>"


def _xml_error(status: int, code: str, resource: str) -> web.Response:
    return web.Response(status=status, text='<?xml version="1.0" encoding="UTF-8"?>' + _error(code, resource),
                        content_type="application/xml")


def _xml(body: str) -> web.Response:
    return web.Response(text='<?xml version="1.0" encoding="UTF-8"?>' + body, content_type="application/xml")


class Client:
    """The two calls the broker's log trimming needs (genealogy.retention): list keys, delete keys."""

    def __init__(self, port: int, bucket: str, timeout: float = 30.0):
        import urllib3

        self.base = f"http://127.0.0.1:{port}/{bucket}"
        self.http = urllib3.PoolManager(timeout=timeout, retries=urllib3.Retry(3, backoff_factor=0.2))

    def list(self, prefix: str, delimiter: str = "") -> list[str]:
        """Every key (or, with a delimiter, every common prefix) under ``prefix``, all pages."""
        out, token = [], ""
        while True:
            fields = {"list-type": "2", "prefix": prefix, **({"delimiter": delimiter} if delimiter else {}),
                      **({"continuation-token": token} if token else {})}
            response = self.http.request("GET", self.base, fields=fields)
            if response.status != 200:
                raise OSError(f"object store LIST {prefix!r}: HTTP {response.status}")
            doc = ElementTree.fromstring(response.data)
            tag = "Prefix" if delimiter else "Key"
            parent = "CommonPrefixes" if delimiter else "Contents"
            out += [el.findtext(f"{{{S3_NS}}}{tag}") for el in doc.iter(f"{{{S3_NS}}}{parent}")]
            if doc.findtext(f"{{{S3_NS}}}IsTruncated") != "true":
                return out
            token = doc.findtext(f"{{{S3_NS}}}NextContinuationToken") or ""

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), MAX_KEYS):
            body = "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys[start:start + MAX_KEYS])
            response = self.http.request("POST", self.base + "?delete", body=f"<Delete>{body}</Delete>".encode(),
                                         headers={"Content-Type": "application/xml"})
            if response.status != 200:
                raise OSError(f"object store DeleteObjects: HTTP {response.status}")
