"""The ``drivetrain`` command: parses arguments, calls the public API, formats the output.

Every input mistake (spec, file, argument) ends with a message naming the field, the expectation and
what arrived, and exit code 2; no traceback reaches the user for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from drivetrain.clock import SystemClock
from drivetrain.errors import DrivetrainError, UsageError

app = typer.Typer(
    name="drivetrain",
    help="Decision-making data products: objective, levers, model assembly line, closed loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
twin_app = typer.Typer(help="Digital twins with known ground truth.", no_args_is_help=True)
app.add_typer(twin_app, name="twin")
console = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)

PII_SALT_ENV = "DRIVETRAIN_PII_SALT"


class FileFormat(str, Enum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


class TableKind(str, Enum):
    auto = "auto"
    decisions = "decisions"
    outcomes = "outcomes"


def _parse_time(text: str | None, name: str) -> datetime:
    if text is None:
        return SystemClock().now()
    try:
        moment = pd.Timestamp(text)
    except ValueError:
        raise UsageError(f"`{name}` must be an ISO 8601 time such as 2026-02-01T00:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    return moment.to_pydatetime().astimezone(timezone.utc)


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="The spec file (drivetrain.yaml).")]) -> None:
    """Check a spec: exit 0 when valid, else print every problem and exit 2."""
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    console.print(
        f"[green]ok[/green] {spec}: {len(loaded.action_space)} actions over levers {list(loaded.levers)},"
        f" {len(loaded.outcomes)} outcomes, {len(loaded.features)} context features,"
        f" horizon {loaded.model.objective.horizon}, spec hash {loaded.hash}, feature version {loaded.feature_version}"
    )


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory of the new data product.")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing spec.")] = False,
) -> None:
    """Scaffold a data product: a commented spec to fill in, an empty store, a README of next steps."""
    from drivetrain.data import ParquetStore
    from drivetrain.spec import load_spec

    target = directory / "drivetrain.yaml"
    if target.exists() and not force:
        raise UsageError(f"`directory` must not hold a spec already (use --force to overwrite), got {str(target)!r}")
    directory.mkdir(parents=True, exist_ok=True)
    template = resources.files("drivetrain.spec").joinpath("templates/spec.yaml").read_text(encoding="utf-8")
    target.write_text(template, encoding="utf-8")
    spec = load_spec(target)
    ParquetStore(directory / "store", spec, create=True)
    (directory / "README.md").write_text(_INIT_README.format(name=spec.name), encoding="utf-8")
    console.print(f"created {target}, {directory / 'store'} and {directory / 'README.md'}; next: edit the spec, then `drivetrain validate {target}`")


_INIT_README = """# {name}

A drivetrain data product. Next steps:

1. Edit `drivetrain.yaml`: the objective and its horizon, the outcome components, the levers, the
   control action, constraints, guardrails and the context contract. Check it with
   `drivetrain validate drivetrain.yaml` (exit 0 when valid; every problem is listed otherwise).
2. Export your randomized exposure log (decisions, with propensities) and your outcome events in the
   formats of docs/data.md (Parquet, CSV or JSON lines), then load them:
   `drivetrain ingest --spec drivetrain.yaml --store store decisions.parquet outcomes.csv`.
   Rejected rows land in the store's quarantine with their reason; nothing is dropped.
3. Look at what arrived: `drivetrain summary --spec drivetrain.yaml --store store`, and build the training
   table of mature decisions: `drivetrain join --spec drivetrain.yaml --store store --out train.parquet`.
