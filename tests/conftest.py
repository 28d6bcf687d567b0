import pytest

from genealogy.sinks.analyst import AnalystSql
from genealogy.sinks.connection import Connection
from genealogy.sinks.read_model import ReadModel
from genealogy.sinks.writer import Writer


@pytest.fixture(scope="module")
def connection(tmp_path_factory):
    """The real embedded ClickHouse with the product's schema. chdb opens one data directory per process:
    one connection per module, closed so that the next module can open its own."""
    c = Connection(f"chdb://{tmp_path_factory.mktemp('chdb')}")
    c.migrate()
    c.migrate()  # the DDL is idempotent
    yield c
    c.close()


@pytest.fixture(scope="module")
def writer(connection):
    return Writer(connection)


@pytest.fixture(scope="module")
def read_model(connection):
    return ReadModel(connection)


@pytest.fixture(scope="module")
def analyst(connection):
    a = AnalystSql(connection.dsn)
    yield a
    a.close()
