"""The analyst SQL allow-list, checked on ClickHouse's own parse of the statement.

ClickHouse parses the statement (``EXPLAIN AST``); this module walks the tree it prints and
accepts only a SELECT over the genealogy tables and views. Nothing here looks at the SQL
text itself: a regular expression over SQL cannot know what the parser will make of
comments, quoting or nesting, the parser's own tree can.

What is refused, and why (readonly=1 on the analyst session does not stop these):

* anything but a SELECT (``SYSTEM``, ``KILL``, ``SET``, ``INSERT``, ``SHOW``, ``DESCRIBE`` ...):
  the root must be ``SelectWithUnionQuery``. ``SYSTEM STOP MERGES`` passes readonly=1;
* ``INTO OUTFILE`` and ``FORMAT``: extra children of a ``SelectWithUnionQuery`` (chdb writes the
  file even under readonly=1); ``SETTINGS``: a ``Set`` node;
* table functions (``file``, ``url``, ``s3``, ``remote``, ``numbers`` ...): a ``Function`` right
  under a ``TableExpression``;
* tables outside the allowed set, other databases (``system.*`` included), CTE names used as
  tables (``WITH x AS (SELECT ...)``: the tree does not name x, so it cannot be told from a table);
* scalar functions that reach outside the tables: ``file()`` reads any file under readonly=1,
  dictionaries, ``joinGet``, settings and host introspection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALLOWED_TABLES = frozenset({
    "edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes", "capture_batches",
    "station_facts", "dead_letters", "edges_final", "units_final", "dead_letters_final", "reprocessed", "corrections", "unpacked", "removals",
    "epcis_events", "held_intervals",
})
# The database the pipeline's tables live in; `default.edges` is the same table as `edges`.
DATABASE = "default"

# Node types a SELECT over tables is made of. Anything else (Set, InsertQuery, SYSTEM query,
# KillQueryQuery, ShowTables ...) is refused.
ALLOWED_NODES = frozenset({
    "SelectWithUnionQuery", "SelectIntersectExceptQuery", "SelectQuery", "ExpressionList", "Subquery",
    "TablesInSelectQuery", "TablesInSelectQueryElement", "TableExpression", "TableIdentifier", "TableJoin",
    "ArrayJoin", "SampleRatio", "Identifier", "Literal", "QueryParameter", "Function", "Asterisk",
    "QualifiedAsterisk", "ColumnsListMatcher", "ColumnsRegexpMatcher", "QualifiedColumnsListMatcher",
    "QualifiedColumnsRegexpMatcher", "ColumnsTransformerList", "ColumnsApplyTransformer",
    "ColumnsExceptTransformer", "ColumnsReplaceTransformer", "ColumnsReplaceTransformer::Replacement",
    "WithElement", "WindowDefinition", "WindowListElement", "OrderByElement", "InterpolateElement",
    "InterpolateList", "Alias",
})

# Scalar functions that read files, dictionaries or join tables, or tell about the host and its settings.
DENIED_FUNCTIONS = frozenset({
    "file", "joinget", "joingetornull", "getsetting", "getsettingordefault", "getmergetreesetting",
    "getserversetting", "filesystemavailable", "filesystemfree", "filesystemcapacity", "filesystemunreserved",
    "hostname", "fqdn", "version", "revision", "buildid", "uptime", "getmacro", "serveruuid", "getserverport",
    "getoskernelversion", "displayname", "currentuser", "currentroles", "enabledroles", "defaultroles",
    "currentprofiles", "enabledprofiles", "catboostevaluate", "evalmlmethod", "getclienthttpheader",
    "sleep", "sleepeachrow", "transactionid", "transactionlatestsnapshot", "transactionoldestsnapshot",
    "addresstoline", "addresstolinewithinlines", "addresstosymbol", "demangle", "logtrace", "getsubcolumn",
    "shardnum", "shardcount", "zookeepersessionuptime", "globalvariable", "tcpport", "initialqueryid",
    "queryid", "initialquerystarttime", "mysql_version",
})
DENIED_FUNCTION_PREFIXES = ("dict",)  # dictGet, dictHas, dictIsIn, ...
# `x IN name`: ClickHouse reads `name` as a table when it is one.
IN_FUNCTIONS = frozenset({"in", "notin", "globalin", "globalnotin", "nullin", "notnullin", "globalnullin",
                          "globalnotnullin"})


class Rejected(ValueError):
    """The statement is not one an analyst may run; the message says why."""


@dataclass
class Node:
    kind: str
    text: str  # what follows the kind on its line, without "(children n)"
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The node's name: a table, a function, an identifier (an alias follows it in parentheses)."""
        return self.text.split(" (alias ", 1)[0].strip()


def parse(explain: str) -> Node:
    """The tree of `EXPLAIN AST` output. Each node states its child count and each line its depth; a
    line that fits neither (e.g. a newline inside a quoted alias) makes the whole statement refused."""
    lines = explain.rstrip("\n").split("\n")
    position = 0

    def node(depth: int) -> Node:
        nonlocal position
        if position >= len(lines):
            raise Rejected("the statement's parse could not be read")
        line = lines[position]
        position += 1
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if indent != depth or not body:
            raise Rejected("the statement's parse could not be read")
        count = 0
        if body.endswith(")") and " (children " in body:
            body, _, tail = body.rpartition(" (children ")
            if not tail[:-1].isdigit():
                raise Rejected("the statement's parse could not be read")
            count = int(tail[:-1])
        kind, _, text = body.partition(" ")
        return Node(kind, text, [node(depth + 1) for _ in range(count)])

    root = node(0)
    if position != len(lines):
        raise Rejected("the statement's parse could not be read")
    return root


def table_name(name: str) -> str | None:
    """`edges` or `default.edges` -> `edges`; anything else (another database, a CTE) -> None."""
    database, _, table = name.rpartition(".")
    table = table.strip("`\"")
    if database.strip("`\"") not in ("", DATABASE) or table not in ALLOWED_TABLES:
        return None
    return table


def check(explain: str) -> None:
    """Raise Rejected unless the `EXPLAIN AST` output is a SELECT only over the allowed tables."""
    root = parse(explain)
    if root.kind != "SelectWithUnionQuery":
        raise Rejected(f"only SELECT statements are allowed, not {root.kind}")
    _walk(root, None)


def _walk(node: Node, parent: Node | None) -> None:
    if node.kind not in ALLOWED_NODES:
        raise Rejected(f"{node.kind} is not allowed in analyst SQL (only SELECT over the genealogy tables)")
    if node.kind == "SelectWithUnionQuery" and len(node.children) != 1:
        raise Rejected("INTO OUTFILE, FORMAT and SETTINGS clauses are not allowed")
    if node.kind == "TableIdentifier" and table_name(node.name) is None:
        raise Rejected(f"table {node.name} is not one of the genealogy tables: {', '.join(sorted(ALLOWED_TABLES))}")
    if node.kind == "Function":
        name = node.name.lower()
        if parent is not None and parent.kind == "TableExpression":
            raise Rejected(f"table function {node.name}() is not allowed")
        if name in DENIED_FUNCTIONS or name.startswith(DENIED_FUNCTION_PREFIXES):
            raise Rejected(f"function {node.name}() is not allowed")
        if name in IN_FUNCTIONS:
            _check_in_right_side(node)
    for child in node.children:
        _walk(child, node)


def _check_in_right_side(node: Node) -> None:
    args = node.children[0].children if node.children else []
    if len(args) == 2 and args[1].kind == "Identifier" and "." in args[1].name and table_name(args[1].name) is None:
        raise Rejected(f"{args[1].name} is not one of the genealogy tables")
