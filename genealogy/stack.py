"""The embedded stack: broker, query service (+ sink), Faust workers, as child processes.

``genealogy up`` runs a ``Stack`` in the foreground and a ``Supervisor`` that starts a child
again when it dies; ``genealogy down`` signals it through the pid recorded in
``<data-dir>/run/stack.json``. Every child gets the stack's instance id (a random token in
``stack.json``) in its environment, and the service reports it in ``/health``: a command
given a data directory only talks to the stack running on that directory, never to another
stack that happens to answer on the same ports.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from genealogy import auth, kafka, objectstore
from genealogy.retention import Retention
from genealogy.client import ServiceClient
from genealogy.settings import Settings

log = logging.getLogger(__name__)

WORKER_ARGV = [sys.executable, "-m", "genealogy.cli", "worker"]
SERVICE_ARGV = [sys.executable, "-m", "genealogy.cli", "serve"]
OBJECTSTORE_ARGV = [sys.executable, "-m", "genealogy.cli", "objectstore"]


class StackError(RuntimeError):
    pass


@dataclass
class Stack:
    settings: Settings
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    instance: str = field(default_factory=lambda: secrets.token_hex(8))
    objectstore_port: int = 0
    retention: Retention | None = None
    _retention_stop: threading.Event = field(default_factory=threading.Event)

    @property
    def run_dir(self) -> Path:
        return self.settings.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    @property
    def broker_dir(self) -> Path:
        return self.settings.data_dir / "broker"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**self.settings.child_env(), "GENEALOGY_INSTANCE": self.instance, **(env or {})})
        self.procs[name] = proc
        self.argv[name] = argv
        return proc

    def _start_objectstore(self) -> None:
        """The broker's durable storage; it keeps its port for the stack's life, so the broker finds it again."""
        if not self.objectstore_port:
            self.objectstore_port = self.settings.objectstore_port or kafka.free_port()
        argv = [*OBJECTSTORE_ARGV, "--root", str(self.broker_dir.resolve()), "--port", str(self.objectstore_port),
                *([] if self.settings.broker_fsync else ["--no-fsync"])]
        self._spawn("objectstore", argv)
        kafka.wait_for_port("127.0.0.1", self.objectstore_port, 30.0, self.procs["objectstore"])
        (self.broker_dir / kafka.BROKER_BUCKET).mkdir(parents=True, exist_ok=True)

    def _start_broker(self) -> None:
        env = kafka.broker_env(self.objectstore_port) if self.settings.broker_storage == "objectstore" else {}
        self._spawn("broker", kafka.broker_argv(self.settings), env)
        kafka.wait_for_port("127.0.0.1", self.settings.broker_port, 20.0, self.procs["broker"])

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
        self._forget_ready(self.procs[name].pid)
        if name == "objectstore":
            self._start_objectstore()
        elif name == "broker":
            self._start_broker()
            kafka.ensure_topics(self.settings)
        else:
            self._spawn(name, self.argv[name])
        return self.procs[name]

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
                if s.broker_storage == "objectstore":
                    progress(f"broker storage: {self.broker_dir}")
                    self._start_objectstore()
                progress(f"broker: Tansu on 127.0.0.1:{s.broker_port} ({s.broker_storage})")
                self._start_broker()
            kafka.ensure_topics(s)
            if s.auth == "tokens":
                # The CLI and the tests on this data directory read it from there (ServiceClient.for_settings).
                auth.ensure_admin_token(s)
            if kafka.port_in_use(s.http_port, s.http_host):
                raise StackError(f"port {s.http_port} is taken; set GENEALOGY_HTTP_PORT or --http-port")
            progress(f"store + sink + query service on {s.service_url} ({'embedded chdb' if not s.clickhouse_dsn else 'ClickHouse server'})")
            self._spawn("service", SERVICE_ARGV)
            kafka.wait_for_port(s.http_host, s.http_port, 60.0, self.procs["service"])
            # Workers restore the join state from the changelog; where the broker had none, the service
            # rebuilds it from the store first (genealogy.join_recovery).
            progress("join state: checking the broker's changelog")
            self._wait_join_state(ready_timeout * 40)
            for n in range(s.workers):
                progress(f"faust worker {n + 1}/{s.workers}")
                self._spawn(f"worker-{n + 1}", WORKER_ARGV)
            self._wait_ready(ready_timeout)
            self.write_state()
            if s.embedded_broker and s.broker_storage == "objectstore" and s.broker_trim_s > 0:
                self._start_retention()
        except BaseException:
            self.stop()
            raise

    def _start_retention(self) -> None:
        """Trim the broker's log in the background (genealogy.retention); a failed pass is retried next time."""
        self.retention = Retention(self.settings, objectstore.Client(self.objectstore_port, kafka.BROKER_BUCKET), self.run_dir)
        self._retention_stop.clear()

        def loop() -> None:
            while not self._retention_stop.wait(self.settings.broker_trim_s):
                try:
                    self.retention.run_once()
                    self.retention.last_error = ""
                except Exception as exc:  # the broker or its store restarting: next pass
                    self.retention.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("broker log not trimmed this time: %s", self.retention.last_error)

        threading.Thread(target=loop, name="broker-retention", daemon=True).start()

    def write_state(self, restarts: dict | None = None) -> None:
        """stack.json: how commands find this stack, and what the supervisor did (for `genealogy status`)."""
        s = self.settings
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(), "instance": self.instance, "service_url": s.service_url, "bootstrap": s.kafka_bootstrap,
            "children": {name: p.pid for name, p in self.procs.items()}, "started": time.time(),
            "restarts": restarts or {},
        }))
        tmp.replace(self.state_file)

    def _wait_ready(self, timeout: float, worker_restarts: int = 3) -> None:
        restarted: dict[str, int] = {}

        def ready() -> bool:
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                # A worker can fail its first table recovery (a broker restarted on its object store, a busy
                # machine): start it again, as the supervisor will once the stack is up.
                if name.startswith("worker-") and restarted.get(name, 0) < worker_restarts:
                    restarted[name] = restarted.get(name, 0) + 1
                    self.restart(name)
                    continue
                raise StackError(f"{name} exited with code {proc.returncode}; see {self.log_dir / (name + '.log')}")
            workers = len(list(self.run_dir.glob("worker-*.ready"))) >= self.settings.workers
            return workers and self._sink_assigned()

        try:
            until(ready, timeout, every=0.2)
        except RetryError:
            raise StackError(f"workers or sink not ready after {timeout:.0f} s; see {self.log_dir}") from None

    def _wait_join_state(self, timeout: float) -> None:
        def ready() -> bool:
            if self.procs["service"].poll() is not None:
                raise StackError(f"service exited with code {self.procs['service'].returncode}; see {self.log_dir / 'service.log'}")
            try:
                state = ServiceClient(self.settings.service_url).get("/health")[1].get("join_state")
            except (urllib3.exceptions.HTTPError, ValueError):
                return False
            if state == "failed":
                raise StackError(f"the join state could not be rebuilt; see {self.log_dir / 'service.log'}")
            return state == "ready"

        try:
            until(ready, timeout, every=0.2)
        except RetryError:
            raise StackError(f"join state not ready after {timeout:.0f} s; see {self.log_dir / 'service.log'}") from None

    def _sink_assigned(self) -> bool:
        """Ready means consuming: a feed sent before the sink held its partitions waited for it."""
        try:
            health = ServiceClient(self.settings.service_url).get("/health")[1]
            return health.get("instance") == self.instance and health.get("sink_assigned", False)
        except (urllib3.exceptions.HTTPError, ValueError):
            return False

    def dead_children(self) -> list[str]:
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, timeout: float = 20.0) -> None:
        self._retention_stop.set()
        # Workers first (they commit and stop producing), then the sink drains, then the broker and its storage.
        order = ([n for n in self.procs if n.startswith("worker")]
                 + [n for n in ("service", "broker", "objectstore") if n in self.procs])
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


