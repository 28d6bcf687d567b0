"""The broker's object store through a real S3 client (boto3): the calls Tansu's s3:// engine makes,
conditional writes included, and that an acknowledged object survives a kill -9 of the store."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import urllib3

boto3 = pytest.importorskip("boto3", reason="boto3 (installed with moto[server], a test extra) is the S3 client here")
from botocore.exceptions import ClientError  # noqa: E402

from genealogy import kafka  # noqa: E402


def start(root, port) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "genealogy.cli", "objectstore", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    kafka.wait_for_port("127.0.0.1", port, 30.0, proc)
    return proc


@pytest.fixture
def store(tmp_path):
    port = kafka.free_port()
    proc = start(tmp_path / "root", port)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="x",
                          aws_secret_access_key="x", region_name="us-east-1")
    client.create_bucket(Bucket="b")
    yield client, proc, tmp_path / "root", port
    proc.kill()
    proc.wait()


def code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


def test_put_get_head_range_delete(store):
    s3, *_ = store
    put = s3.put_object(Bucket="b", Key="a/b/c.batch", Body=b"0123456789")
    got = s3.get_object(Bucket="b", Key="a/b/c.batch")
    assert got["Body"].read() == b"0123456789" and got["ETag"] == put["ETag"]
    assert s3.head_object(Bucket="b", Key="a/b/c.batch")["ContentLength"] == 10
    assert s3.get_object(Bucket="b", Key="a/b/c.batch", Range="bytes=2-4")["Body"].read() == b"234"
    assert s3.get_object(Bucket="b", Key="a/b/c.batch", Range="bytes=-3")["Body"].read() == b"789"
    s3.delete_object(Bucket="b", Key="a/b/c.batch")
    with pytest.raises(ClientError) as missing:
        s3.get_object(Bucket="b", Key="a/b/c.batch")
    assert code(missing.value) == "NoSuchKey"


def test_conditional_puts_are_compare_and_swap(store):
    s3, *_ = store
    first = s3.put_object(Bucket="b", Key="meta.json", Body=b"v1", IfNoneMatch="*")
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket="b", Key="meta.json", Body=b"v1 again", IfNoneMatch="*")
    assert code(exists.value) == "PreconditionFailed"
    second = s3.put_object(Bucket="b", Key="meta.json", Body=b"v2", IfMatch=first["ETag"])
    with pytest.raises(ClientError) as stale:
        s3.put_object(Bucket="b", Key="meta.json", Body=b"v3", IfMatch=first["ETag"])
    assert code(stale.value) == "PreconditionFailed"
    assert s3.get_object(Bucket="b", Key="meta.json")["Body"].read() == b"v2"
    assert second["ETag"] != first["ETag"]


def test_list_with_prefix_delimiter_and_pages(store):
    s3, *_ = store
    keys = [f"t/p{p}/records/{o:010d}.batch" for p in range(2) for o in range(5)] + ["t/meta.json", "u/x"]
    for key in keys:
        s3.put_object(Bucket="b", Key=key, Body=b"x")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="b", Prefix="t/p1/records/", PaginationConfig={"PageSize": 2})
    listed = [o["Key"] for page in pages for o in page.get("Contents", [])]
    assert listed == sorted(k for k in keys if k.startswith("t/p1/records/"))
    top = s3.list_objects_v2(Bucket="b", Prefix="t/", Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["t/meta.json"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["t/p0/", "t/p1/"]
    everything = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="b") for o in page["Contents"]]
    assert everything == sorted(keys)


def test_delete_objects_removes_them_all(store):
    s3, *_ = store
    for i in range(5):
        s3.put_object(Bucket="b", Key=f"topic/{i}", Body=b"x")
    s3.delete_objects(Bucket="b", Delete={"Objects": [{"Key": f"topic/{i}"} for i in range(4)]})
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="b")["Contents"]] == ["topic/4"]


def test_keys_cannot_leave_the_root(store):
    _, _, root, port = store

    http = urllib3.PoolManager()
    for path in ("/b/%2E%2E/%2E%2E/%2E%2E/escape", "/b/a/%2E%2E/%2E%2E/%2E%2E/%2E%2E/escape", "/b/%2Fescape"):
        assert http.request("PUT", f"http://127.0.0.1:{port}{path}", body=b"x").status == 400, path
    assert not any(p.name == "escape" for p in root.parent.rglob("escape"))


def test_an_acknowledged_object_survives_kill_9(store):
    s3, proc, root, port = store
    for i in range(50):
        s3.put_object(Bucket="b", Key=f"k/{i}", Body=f"value {i}".encode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    again = start(root, port)
    try:
        assert [s3.get_object(Bucket="b", Key=f"k/{i}")["Body"].read() for i in range(50)] == \
            [f"value {i}".encode() for i in range(50)]
    finally:
        again.kill()
        again.wait()
