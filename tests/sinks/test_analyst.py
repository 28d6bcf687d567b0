"""Analyst SQL on the real embedded ClickHouse: its own sessions, refused attacks, the shared session untouched."""

import threading
import time

import pytest

from genealogy.sinks.analyst import Rejected

ATTACKS = [
    "SELECT * FROM file('/etc/passwd','LineAsString')", "SELECT file('/etc/passwd')", "SELECT 1 INTO OUTFILE '/tmp/genealogy-x'",
    "SET readonly = 0", "CREATE TEMPORARY TABLE edges (child String)", "SYSTEM STOP MERGES", "KILL QUERY WHERE 1",
    "DROP TABLE edges", "SELECT sum(number) FROM numbers(1.2e11)", "SELECT * FROM system.tables",
    "SELECT 1; DROP TABLE edges", "SELECT count() FROM edges SETTINGS max_threads = 64",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_attacks_are_refused_and_the_shared_session_keeps_its_settings(connection, analyst, attack):
    with pytest.raises(Exception) as refused:
        analyst.query(attack)
    assert str(refused.value)
    # The session the sink and recall use: still writable, no temporary table shadowing edges.
    assert connection.rows("SELECT getSetting('readonly')") == [(0,)]
    connection.command("INSERT INTO nodes (ident, node) VALUES ('analyst-probe', 'lot:X:analyst-probe')")
    assert connection.rows("SELECT count() FROM system.tables WHERE is_temporary") == [(0,)]


def test_parameters_are_bound_and_allowed_queries_answer(analyst):
    columns, rows = analyst.query("SELECT count() AS n FROM edges_final WHERE child = {c:String}", {"c": "x' OR 1=1 --"})
    assert columns == ["n"] and rows == [(0,)]
    with pytest.raises(Rejected, match="parameters"):
        analyst.query("SELECT 1 FROM edges", [1])


def test_an_analyst_query_does_not_hold_the_shared_lock(connection, analyst):
    """A query capped only by max_execution_time on the analyst's session; the shared one answers meanwhile."""
    done = threading.Event()

    def heavy():
        try:
            analyst.query("SELECT count() FROM nodes AS a, nodes AS b, nodes AS c, nodes AS d, nodes AS e")
        except Exception:
            pass
        done.set()

    connection.command("INSERT INTO nodes (ident, node) SELECT toString(number), concat('lot:X:', toString(number)) FROM numbers(300)")
    thread = threading.Thread(target=heavy)
    thread.start()
    time.sleep(0.3)
    connection.rows("SELECT count() FROM edges")
    # Answered while the analyst query still runs: it did not wait for the analyst's session.
    assert not done.is_set()
    thread.join(timeout=30)
