"""The evaluation's and drift's queries on Spark give DuckDB's results (docs/architecture.md, Engines and libraries:
the batch SQL is a portable subset that SQLGlot transpiles to Spark SQL).

Spark reads the store's Parquet directories directly (``parquet.`<dir>```), as a cluster would; a table
with no file yet (``quarantine`` here) and drift's ``mature`` input come in as a view and a file.
Counts, keys and labels must be equal; floating-point columns to a relative 1e-12 (the evaluation's sums
are exact DECIMAL sums on both engines, and only their conversion to DOUBLE may round differently; drift's
per-cell sums of DOUBLE values are added in another order, an error below n x 2^-53 relative to the sum
of magnitudes, with n <= 1,200 rows and values of one sign)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drivetrain.data import training_table
from drivetrain.data._store import _fetch
from drivetrain.errors import UsageError
from drivetrain.evaluate import drift_queries, evaluate, evaluation_from_results, evaluation_queries, to_spark_sql
from drivetrain.evaluate._spark import QUERY_TABLES
from tests.evaluate.conftest import LoopStore

RTOL = 1e-12
pytestmark = [pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]  # pyspark's own toPandas under pandas 3


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for the whole run: one core, no UI, one shuffle partition, UTC."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("pyspark must be installed when CI=true (the spark extra: pip install -e '.[test,spark]')")
        pytest.skip("pyspark is not installed (the spark extra)")
    session = (
        SparkSession.builder.master("local[1]").appName("drivetrain-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.default.parallelism", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.mergeSchema", "true")
        .config("spark.ui.showConsoleProgress", "false")
        # tiny data in a short-lived JVM: the quick JIT compiler starts faster, and generating code for
        # whole stages or re-planning at run time (AQE) costs more than it saves (about half the run time)
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _tables(spark: Any, loop: LoopStore, tmp: Path) -> dict[str, str]:
    """Spark references for the store's tables: each Parquet directory, or a view of an empty table."""
    out = {}
    for name in QUERY_TABLES:
        if name == "mature":
            continue
        directory = loop.store.root / name
        if any(directory.glob("**/*.parquet")):
            out[name] = f"parquet.`{directory}`"
        else:
            path = tmp / f"{name}-empty.parquet"
            pq.write_table(loop.store.schema(name).empty_table(), path)
            spark.read.parquet(str(path)).createOrReplaceTempView(f"empty_{name}")
            out[name] = f"empty_{name}"
    return out


def _frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype) or frame[column].dtype.kind == "M":
            values = pd.to_datetime(frame[column])
            frame[column] = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
    return frame


def assert_same(name: str, duck: pa.Table, spark: pa.Table) -> None:
    """Equal rows (in any order): exact on everything but floating-point columns, those to RTOL."""
    assert duck.column_names == spark.column_names, name
    d, s = _frame(duck), _frame(spark)
    assert len(d) == len(s), (name, len(d), len(s))
    floats = [c for c in d.columns if duck.schema.field(c).type in (pa.float64(), pa.float32())]
    keys = [c for c in d.columns if c not in floats]
    d = d.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)
    s = s.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)
    for column in keys:
        left, right = d[column].astype(object).where(d[column].notna(), None), s[column].astype(object).where(s[column].notna(), None)
        if duck.schema.field(column).type != spark.schema.field(column).type and pa.types.is_integer(duck.schema.field(column).type):
            right = right.map(lambda v: None if v is None else int(v))
        assert left.tolist() == right.tolist(), (name, column)
    for column in floats:
        np.testing.assert_allclose(s[column].to_numpy(dtype=np.float64), d[column].to_numpy(dtype=np.float64),
                                   rtol=RTOL, atol=0.0, equal_nan=True, err_msg=f"{name}.{column}")


