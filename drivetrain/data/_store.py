"""The event store: decisions, outcomes, pending outcomes and quarantine, queried with DuckDB SQL.

``Store`` is the protocol every implementation satisfies (``tests/data/test_store_conformance.py``):

* :class:`ParquetStore`, the embedded default: one directory per table, Parquet files partitioned by
  day (``decisions/date=2026-01-05/part-....parquet``), each written to a temporary name and renamed, so a
  reader never sees half a file; an exclusive lock file serializes writers.
* :class:`MemoryStore`: Arrow tables in memory, for tests and the twin.

Both answer SQL over views named after the tables (``decisions``, ``outcomes``, ``outcomes_pending``,
``quarantine``, and the bookkeeping ``baselines``, ``alerts``, ``ingests``, ``releases``), so the code that
ingests and joins is written once. Rows are added with ``append`` and taken out only by ``remove`` (an
undone ingest); ``replace`` swaps a table whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drivetrain.data._schemas import (
    ALERT_SCHEMA,
    BASELINE_SCHEMA,
    INGEST_ID,
    INGEST_LOG_SCHEMA,
    OUTCOME_SCHEMA,
    PENDING_SCHEMA,
    QUARANTINE_SCHEMA,
    RELEASE_SCHEMA,
    WITH_INGEST_ID,
    decision_schema,
)
from drivetrain.errors import StoreError
from drivetrain.spec import Spec

__all__ = ["MemoryStore", "ParquetStore", "Store", "TABLES", "open_store"]

TABLES = ("decisions", "outcomes", "outcomes_pending", "quarantine", "baselines", "alerts", "ingests", "releases")
_PARTITION_COLUMN = {"decisions": "decided_at", "outcomes": "occurred_at", "quarantine": "quarantined_at"}
_MARKER = "drivetrain-store.json"
_KEY_FILE = "personal-key.json"  # the fingerprint of the personal-data key, never the key
_FORMAT = 1
_WORD = re.compile(r"[a-z_][a-z0-9_]*")
_DATABASES = threading.Lock()  # guards the creation of a database and of a connection to it
_OPENED: dict[int, tuple[int, duckdb.DuckDBPyConnection]] = {}  # by thread count: the opening process, its database


def _named_tables(sql: str) -> list[str]:
    """The store's tables whose name appears as a word in ``sql`` (a superset of those it reads)."""
    words = set(_WORD.findall(sql.lower()))
    return [t for t in TABLES if t in words]


