import sys
from pathlib import Path

# tests/reference.py is imported as a plain module by the tests.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402

from sinks.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The real embedded ClickHouse with the product's schema. chdb opens one data directory per process:
    one store per module, closed so that the next module can open its own."""
    s = Store(f"chdb://{tmp_path_factory.mktemp('chdb')}")
    s.migrate()
    s.migrate()  # the DDL is idempotent
    yield s
    s.close()