def test_the_evaluation_queries_give_duckdbs_results_on_spark(spark: Any, loop_store: LoopStore, tmp_path: Path) -> None:
    loop = loop_store
    queries = evaluation_queries(loop.store.spec, loop.as_of)
    translated = to_spark_sql(queries, tables=_tables(spark, loop, tmp_path))
    assert set(translated) == {"moments", "latency", "units", "extent"}
    frames = {name: spark.sql(sql).cache() for name, sql in translated.items()}  # each query runs once on Spark
    rows = {}
    for name, sql in queries.items():
        duck = loop.store.arrow(sql)
        assert duck.num_rows > 0, name
        rows[name] = frames[name].toArrow()
        assert_same(name, duck, rows[name])
    # the store has what the comparison is meant to exercise
    moments = loop.store.query(queries["moments"])
    assert moments["late"].sum() > 0 and moments["out_of_window"].sum() > 0 and moments["of_immature"].sum() > 0
    assert moments["region"].isna().any() and moments["region"].notna().any()
    assert int(loop.store.query(queries["extent"])["waiting"].iloc[0]) > 0
    # Spark's rows make the same evaluation: every figure of every slice, through the public last step
    on_spark = evaluation_from_results(loop.store.spec, loop.as_of, rows)
    on_duckdb = evaluate(loop.store, loop.as_of)
    a, b = on_duckdb.to_frame(), on_spark.to_frame()
    assert len(a) == len(b) > 100
    numbers = [c for c in a.columns if a[c].dtype.kind == "f"]
    labels = [c for c in a.columns if c not in numbers]
    assert a[labels].astype(object).where(a[labels].notna(), None).equals(b[labels].astype(object).where(b[labels].notna(), None))
    np.testing.assert_allclose(b[numbers].to_numpy(dtype=np.float64), a[numbers].to_numpy(dtype=np.float64), rtol=1e-9, atol=1e-12)
    assert on_spark.overall.counts == on_duckdb.overall.counts and on_spark.overall.sample_ratio == on_duckdb.overall.sample_ratio
    # and pandas frames (toPandas) are taken as well as Arrow tables
    from_pandas = evaluation_from_results(loop.store.spec, loop.as_of, {n: frame.toPandas() for n, frame in frames.items()})
    assert from_pandas.overall.counts == on_duckdb.overall.counts


def test_the_drift_count_queries_give_duckdbs_results_on_spark(spark: Any, loop_store: LoopStore, tmp_path: Path) -> None:
    loop = loop_store
    queries = drift_queries(loop.store, loop.version, as_of=loop.as_of, **loop.window)
    assert set(queries) == {"decisions", "outcomes"}
    mature = training_table(loop.store, loop.as_of)[0]
    pq.write_table(mature, tmp_path / "mature.parquet")
    tables = {**_tables(spark, loop, tmp_path), "mature": f"parquet.`{tmp_path / 'mature.parquet'}`"}
    translated = to_spark_sql(queries, tables=tables)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("mature", mature)
    for name, sql in queries.items():
        duck = loop.store.arrow(sql) if name == "decisions" else _fetch(con, sql)
        assert duck.num_rows > 0, name
        assert_same(name, duck, spark.sql(translated[name]).toArrow())
    con.close()


def test_table_names_are_mapped_and_checked() -> None:
    sql = {"q": "WITH d AS (SELECT * FROM decisions) SELECT o.value FROM outcomes o JOIN d ON o.request_id = d.request_id"}
    out = to_spark_sql(sql, tables={"decisions": "parquet.`/data/store/decisions`", "outcomes": "lake.outcomes"})
    assert out["q"] == ("WITH d AS (SELECT * FROM parquet.`/data/store/decisions`) SELECT o.value FROM lake.outcomes AS o"
                        " JOIN d ON o.request_id = d.request_id")
    with pytest.raises(UsageError, match=r"`tables` keys must be among the tables the queries read \[.*\], got \['decision'\]"):
        to_spark_sql(sql, tables={"decision": "x"})
