"""The analyst allow-list on EXPLAIN AST output (pure: the trees are ClickHouse's, copied here)."""

import pytest

from genealogy.sinks.sql_guard import Rejected, check, parse

SELECT_EDGES = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier {table}
"""

TABLE_FUNCTION = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 1)
    Asterisk
   TablesInSelectQuery (children 1)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      Function url (children 1)
       ExpressionList (children 2)
        Literal \\'http://127.0.0.1:8642/status\\'
        Literal \\'JSONAsString\\'
"""

INTO_OUTFILE = """SelectWithUnionQuery (children 2)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1
 Literal \\'/tmp/y\\'
"""

SCALAR_FILE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Function file (children 1)
     ExpressionList (children 1)
      Literal \\'/etc/passwd\\'
"""

# A newline inside a quoted alias splits a line: the tree no longer adds up.
ALIAS_NEWLINE = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 1)
   ExpressionList (children 1)
    Literal UInt64_1 (alias a
 TableIdentifier x)
"""


@pytest.mark.parametrize("table", ["edges", "default.edges", "edges_final (alias e)", "reprocessed"])
def test_a_select_over_the_genealogy_tables_passes(table):
    check(SELECT_EDGES.format(table=table))


@pytest.mark.parametrize("explain, reason", [
    (SELECT_EDGES.format(table="system.tables"), "not one of the genealogy tables"),
    (SELECT_EDGES.format(table="other.edges"), "not one of the genealogy tables"),
    (SELECT_EDGES.format(table="x"), "not one of the genealogy tables"),
    (TABLE_FUNCTION, "table function url"),
    (INTO_OUTFILE, "INTO OUTFILE"),
    (SCALAR_FILE, "function file"),
    ("SYSTEM query\n", "only SELECT"),
    ("Set\n", "only SELECT"),
    ("KillQueryQuery Literal_UInt64_1 ASYNC (children 1)\n Literal UInt64_1\n", "only SELECT"),
    (ALIAS_NEWLINE, "could not be read"),
    ("SelectWithUnionQuery (children 2)\n ExpressionList\n", "could not be read"),
])
def test_what_is_not_a_select_over_the_tables_is_refused(explain, reason):
    with pytest.raises(Rejected, match=reason):
        check(explain)


def test_the_tree_follows_the_child_counts():
    root = parse(SELECT_EDGES.format(table="edges"))
    assert root.kind == "SelectWithUnionQuery"
    assert root.children[0].children[0].children[1].children[0].children[0].children[0].name == "edges"
