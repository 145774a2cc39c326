"""Every Store implementation must pass these checks (docs/architecture.md, habit 8)."""

from __future__ import annotations

import os
from datetime import timedelta

import pyarrow as pa
import pytest

from drivetrain.data import OUTCOME_SCHEMA, TABLES, ParquetStore, Store, decision_schema
from drivetrain.errors import StoreError
from drivetrain.spec import Spec
from tests.data.conftest import T0


def _outcomes(ids: list[str], day: int = 0) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "event_id": ids,
            "request_id": [f"r{i}" for i in range(n)],
            "unit_id": [None] * n,
            "occurred_at": [T0 + timedelta(days=day)] * n,
            "received_at": [T0 + timedelta(days=day, minutes=1)] * n,
            "component": ["purchase"] * n,
            "value": [1.0] * n,
            "attribution": ["request"] * n,
            "ingested_at": [T0] * n,
        },
        schema=OUTCOME_SCHEMA,
    )


def test_is_a_store(store: Store) -> None:
    assert isinstance(store, Store)


def test_empty_tables_have_their_schema(store: Store, spec: Spec) -> None:
    for table in TABLES:
        assert store.count(table) == 0
    empty = store.arrow("SELECT * FROM decisions")
    assert empty.schema.names == [*decision_schema(spec).names, "ingest_id"]


def test_append_query_lookup_and_partitions(store: Store) -> None:
    store.append("outcomes", _outcomes(["a", "b"], day=0))
    store.append("outcomes", _outcomes(["c"], day=3))
    assert store.count("outcomes") == 3
    got = store.query("SELECT event_id FROM outcomes ORDER BY event_id")["event_id"].tolist()
    assert got == ["a", "b", "c"]
    found = store.lookup("outcomes", "event_id", pa.table({"event_id": ["c", "zz"]}))
    assert found.column("event_id").to_pylist() == ["c"]
    ts = store.arrow("SELECT occurred_at FROM outcomes WHERE event_id = 'c'").column(0)[0].as_py()
    assert ts == T0 + timedelta(days=3)


def test_replace_swaps_the_whole_table(store: Store) -> None:
    store.append("outcomes_pending", _outcomes(["a", "b"]))
    store.replace("outcomes_pending", _outcomes(["c"]))
    assert store.query("SELECT event_id FROM outcomes_pending")["event_id"].tolist() == ["c"]
    store.replace("outcomes_pending", _outcomes([]))
    assert store.count("outcomes_pending") == 0


def test_rows_missing_columns_are_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="must have columns"):
        store.append("outcomes", pa.table({"event_id": ["a"]}))
    with pytest.raises(StoreError, match="`table` must be one of"):
        store.count("users")


def test_writing_lock_is_reentrant_per_call(store: Store) -> None:
    with store.writing():
        store.append("outcomes", _outcomes(["a"]))
    with store.writing():
        assert store.count("outcomes") == 1


