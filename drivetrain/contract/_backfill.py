"""Deterministic backfills: the training table, the evaluation and the drift figures as of a past T,
written as files with their sha256, so that a rebuild can be compared byte for byte.

Every figure as of T reads only rows received by T (``docs/architecture.md``, Maturity and replay), so
later ingests, late outcomes and re-ingested files must leave the bytes unchanged; the manifest's digest
says whether they did.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drivetrain.clock import as_utc
from drivetrain.data import Store, training_table
from drivetrain.errors import UsageError
from drivetrain.evaluate import evaluate, measure_drift

__all__ = ["Backfill", "backfill", "baseline_version"]


@dataclass(frozen=True)
class Backfill:
    """What a backfill wrote: each file's name, sha256 and row count, and the digest over all of them."""

    as_of: datetime
    start: datetime
    policy_version: str | None
    files: tuple[tuple[str, str, int], ...]
    digest: str

    def summary(self) -> str:
        lines = [f"backfill as of {self.as_of.isoformat()} (decisions from {self.start.isoformat()});"
                 f" drift against {self.policy_version or 'no baselines known by then'}:"]
        lines += [f"  {name}: {rows} rows, sha256 {digest}" for name, digest, rows in self.files]
        lines.append(f"digest {self.digest}")
        return "\n".join(lines)


def _ts(moment: datetime) -> str:
    return f"TIMESTAMP '{moment.strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def baseline_version(store: Store, start: datetime, end: datetime, as_of: datetime) -> str | None:
    """The policy version whose baselines existed at ``as_of`` and that made most decisions of the window
    received by then (ties: the first name), or None."""
    rows = store.query(
        f"SELECT policy_version, COUNT(*) AS n FROM decisions WHERE decided_at >= {_ts(start)} AND decided_at < {_ts(end)}"
        f" AND received_at <= {_ts(as_of)} AND policy_version IN"
        f" (SELECT DISTINCT policy_version FROM baselines WHERE created_at <= {_ts(as_of)}) GROUP BY 1 ORDER BY 2 DESC, 1")
    return str(rows["policy_version"].iloc[0]) if len(rows) else None


def _csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False, float_format="%.17g", lineterminator="\n", date_format="%Y-%m-%dT%H:%M:%S.%fZ")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backfill(store: Store, as_of: datetime, out: Path, *, days: int = 30) -> Backfill:
    """Rebuild, as of ``as_of``, the training table of the decisions of the last ``days`` days, the
    evaluation and the drift of those days against the baselines known then; write them to ``out``
    (``training.parquet``, ``evaluation.csv``, ``drift.csv``, ``manifest.json``)."""
    as_of = as_utc(as_of, name="as_of")
    if days < 1:
        raise UsageError(f"`days` must be >= 1, got {days}")
    start = as_of - timedelta(days=days)
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path, int]] = []

    table, _report = training_table(store, as_of)
    table = table.filter(pc.greater_equal(table.column("decided_at"), pa.scalar(start, table.schema.field("decided_at").type)))
    table = table.replace_schema_metadata(None)
    path = out / "training.parquet"
    pq.write_table(table, path, compression="zstd")
    written.append(("training.parquet", path, table.num_rows))

    frame = evaluate(store, as_of).to_frame()
    frame = frame.sort_values(["figure", "day", "cohort", "value"], na_position="first", kind="stable").reset_index(drop=True)
    path = out / "evaluation.csv"
    _csv(frame, path)
    written.append(("evaluation.csv", path, len(frame)))

    version = baseline_version(store, start, as_of, as_of)
    drift_path = out / "drift.csv"
    if version is not None:
        drift = measure_drift(store, version, start=start, end=as_of, as_of=as_of).table
        _csv(drift, drift_path)
        written.append(("drift.csv", drift_path, len(drift)))
    elif drift_path.exists():
        drift_path.unlink()

    files = tuple((name, _sha256(p), rows) for name, p, rows in written)
    manifest = {"as_of": as_of.isoformat(), "start": start.isoformat(), "spec_hash": store.spec.hash,
                "policy_version": version, "files": {name: {"sha256": digest, "rows": rows} for name, digest, rows in files}}
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    (out / "manifest.json").write_text(json.dumps({**manifest, "digest": digest}, indent=2, sort_keys=True) + "\n")
    return Backfill(as_of, start, version, files, digest)
