"""HTTP client of the query service (the CLI, the stack supervisor and the tests use it), and the
wait for a drained pipeline."""

from __future__ import annotations

import json
import time

import urllib3

from genealogy import auth
from genealogy.settings import Settings


class ServiceClient:
    """HTTP client of the query service, used by the CLI. ``token``: the bearer token it sends."""

    def __init__(self, base_url: str, timeout: float = 60.0, token: str | None = None):
        self.base_url = base_url
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=timeout), retries=False)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def for_settings(cls, settings: Settings, base_url: str | None = None, **kwargs) -> "ServiceClient":
        """The client of the service of these settings, with their token: GENEALOGY_API_TOKEN, else the
        admin token `genealogy up` wrote into the data directory."""
        token = settings.api_token or auth.read_admin_token(settings)
        return cls(base_url or settings.service_url, token=token, **kwargs)

    def get(self, path: str, **params) -> tuple[int, dict]:
        query = {k: v for k, v in params.items() if v is not None}
        response = self.http.request("GET", f"{self.base_url}{path}", fields=query, headers=self.headers)
        return response.status, json.loads(response.data or b"{}")

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        return self.post_bytes(path, json.dumps(body).encode())

    def post_bytes(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
        response = self.http.request("POST", f"{self.base_url}{path}", body=body,
                                     headers={**self.headers, "Content-Type": content_type})
        return response.status, json.loads(response.data or b"{}")

    def healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except urllib3.exceptions.HTTPError:
            return False


def wait_drained(client: ServiceClient, settle_s: float, timeout: float = 600.0, on_poll=lambda status: None) -> dict:
    """Until nothing is in flight: both consumer groups hold their partitions, no lag anywhere,
    and the store's counts unchanged for settle_s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        _, status = client.get("/status")
        on_poll(status)
        lag = status.get("lag", {})
        idle = ("error" not in lag and all(v == 0 for group in lag.values() for v in group.values())
                and all(state == "stable" for state in status.get("groups", {}).values()))
        counts = status["counts"]
        if not idle or counts != last:
            last, since = counts, time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"pipeline still busy after {timeout:.0f} s")
