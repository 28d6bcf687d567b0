"""The rules of named queries and subscriptions, without I/O: names, query objects, destinations,
signatures, schedules and subscription request bodies.

Signature: ``GS1-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with signatureToken>``.
The binding leaves the scheme to the implementation and names HMAC-SHA256 as one; the body carries
``creationDate`` and ``subscriptionID``, so a receiver can refuse an old or foreign document.

SSRF: ``dest`` must start with one of ``GENEALOGY_EPCIS_WEBHOOK_ALLOW``'s URL prefixes (empty, the
default: no subscription at all); redirects are not followed (a 3xx is a failed delivery), so an
allowed host cannot send the service elsewhere.

Schedules (EPCIS 1.2 §8.2.5.3, which 2.0 keeps): ``second``, ``minute``, ``hour``, ``dayOfMonth``,
``month``, ``dayOfWeek`` (1 = Monday), each ``n``, ``[a-b]`` or a comma list of them (``a/step``, the
binding's own example ``"0/30"``, too), in UTC. A time matches when every given field matches. The
units finer than the finest given one are taken as their first value (``{"hour": "1", "minute": "5"}``
runs at 01:05:00, once, which is what the standard's "every morning at 1.05am" means), coarser omitted
units match any value. A run missed while the service was down runs once when it is back.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from genealogy import epcis_api
from genealogy.domain import epcis_event
from genealogy.epcis_subscriptions.problems import Problem
from genealogy.settings import Settings

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")   # one URL path segment as written: no escaping games
MAX_DEST = 2048
MAX_SIGNATURE_TOKEN = 512
EPCIS_HEADERS = {"GS1-EPCIS-Version": "2.0", "GS1-CBV-Version": "2.0"}
SIGNATURE_HEADER = "GS1-Signature"
SUBSCRIPTION_KEYS = {"dest", "signatureToken", "stream", "schedule", "reportIfEmpty", "initialRecordTime"}


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Problem("name: 1 to 128 characters of A-Z a-z 0-9 . _ ~ - (starting with a letter or digit): "
                      "it is a segment of the query's URL", 400, "ValidationException")
    return name


def query_pairs(query) -> list[tuple[str, str]]:
    """A named query's ``query`` object (the standard's query schema: parameter -> string, number or list
    of strings) -> the (name, value) pairs GET /events takes; checked by the same parser (a Problem if not)."""
    if not isinstance(query, dict) or not query:
        raise Problem("query: an object of EPCIS query parameters, e.g. {\"eventType\": [\"ObjectEvent\"]}")
    pairs: list[tuple[str, str]] = []
    for name, value in query.items():
        if name in epcis_api.PAGING:
            raise Problem(f"{name}: paging belongs to GET /queries/{{queryName}}/events, not to the query")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise Problem(f"{name}: an empty list")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise Problem(f"{name}: values are strings (or numbers), not {type(v).__name__}")
            pairs.append((name, v if isinstance(v, str) else json.dumps(v)))
    epcis_api.parse_query(pairs)  # the same rules as GET /events: an unknown parameter is a 400 here too
    return pairs


def allow_list(settings: Settings) -> list[str]:
    return [p.strip() for p in settings.epcis_webhook_allow.split(",") if p.strip()]


def _origin(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default, parts.path or "/"


def check_dest(dest, allowed: list[str]) -> str:
    """``dest`` if the service may POST to it: http(s), no credentials, under one of the allowed prefixes."""
    if not allowed:
        raise Problem("webhook subscriptions are off: this service posts only to destinations its operator allows "
                      "(GENEALOGY_EPCIS_WEBHOOK_ALLOW is empty)", 400, "SubscriptionControlsException")
    if not isinstance(dest, str) or not dest or len(dest) > MAX_DEST:
        raise Problem(f"dest: a URL of at most {MAX_DEST} characters", 400, "SubscriptionControlsException")
    try:
        parts = urlsplit(dest)
        scheme, host, port, path = _origin(dest)
    except ValueError:  # a bad port, a bad IPv6 literal
        raise Problem(f"dest: {dest!r} is not a URL", 400, "SubscriptionControlsException") from None
    if scheme not in ("http", "https") or not host:
        raise Problem("dest: an http or https URL (a WebSocket subscription is GET /queries/{queryName}/events "
                      "with Upgrade: websocket)", 400, "SubscriptionControlsException")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise Problem("dest: no user:password@ and no #fragment", 400, "SubscriptionControlsException")
    for prefix in allowed:
        a_scheme, a_host, a_port, a_path = _origin(prefix)
        if (scheme, host, port) == (a_scheme, a_host, a_port) and path.startswith(a_path):
            return dest
    raise Problem(f"dest: {scheme}://{host}:{port} with this path is not an allowed webhook destination "
                  "(GENEALOGY_EPCIS_WEBHOOK_ALLOW)", 400, "SubscriptionControlsException")


def signature(token: str, body: bytes) -> str:
    """The GS1-Signature header value of a webhook body: HMAC-SHA256 keyed with the subscriber's signatureToken."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(token: str, body: bytes, header: str | None) -> bool:
    """What a receiver checks (the tests do): the header is this body's signature under the token."""
    return header is not None and hmac.compare_digest(signature(token, body), header)