"""


@twin_app.command("nboo")
def twin_nboo(
    out: Annotated[Path, typer.Option(help="Directory for spec.yaml, decisions, outcomes and truth.")] = Path("twin-out"),
    users: Annotated[int, typer.Option(min=1, help="Users per day.")] = 50_000,
    days: Annotated[int, typer.Option(min=1, help="Days of logged decisions.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    horizon_days: Annotated[int, typer.Option(min=1, help="Outcome horizon (30, or 7 for multi-day tests).")] = 30,
    fmt: Annotated[FileFormat, typer.Option("--format", help="File format of the logs.")] = FileFormat.parquet,
) -> None:
    """Generate the Next Best Offer twin's randomized logs (uniform logging policy, true propensities)."""
    from drivetrain.twin import NBOOTwin

    twin = NBOOTwin(horizon_days=horizon_days, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    spec_text = nboo_spec_text(horizon_days)
    (out / "spec.yaml").write_text(spec_text, encoding="utf-8")
    decisions, outcomes, truths = [], [], []
    with console.status("generating") as status:
        for day in range(days):
            status.update(f"day {day + 1}/{days}: {users} users")
            frame = twin.population(users, day=day, offset=day * users)
            dec, outc = twin.log(frame, day=day)
            truth = twin.truth(frame, day=day)
            decisions.append(dec)
            outcomes.append(outc)
            truths.append(pd.DataFrame(truth.objective, columns=[f"objective__{a}" for a in truth.action_ids]).assign(
                request_id=dec["request_id"].to_numpy()))
    _write(pd.concat(decisions, ignore_index=True), out / f"decisions.{fmt.value}", fmt)
    _write(pd.concat(outcomes, ignore_index=True), out / f"outcomes.{fmt.value}", fmt)
    pd.concat(truths, ignore_index=True).to_parquet(out / "truth.parquet", index=False)
    console.print(f"wrote {out}/spec.yaml, decisions.{fmt.value} ({users * days} rows), outcomes.{fmt.value}"
                  f" ({sum(len(o) for o in outcomes)} rows), truth.parquet (expected objective per action)")


def nboo_spec_text(horizon_days: int) -> str:
    from drivetrain.twin._nboo import SPEC_PATH

    text = SPEC_PATH.read_text(encoding="utf-8")
    if horizon_days != 30:
        text = text.replace("  horizon: 30d\n", f"  horizon: {horizon_days}d\n").replace("  settle: 2d ", "  settle: 1d ")
    return text


def _write(frame: pd.DataFrame, path: Path, fmt: FileFormat) -> None:
    if fmt is FileFormat.parquet:
        frame.to_parquet(path, index=False)
    elif fmt is FileFormat.csv:
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso", date_unit="us")


@app.command()
def ingest(
    files: Annotated[list[Path], typer.Argument(help="Parquet, CSV or JSON lines files of decisions or outcomes.")],
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    table: Annotated[TableKind, typer.Option(help="What the files hold; auto looks at the columns.")] = TableKind.auto,
    create: Annotated[bool, typer.Option(help="Create the store if it does not exist.")] = False,
) -> None:
    """Check files against the spec's contract and add them to the store; bad rows go to quarantine."""
    from drivetrain.data import ingest_decisions, ingest_outcomes, open_store, read_rows
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded, create=create)
    salt = os.environ.get(PII_SALT_ENV)
    for path in files:
        start = time.perf_counter()
        with console.status(f"reading {path}"):
            raw = read_rows(path)
        kind = table.value if table is not TableKind.auto else _detect(raw.frame.columns, path)
        with console.status(f"checking and storing {raw.rows_in} {kind} rows from {path}"):
            if kind == "decisions":
                report = ingest_decisions(target, raw, pii_salt=salt)
            else:
                report = ingest_outcomes(target, raw)
        console.print(f"{report.summary()} ({time.perf_counter() - start:.1f}s)")
        for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            console.print(f"  quarantined {count}: {reason}")
        if report.ignored_columns:
            console.print(f"  columns not in the contract, not stored: {list(report.ignored_columns)}")


def _detect(columns: pd.Index, path: Path) -> str:
    names = set(columns)
    if "event_id" in names:
        return "outcomes"
    if "request_id" in names and "propensity" in names:
        return "decisions"
    raise UsageError(
        f"could not tell what {str(path)!r} holds: decisions need `request_id` and `propensity`, outcomes need"
        f" `event_id`; got columns {sorted(names)} (or pass --table)"
    )


@app.command()
def join(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    out: Annotated[Path, typer.Option(help="Parquet file for the training table.")],
    as_of: Annotated[str | None, typer.Option(help="Evaluate as of this UTC time (default: now).")] = None,
) -> None:
    """Write the training table: mature decisions with their outcomes inside the horizon."""
    import pyarrow.parquet as pq

    from drivetrain.data import open_store, training_table
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    table, report = training_table(open_store(store, loaded), _parse_time(as_of, "as_of"))
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    console.print(report.summary())
    console.print(f"wrote {table.num_rows} rows to {out}")


@app.command()
def summary(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    as_of: Annotated[str | None, typer.Option(help="Outcome rates as of this UTC time (default: now).")] = None,
) -> None:
    """Print what the store holds: rows, actions, propensities, outcome rates per action, quarantine."""
    from drivetrain.data import open_store
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    _print_summary(open_store(store, loaded), _parse_time(as_of, "as_of"))


def _print_summary(store: object, as_of: datetime) -> None:
    from drivetrain.data import Store, summarize

    assert isinstance(store, Store)
    result = summarize(store, as_of)
    console.print("rows: " + ", ".join(f"{k} {v}" for k, v in result.tables.items()))
    console.print(result.join.summary())
    table = Table(title="decisions and mature outcome means per action")
    for column in ["action", "decisions", "holdout", "propensity min/mean/max", "mature", *store.spec.outcomes]:
        table.add_column(column, justify="left" if column == "action" else "right")
    for r in result.actions.to_dict("records"):
        props = "-" if pd.isna(r["p_mean"]) else f"{r['p_min']:.3f}/{r['p_mean']:.3f}/{r['p_max']:.3f}"
        table.add_row(str(r["action_id"]), str(r["decisions"]), str(r["holdout"]), props, str(r["mature"]),
                      *("-" if pd.isna(r[o]) else f"{r[o]:.3f}" for o in store.spec.outcomes))
    console.print(table)
    if len(result.quarantine):
        q = Table(title="quarantine")
        for column in ("table", "rule", "rows"):
            q.add_column(column)
        for r in result.quarantine.to_dict("records"):
            q.add_row(str(r["table_name"]), str(r["rule"]), str(r["rows"]))
        console.print(q)
    else:
        console.print("quarantine: empty")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory of the demo (replaced).")] = Path("demo-out"),
    users: Annotated[int, typer.Option(min=100, help="Users in the twin's logged population.")] = 50_000,
    seed: Annotated[int, typer.Option(help="Seed of the twin.")] = 0,
) -> None:
    """Run the main job on the embedded default: twin logs -> ingest (with a partner's faulty export) -> summary."""
    from drivetrain.demo import run_demo

    if out.exists():
        shutil.rmtree(out)
    run_demo(out, users=users, seed=seed, console=console)


def main() -> None:
    try:
        app()
    except DrivetrainError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
