"""The evaluation's and drift's SQL in Spark's dialect, so that a team whose store outgrew one machine runs
the same queries on its Spark cluster.

The queries (:func:`drivetrain.evaluate.evaluation_queries`, :func:`drivetrain.evaluate.drift_queries`)
are written for DuckDB in a portable subset; SQLGlot transpiles them, and the table names they read
(``decisions``, ``outcomes``, ``outcomes_pending``, ``quarantine``; ``mature`` for drift's outcomes) are
mapped to whatever Spark should read instead: a temporary view, a catalog table, or a Parquet directory
of the store written as ``parquet.`/path/to/store/decisions```. The Spark session must run in UTC
(``spark.sql.session.timeZone=UTC``: a decision's day is its UTC date) and merge the Parquet schemas of the
store's files (``spark.sql.parquet.mergeSchema=true``), as DuckDB reads them by name.
``tests/evaluate/test_spark.py`` runs every query on Spark and DuckDB and requires equal results; the
rows Spark returns become an :class:`~drivetrain.evaluate.Evaluation` with
:func:`drivetrain.evaluate.evaluation_from_results`, the same last step :func:`~drivetrain.evaluate.evaluate` takes.

SQLGlot ships with the ``spark`` extra (``pip install 'drivetrain[spark]'``).
"""

from __future__ import annotations

from collections.abc import Mapping

from drivetrain.errors import UsageError

__all__ = ["QUERY_TABLES", "to_spark_sql"]

#: The table names the evaluation and drift queries read.
QUERY_TABLES = ("decisions", "outcomes", "outcomes_pending", "quarantine", "mature")


def to_spark_sql(queries: Mapping[str, str], *, tables: Mapping[str, str] | None = None) -> dict[str, str]:
    """``queries`` (DuckDB SQL by name) as Spark SQL, with each table name in ``tables`` replaced by its
    Spark reference (a view or table name, or ``parquet.`<directory>```).

    >>> to_spark_sql({"n": "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM decisions"},
    ...              tables={"decisions": "parquet.`/data/store/decisions`"})
    {'n': 'SELECT CAST(COUNT(*) AS BIGINT) AS n FROM parquet.`/data/store/decisions`'}
    """
    try:
        import sqlglot
        from sqlglot import exp
    except ImportError:
        raise UsageError("to_spark_sql needs SQLGlot: install the spark extra, pip install 'drivetrain[spark]'") from None
    tables = dict(tables or {})
    unknown = sorted(set(tables) - set(QUERY_TABLES))
    if unknown:
        raise UsageError(f"`tables` keys must be among the tables the queries read {list(QUERY_TABLES)}, got {unknown}")
    targets = {}
    for name, reference in tables.items():
        try:
            targets[name] = exp.to_table(reference, dialect="spark")
        except sqlglot.errors.ParseError as error:
            raise UsageError(f"`tables[{name!r}]` must be a Spark table reference, got {reference!r} ({error})") from None
    out = {}
    for key, sql in queries.items():
        tree = sqlglot.parse_one(sql, read="duckdb")
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            target = targets.get(table.name)
            if target is None or table.args.get("db") or table.name in ctes:
                continue
            for part in ("this", "db", "catalog"):
                value = target.args.get(part)
                table.set(part, value.copy() if value is not None else None)
        out[key] = tree.sql(dialect="spark")
    return out
