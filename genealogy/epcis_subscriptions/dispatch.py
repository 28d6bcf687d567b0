"""Delivery of webhook subscriptions: the ``Dispatcher``, an asyncio task of the service's loop.

A stream subscription takes the matching events that landed after its cursor (``sinks.epcis_feed``),
POSTs them to ``dest`` as EPCISQueryDocuments of at most ``epcis_webhook_batch`` events, and moves the
cursor after each 2xx answer. A scheduled one does the same at its schedule's times (an empty
document too if ``reportIfEmpty``). The cursor moves only after the receiver acknowledged, so a crash
between the receiver's 2xx and the cursor's commit sends that batch again: at-least-once, never lost.
A POST that fails is retried (tenacity, exponential backoff, ``epcis_webhook_attempts`` tries,
``epcis_webhook_timeout_s`` each); after that the subscription waits (doubling, at most
``epcis_webhook_backoff_max_s``) and tries the same events again: a receiver that is down delays its
events, never loses them. Database calls run in the default executor, POSTs are async, and at most
``epcis_webhook_concurrency`` run at once, so a slow receiver holds no request of anybody else. Only
the service process that runs the sink delivers (``--no-sink`` replicas serve the resources), so two
replicas never send the same events twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from genealogy import epcis_api
from genealogy.epcis_subscriptions.rules import (EPCIS_HEADERS, SIGNATURE_HEADER, allow_list, backoff_s, check_dest,
                                                 parse_schedule, signature)
from genealogy.epcis_subscriptions.store import Store, Subscription
from genealogy.settings import Settings
from genealogy.sinks import epcis_feed

log = logging.getLogger("genealogy.epcis_subscriptions")   # the feature's logger, whichever of its modules logs


class DeliveryFailed(Exception):
    """The receiver did not acknowledge (no 2xx): the batch stays undelivered."""


def document(events: list[dict], query_name: str, sub_id: str, now_ms: int | None = None) -> dict:
    doc = epcis_api.query_document(events, query_name, now_ms)
    doc["epcisBody"]["queryResults"]["subscriptionID"] = sub_id
    return doc


class Dispatcher:
    """Runs every due subscription (see the module doc); one task per subscription at a time."""

    def __init__(self, settings: Settings, store: Store, connection):
        self.settings, self.store, self.connection = settings, store, connection
        self.running: dict[str, asyncio.Task] = {}
        self.scanned: dict[str, int] = {}   # stream subscription -> newest insert ms its last run saw settled
        self._slots = asyncio.Semaphore(max(1, settings.epcis_webhook_concurrency))
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=self.settings.epcis_webhook_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as self._session:
            try:
                while True:
                    try:
                        await self.tick(loop)
                    except Exception:  # a failing store or ClickHouse must not end delivery for good
                        log.exception("subscription dispatch failed; trying again")
                    await asyncio.sleep(self.settings.epcis_subscription_poll_s)
            finally:
                for task in self.running.values():
                    task.cancel()
                await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def tick(self, loop) -> None:
        subs = await loop.run_in_executor(None, self.store.subscriptions)
        for gone in set(self.scanned) - {sub.id for sub in subs}:
            del self.scanned[gone]
        latest = None
        now = int(time.time() * 1000)
        for sub in subs:
            if sub.id in self.running or now < sub.retry_at_ms:
                continue
            scanned = None
            if sub.stream:
                if latest is None:
                    latest, store_now = await loop.run_in_executor(None, epcis_feed.latest_insert_ms, self.connection)
                # Nothing landed since its last event, or since a run that saw every row up to the newest: no query.
                if latest <= sub.cursor_ms or self.scanned.get(sub.id) == latest:
                    continue
                if store_now - self.settings.epcis_subscription_settle_ms > latest:
                    scanned = latest   # every row up to `latest` has settled: the run will have seen them all
            elif sub.next_run_ms is None or now < sub.next_run_ms:
                continue
            task = asyncio.create_task(self._guarded(sub, scanned), name=f"subscription-{sub.id}")
            self.running[sub.id] = task
            task.add_done_callback(lambda _t, key=sub.id: self.running.pop(key, None))

    async def _guarded(self, sub: Subscription, scanned: int | None = None) -> None:
        async with self._slots:
            loop = asyncio.get_running_loop()
            try:
                await self.deliver(sub, loop)
                if scanned is not None:
                    self.scanned[sub.id] = scanned
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"[:500]
                wait = backoff_s(sub.failures + 1, self.settings.epcis_webhook_backoff_max_s)
                log.warning("subscription %s of %s: delivery to %s failed (%s); next try in %.0f s",
                            sub.id, sub.query_name, sub.dest, reason, wait)
                await loop.run_in_executor(None, self.store.failed, sub.id, reason, int((time.time() + wait) * 1000))

    async def deliver(self, sub: Subscription, loop) -> None:
        """Everything new for ``sub``, batch by batch, the cursor persisted after each acknowledged batch."""
        found = await loop.run_in_executor(None, self.store.query, sub.query_name)
        if found is None:
            return   # the query went (and its subscriptions with it) meanwhile
        # The allow-list is checked again at every delivery: an operator who removes a prefix stops its
        # subscriptions at once (they fail, saying why, and keep their events until deleted).
        check_dest(sub.dest, allow_list(self.settings))
        query, _, _ = epcis_api.parse_query(found[1])
        batch = max(1, self.settings.epcis_webhook_batch)
        cursor, first = (sub.cursor_ms, sub.cursor_id), True
        run_started = int(time.time() * 1000)
        while True:
            rows = await loop.run_in_executor(None, epcis_feed.new_events, self.connection, query, cursor,
                                              sub.initial_record_ms, batch, self.settings.epcis_subscription_settle_ms)
            if rows or (first and sub.report_if_empty and not sub.stream):
                await self.post(sub, [json.loads(r[1]) for r in rows])
                if rows:
                    cursor = (rows[-1][2], rows[-1][0])
                await loop.run_in_executor(None, self.store.delivered, sub.id, cursor, len(rows), int(time.time() * 1000))
            first = False
            if len(rows) < batch:
                break
        if not sub.stream:
            schedule = parse_schedule(sub.schedule)
            await loop.run_in_executor(None, self.store.ran, sub.id, schedule.next_after(run_started))
        if sub.failures:
            await loop.run_in_executor(None, self.store.recovered, sub.id)

    async def post(self, sub: Subscription, events: list[dict]) -> None:
        body = json.dumps(document(events, sub.query_name, sub.id), allow_nan=False, default=str).encode()
        headers = {"Content-Type": "application/json", **EPCIS_HEADERS}
        if sub.signature_token:
            headers[SIGNATURE_HEADER] = signature(sub.signature_token, body)
        retrying = AsyncRetrying(stop=stop_after_attempt(max(1, self.settings.epcis_webhook_attempts)),
                                 wait=wait_exponential(multiplier=0.2, max=10),
                                 retry=retry_if_exception_type((aiohttp.ClientError, asyncio.TimeoutError, DeliveryFailed)),
                                 reraise=True)
        async for attempt in retrying:
            with attempt:
                # No redirects: a 3xx could point the service at an address the allow-list does not name.
                async with self._session.post(sub.dest, data=body, headers=headers, allow_redirects=False) as response:
                    if not 200 <= response.status < 300:
                        raise DeliveryFailed(f"{sub.dest} answered {response.status}")
