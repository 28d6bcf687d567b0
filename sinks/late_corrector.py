"""Late events corrected without a person: ``genealogy reprocess`` run by the service on its own.

A material event later than its station's watermark (a gateway replaying its store-and-forward
buffer after an outage, a pause longer than the idle flush) changes answers the join gave before
it arrived. ``sinks.reprocess`` corrects them from the capture log; this runs it every
``late_correction_s`` seconds while there is late work. A run is idempotent and re-checks a
station whose capture grew since, so running while the feed still flows converges once it drains.
"""

from __future__ import annotations

import logging
import threading
import time

from genealogy.settings import Settings
from genealogy.sinks.connection import Connection
from genealogy.sinks.reprocess import reprocess_late
from genealogy.sinks.writer import Writer

log = logging.getLogger(__name__)


class LateCorrector:
    def __init__(self, settings: Settings, connection: Connection, writer: Writer):
        self.settings = settings
        self.connection = connection
        self.writer = writer
        self.runs = 0
        self.corrections = 0        # edges added or removed, units added, over all runs
        self.last_error: str | None = None
        self.last_run_at: float | None = None

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.late_correction_s):
            self.run_once()

    def run_once(self) -> dict | None:
        try:
            summary = reprocess_late(self.connection, self.writer, self.settings)
        except Exception as exc:  # the store being busy or away is retried on the next round
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("late-event correction failed, retrying in %.0f s: %s", self.settings.late_correction_s, exc)
            return None
        self.runs += 1
        self.last_run_at = time.time()
        self.last_error = None
        changed = summary["edges_added"] + summary["edges_removed"] + summary["units_added"]
        self.corrections += changed
        if changed:
            log.info("late events corrected: %s", summary)
        return summary

    def stats(self) -> dict:
        return {"every_s": self.settings.late_correction_s, "runs": self.runs, "corrections": self.corrections,
                "last_run_at": self.last_run_at, "last_error": self.last_error}
