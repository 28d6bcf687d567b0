"""The embedded stack: broker, query service (+ sink), Faust workers, as child processes.

``genealogy up`` runs a ``Stack`` in the foreground; ``genealogy down`` signals
it through the pid recorded in ``<data-dir>/run/stack.json``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib3

from genealogy import kafka
from genealogy.settings import Settings


WORKER_ARGV = [sys.executable, "-m", "streams", "worker", "--without-web", "--loglevel", "warn"]


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    settings: Settings
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.settings.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.settings.child_env(),
                                start_new_session=True)
        self.procs[name] = proc
        self.argv[name] = argv
        return proc

    def add_worker(self) -> str:
        """One more Faust worker in the group; the group rebalances partitions onto it."""
        n = 1 + max((int(k.split("-")[1]) for k in self.procs if k.startswith("worker-")), default=0)
        name = f"worker-{n}"
        self._spawn(name, WORKER_ARGV)
        return name

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        proc.wait(30)
        self._forget_ready(proc.pid)

    def restart(self, name: str) -> subprocess.Popen:
        """Start a stopped or killed child again with the same command line."""
        if self.procs[name].poll() is None:
            raise StackError(f"{name} is still running")
        return self._spawn(name, self.argv[name])

    def _forget_ready(self, pid: int) -> None:
        (self.run_dir / f"worker-{pid}.ready").unlink(missing_ok=True)

    def start(self, progress=lambda msg: None, ready_timeout: float = 90.0) -> None:
        s = self.settings
        existing = running_stack(s)
        if existing:
            raise StackError(f"a stack is already running on {s.data_dir} (pid {existing['pid']}); `genealogy down` stops it")
        for d in (self.run_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.run_dir.glob("worker-*.ready"):
            stale.unlink()
        try:
            if s.embedded_broker:
                if kafka.port_in_use(s.broker_port):
                    raise StackError(f"port {s.broker_port} is taken; set GENEALOGY_BROKER_PORT or --broker-port")
                progress(f"broker: Tansu on 127.0.0.1:{s.broker_port}")
                self.procs["broker"] = kafka.start_broker(s, self.log_dir / "broker.log")
            kafka.ensure_topics(s)
            if kafka.port_in_use(s.http_port, s.http_host):
                raise StackError(f"port {s.http_port} is taken; set GENEALOGY_HTTP_PORT or --http-port")
            progress(f"store + sink + query service on {s.service_url} ({'embedded chdb' if not s.clickhouse_dsn else 'ClickHouse server'})")
            self._spawn("service", [sys.executable, "-m", "genealogy.service"])
            kafka.wait_for_port(s.http_host, s.http_port, 60.0, self.procs["service"])
            for n in range(s.workers):
                progress(f"faust worker {n + 1}/{s.workers}")
                self._spawn(f"worker-{n + 1}", WORKER_ARGV)
            self._wait_ready(ready_timeout)
            self.state_file.write_text(json.dumps({
                "pid": os.getpid(), "service_url": s.service_url, "bootstrap": s.kafka_bootstrap,
                "children": {name: p.pid for name, p in self.procs.items()}, "started": time.time(),
            }))
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise StackError(f"{name} exited with code {proc.returncode}; see {self.log_dir / (name + '.log')}")
            workers = len(list(self.run_dir.glob("worker-*.ready"))) >= self.settings.workers
            if workers and self._sink_assigned():
                return
            time.sleep(0.2)
        raise StackError(f"workers or sink not ready after {timeout:.0f} s; see {self.log_dir}")

    def _sink_assigned(self) -> bool:
        """Ready means consuming: a feed sent before the sink held its partitions waited for it."""
        try:
            return ServiceClient(self.settings.service_url).get("/health")[1].get("sink_assigned", False)
        except (urllib3.exceptions.HTTPError, ValueError):
            return False

    def dead_children(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        # Workers first (they commit and stop producing), then the sink drains, then the broker.
        order = [n for n in self.procs if n.startswith("worker")] + [n for n in ("service", "broker") if n in self.procs]
        for name in order:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        self.state_file.unlink(missing_ok=True)
        for ready in self.run_dir.glob("worker-*.ready"):
            ready.unlink()


def running_stack(settings: Settings) -> dict | None:
    path = settings.data_dir / "run" / "stack.json"
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return None
    return state


def stop_running(settings: Settings, timeout: float = 60.0) -> bool:
    state = running_stack(settings)
    if not state:
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(state["pid"], 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    raise StackError(f"stack pid {state['pid']} did not stop within {timeout:.0f} s")


class ServiceClient:
    """HTTP client of the query service, used by the CLI."""

    def __init__(self, base_url: str, timeout: float = 60.0):
        self.base_url = base_url
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=timeout), retries=False)

    def get(self, path: str, **params) -> tuple[int, dict]:
        query = {k: v for k, v in params.items() if v is not None}
        response = self.http.request("GET", f"{self.base_url}{path}", fields=query)
        return response.status, json.loads(response.data or b"{}")

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        response = self.http.request("POST", f"{self.base_url}{path}", body=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        return response.status, json.loads(response.data or b"{}")

    def healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except urllib3.exceptions.HTTPError:
            return False