@dataclass
class Restarts:
    count: int = 0                                          # since the stack started
    recent: deque = field(default_factory=deque)            # monotonic times of exits within the window
    due_at: float | None = None                             # when the next start is due
    last_exit: str = ""


class Supervisor:
    """Keeps the stack's children alive. A child that exits is started again after a backoff that
    doubles from ``backoff_s[0]`` to ``backoff_s[1]``; one that exits more than ``max_restarts`` times
    within ``window_s`` keeps dying, and the stack stops (``StackError``). Each restart is logged
    through ``on_event`` and counted in ``stack.json`` (``genealogy status``, ``/status``)."""

    def __init__(self, stack: Stack, *, max_restarts: int = 5, window_s: float = 300.0,
                 backoff_s: tuple[float, float] = (1.0, 30.0), on_event=lambda message: None):
        self.stack = stack
        self.max_restarts, self.window_s, self.backoff_s = max_restarts, window_s, backoff_s
        self.on_event = on_event
        self.children: dict[str, Restarts] = {}

    def poll(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        changed = False
        for name, proc in list(self.stack.procs.items()):
            if proc.poll() is None:
                continue
            r = self.children.setdefault(name, Restarts())
            if r.due_at is None:  # a new exit
                r.recent.append(now)
                while r.recent and now - r.recent[0] > self.window_s:
                    r.recent.popleft()
                r.last_exit = f"exit code {proc.returncode}"
                if len(r.recent) > self.max_restarts:
                    raise StackError(f"{name} exited {len(r.recent)} times within {self.window_s:.0f} s ({r.last_exit}); "
                                     f"see {self.stack.log_dir / (name + '.log')}")
                delay = min(self.backoff_s[0] * 2 ** (len(r.recent) - 1), self.backoff_s[1])
                r.due_at = now + delay
                self.on_event(f"{name} exited ({r.last_exit}); starting it again in {delay:.0f} s")
            if now >= r.due_at:
                try:
                    self.stack.restart(name)
                except (OSError, RuntimeError, TimeoutError) as exc:  # e.g. the broker's port not free yet
                    r.due_at = now + self.backoff_s[0]
                    self.on_event(f"{name} did not start again ({exc}); retrying")
                    continue
                r.count += 1
                r.due_at = None
                changed = True
                self.on_event(f"{name} started again (restart {r.count})")
        if changed:
            self.stack.write_state(self.report())

    def report(self) -> dict:
        return {name: {"restarts": r.count, "last_exit": r.last_exit} for name, r in self.children.items()}


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
    try:
        until(lambda: not _alive(state["pid"]), timeout, every=0.2)
    except RetryError:
        raise StackError(f"stack pid {state['pid']} did not stop within {timeout:.0f} s") from None
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def until(condition, timeout: float, every: float) -> None:
    """Call ``condition`` every ``every`` s until it is true; tenacity's RetryError after ``timeout``.
    An exception from ``condition`` ends the wait at once."""
    Retrying(retry=retry_if_result(lambda done: not done), stop=stop_after_delay(timeout), wait=wait_fixed(every))(condition)