"""Feature definitions: SQL over the store's source tables, computed point in time.

A derived context feature may carry a ``definition``: one SELECT returning one value, read from the
store's source tables (``decisions``, ``outcomes``) and correlated with the decision it is computed
for through the alias ``point`` (``point.unit_id``, ``point.as_of``, the decision time). For example,
the offers a unit got in the 30 days before the decision::

    SELECT count(*) FROM decisions AS d
    WHERE d.unit_id = point.unit_id AND d.offer_type <> 'none' AND d.decided_at >= point.as_of - INTERVAL 30 DAY

The definition never sees the future: :func:`point_in_time_sql` replaces each source table by its rows
known at ``point.as_of`` (events before it, received at or before it), so a definition cannot leak an
outcome the serving system could not have known. Parsed with SQLGlot (DuckDB's dialect, portable to Spark),
never executed as text a caller chose beyond that one SELECT.

>>> sql = definition_sql("SELECT count(*) FROM outcomes o WHERE o.unit_id = point.unit_id")
>>> "received_at <= point.as_of" in point_in_time_sql(sql)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlglot import exp

__all__ = ["POINT_COLUMNS", "SOURCE_TABLES", "definition_sql", "point_in_time_sql"]

#: The store's source tables a definition may read, and the condition that keeps the rows known at ``point.as_of``.
SOURCE_TABLES = {
    "decisions": "decided_at < point.as_of AND received_at <= point.as_of",
    "outcomes": "occurred_at < point.as_of AND received_at <= point.as_of",
}
#: The columns of the decision a definition is computed for.
POINT_COLUMNS = ("unit_id", "as_of")
_DIALECT = "duckdb"


def _parse(text: str) -> exp.Expression:
    import sqlglot  # imported when a definition is read: most specs have none

    try:
        statements = [s for s in sqlglot.parse(text, read=_DIALECT) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"must be one SQL SELECT, got text that does not parse ({first})") from None
    if len(statements) != 1:
        raise ValueError(f"must be one SQL SELECT, got {len(statements)} statements")
    return statements[0]


def definition_sql(text: str) -> str:
    """The canonical form of a definition (case, spacing and comments normalized), or ValueError saying
    what is wrong with it: the field validator of ``context.features.<name>.definition``."""
    from sqlglot import exp

    tree = _parse(text)
    if not isinstance(tree, exp.Select):
        raise ValueError(f"must be one SQL SELECT returning one value, got a {tree.key.upper()} statement")
    if len(tree.expressions) != 1 or isinstance(tree.expressions[0], exp.Star):
        raise ValueError(f"must select exactly one value, got {len(tree.expressions)} columns"
                         f" ({', '.join(e.sql(_DIALECT) for e in tree.expressions)})")
    if tree.find(exp.With) is not None:
        raise ValueError("must read the source tables directly, got a WITH clause")
    for table in tree.find_all(exp.Table):
        name = table.this
        if not isinstance(name, exp.Identifier) or table.args.get("db") or table.args.get("catalog") \
                or name.this.lower() not in SOURCE_TABLES:
            raise ValueError(f"must read only the store's source tables {sorted(SOURCE_TABLES)}, got {table.sql(_DIALECT)!r}")
        if (table.alias_or_name or "").lower() == "point":
            raise ValueError("must not use the alias `point`, which names the decision the feature is computed for")
    for column in tree.find_all(exp.Column):
        if column.table.lower() == "point" and column.name.lower() not in POINT_COLUMNS:
            raise ValueError(f"may read only {[f'point.{c}' for c in POINT_COLUMNS]} of the decision, got point.{column.name}")
    return tree.sql(_DIALECT, normalize=True, comments=False)


def point_in_time_sql(text: str) -> str:
    """The definition with every source table replaced by its rows known at ``point.as_of``: a correlated
    scalar subquery to evaluate with ``point`` bound to (``unit_id``, ``as_of``) rows."""
    import sqlglot
    from sqlglot import exp

    tree = _parse(definition_sql(text))

    def known(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and node.name.lower() in SOURCE_TABLES:
            alias = node.alias_or_name
            inner = sqlglot.parse_one(f"SELECT * FROM {node.name.lower()} WHERE {SOURCE_TABLES[node.name.lower()]}", read=_DIALECT)
            return exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias)))
        return node

    return str(tree.transform(known).sql(_DIALECT))