def test_parquet_store_persists_and_checks_its_marker(spec: Spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = ParquetStore(tmp_path / "s", spec, create=True)
    first.append("outcomes", _outcomes(["a", "b"]))
    again = ParquetStore(tmp_path / "s", spec)
    assert again.count("outcomes") == 2
    assert not list((tmp_path / "s").glob("**/*.tmp"))
    with pytest.raises(StoreError, match="must hold drivetrain-store.json"):
        ParquetStore(tmp_path / "elsewhere", spec)
    (tmp_path / "s" / "drivetrain-store.json").write_text("{broken")
    with pytest.raises(StoreError, match="must be JSON"):
        ParquetStore(tmp_path / "s", spec)


def test_a_table_that_is_not_a_directory_is_an_error_not_an_empty_table(spec: Spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = ParquetStore(tmp_path / "s", spec, create=True)
    store.append("outcomes", _outcomes(["a"]))
    (tmp_path / "s" / "outcomes").rename(tmp_path / "aside")
    (tmp_path / "s" / "outcomes").write_text("not a table")
    # read as empty, a de-duplicating ingest would take rows already stored as new
    with pytest.raises(StoreError, match="table `outcomes` must be a directory of Parquet files, got a file"):
        store.lookup("outcomes", "event_id", pa.table({"event_id": ["a"]}))
    (tmp_path / "s" / "outcomes").unlink()
    (tmp_path / "aside").rename(tmp_path / "s" / "outcomes")
    assert store.count("outcomes") == 1


def test_baselines_round_trip(store: Store) -> None:
    import numpy as np

    from drivetrain.data import write_baselines

    rng = np.random.default_rng(0)
    columns = {
        "page_views_30d": ("feature", rng.poisson(5, 1000)),
        "region": ("feature", np.array(["north", "south", None, "north"] * 250, dtype=object)),
        "predicted_objective": ("prediction", rng.normal(size=1000)),
    }
    assert write_baselines(store, columns, version="v1", created_at=T0) == 3
    got = store.query("SELECT * FROM baselines WHERE policy_version = 'v1' ORDER BY column_name")
    pv = got.set_index("column_name").loc["page_views_30d"]
    assert abs(sum(pv["bin_shares"]) - 1) < 1e-9 and len(pv["bin_shares"]) == len(pv["bin_edges"]) + 1
    region = got.set_index("column_name").loc["region"]
    assert list(region["categories"]) == ["north", "south"] and region["null_share"] == 0.25
    assert list(region["bin_shares"]) == [2 / 3, 1 / 3]


def test_stored_rows_without_a_column_of_the_spec_are_a_named_error(spec: Spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A spec that gained a context feature after decisions were stored: a StoreError naming the column,
    not a query engine's binder error."""
    import pyarrow.parquet as pq

    store = ParquetStore(tmp_path / "s", spec, create=True)
    feature = next(iter(spec.features))
    older = decision_schema(spec).empty_table().drop_columns([feature])
    (tmp_path / "s" / "decisions").mkdir()
    pq.write_table(older, tmp_path / "s" / "decisions" / "part-old.parquet")
    with pytest.raises(StoreError, match=rf"the stored `decisions` must have the columns of this spec \['{feature}'\]"):
        store.count("decisions")


def test_remove_takes_out_the_rows_named_and_nothing_else(store: Store) -> None:
    store.append("outcomes", _outcomes(["a", "b"], day=0).append_column("ingest_id", pa.array(["i1", "i2"])))
    store.append("outcomes", _outcomes(["c"], day=3).append_column("ingest_id", pa.array(["i1"])))
    store.append("outcomes", _outcomes(["d"], day=3))  # appended outside an ingest: ingest_id null
    assert store.remove("outcomes", "ingest_id", pa.table({"ingest_id": ["i1", None, "nope"]})) == 2
    assert store.query("SELECT event_id FROM outcomes ORDER BY event_id")["event_id"].tolist() == ["b", "d"]
    assert store.remove("outcomes", "ingest_id", pa.table({"ingest_id": ["i1"]})) == 0
    assert store.remove("outcomes", "event_id", pa.table({"event_id": ["d"]})) == 1
    assert store.query("SELECT event_id, ingest_id FROM outcomes").to_dict("records") == [{"event_id": "b", "ingest_id": "i2"}]
    with pytest.raises(StoreError, match="`key` must be a column of `outcomes`"):
        store.remove("outcomes", "nope", pa.table({"nope": ["x"]}))


def test_rows_stored_before_ingest_ids_read_a_null_ingest_id(spec: Spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A store written before ingest ids existed keeps reading (documented default: null), and new rows join it."""
    import pyarrow.parquet as pq

    store = ParquetStore(tmp_path / "s", spec, create=True)
    (tmp_path / "s" / "outcomes").mkdir()
    pq.write_table(_outcomes(["old"]), tmp_path / "s" / "outcomes" / "part-old.parquet")
    assert store.arrow("SELECT event_id, ingest_id FROM outcomes").to_pylist() == [{"event_id": "old", "ingest_id": None}]
    store.append("outcomes", _outcomes(["new"]).append_column("ingest_id", pa.array(["i9"])))
    got = store.arrow("SELECT event_id, ingest_id FROM outcomes ORDER BY event_id").to_pylist()
    assert got == [{"event_id": "new", "ingest_id": "i9"}, {"event_id": "old", "ingest_id": None}]
    assert store.remove("outcomes", "ingest_id", pa.table({"ingest_id": ["i9"]})) == 1
    assert store.count("outcomes") == 1
    # the columns a table's files hold are read again when a file is replaced in its place
    path = tmp_path / "s" / "outcomes" / "part-old.parquet"
    pq.write_table(_outcomes(["old"]).append_column("ingest_id", pa.array(["i8"])), path.with_name(".tmp"))
    os.replace(path.with_name(".tmp"), path)
    assert store.arrow("SELECT event_id, ingest_id FROM outcomes").to_pylist() == [{"event_id": "old", "ingest_id": "i8"}]


def test_the_first_personal_key_fingerprint_is_kept(store: Store) -> None:
    with store.writing():
        assert store.claim_key("fingerprint-a") == "fingerprint-a"
        assert store.claim_key("fingerprint-b") == "fingerprint-a"
    if isinstance(store, ParquetStore):
        again = ParquetStore(store.root, store.spec)
        assert again.claim_key("fingerprint-c") == "fingerprint-a"
        assert "fingerprint-a" in (store.root / "personal-key.json").read_text()


@pytest.mark.parametrize("threads", ["0", "-2", "two", "1.5"])
def test_a_thread_count_that_is_not_a_positive_whole_number_is_a_named_error(spec: Spec, threads: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from drivetrain.data import MemoryStore

    monkeypatch.setenv("DRIVETRAIN_DUCKDB_THREADS", threads)
    with pytest.raises(StoreError, match=rf"DRIVETRAIN_DUCKDB_THREADS must be a whole number of threads, at least 1, got '{threads}'"):
        MemoryStore(spec).count("decisions")


@pytest.mark.parametrize("threads", ["1", "3"])
def test_a_store_runs_its_queries_on_the_threads_the_environment_sets(spec: Spec, threads: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from drivetrain.data import MemoryStore

    monkeypatch.setenv("DRIVETRAIN_DUCKDB_THREADS", threads)
    got = MemoryStore(spec).arrow("SELECT current_setting('threads') AS t").column("t")[0].as_py()
    assert int(got) == int(threads)