@runtime_checkable
class Store(Protocol):
    """Append-only tables (``outcomes_pending`` is replaced whole) with SQL reads."""

    spec: Spec

    def append(self, table: str, rows: pa.Table) -> None: ...

    def replace(self, table: str, rows: pa.Table) -> None: ...

    def query(self, sql: str) -> pd.DataFrame: ...

    def arrow(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        """The result of ``sql`` over the store's tables and ``tables`` (Arrow tables under their names)."""
        ...

    def count(self, table: str) -> int: ...

    def lookup(self, table: str, key: str, keys: pa.Table) -> pa.Table: ...

    def remove(self, table: str, key: str, keys: pa.Table) -> int: ...

    def writing(self) -> contextlib.AbstractContextManager[None]: ...

    def claim_key(self, fingerprint: str) -> str:
        """Record the fingerprint of the personal-data key that writes this store, if none is recorded yet,
        and return the recorded one (never the key: a fingerprint cannot hash a value). Call it holding
        ``writing()``."""
        ...


#: The environment variable that sets how many threads a store's DuckDB database runs a query on.
THREADS_ENV = "DRIVETRAIN_DUCKDB_THREADS"


def duckdb_threads() -> int:
    """The threads a store's queries run on: ``$DRIVETRAIN_DUCKDB_THREADS`` when set, else the machine's
    cores up to 4. Set it to 1 where several processes share the cores (a parallel test run, workers of a
    service): on a store of days rather than years a query's threads wait on each other more than they help
    (docs/decisions.md)."""
    raw = os.environ.get(THREADS_ENV)
    if raw is None or raw.strip() == "":
        return max(1, min(4, os.cpu_count() or 1))
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise StoreError(f"${THREADS_ENV} must be a whole number of threads, at least 1, got {raw!r}")
    return threads


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """The whole result of ``sql`` as an Arrow table (the method's name differs across DuckDB releases)."""
    relation = con.sql(sql)
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


class _SqlStore:
    """Shared SQL layer: subclasses say where each table's rows are."""

    spec: Spec

    def schema(self, table: str) -> pa.Schema:
        if table not in TABLES:
            raise StoreError(f"`table` must be one of {list(TABLES)}, got {table!r}")
        schema = {
            "decisions": decision_schema(self.spec),
            "outcomes": OUTCOME_SCHEMA,
            "outcomes_pending": PENDING_SCHEMA,
            "quarantine": QUARANTINE_SCHEMA,
            "baselines": BASELINE_SCHEMA,
            "alerts": ALERT_SCHEMA,
            "ingests": INGEST_LOG_SCHEMA,
            "releases": RELEASE_SCHEMA,
        }[table]
        return schema.append(pa.field(INGEST_ID, pa.string())) if table in WITH_INGEST_ID else schema

    def _check(self, table: str, rows: pa.Table) -> pa.Table:
        schema = self.schema(table)
        if table in WITH_INGEST_ID and INGEST_ID not in rows.column_names:  # rows appended outside an ingest
            rows = rows.append_column(pa.field(INGEST_ID, pa.string()), pa.nulls(rows.num_rows, pa.string()))
        missing = [f.name for f in schema if f.name not in rows.column_names]
        if missing:
            raise StoreError(f"rows for `{table}` must have columns {missing}, got {rows.column_names}")
        extra = [c for c in rows.column_names if c not in schema.names]
        ordered = rows.select([*schema.names, *extra])
        return ordered.cast(pa.schema([*schema, *(ordered.schema.field(c) for c in extra)]))

    def _bind(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _connection(self, sql: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own (one thread's, closed after use) to the process's in-memory DuckDB
        database, where the tables ``sql`` names are temporary views over the store's rows as they are now
        (a view belongs to its connection: stores and threads never see each other's). The database is opened
        once per process and thread count, whatever the number of stores (opening one costs about 20 ms, a
        connection to it a fraction of a millisecond); a forked child opens its own."""
        threads = duckdb_threads()
        with _DATABASES:
            opened = _OPENED.get(threads)
            if opened is None or opened[0] != os.getpid():
                opened = _OPENED[threads] = (os.getpid(), duckdb.connect(config={"threads": threads}))
            con = opened[1].cursor()
        try:
            con.execute("SET TimeZone = 'UTC'")
            for table in _named_tables(sql):
                self._bind(con, table)
            yield con
        finally:
            con.close()

    def _bind_empty(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        empty = self.schema(table).empty_table()
        con.register(table, empty)

    def arrow(self, sql: str, tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        with self._connection(sql) as con:
            for name, rows in (tables or {}).items():
                con.register(name, rows)
            return _fetch(con, sql)

    def query(self, sql: str) -> pd.DataFrame:
        return self.arrow(sql).to_pandas()

    def lookup(self, table: str, key: str, keys: pa.Table) -> pa.Table:
        """Rows of ``table`` whose ``key`` is among ``keys[key]``."""
        self.schema(table)
        sql = f"SELECT t.* FROM {table} t SEMI JOIN _keys k ON t.{key} = k.{key}"
        with self._connection(sql) as con:
            con.register("_keys", keys.select([key]))
            return _fetch(con, sql)

    def count(self, table: str) -> int:
        self.schema(table)
        return int(self.arrow(f"SELECT count(*) AS n FROM {table}").column("n")[0].as_py())

    def _keep(self, rows: pa.Table, key: str, keys: pa.Array) -> pa.Table | None:
        """``rows`` without those whose ``key`` is among ``keys``, or None when none of them is."""
        if key not in rows.column_names:
            return None
        hit = pc.fill_null(pc.is_in(rows.column(key), value_set=keys), False)
        if not pc.any(hit).as_py():
            return None
        return rows.filter(pc.invert(hit))


def _key_values(table: str, schema: pa.Schema, key: str, keys: pa.Table) -> pa.Array:
    if key not in schema.names:
        raise StoreError(f"`key` must be a column of `{table}` {schema.names}, got {key!r}")
    values = keys.column(key).combine_chunks().cast(schema.field(key).type)
    return pc.drop_null(values)


class MemoryStore(_SqlStore):
    """Tables as Arrow tables in memory; the real SQL paths, no files."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._tables: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
        self._fingerprint: str | None = None

    def append(self, table: str, rows: pa.Table) -> None:
        rows = self._check(table, rows)
        if rows.num_rows:
            self._tables[table].append(rows)

    def replace(self, table: str, rows: pa.Table) -> None:
        rows = self._check(table, rows)
        self._tables[table] = [rows] if rows.num_rows else []

    def remove(self, table: str, key: str, keys: pa.Table) -> int:
        """Remove the rows of ``table`` whose ``key`` is among ``keys[key]``; return how many."""
        values = _key_values(table, self.schema(table), key, keys)
        removed, parts = 0, []
        for part in self._tables[table]:
            kept = self._keep(part, key, values)
            if kept is None:
                parts.append(part)
                continue
            removed += part.num_rows - kept.num_rows
            if kept.num_rows:
                parts.append(kept)
        self._tables[table] = parts
        return removed

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        yield

    def claim_key(self, fingerprint: str) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint
        return self._fingerprint

    def _bind(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        parts = self._tables[table]
        if not parts:
            self._bind_empty(con, table)
            return
        con.register(table, pa.concat_tables(parts, promote_options="default"))


class ParquetStore(_SqlStore):
    """The embedded store: Parquet files under ``root``, read with DuckDB."""

    def __init__(self, root: str | Path, spec: Spec, *, create: bool = False) -> None:
        self.root = Path(root)
        self.spec = spec
        #: Per table: the files (path, inode, modification time, size) last described and the columns they hold.
        self._described: dict[str, tuple[tuple[tuple[str, int, int, int], ...], frozenset[str]]] = {}
        marker = self.root / _MARKER
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                marker.write_text(json.dumps({"format": _FORMAT, "spec": spec.name}) + "\n")
        if not marker.exists():
            raise StoreError(
                f"store directory must hold {_MARKER} (create it with `drivetrain init` or `--create`), got {str(self.root)!r}"
            )
        try:
            meta = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise StoreError(f"{marker} must be JSON, got unreadable content ({exc})") from None
        if meta.get("format") != _FORMAT:
            raise StoreError(f"store format must be {_FORMAT}, got {meta.get('format')!r} in {marker}")

    def claim_key(self, fingerprint: str) -> str:
        """The fingerprint in ``personal-key.json`` (written, under a temporary name, when absent)."""
        path = self.root / _KEY_FILE
        if not path.exists():
            temporary = path.with_name(f".{_KEY_FILE}.{uuid.uuid4().hex}")
            temporary.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
            os.replace(temporary, path)
        try:
            recorded = json.loads(path.read_text())["fingerprint"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} must be JSON with a `fingerprint`, got unreadable content ({exc!r})") from None
        return str(recorded)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store's exclusive writer lock (one ingest at a time)."""
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _files(self, table: str) -> list[Path]:
        directory = self.root / table
        # a file in the table's place would otherwise read as an empty table, and a de-duplicating
        # ingest would take every row as new
        if directory.exists() and not directory.is_dir():
            raise StoreError(f"table `{table}` must be a directory of Parquet files, got a file at {str(directory)!r}")
        return sorted(directory.glob("**/*.parquet"))

    def _write(self, directory: Path, rows: pa.Table) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{uuid.uuid4().hex}.parquet"
        tmp = directory / f".{final.name}.tmp"
        pq.write_table(rows, tmp, compression="zstd")
        os.replace(tmp, final)
        return final

    def append(self, table: str, rows: pa.Table) -> None:
        rows = self._check(table, rows)
        if not rows.num_rows:
            return
        column = _PARTITION_COLUMN.get(table)
        if column is None:
            self._write(self.root / table, rows)
            return
        days = pc.strftime(rows.column(column), format="%Y-%m-%d")
        order = pc.sort_indices(days)
        rows, days = rows.take(order), days.take(order)
        values = days.to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        for start, stop in zip(starts, [*starts[1:], len(values)], strict=True):
            self._write(self.root / table / f"date={values[start]}", rows.slice(start, stop - start))

    def replace(self, table: str, rows: pa.Table) -> None:
        rows = self._check(table, rows)
        old = self._files(table)
        if rows.num_rows:
            self._write(self.root / table, rows)
        for path in old:
            path.unlink()

    def remove(self, table: str, key: str, keys: pa.Table) -> int:
        """Remove the rows of ``table`` whose ``key`` is among ``keys[key]``; return how many. Only the
        files holding such rows are rewritten, each in place under a temporary name (a reader sees the
        old file or the new one)."""
        values = _key_values(table, self.schema(table), key, keys)
        removed = 0
        for path in self._files(table):
            handle = pq.ParquetFile(path)
            if key not in handle.schema_arrow.names or self._keep(handle.read(columns=[key]), key, values) is None:
                continue
            rows = handle.read()
            kept = self._keep(rows, key, values)
            if kept is None:
                continue
            removed += rows.num_rows - kept.num_rows
            if kept.num_rows:
                tmp = path.with_name(f".{path.name}.tmp")
                pq.write_table(kept, tmp, compression="zstd")
                os.replace(tmp, path)
            else:
                path.unlink()
        return removed

    def _bind(self, con: duckdb.DuckDBPyConnection, table: str) -> None:
        files = self._files(table)
        if not files:
            self._bind_empty(con, table)
            return
        listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
        source = f"read_parquet([{listing}], union_by_name = true, hive_partitioning = false)"
        key = _file_stats(files)
        described = self._described.get(table)
        if key is None or described is None or described[0] != key:
            stored = frozenset(row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall())
            if key is not None:
                self._described[table] = (key, stored)
        else:  # the files described last time: their columns are known
            stored = described[1]
        if table in WITH_INGEST_ID and INGEST_ID not in stored:  # written before ingest ids: no ingest can undo them
            con.execute(f"CREATE TEMP VIEW {table} AS SELECT *, CAST(NULL AS VARCHAR) AS {INGEST_ID} FROM {source}")
            stored |= {INGEST_ID}
        else:
            con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {source}")
        if missing := [name for name in self.schema(table).names if name not in stored]:
            raise StoreError(
                f"the stored `{table}` must have the columns of this spec {missing}, got files without them in {str(self.root)!r}: "
                "the spec changed after they were stored; use the spec they were stored with, or a new store for the new contract")


def _file_stats(files: Sequence[Path]) -> tuple[tuple[str, int, int, int], ...] | None:
    """Each file's path, inode, modification time and size, or None when one is gone (a compaction removed
    it): what says that a table's files are the ones described before (a file rewritten in its place is a new
    inode)."""
    try:
        return tuple((str(p), (st := p.stat()).st_ino, st.st_mtime_ns, st.st_size) for p in files)
    except OSError:
        return None


def open_store(path: str | Path | None, spec: Spec, *, create: bool = False) -> Store:
    """A :class:`ParquetStore` at ``path``, or a :class:`MemoryStore` when ``path`` is None."""
    if path is None:
        return MemoryStore(spec)
    return ParquetStore(path, spec, create=create)