FIELDS = ("second", "minute", "hour", "dayOfMonth", "month", "dayOfWeek")   # finest first
RANGES = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "dayOfMonth": (1, 31), "month": (1, 12),
          "dayOfWeek": (1, 7)}
_ELEMENT = re.compile(r"(\d{1,2})|\[(\d{1,2})-(\d{1,2})\]|(\d{1,2})/(\d{1,2})")
HORIZON_DAYS = 8 * 366   # a schedule with no time in eight years (30 February) never runs: refused


@dataclass(frozen=True)
class Schedule:
    values: dict[str, frozenset[int]]   # every field; an omitted coarse unit holds its whole range
    given: dict[str, str] = field(default_factory=dict)

    def matches(self, t: datetime) -> bool:
        return (t.second in self.values["second"] and t.minute in self.values["minute"] and t.hour in self.values["hour"]
                and self._day(t))

    def _day(self, t: datetime) -> bool:
        return (t.day in self.values["dayOfMonth"] and t.month in self.values["month"]
                and t.isoweekday() in self.values["dayOfWeek"])

    def next_after(self, ms: int) -> int | None:
        """The first query time strictly after epoch ms ``ms``; None if there is none within the horizon."""
        start = datetime.fromtimestamp(ms // 1000, timezone.utc) + timedelta(seconds=1)
        hours, minutes, seconds = (sorted(self.values[f]) for f in ("hour", "minute", "second"))
        day = start.replace(hour=0, minute=0, second=0)
        for _ in range(HORIZON_DAYS):
            if self._day(day):
                for h in hours:
                    for m in minutes:
                        for s in seconds:
                            t = day.replace(hour=h, minute=m, second=s)
                            if t >= start:
                                return calendar.timegm(t.timetuple()) * 1000
            day += timedelta(days=1)
        return None


def parse_field(name: str, text) -> frozenset[int]:
    low, high = RANGES[name]
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise Problem(f"schedule.{name}: a string such as \"5\", \"[1-5]\" or \"0,30\"", 400, "SubscriptionControlsException")
    out: set[int] = set()
    for element in text.replace(" ", "").split(","):
        m = _ELEMENT.fullmatch(element)
        if not m:
            raise Problem(f"schedule.{name}: {element!r} is not a number, [low-high] or start/step", 400,
                          "SubscriptionControlsException")
        if m.group(1) is not None:
            a, b, step = int(m.group(1)), int(m.group(1)), 1
        elif m.group(2) is not None:
            a, b, step = int(m.group(2)), int(m.group(3)), 1
        else:
            a, b, step = int(m.group(4)), high, int(m.group(5))
        if not (low <= a <= high and low <= b <= high) or a > b or step < 1:
            raise Problem(f"schedule.{name}: {element!r} is outside {low}..{high} (or a range backwards)", 400,
                          "SubscriptionControlsException")
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse_schedule(schedule) -> Schedule:
    if not isinstance(schedule, dict) or not schedule:
        raise Problem("schedule: an object with at least one of " + ", ".join(FIELDS), 400, "SubscriptionControlsException")
    if unknown := sorted(set(schedule) - set(FIELDS)):
        raise Problem(f"schedule.{unknown[0]}: not a schedule field (those are {', '.join(FIELDS)})", 400,
                      "SubscriptionControlsException")
    finest = min(FIELDS.index(f) for f in schedule)
    values = {}
    for i, name in enumerate(FIELDS):
        if name in schedule:
            values[name] = parse_field(name, schedule[name])
        elif i < finest and name in ("second", "minute", "hour"):
            values[name] = frozenset({RANGES[name][0]})   # finer than asked for: its first value, so one run per unit
        else:
            values[name] = frozenset(range(RANGES[name][0], RANGES[name][1] + 1))
    out = Schedule(values, {k: str(v) for k, v in schedule.items()})
    if out.next_after(int(time.time() * 1000)) is None:
        raise Problem("schedule: matches no time at all", 400, "SubscriptionControlsException")
    return out


@dataclass
class SubscriptionRequest:
    dest: str
    signature_token: str
    stream: bool
    schedule: Schedule | None
    report_if_empty: bool
    initial_record_ms: int | None


def parse_subscription(body, allowed: list[str], webhook: bool = True) -> SubscriptionRequest:
    """A POST .../subscriptions body -> what to keep; Problem (400 SubscriptionControlsException) if it is not one.
    ``webhook=False``: a WebSocket subscription's controls (no dest, no signatureToken)."""
    def bad(detail: str) -> Problem:
        return Problem(detail, 400, "SubscriptionControlsException")

    if not isinstance(body, dict):
        raise bad('the body must be a JSON object: {"dest": ..., "stream": true} or {"dest": ..., "schedule": {...}}')
    if unknown := sorted(set(body) - SUBSCRIPTION_KEYS):
        raise bad(f"{unknown[0]}: not a subscription field (those are {', '.join(sorted(SUBSCRIPTION_KEYS))})")
    if not webhook and ({"dest", "signatureToken"} & set(body)):
        raise bad("a WebSocket subscription has no dest and no signatureToken: the connection is both")
    dest = check_dest(body.get("dest"), allowed) if webhook else ""
    token = body.get("signatureToken", "")
    if token is None:
        token = ""
    if not isinstance(token, str) or len(token) > MAX_SIGNATURE_TOKEN:
        raise bad(f"signatureToken: a string of at most {MAX_SIGNATURE_TOKEN} characters")
    stream = body.get("stream", False)
    report = body.get("reportIfEmpty", False)
    if not isinstance(stream, bool) or not isinstance(report, bool):
        raise bad("stream and reportIfEmpty are true or false")
    schedule = parse_schedule(body["schedule"]) if body.get("schedule") is not None else None
    if stream == (schedule is not None):
        raise bad("give either \"stream\": true (each new matching event) or a \"schedule\", exactly one of them")
    if stream and report:
        raise bad("reportIfEmpty is for scheduled subscriptions; a stream reports events only")
    initial = body.get("initialRecordTime")
    if initial is not None:
        try:
            initial = epcis_event.parse_time(initial)
        except ValueError as exc:
            raise bad(f"initialRecordTime: {exc}") from None
    return SubscriptionRequest(dest, token, stream, schedule, report, initial)


def websocket_controls(items: list[tuple[str, str]]) -> dict:
    """GET /queries/{name}/events?stream=true | ?minute=5&hour=1 (a WebSocket upgrade) -> a subscription body."""
    body: dict = {}
    schedule = {}
    for name, value in items:
        if name in body or name in schedule:
            raise Problem(f"{name}: given twice", 400, "SubscriptionControlsException")
        if name in ("stream", "reportIfEmpty"):
            if value.lower() not in ("true", "false"):
                raise Problem(f"{name}: true or false", 400, "SubscriptionControlsException")
            body[name] = value.lower() == "true"
        elif name == "initialRecordTime":
            body[name] = value
        elif name in FIELDS:
            schedule[name] = value
        else:
            raise Problem(f"{name}: a WebSocket subscription takes stream, the schedule fields, reportIfEmpty and "
                          "initialRecordTime (the query's parameters are the named query's own)", 400,
                          "SubscriptionControlsException")
    if schedule:
        body["schedule"] = schedule
    return body


def backoff_s(failures: int, cap_s: float) -> float:
    """How long a subscription whose deliveries failed ``failures`` times in a row waits before the next try."""
    return min(cap_s, 2.0 ** min(failures, 30))
