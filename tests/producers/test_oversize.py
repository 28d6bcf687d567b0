"""Input over the caps: lines read with a size cap, documents over the limit, dead letters cut to size."""

from __future__ import annotations

import hashlib
import io

from genealogy.producers.ingest import Ingestor, fit_dead_letter
from genealogy.producers.oversize import Oversize, PayloadStore, capped_lines
from genealogy.settings import Settings


def test_capped_lines_streams_a_long_line_aside(tmp_path):
    long = b"x" * 50_000 + b"\n"
    data = b'{"a": 1}\n' + long + b'{"b": 2}'
    out = list(capped_lines(io.BytesIO(data), 1_000, PayloadStore(tmp_path), excerpt=100))
    assert out[0] == b'{"a": 1}\n' and out[2] == b'{"b": 2}'
    big = out[1]
    assert isinstance(big, Oversize) and big.size == len(long) and big.excerpt == long[:100]
    assert big.sha256 == hashlib.sha256(long).hexdigest() and big.kept.read_bytes() == long
    # exactly at the cap (newline not counted) is still a line
    assert list(capped_lines(io.BytesIO(b"y" * 1_000 + b"\n"), 1_000)) == [b"y" * 1_000 + b"\n"]


def test_oversize_line_and_document_are_dead_letters_and_what_follows_is_read(tmp_path):
    store = PayloadStore(tmp_path)
    ingestor = Ingestor("epcis", "feed", max_line=1_000, max_document=300, store=store)
    for line in capped_lines(io.BytesIO(b"z" * 5_000 + b"\n"), 1_000, store):
        ingestor.feed(line)
    document = "{\n" + ",\n".join(f' "k{n}": "{"v" * 40}"' for n in range(20)) + "\n}\n"
    for line in document.splitlines(True):
        ingestor.feed(line)
    ingestor.feed('{"type": "ObjectEvent"}\n')
    ingestor.close()
    result = ingestor.take()
    reasons = [d["reason"] for d in result.dead_letters]
    assert len(reasons) == 3, reasons
    assert reasons[0].startswith("feed:1: line of 5,001 bytes, over the limit of 1,000") and "full payload in" in reasons[0]
    assert reasons[1].startswith("feed:2: document of") and "GENEALOGY_INGEST_MAX_DOCUMENT_BYTES" in reasons[1]
    kept = reasons[1].rsplit("full payload in ", 1)[1]
    assert open(kept).read() == document.rstrip("\n")
    assert reasons[2].startswith("feed:24:")  # the value after the document is read as its own


def test_an_in_memory_long_line_keeps_its_payload_for_the_spool_to_put_aside(tmp_path):
    ingestor = Ingestor("epcis", "http", max_line=1_000)
    ingestor.feed(b'{"blob": "' + b"q" * 10_000 + b'"}')
    ingestor.close()
    [dead] = ingestor.take().dead_letters
    assert len(dead["payload"]) > 10_000 and "over the limit" in dead["reason"]
    fitted = fit_dead_letter(Settings(data_dir=tmp_path, dead_letter_max_payload_bytes=512), dead)
    assert len(fitted["payload"]) == 512 and fitted["dead_letter_id"] == dead["dead_letter_id"]
    path = fitted["reason"].rsplit("full payload in ", 1)[1].rstrip("]")
    assert open(path, "rb").read() == dead["payload"]


def test_an_in_memory_oversize_document_keeps_its_payload_for_the_spool_to_put_aside(tmp_path):
    document = "{\n" + ",\n".join(f' "k{n}": "{"v" * 40}"' for n in range(20)) + "\n}"
    ingestor = Ingestor("epcis", "http", max_document=300)
    for line in document.splitlines(True):
        ingestor.feed(line)
    ingestor.close()
    [dead] = ingestor.take().dead_letters
    assert dead["payload"] == document.encode() and "document of" in dead["reason"]
    fitted = fit_dead_letter(Settings(data_dir=tmp_path, dead_letter_max_payload_bytes=100), dead)
    path = fitted["reason"].rsplit("full payload in ", 1)[1].rstrip("]")
    assert open(path).read() == document and len(fitted["payload"]) == 100
