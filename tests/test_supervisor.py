"""The stack's supervisor, on real child processes: a child that dies is started again after its
backoff and counted; one that keeps dying stops the stack. Time is passed in, not waited for."""

from __future__ import annotations

import json
import sys

import pytest

from genealogy.settings import Settings
from genealogy.stack import Stack, StackError, Supervisor

DIES = [sys.executable, "-c", "import sys; sys.exit(3)"]
LIVES = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def stack(tmp_path):
    stack = Stack(Settings(data_dir=tmp_path))
    for d in (stack.run_dir, stack.log_dir):
        d.mkdir(parents=True)
    yield stack
    stack.stop(timeout=5)


def test_a_dead_child_is_started_again_after_its_backoff_and_counted(stack):
    stack._spawn("worker-1", DIES)
    stack._spawn("service", LIVES)
    stack.procs["worker-1"].wait(30)
    events = []
    supervisor = Supervisor(stack, max_restarts=3, backoff_s=(2.0, 8.0), on_event=events.append)

    supervisor.poll(now=100.0)  # seen dead: restart due at 102
    first = stack.procs["worker-1"]
    assert supervisor.children["worker-1"].due_at == 102.0 and first.poll() is not None
    supervisor.poll(now=101.0)
    assert stack.procs["worker-1"] is first  # not yet
    supervisor.poll(now=102.0)
    assert stack.procs["worker-1"] is not first
    assert supervisor.report() == {"worker-1": {"restarts": 1, "last_exit": "exit code 3"}}
    assert json.loads(stack.state_file.read_text())["restarts"] == supervisor.report()
    assert any("worker-1 started again" in e for e in events)

    # It dies again: the backoff doubles.
    stack.procs["worker-1"].wait(30)
    supervisor.poll(now=103.0)
    assert supervisor.children["worker-1"].due_at == 107.0
    assert "service" not in supervisor.children  # a live child is left alone


def test_a_child_that_keeps_dying_stops_the_stack(stack):
    stack._spawn("worker-1", DIES)
    supervisor = Supervisor(stack, max_restarts=2, window_s=60.0, backoff_s=(0.0, 0.0))
    now = 0.0
    with pytest.raises(StackError, match="worker-1 exited 3 times within 60 s"):
        for _ in range(10):
            stack.procs["worker-1"].wait(30)
            now += 1
            supervisor.poll(now=now)
    assert supervisor.children["worker-1"].count == 2


def test_exits_spread_beyond_the_window_do_not_add_up(stack):
    stack._spawn("worker-1", DIES)
    supervisor = Supervisor(stack, max_restarts=2, window_s=60.0, backoff_s=(0.0, 0.0))
    for now in (0.0, 100.0, 200.0, 300.0, 400.0):
        stack.procs["worker-1"].wait(30)
        supervisor.poll(now=now)
    assert supervisor.children["worker-1"].count == 5
