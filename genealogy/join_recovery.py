"""The join state rebuilt from the store where the broker has none.

The durable broker keeps the join table's changelog across every stop (docs/durability.md). It
has none when its storage was lost, or for a stack that ran on the ``memory://`` broker (a pilot
upgraded from it, or ``GENEALOGY_BROKER_STORAGE=memory``). Then the reels loaded on each station
would be forgotten and recalls silently wrong. ClickHouse keeps every capture message
(``capture_batches``): replaying them through the join, in the order the workers handled them,
gives the state the workers held (tests/sinks/test_join_recovery.py checks that for random feeds
and cut points), which is written to the changelog before the workers start
(``genealogy.stack`` waits for ``/health`` to say ``join_state: ready``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from genealogy import schemas
from genealogy.domain.derive import replay
from genealogy.settings import Settings
from genealogy.sinks.read_model import ReadModel
from genealogy.streams import changelog

log = logging.getLogger(__name__)


class JoinRecovery:
    def __init__(self, settings: Settings, read_model: ReadModel, serde: schemas.Serde):
        self.settings = settings
        self.read_model = read_model
        self.serde = serde
        self.state = "pending"        # pending | rebuilding | ready | failed
        self.report: dict = {}

    def run(self, stop=None) -> None:
        try:
            self.report = self.recover()
            self.state = "ready"
        except Exception as exc:  # reported in /health; the stack does not start workers on a forgotten state
            log.exception("join state not rebuilt")
            self.report = {"error": f"{type(exc).__name__}: {exc}"}
            self.state = "failed"

    def recover(self) -> dict:
        s = self.settings
        if changelog.exists(s):
            return {"rebuilt": False, "why": "the broker holds the join state's changelog"}
        captured = self.read_model.captured(s.topic_capture)
        if not captured:
            return {"rebuilt": False, "why": "nothing captured yet"}
        self.state = "rebuilding"
        started = time.monotonic()
        log.warning("the broker has no join state; rebuilding it from %d capture messages in the store", captured)
        table = replay(self.batches(), s.grace_ms, s.retention_ms)
        written = changelog.write(s, table)
        report = {"rebuilt": True, "capture_messages": captured, "table_keys": written,
                  "seconds": round(time.monotonic() - started, 1)}
        log.warning("join state rebuilt: %s", report)
        return report

    def batches(self) -> Iterator[dict]:
        for _, payload in self.read_model.capture_history(self.settings.topic_capture):
            try:
                yield self.serde.decode(payload, expect=schemas.CAPTURE)[1]
            except schemas.DecodeError:
                continue  # a decode dead letter: the workers skipped it too
