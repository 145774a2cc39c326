"""The ``drivetrain`` command: parses arguments, calls the public API, formats the output.

Every input mistake (spec, file, argument) ends with a message naming the field, the expectation and
what arrived, and exit code 2; no traceback reaches the user for it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from importlib import resources
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Annotated

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from drivetrain.clock import SystemClock
from drivetrain.errors import DataError, DrivetrainError, UsageError

if TYPE_CHECKING:
    from drivetrain.adapt import EmbeddedRegistry
    from drivetrain.evaluate import Effect
    from drivetrain.evaluate import Scope as EvaluationScope
    from drivetrain.model import OutcomeModel
    from drivetrain.policy import Policy
    from drivetrain.spec import Spec

app = typer.Typer(
    name="drivetrain",
    help="Decision-making data products: objective, levers, model assembly line, closed loop.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
twin_app = typer.Typer(help="Digital twins with known ground truth.", no_args_is_help=True)
app.add_typer(twin_app, name="twin")


def _print_version(value: bool) -> None:
    if value:
        from drivetrain import __version__

        print(f"drivetrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Decision-making data products: objective, levers, model assembly line, closed loop."""
# Output that is not a terminal (a pipe, a file, a CI log) is as wide as $COLUMNS says, else 200 columns, so
# that tables are never cut to fit an 80-column default that no reader has.
_WIDTH = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "") or 0) or 200
console = Console(markup=False, highlight=False, width=_WIDTH)
err = Console(stderr=True, markup=False, highlight=False, width=_WIDTH)

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
        moment = pd.Timestamp(datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text))
    except ValueError:
        raise UsageError(f"`{name}` must be an ISO 8601 time such as 2026-02-01T00:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    parsed = moment.to_pydatetime().astimezone(UTC)
    now = SystemClock().now()
    if name == "as_of" and parsed > now:  # rows received later do not exist yet: they would count as absent, not as late
        raise UsageError(f"`as_of` must not be later than now ({now.isoformat()}), got {text!r}: a decision not mature "
                         "by now would be counted as mature with the outcomes it has so far")
    return parsed


def _load_policy(directory: Path, flag: str) -> Policy:
    """The policy (or fitted model) in ``directory``, named by the option it came from when it is not one."""
    from drivetrain.policy import Policy

    if not directory.is_dir():
        raise UsageError(f"`--{flag}` must be a directory written by `drivetrain fit` or `drivetrain optimize`, got "
                         f"{str(directory)!r}, which {'is a file' if directory.exists() else 'does not exist'}")
    return Policy.load(directory)


def _policy_for(spec: Spec, directory: Path, flag: str) -> Policy:
    """The policy (or fitted model) in ``directory``, which must have been built with ``spec``: the whole spec
    for a policy, the parts it models (``MODEL_PARTS``) for a fitted model, which any objective, constraint,
    guardrail, alert or serving setting may then plan with."""
    from drivetrain.spec import MODEL_PARTS

    loaded = _load_policy(directory, flag)
    if flag == "model":
        if loaded.spec.model_hash != spec.model_hash:
            raise UsageError(f"`--model` must be fitted under a spec that agrees with this one on {', '.join(MODEL_PARTS)}"
                             f" (model hash {spec.model_hash}), got one fitted with model hash {loaded.spec.model_hash} (its spec"
                             f" is {directory / 'spec.yaml'}): refit, or pass that spec")
        return loaded
    if loaded.spec.hash != spec.hash:
        raise UsageError(f"`--{flag}` must be built with this spec (hash {spec.hash}), got one built with "
                         f"{loaded.spec.hash} (its spec is {directory / 'spec.yaml'}): refit, or pass that spec")
    return loaded


@app.command()
def validate(spec: Annotated[Path, typer.Argument(help="The spec file (drivetrain.yaml).")]) -> None:
    """Check a spec: exit 0 when valid, else print every problem and exit 2. Personal fields are rehearsed
    end to end on a sample value (service, batch, store, quarantine) with the key in DRIVETRAIN_PII_KEY."""
    import secrets

    from drivetrain.data import PII_KEY_ENV, PersonalKey, rehearse_personal
    from drivetrain.spec import format_duration, load_spec

    loaded = load_spec(spec)
    console.print(
        f"ok {spec}: {len(loaded.action_space)} actions over levers {list(loaded.levers)},"
        f" {len(loaded.outcomes)} outcomes, {len(loaded.features)} context features,"
        f" horizon {format_duration(loaded.horizon)}, spec hash {loaded.hash}, feature version {loaded.feature_version}"
    )
    if not loaded.personal_features:
        return
    key = PersonalKey.from_environ()
    if key is None:
        console.print(f"warning: {PII_KEY_ENV} is not set: ingest, decide and serve refuse this spec without it; "
                      "the personal fields are rehearsed with a one-time key")
    rehearsals = rehearse_personal(loaded, key or PersonalKey(secrets.token_hex(32).encode()))
    for r in rehearsals:
        console.print(f"personal {r.name} ({r.kind}): sample {r.sample!r} -> {r.pseudonym} in the service, batch decisions and "
                      f"the store alike: {'yes' if r.paths_agree else 'NO'}; found in clear in the store, quarantine or "
                      f"reasons: {', '.join(r.found_in_clear) or 'nowhere'}")
    failed = [r.name for r in rehearsals if not r.ok]
    if failed:
        raise DataError(f"personal fields {failed} must be kept only as their pseudonyms, got the rehearsal results above")


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
    name = re.sub(r"\W+", "_", directory.resolve().name).strip("_") or "my_product"
    if not name[0].isalpha():
        name = f"product_{name}"
    template = template.replace("name: my_product ", f"name: {name} ", 1)
    target.write_text(template, encoding="utf-8")
    spec = load_spec(target)
    ParquetStore(directory / "store", spec, create=True)
    (directory / "README.md").write_text(_INIT_README.format(name=spec.name), encoding="utf-8")
    console.print(f"created {target}, {directory / 'store'} and {directory / 'README.md'}; next: edit the spec, then `drivetrain validate {target}`")


_INIT_README = """# {name}

A drivetrain data product: `drivetrain.yaml` says what it decides and how success is measured, `store/`
keeps every decision and outcome. Every command below prints its options with `--help`; the spec's
comments say what each field means. Personal fields are hashed with the key in `DRIVETRAIN_PII_KEY`:
set it (a long random string, kept out of the spec and of the store) before you ingest, decide or serve.

1. Describe the product in `drivetrain.yaml` (objective and horizon, outcome components, levers and the
   control action, budgets, caps and guardrails, the context contract), then check it:
   `drivetrain validate drivetrain.yaml`.
2. Load a randomized log of decisions (with their propensities) and the outcome events, as Parquet, CSV or
   JSON lines; rows that break the contract go to the store's quarantine with their reason:
   `drivetrain ingest --spec drivetrain.yaml --store store decisions.csv outcomes.csv`.
   A file without `received_at` counts as received now: give it the time the rows really arrived if you
   will evaluate the past with `--as-of`.
3. See what arrived: `drivetrain summary --spec drivetrain.yaml --store store`.
4. Learn how the levers move each outcome: `drivetrain fit --spec drivetrain.yaml --store store --out model`.
5. Ask what-if questions off-line: `drivetrain simulate --spec drivetrain.yaml --store store --policy model
   --scenario "offer=coupon,amount=5"`.
6. Plan the policy under the constraints: `drivetrain optimize --spec drivetrain.yaml --store store
   --model model --out policy` (budgets and guardrails may change after fitting, without a refit).
7. Decide: in batch with `drivetrain decide --policy policy --input contexts.csv --output decisions.parquet`,
   or as a service with `drivetrain serve --spec drivetrain.yaml --policy policy --log-dir log --store store`.
8. Close the loop: `drivetrain evaluate`, `drivetrain monitor` and `drivetrain report` on the store.
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
    from drivetrain.twin import NBOOTwin, nboo_spec_yaml

    twin = NBOOTwin(horizon_days=horizon_days, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    spec_text = nboo_spec_yaml(horizon_days)
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


def _write(frame: pd.DataFrame, path: Path, fmt: FileFormat) -> None:
    if fmt is FileFormat.parquet:
        frame.to_parquet(path, index=False)
    elif fmt is FileFormat.csv:
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso", date_unit="us")


@app.command()
def ingest(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    files: Annotated[list[Path] | None, typer.Argument(help="Parquet, CSV or JSON lines files of decisions or outcomes.")] = None,
    table: Annotated[TableKind, typer.Option(help="What the files hold; auto looks at the columns.")] = TableKind.auto,
    create: Annotated[bool, typer.Option(help="Create the store if it does not exist.")] = False,
    logged: Annotated[bool, typer.Option(help="The decision files are a historic randomized log: they train models "
                                              "and never count in an evaluation (assignment `logged`).")] = False,
    undo: Annotated[str | None, typer.Option(help="Undo the ingest with this id (printed by each ingest): remove what it "
                                                  "stored; outcomes its decisions had claimed wait again.")] = None,
) -> None:
    """Check files against the spec's contract and add them to the store; bad rows go to quarantine.

    Each file's ingest gets an id, kept on every row it stored; `--undo ID` takes them out again. A file
    exported by `drivetrain quarantine export` and corrected releases the quarantined rows it replaces."""
    from drivetrain.data import ingest_decisions, ingest_outcomes, open_store, personal_key, read_rows, undo_ingest
    from drivetrain.spec import load_spec

    if undo is not None:
        if files:
            raise UsageError(f"`--undo` takes no files, got {[str(f) for f in files]}: undo first, then ingest them")
        undone = undo_ingest(open_store(store, load_spec(spec)), undo)
        console.print(undone.summary())
        return
    if not files:
        raise UsageError("`FILES` must name at least one file to ingest (or pass `--undo ID`), got none")
    loaded = load_spec(spec)
    key = personal_key(loaded)  # refused here, before any file is read, when personal fields have no key
    target = open_store(store, loaded, create=create)
    rejected: list[str] = []
    batches = []
    for path in files:  # every file is read and recognized before anything is stored: a bad one stores none
        start = time.perf_counter()
        with console.status(f"reading {path}"):
            raw = read_rows(path)
        batches.append((path, raw, table.value if table is not TableKind.auto else _detect(raw.frame.columns, path), time.perf_counter() - start))
    for path, raw, kind, read_s in batches:
        start = time.perf_counter() - read_s
        with console.status(f"checking and storing {raw.rows_in} {kind} rows from {path}"):
            if kind == "decisions":
                if logged:
                    raw = dataclasses.replace(raw, frame=raw.frame.assign(assignment="logged"))
                report = ingest_decisions(target, raw, pii_key=key)
            else:
                report = ingest_outcomes(target, raw)
        console.print(f"{report.summary()} ({time.perf_counter() - start:.1f}s)")
        console.print(f"  ingest id {report.ingest_id} (undo: drivetrain ingest --undo {report.ingest_id} --spec {spec} --store {store})")
        for reason, count in sorted(report.reasons.items(), key=lambda kv: -kv[1]):
            console.print(f"  quarantined {count}: {reason}")
        if report.quarantined:
            console.print(f"  correct them: drivetrain quarantine export --spec {spec} --store {store} --table {kind} --out FILE")
        if report.ignored_columns:
            console.print(f"  columns not in the contract, not stored: {list(report.ignored_columns)}")
        if kind == "decisions" and not logged and "assignment" not in raw.frame.columns and report.accepted:
            console.print(f"  note: {path} has no `assignment` column, so its {report.accepted} decisions count as the policy arm "
                          "in `evaluate`, `monitor` and `report`; a historic randomized log is ingested with --logged "
                          "(it then trains and is simulated on, and never counts as what a policy did)")
        if report.quarantined and not report.accepted and not report.duplicates:
            rejected.append(str(path))
    if rejected:  # the rows are kept in quarantine, but a file of which nothing could be stored is an input mistake
        raise UsageError(f"every row of {rejected} was quarantined (reasons above; the rows are in the store's quarantine): "
                         "check the file against the spec's contract")


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


quarantine_app = typer.Typer(help="Read the quarantine, export its rows for correction (`drivetrain ingest` takes "
                                   "them back and releases them).", no_args_is_help=True)
app.add_typer(quarantine_app, name="quarantine")


class QuarantineTable(str, Enum):
    decisions = "decisions"
    outcomes = "outcomes"


@quarantine_app.command("list")
def quarantine_list(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    table: Annotated[QuarantineTable | None, typer.Option(help="Only rows of this table.")] = None,
    source: Annotated[str | None, typer.Option(help="Only rows whose source (file) contains this text.")] = None,
    since: Annotated[str | None, typer.Option(help="Only rows quarantined at or after this UTC time.")] = None,
    rows: Annotated[int, typer.Option(min=0, help="Also show the first N rows (id, row number, reason, payload).")] = 0,
) -> None:
    """Quarantined rows by table, source and rule: how many are open, released (stored after a correction)
    or superseded (sent again and quarantined again)."""
    from drivetrain.data import open_store, quarantine_counts, quarantine_rows
    from drivetrain.spec import load_spec

    target = open_store(store, load_spec(spec))
    since_at = None if since is None else _parse_time(since, "since")
    kind = None if table is None else table.value
    counts = quarantine_counts(target, table=kind, source=source, since=since_at)
    if counts.empty:
        console.print("quarantine: no rows" + (" match" if table or source or since else ""))
        return
    total = {c: int(counts[c].sum()) for c in ("rows", "open", "released", "superseded")}
    console.print(f"quarantine: {total['rows']} rows, {total['open']} open, {total['released']} released,"
                  f" {total['superseded']} superseded (quarantined again)")
    grid = Table(title="quarantined rows by table, source and rule")
    for column in ("table", "source", "rule", "rows", "open", "released", "superseded"):
        grid.add_column(column, justify="right" if column in total else "left", overflow="fold")
    for r in counts.to_dict("records"):
        grid.add_row(str(r["table_name"]), str(r["source"]), str(r["rule"]), *(str(int(r[c])) for c in total))
    console.print(grid)
    if rows:
        first = quarantine_rows(target, table=kind, source=source, since=since_at, limit=rows)
        shown = Table(title=f"first {len(first)} rows (personal values as their pseudonyms)")
        for column in ("quarantine id", "table", "row", "status", "reason", "payload"):
            shown.add_column(column, overflow="fold")
        for r in first.to_dict("records"):
            shown.add_row(str(r["quarantine_id"]), str(r["table_name"]), str(r["row_number"]), str(r["status"]),
                          str(r["reason"]), str(r["payload"]))
        console.print(shown)


@quarantine_app.command("export")
def quarantine_export(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    table: Annotated[QuarantineTable, typer.Option(help="Which table's rows.")],
    out: Annotated[Path, typer.Option(help="The file to write: .csv, .parquet or .jsonl.")],
    source: Annotated[str | None, typer.Option(help="Only rows whose source (file) contains this text.")] = None,
    reason_contains: Annotated[str | None, typer.Option(help="Only rows whose reason contains this text.")] = None,
    since: Annotated[str | None, typer.Option(help="Only rows quarantined at or after this UTC time.")] = None,
    include_closed: Annotated[bool, typer.Option(help="Also rows already released or superseded.")] = False,
) -> None:
    """Write open quarantined rows as their original columns plus `quarantine_id` and `quarantine_reason`;
    correct the file and give it to `drivetrain ingest`, which releases each row it stores."""
    from drivetrain.data import export_quarantine, open_store
    from drivetrain.spec import load_spec

    target = open_store(store, load_spec(spec))
    n = export_quarantine(target, out, table=table.value, source=source, reason_contains=reason_contains,
                          since=None if since is None else _parse_time(since, "since"), include_closed=include_closed)
    console.print(f"wrote {n} quarantined {table.value} rows to {out}")
    if n:
        console.print(f"  correct them, then: drivetrain ingest {out} --spec {spec} --store {store}")


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


def _pairs(items: list[str] | None, name: str, names: list[str]) -> dict[str, float]:
    """``--NAME KEY=NUMBER`` options as a mapping; each KEY must be one of ``names``."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise UsageError(f"`--{name}` must look like NAME=NUMBER, got {item!r}") from None
        if key.strip() not in names:
            raise UsageError(f"`--{name}` must name one of the spec's {name}s {names}, got {key.strip()!r} in {item!r}")
    return out


@app.command()
def fit(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    out: Annotated[Path, typer.Option(help="Directory for the fitted model (a policy artifact without prices).")],
    as_of: Annotated[str | None, typer.Option(help="Train on decisions mature as of this UTC time (default: now).")] = None,
    since: Annotated[str | None, typer.Option(help="Only decisions made at or after this UTC time.")] = None,
    until: Annotated[str | None, typer.Option(help="Only decisions made before this UTC time (a window of the log).")] = None,
    learner: Annotated[str, typer.Option(help="s (one model, action as input) or t (one model per action).")] = "s",
    folds: Annotated[int, typer.Option(help="Cross-fitting folds (0: none).")] = 3,
    refit: Annotated[bool, typer.Option(help="After cross-fitting, fit one model per component on every row to "
                                             "predict and serve (--no-refit: the mean of the fold models, a little "
                                             "better decisions for three times the trees a decision runs).")] = True,
    trees: Annotated[int, typer.Option(min=1, help="Boosting rounds of each model's context stage (rate 0.1).")] = 150,
    threads: Annotated[int, typer.Option(min=1, help="Models fitted side by side, one LightGBM thread each.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of folds and models.")] = 0,
) -> None:
    """Fit the Modeler on the training table and save it; print effects versus control with intervals."""
    from drivetrain.assembly import fit_model
    from drivetrain.data import open_store
    from drivetrain.model import OutcomeModel
    from drivetrain.policy import Policy
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    model = OutcomeModel(learner=learner, n_folds=folds, n_estimators=trees, num_threads=threads, seed=seed,  # type: ignore[arg-type]
                         refit=refit)
    started = time.perf_counter()

    def progress(done: int, total: int, what: str) -> None:
        line = f"fitting model {done + 1} of {total}: {what} ({time.perf_counter() - started:.0f} s so far)"
        if console.is_terminal:
            status.update(line)
        else:  # a scheduler's log gets one line per model
            err.print(line)

    with console.status("building the training table") as status:
        model, table, report = fit_model(open_store(store, loaded), _parse_time(as_of, "as_of"), model, progress=progress,
                                         since=None if since is None else _parse_time(since, "since"),
                                         until=None if until is None else _parse_time(until, "until"))
    console.print(report.summary())
    decided = pd.to_datetime(table["decided_at"], utc=True)
    window = {"first_decided_at": decided.min().isoformat(), "last_decided_at": decided.max().isoformat()}
    if since is not None or until is not None:  # the summary counts every mature decision; say which ones trained
        console.print(f"trained on the {len(table)} mature decisions made from {window['first_decided_at']} to "
                      f"{window['last_decided_at']} (--since {since or '-'}, --until {until or '-'})")
    policy = Policy.from_model(loaded, model, {}, metadata={"trained_on": report.summary(), "rows": len(table), "trained_window": window})
    policy.save(out)
    effects = model.effect_interval(table, cluster=table["unit_id"] if "unit_id" in table else None)
    t = Table(title=f"effect on {loaded.model.objective.name} per unit versus control (doubly robust, 95% interval)")
    for column in ("action", "effect", "interval"):
        t.add_column(column, justify="left" if column == "action" else "right")
    for r in effects.to_dict("records"):
        t.add_row(str(r["action_id"]), f"{r['effect']:+.3f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    console.print(t)
    console.print(f"saved model {policy.version} to {out}")


def _population(spec: Spec, contexts: Path | None, store: object | None, as_of: str | None, purpose: str) -> pd.DataFrame:
    """The units to plan or explain on: a contexts file typed by the contract (a CSV's cells are text), else
    the training table of the store as of ``as_of``."""
    from drivetrain.data import check_contexts, read_rows, training_table

    if contexts is not None:
        raw = read_rows(contexts).frame
        parsed, reasons = check_contexts(spec, raw)
        broken = pd.Series(reasons).dropna()
        if len(broken):
            raise UsageError(f"`contexts` rows must satisfy the spec's context contract: {len(broken)} of {len(raw)} "
                             f"do not, e.g. row {int(broken.index[0]) + 1}: {broken.iloc[0]}")
        population = pd.concat([raw.drop(columns=[c for c in parsed.columns if c in raw]).reset_index(drop=True),
                                parsed.reset_index(drop=True)], axis=1)
    elif store is not None:
        population = training_table(store, _parse_time(as_of, "as_of"))[0].to_pandas()  # type: ignore[arg-type]
    else:
        raise UsageError("pass --contexts FILE, or --store (and --as-of) for the units of the training table")
    if population.empty:
        raise UsageError(f"the population to {purpose} is empty: pass --contexts or ingest decisions first")
    return population


@app.command()
def optimize(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory (population and baselines).")],
    model: Annotated[Path, typer.Option(help="Directory written by `drivetrain fit`.")],
    out: Annotated[Path, typer.Option(help="Directory for the policy artifact.")],
    as_of: Annotated[str | None, typer.Option(help="Population: the training table as of this UTC time (default: now).")] = None,
    contexts: Annotated[Path | None, typer.Option(help="Population file instead (unit_id and the context features).")] = None,
    budget: Annotated[list[str] | None, typer.Option(help="Override a budget: NAME=MAX_PER_UNIT (repeatable).")] = None,
    guardrail: Annotated[list[str] | None, typer.Option(help="Override a guardrail bound: NAME=BOUND (repeatable).")] = None,
    guardrail_by: Annotated[list[str] | None, typer.Option(help="Keep a guardrail in every value of a cohort feature, not only "
                                                                "overall: NAME=FEATURE, or FEATURE for every guardrail (repeatable).")] = None,
    pessimism: Annotated[float, typer.Option(min=0, help="Plan on bounds z model spreads away (0: on the means).")] = 0.0,
    margin: Annotated[float, typer.Option(min=0, max=0.99, help="Plan every limit this share of itself to its safe side "
                                                                "(0.05: budgets and caps at 95%), room for noise.")] = 0.0,
) -> None:
    """Choose lever settings per unit under the budgets, guardrails and caps; save the priced policy."""
    from drivetrain.assembly import per_program_unit, plan_policy, write_policy_baselines
    from drivetrain.data import open_store
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    if guardrail_by:
        from drivetrain.spec import with_guardrails_by

        by = {}
        for item in guardrail_by:
            name, sep, feature = item.rpartition("=")
            by[name.strip() if sep else "*"] = feature.strip()
        loaded = with_guardrails_by(loaded, by)
    fitted = _policy_for(loaded, model, "model")
    target = open_store(store, loaded)
    population = _population(loaded, contexts, target, as_of, "optimize on")
    with console.status(f"optimizing {len(population)} units"):
        plan = plan_policy(loaded, fitted.model, population, budget_overrides=_pairs(budget, "budget", [b.name for b, _ in loaded.budgets]),
                           guardrail_overrides=_pairs(guardrail, "guardrail", [g.name for g, _ in loaded.guardrails]), pessimism=pessimism or None,
                           margin=margin,
                           metadata={**fitted.metadata, "population": len(population), "pessimism": pessimism, "margin": margin})
    plan.policy.save(out)
    written = write_policy_baselines(target, plan, population, created_at=SystemClock().now())
    a = plan.assignment
    # the problem counts units outside the program as zero; the table speaks per program unit, as the spec does
    program = float(np.mean(loaded.eligible_units({n: population[n].to_numpy() for n in loaded.features if n in population}))) or 1.0
    t = Table(title=f"plan on {len(population)} units ({program:.1%} in the program): predicted mean per program unit"
                    " (as served: with the holdout and exploration)")
    for column in ("constraint", "plan", "as served", "limit", "price"):
        t.add_column(column, justify="left" if column == "constraint" else "right")
    # per program unit (a guardrail of one cohort value: per program unit of that value), as the spec speaks
    planned, served = per_program_unit(loaded, population, a.usage), per_program_unit(loaded, population, plan.served)
    limits = per_program_unit(loaded, population, {c.name: c.limit for c in plan.problem.constraints})
    bounds = {c.name: f"{'<=' if c.sense == '<=' else '>='} {limits[c.name]:.6g}" for c in plan.problem.constraints}
    bounds.update({c.name: f"share <= {c.max_share / program:.6g}" for c in plan.problem.caps})
    for name in a.usage:
        t.add_row(name, f"{planned[name]:.4f}", f"{served[name]:.4f}", bounds.get(name, ""), f"{a.multipliers.get(name, 0.0):.4f}")
    console.print(t)
    shares = pd.Series(np.asarray(loaded.action_space.ids, dtype=object)[a.action]).value_counts(normalize=True)
    console.print(f"predicted {loaded.model.objective.name} per unit {a.objective:.4f}; actions: "
                  + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    split = plan.policy.tie_split
    if split is not None:
        console.print(f"tied units split per request: {split.low_share:.1%} at prices x{1 - split.band:g}, the rest at x{1 + split.band:g}")
    console.print(f"saved policy {plan.policy.version} to {out}; wrote {written} baseline columns to the store")


@app.command()
def simulate(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store with the logged (randomized) decisions and outcomes.")],
    policy: Annotated[Path, typer.Option(help="The policy to evaluate; its models are the reward model of the estimates.")],
    scenario: Annotated[list[str] | None, typer.Option(help="What-if: lever=value,... for everyone, a lever left out at its "
                                                            "control value (repeatable).")] = None,
    where: Annotated[str | None, typer.Option(help="Restrict the scenarios to units where this formula holds.")] = None,
    as_of: Annotated[str | None, typer.Option(help="Evaluate on decisions mature as of this UTC time (default: now).")] = None,
    since: Annotated[str | None, typer.Option(help="Only decisions made at or after this UTC time: a window the policy was not fitted on.")] = None,
    estimator: Annotated[str, typer.Option(help="Estimator of the constraints and guardrails, and whose interval the objective's table shows (it shows every estimator).")] = "DR",
) -> None:
    """Off-policy estimates, from the logged decisions, of the policy, control and what-if scenarios."""
    from drivetrain.assembly import evaluate_on_logs, fixed_action
    from drivetrain.data import open_store, training_table
    from drivetrain.simulate import default_estimators
    from drivetrain.spec import load_spec, mean_constraints

    if estimator not in (known := default_estimators(with_model=True)):
        raise UsageError(f"`estimator` must be one of {sorted(known)}, got {estimator!r}")
    loaded = load_spec(spec)
    table, report = training_table(open_store(store, loaded), _parse_time(as_of, "as_of"))
    frame = table.to_pandas()
    if since is not None:
        frame = frame[frame["decided_at"] >= pd.Timestamp(_parse_time(since, "since"))].reset_index(drop=True)
    if frame.empty:
        raise UsageError(f"no mature decisions to evaluate on{' since ' + since if since else ''}: {report.summary()}")
    if where is not None and not scenario:
        raise UsageError(f"`--where` restricts the scenarios, so it needs at least one `--scenario`, got none with --where {where!r}")
    segment = None
    if where is not None:
        from drivetrain.spec import compile_formula

        condition = compile_formula(where, variables=set(loaded.features), field="--where")
        segment = np.broadcast_to(np.asarray(condition({n: frame[n].to_numpy() for n in loaded.features if n in frame}),
                                             dtype=bool), (len(frame),))
        matched = int(np.sum(segment))
        console.print(f"--where {where!r} holds for {matched} of the {len(frame)} decisions evaluated")
        if matched == 0:
            console.print("warning: so every scenario is control for all of them")
    policies: dict[str, object] = {"control": fixed_action(loaded, loaded.control.values)}
    for text in scenario or []:
        values: dict[str, object] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise UsageError(f"`scenario` must look like lever=value,lever=value, got {text!r}")
            values[key.strip()] = value.strip()
        policies[text + (f" where {where}" if where else "")] = fixed_action(loaded, values, where=where)
    fitted = _policy_for(loaded, policy, "policy")
    policies = {f"policy {fitted.version}": fitted.action_distribution, **policies}
    window = fitted.metadata.get("trained_window")
    if isinstance(window, dict) and {"first_decided_at", "last_decided_at"} <= set(window):
        decided = pd.to_datetime(frame["decided_at"], utc=True)
        last = pd.Timestamp(window["last_decided_at"])
        seen = int(((decided >= pd.Timestamp(window["first_decided_at"])) & (decided <= last)).sum())
        if seen:
            later = int((pd.to_datetime(table.column("decided_at").to_pandas(), utc=True) > last).sum())
            console.print(f"warning: {seen} of {len(frame)} decisions evaluated are from the window the policy's models were fitted on "
                          f"({window['first_decided_at']} to {window['last_decided_at']}), so the policy's estimates are optimistic; "
                          + (f"--since {(last + pd.Timedelta(microseconds=1)).isoformat()} evaluates on the {later} later mature "
                             "decisions only" if later else "no mature decision is later than that window yet: evaluate again once "
                             "decisions made after it have matured"))
    with console.status(f"evaluating {len(policies)} policies on {len(frame)} logged decisions"):
        result = evaluate_on_logs(fitted.model, frame, policies, fitted_on_table=False, constraint_estimator=estimator)  # type: ignore[arg-type]
    console.print(report.summary())
    labels = {name: ("policy" if i == 0 else "control" if name == "control" else f"scenario {i - 1}") for i, name in enumerate(policies)}
    for name, label in labels.items():
        if label.startswith("scenario") or label == "policy":
            console.print(f"{label}: {name}")
    estimators = list(next(iter(result.objective.values())))
    t = Table(title=f"{loaded.model.objective.name} per unit, off-policy estimates from the logs ({estimator}: 95% interval)")
    t.add_column("policy")
    for name in estimators:
        t.add_column(name, justify="right")
    for name, label in labels.items():
        by = result.objective[name]
        t.add_row(label, *(f"{by[e].value:.3f}" + (f" [{by[e].ci_low:.3f}, {by[e].ci_high:.3f}]" if e == estimator else "")
                           for e in estimators))
    console.print(t)
    from drivetrain.assembly import paired_differences

    segments = {name: segment for name in policies if segment is not None and labels[name].startswith("scenario")}
    differences = paired_differences(fitted.model, frame, policies, segments=segments, fitted_on_table=False)  # type: ignore[arg-type]
    d = Table(title=f"difference against control in {loaded.model.objective.name} per unit (DR, paired on the same decisions; "
                    "95% interval, clustered by unit)")
    for column in ("policy", "per unit of", "decisions", "difference", "interval"):
        d.add_column(column, justify="left" if column in ("policy", "per unit of") else "right")
    for name, diff in differences.items():
        d.add_row(labels[name], f"where {where}" if name in segments else "all", str(diff.rows), f"{diff.difference:+.3f}",
                  f"[{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]")
    console.print(d)
    limits = {b.name: f"<= {b.max_per_unit:g}" for b, _ in loaded.budgets}
    limits.update({g.name: " and ".join(x for x in (f">= {g.min:g}" if g.min is not None else "", f"<= {g.max:g}" if g.max is not None else "") if x) for g, _ in loaded.guardrails})
    limits.update({cap.name: f"share <= {cap.max_share:g}" for cap, _ in loaded.caps})
    limits.update({t.name: f"{t.sense} {t.bound:g}" for t in mean_constraints(loaded) if t.cohort is not None and t.bound is not None})
    metrics = list(next(iter(result.constraints.values())))
    if metrics:
        c = Table(title=f"constraints and guardrails, mean per program unit ({estimator}; caps: the policy's share of their actions;"
                        " 95% interval)")
        c.add_column("policy")
        for m in metrics:
            c.add_column(f"{m} {limits.get(m, '')}", justify="right")
        for name, label in labels.items():
            by = result.constraints[name]
            c.add_row(label, *(f"{by[m].value:.4f} [{by[m].ci_low:.4f}, {by[m].ci_high:.4f}]" for m in metrics))
        console.print(c)
    for name in result.policies:
        said: set[str] = set()
        for e in (*result.objective[name].values(), *result.constraints[name].values()):
            if e.warnings and e.estimator not in said:
                said.add(e.estimator)
                console.print(f"warning ({labels[name]}, {e.estimator}): {'; '.join(e.warnings)}")


@app.command()
def decide(
    policy: Annotated[Path, typer.Option(help="The policy directory.")],
    input: Annotated[Path, typer.Option("--input", help="Contexts: unit_id, optional request_id, the features.")],
    output: Annotated[Path, typer.Option(help="Decisions file (.parquet, .csv or .jsonl) in the documented format.")],
) -> None:
    """Batch decisions for a file of contexts; rows that break the contract get the fallback action."""
    from drivetrain.data import personal_key, read_rows

    loaded = _load_policy(policy, "policy")
    key = personal_key(loaded.spec)
    raw = read_rows(input)
    missing = [c for c in ("unit_id", *loaded.spec.features) if c not in raw.frame.columns]
    if missing:  # a bad value falls back row by row; a column the export lacks is the file's mistake
        raise DataError(f"`input` must have a `unit_id` column and one per context feature of the policy's spec, missing {missing}, "
                        f"got columns {list(raw.frame.columns)}")
    decisions, fallbacks = loaded.decisions_table(raw.frame, now=SystemClock().now(), pii_key=key)
    fmt = {".parquet": FileFormat.parquet, ".csv": FileFormat.csv, ".jsonl": FileFormat.jsonl}.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"`output` must end in .parquet, .csv or .jsonl, got {output.name!r}")
    output.parent.mkdir(parents=True, exist_ok=True)
    _write(decisions, output, fmt)
    counts = decisions["assignment"].value_counts().to_dict()
    console.print(f"wrote {len(decisions)} decisions to {output} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
                  f"{fallbacks} rows broke the contract and got the fallback action (control in the holdout)")
    for reason, n in decisions["fallback_reason"].dropna().value_counts().head(10).items():
        console.print(f"  {n} rows: {reason}", markup=False, highlight=False)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}g}"


def _effect_row(label: str, e: Effect) -> list[str]:
    interval = "-" if e.low is None or e.high is None else f"[{e.low:+.4g}, {e.high:+.4g}]"
    diff = "-" if e.difference is None else f"{e.difference:+.4g}"
    return [label, _fmt(e.policy), _fmt(e.holdout), diff, interval]


def _scope(since: str | None, until: str | None, versions: list[str] | None) -> EvaluationScope:
    """The decisions an evaluation counts, from the command line's --since, --until and --policy-version."""
    from drivetrain.evaluate import Scope

    return Scope(since=None if since is None else _parse_time(since, "since"),
                 until=None if until is None else _parse_time(until, "until"), policy_versions=tuple(versions or ()))


def _guardrail_state(g: object, z: float) -> str:
    """BREACHED only when the policy arm's interval lies past the bound; a mean past it within the noise is
    said as such (a plan that sits on its bound lands on either side half of the time)."""
    e = g.effect  # type: ignore[attr-defined]
    if not g.breached or e.policy is None:  # type: ignore[attr-defined]
        return ""
    if e.policy_se is None:
        return " past the bound (no interval)"
    low, high = e.policy - z * e.policy_se, e.policy + z * e.policy_se
    if (g.max is not None and low > g.max) or (g.min is not None and high < g.min):  # type: ignore[attr-defined]
        return " BREACHED"
    return " past the bound, within the interval"


def _print_evaluation(evaluation: object, cohorts: bool) -> None:
    from drivetrain.evaluate import Evaluation

    assert isinstance(evaluation, Evaluation)
    s = evaluation.overall
    c = s.counts
    console.print(f"as of {evaluation.as_of.isoformat()}: {c.decisions} decisions = {c.mature} mature + {c.immature} immature"
                  f" (immature ones are not counted); {c.eligible} eligible; outcomes joined {c.outcomes_joined}, late"
                  f" {c.outcomes_late}, outside the horizon {c.outcomes_out_of_window}, of immature decisions"
                  f" {c.outcomes_of_immature}; waiting for a decision {evaluation.outcomes_waiting}, unattributed"
                  f" {evaluation.outcomes_unattributed}")
    table = Table(title=f"per eligible unit: policy arm ({s.policy_units} units) vs holdout ({s.holdout_units} units)")
    for column in ("figure", "policy", "holdout", "difference", f"{100 * evaluation.confidence:.0f}% interval"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_row(*_effect_row("north star (incremental objective)", s.north_star))
    for name, e in s.outcomes:
        table.add_row(*_effect_row(f"outcome {name}", e))
    z = float(NormalDist().inv_cdf(0.5 + evaluation.confidence / 2))
    for g in s.guardrails:
        bound = f"<= {g.max:g}" if g.max is not None else f">= {g.min:g}"
        table.add_row(*_effect_row(f"guardrail {g.name} ({bound}){_guardrail_state(g, z)}", g.effect))
    for b in s.budgets:
        what = f"cap {b.name} (share <= {b.max_per_unit:g})" if b.kind == "cap" else f"budget {b.name} (<= {b.max_per_unit:g} per unit)"
        table.add_row(*_effect_row(what, b.incremental))
    console.print(table)
    v = s.service
    sr = s.sample_ratio
    console.print(f"eligibility coverage {_fmt(s.eligibility_coverage)}, treated share {_fmt(s.treated_share)}; latency p50 {_fmt(v.latency_p50)}"
                  f" p95 {_fmt(v.latency_p95)} p99 {_fmt(v.latency_p99)} ms, fallback rate {_fmt(v.fallback_rate)}, error rate"
                  f" {_fmt(v.error_rate)}, cost per 1,000 decisions {_fmt(v.cost_per_1000)}; sample ratio: holdout share"
                  f" {_fmt(sr.observed_share)} vs {sr.expected_share:g} (p = {_fmt(sr.p_value, 3)}){' MISMATCH' if sr.mismatch else ''}")
    for b in s.budgets:
        r = b.per_incremental_objective
        console.print(f"{b.name}: {_fmt(b.per_unit)} per unit, total {b.total:.6g} of {b.limit:.6g};"
                      f" per unit of incremental objective {_fmt(r.estimate)} [{_fmt(r.low)}, {_fmt(r.high)}]")
    if cohorts:
        t = Table(title="by cohort: north star and guardrails (policy arm)")
        for column in ("cohort", "units", "north star", "interval", *(g.name for g in s.guardrails)):
            t.add_column(column, justify="left" if column == "cohort" else "right")
        for name in evaluation.cohorts:
            for cs in evaluation.by_cohort(name):
                ns = cs.north_star
                t.add_row(f"{name}={cs.value}", str(cs.policy_units + cs.holdout_units),
                          "-" if ns.difference is None else f"{ns.difference:+.4g}",
                          "-" if ns.low is None else f"[{ns.low:+.4g}, {ns.high:+.4g}]",
                          *(f"{_fmt(g.effect.policy)}{' !' if g.breached else ''}" for g in cs.guardrails))
        console.print(t)


@app.command()
def evaluate(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    as_of: Annotated[str | None, typer.Option(help="Evaluate as of this time (ISO 8601, UTC); default now. Same T, same figures.")] = None,
    since: Annotated[str | None, typer.Option(help="Count only decisions made at or after this UTC time.")] = None,
    until: Annotated[str | None, typer.Option(help="Count only decisions made before this UTC time.")] = None,
    policy_version: Annotated[list[str] | None, typer.Option(help="Count only this policy version's decisions (repeatable).")] = None,
    cohorts: Annotated[bool, typer.Option(help="Also print every cohort value.")] = True,
    out: Annotated[Path | None, typer.Option(help="Write every figure of every slice (day, cohort) to .csv or .parquet.")] = None,
) -> None:
    """The KPI hierarchy as of a time: north star vs holdout, leading indicators, guardrails, budgets, SLOs, sample ratio."""
    from drivetrain.data import open_store
    from drivetrain.evaluate import evaluate as run_evaluation
    from drivetrain.spec import load_spec

    target = open_store(store, load_spec(spec))
    scope = _scope(since, until, policy_version)
    evaluation = run_evaluation(target, _parse_time(as_of, "as_of"), scope=scope)
    if scope.describe():
        console.print(f"counting decisions {scope.describe()}")
    _print_evaluation(evaluation, cohorts)
    if out is not None:
        frame = evaluation.to_frame()
        if out.suffix.lower() == ".csv":
            frame.to_csv(out, index=False)
        elif out.suffix.lower() == ".parquet":
            frame.to_parquet(out, index=False)
        else:
            raise UsageError(f"`out` must end in .csv or .parquet, got {out.name!r}")
        console.print(f"wrote {len(frame)} figures to {out}")


@app.command()
def monitor(
    spec: Annotated[Path, typer.Option(help="The spec file (its monitoring.alerts are the rules).")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    as_of: Annotated[str | None, typer.Option(help="Check as of this time (ISO 8601, UTC); default now.")] = None,
    window_days: Annotated[float, typer.Option(min=0.01, help="Drift window: the last N days of decisions received by --as-of (as the report measures it).")] = 1.0,
    policy_version: Annotated[str | None, typer.Option(help="Baselines to compare with; default: the version that made most decisions in the window.")] = None,
) -> None:
    """Evaluate, measure drift and judge the spec's alert rules; fired alerts are stored. Exit code 1 when one fired."""
    from drivetrain.data import open_store
    from drivetrain.evaluate import check_alerts, drift_as_of, store_alerts
    from drivetrain.evaluate import evaluate as run_evaluation
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded)
    moment = _parse_time(as_of, "as_of")
    evaluation = run_evaluation(target, moment)
    drift, _reason = drift_as_of(target, moment, days=window_days, version=policy_version)
    version = None if drift is None else drift.version
    alerts = check_alerts(loaded, evaluation=evaluation, drift=drift, store=target, as_of=moment)
    new = store_alerts(target, alerts, fired_at=SystemClock().now())
    ns = evaluation.overall.north_star
    console.print(f"as of {moment.isoformat()}: north star {_fmt(ns.difference)} [{_fmt(ns.low)}, {_fmt(ns.high)}];"
                  f" drift against {version or 'no baselines'}: {0 if drift is None else int(drift.table['flagged'].sum())} flagged rows;"
                  f" {len(loaded.model.monitoring.alerts)} rules")
    for alert in alerts:
        console.print(f"ALERT {alert.rule} ({alert.kind}): {alert.message}")
    console.print(f"{len(alerts)} alerts fired ({new} new in the store)" if alerts else "no alert fired")
    if alerts:
        raise typer.Exit(1)


@app.command()
def report(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    out: Annotated[Path, typer.Option(help="The HTML file to write (self-contained; opens offline).")] = Path("report.html"),
    as_of: Annotated[str | None, typer.Option(help="Report as of this time (ISO 8601, UTC); default now. Same T, same file.")] = None,
    drift_days: Annotated[float, typer.Option(min=0.01, help="Drift window: the last N days of decisions received by --as-of.")] = 1.0,
    since: Annotated[str | None, typer.Option(help="Count only decisions made at or after this UTC time.")] = None,
    until: Annotated[str | None, typer.Option(help="Count only decisions made before this UTC time.")] = None,
    policy_version: Annotated[list[str] | None, typer.Option(help="Count only this version's decisions (repeatable); one version is also "
                                                                  "the baselines drift compares with (default: the version that made most decisions in the window).")] = None,
    registry: Annotated[Path | None, typer.Option(help="The adaptation registry: adds which version was live when, each candidate's "
                                                       "gates with their figures, and the north star by version.")] = None,
) -> None:
    """Write the HTML report: north star by day, guardrails by cohort, drift, latency, budgets, alert timeline."""
    from drivetrain.data import open_store
    from drivetrain.report import write_report
    from drivetrain.spec import load_spec

    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"`out` must end in .html, got {out.name!r}")
    target = open_store(store, load_spec(spec))
    with console.status("evaluating and drawing"):
        path = write_report(target, as_of=_parse_time(as_of, "as_of"), out=out, drift_days=drift_days,
                            policy_version=policy_version[0] if policy_version and len(policy_version) == 1 else None,
                            scope=_scope(since, until, policy_version), registry=None if registry is None else _registry(registry))
    console.print(f"wrote the report to {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB, opens offline)")


class Fsync(str, Enum):
    always = "always"
    rotate = "rotate"
    never = "never"


TOKEN_ENV = "DRIVETRAIN_TOKEN"


@app.command()
def serve(
    spec: Annotated[Path, typer.Option(help="The spec file (its fallback action serves when the policy cannot).")],
    store: Annotated[Path, typer.Option(help="The store directory (decisions are compacted into it; outcomes go to it).")],
    policy: Annotated[Path | None, typer.Option(help="The policy directory to serve (or --registry).")] = None,
    registry: Annotated[Path | None, typer.Option(help="Serve the registry's --alias and follow it: a promotion or rollback "
                                                       "switches the served policy without a restart; following the champion, the challenger "
                                                       "in shadow or canary is served beside it.")] = None,
    alias: Annotated[str, typer.Option(help="The registry alias to follow (with --registry).")] = "champion",
    log_dir: Annotated[Path | None, typer.Option(help="Decision log segments; default: <store>-log next to the store.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    fsync: Annotated[Fsync, typer.Option(help="always: fsync each decision before its response (machine-crash safe); "
                                              "rotate: fsync when a segment closes; never: leave it to the kernel.")] = Fsync.rotate,
    logging: Annotated[bool, typer.Option(help="Log decisions (turn off only to measure the cost of logging).")] = True,
    segment_records: Annotated[int, typer.Option(min=1, help="Decisions per log segment before it rotates.")] = 10_000,
    segment_age: Annotated[float, typer.Option(min=0.1, help="Seconds before an open segment rotates.")] = 30.0,
    compact_every: Annotated[float, typer.Option(min=0.1, help="Seconds between compactions of closed segments into the store.")] = 30.0,
    backlog_segments: Annotated[int, typer.Option(min=1, help="More closed segments waiting than this (decision and outcome "
                                                             "logs) moves the compactor from niceness 19 to normal priority.")] = 20,
    backlog_age: Annotated[float, typer.Option(min=1, help="A closed segment waiting longer than this (seconds) does too.")] = 120.0,
    policy_root: Annotated[Path | None, typer.Option(help="Reload serves only policy directories inside it; default: the --policy's parent.")] = None,
    request_memory_mb: Annotated[float, typer.Option(min=1, help="Memory for remembered request ids and their answers (MiB).")] = 64,
    shutdown_timeout: Annotated[float, typer.Option(min=1, help="Seconds a graceful shutdown waits for requests in flight.")] = 10,
    header_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a connection may take to send a request's headers.")] = 10,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a request may take to send its body.")] = 10,
) -> None:
    """Serve the policy over HTTP (/v1/decide, /v1/outcomes, /v1/health, /v1/policy, /metrics, /v1/admin/reload).

    Write and admin endpoints need `Authorization: Bearer $DRIVETRAIN_TOKEN`; decide too when the spec's
    serving.decide_requires_token is true.
    """
    from drivetrain.data import open_store
    from drivetrain.serve import Limits, Service, ServiceConfig, create_app, run, settle_heap
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    follow = challenger = shadow_sink = price = None
    if (policy is None) == (registry is None):
        raise UsageError(f"give one of `--policy` (a policy directory) and `--registry` (follow its --alias), got "
                         f"{'both' if policy is not None else 'neither'}")
    if registry is not None:
        reg = _registry(registry)
        if reg.alias(alias) is None:
            raise UsageError(f"`--alias` {alias} of the registry {str(registry)!r} must name a version to serve, got none: "
                             "promote one first (`drivetrain promote` or `drivetrain adapt`)")

        def follow() -> Path | None:
            current = reg.alias(alias)
            return None if current is None else reg.artifact(current)

        def live_challenger() -> tuple[Path, str] | None:
            name = reg.alias("challenger")
            stage = reg.status(name) if name is not None else None
            return (reg.artifact(name), stage) if name is not None and stage in ("shadow", "canary") else None

        if alias == "champion":  # the champion's service also serves the challenger's shadow and canary
            challenger, shadow_sink = live_challenger, reg.log_shadow
        price = reg.price

        policy = follow()
        policy_root = policy_root or registry / "artifacts"
    assert policy is not None
    open_store(store, loaded, create=True)
    config = ServiceConfig(spec=loaded, spec_path=spec.resolve(), policy_dir=policy.resolve(), store_dir=store.resolve(),
                           log_dir=(log_dir or store.parent / f"{store.name}-log").resolve(), token=os.environ.get(TOKEN_ENV) or None,
                           fsync=fsync.value, segment_records=segment_records, segment_age_s=segment_age,
                           compact_every_s=compact_every, backlog_segments=backlog_segments, backlog_age_s=backlog_age, logging=logging, policy_root=policy_root.resolve() if policy_root else None,
                           request_memory_bytes=int(request_memory_mb * 2**20), limits=Limits(shutdown_s=shutdown_timeout, header_timeout_s=header_timeout,
                                                                                     body_timeout_s=body_timeout), follow=follow,
                           challenger=challenger, shadow_sink=shadow_sink, price=price)
    service = Service(config)
    health = service.health()
    err.print(f"serving {health['status']} policy {health['policy_version']} on http://{host}:{port}"
              + (f", following the registry's {alias}" if registry is not None else "")
              + (f" ({health['reason']})" if health["reason"] else ""))
    if service.recovered is not None and service.recovered.segments:
        r = service.recovered
        err.print(f"recovered {r.segments} log segments of stopped workers ({r.records} decisions and outcome rows; {r.torn_bytes} bytes of a torn last record set aside)")
    application = create_app(service)
    settle_heap()
    run(application, host, port, config.limits)


@app.command()
def compact(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    log_dir: Annotated[Path, typer.Option(help="The decision log directory of `drivetrain serve`.")],
    quiet: Annotated[bool, typer.Option(help="Print nothing when there is nothing to do.")] = False,
    nice: Annotated[int, typer.Option(min=0, max=19, help="Lower this process's CPU priority by N (the service "
                                                          "starts its compactor with 19, so decisions keep the CPU).")] = 0,
    follow: Annotated[bool, typer.Option(help="Stay up: compact on each line read from standard input and answer with "
                                              "one JSON line ({segments, rows, error}); stop at end of input. "
                                              "The service runs its compactor this way.")] = False,
    pass_segments: Annotated[int, typer.Option(min=1, help="With --follow: at most this many closed segments of each log "
                                                           "per request (a bounded pass; the service asks again).")] = 50,
) -> None:
    """Move the closed decision log segments into the store's decisions table, and the closed outcome log
    segments into its outcome tables (safe to run again)."""
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    from drivetrain.data import open_store
    from drivetrain.serve import compact as compact_log
    from drivetrain.serve import recover
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded, create=True)
    recovered = recover(log_dir)

    def compact_all(limit: int = 200, passes: int | None = None) -> tuple[int, int]:
        segments = rows = 0
        while (report := compact_log(target, log_dir, limit=limit)).segments or report.outcome_segments:
            segments, rows = segments + report.segments + report.outcome_segments, rows + report.rows
            if not follow:
                for n, kind, ingest in ((report.segments, "", report.ingest), (report.outcome_segments, "outcome log ", report.outcomes)):
                    if ingest is not None:
                        console.print(f"{n} {kind}segments: {ingest.summary()}")
            passes = None if passes is None else passes - 1
            if passes == 0:
                break
        return segments, rows

    if follow:
        for _ in sys.stdin:  # one request per line; the service closing the pipe (or dying) ends the loop
            try:
                segments, rows = compact_all(pass_segments, passes=1)
                answer: dict[str, object] = {"segments": segments, "rows": rows, "error": None}
            except Exception as exc:  # noqa: BLE001 - the segments stay in the log; report it and serve the next request
                traceback.print_exc(file=sys.stderr)
                answer = {"segments": 0, "rows": 0, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
        return
    total, _ = compact_all()
    if total == 0 and not quiet:
        console.print(f"no closed segments in {log_dir}")
    if recovered.torn_bytes:
        console.print(f"set aside {recovered.torn_bytes} bytes of torn last records (*.torn files in {log_dir})")


# ---------------------------------------------------------------------------------------------- explain, frontier
@app.command()
def explain(
    policy: Annotated[Path, typer.Option(help="The policy directory (from `drivetrain optimize`).")],
    contexts: Annotated[Path | None, typer.Option(help="Units to explain: unit_id and the context features.")] = None,
    store: Annotated[Path | None, typer.Option(help="Or the store: the units of its training table as of --as-of.")] = None,
    as_of: Annotated[str | None, typer.Option(help="With --store: the training table as of this UTC time (default: now).")] = None,
    by: Annotated[str, typer.Option(help="Cohorts: features joined by commas; a numeric one as NAME:BANDS (tenure_days:4).")] = "",
    unit: Annotated[str | None, typer.Option(help="Explain this unit_id's action: every action's predicted value and prices.")] = None,
    out: Annotated[Path | None, typer.Option(help="Also write the cohort table to this .csv or .parquet file.")] = None,
) -> None:
    """Predicted effects on the objective and the policy's action mix by cohort; for one unit, why it got its action."""
    from drivetrain.data import open_store
    from drivetrain.explain import effects_by_cohort, explain_unit

    loaded = _load_policy(policy, "policy")
    spec = loaded.spec
    population = _population(spec, contexts, None if store is None else open_store(store, spec), as_of, "explain")
    cohorts = [c.strip() for c in by.split(",") if c.strip()] or list(spec.model.cohorts)
    table = effects_by_cohort(loaded, population, cohorts)
    keys = [c.partition(":")[0] for c in cohorts]
    t = Table(title=f"predicted effect on {spec.model.objective.name} per unit versus control, and the plan's action mix,"
                    f" by {' x '.join(keys)} ({len(population)} units; spread: across the cross-fitted models)")
    for column in (*keys, "units", "action", "effect", "spread", "share"):
        t.add_column(column, justify="left" if column in (*keys, "action") else "right")
    for r in table[table["share"] > 0].to_dict("records"):
        t.add_row(*(str(r[k]) for k in keys), str(r["units"]), str(r["action_id"]), _fmt(r["effect"]),
                  _fmt(r["effect_spread"]), f"{r['share']:.1%}")
    console.print(t)
    console.print("(actions no unit of a cohort gets are left out of the table; --out writes every action)")
    if out is not None:
        _write(table, out, FileFormat.parquet if out.suffix == ".parquet" else FileFormat.csv)
        console.print(f"wrote {out}")
    if unit is not None:
        rows = population[population["unit_id"].astype(str) == unit] if "unit_id" in population else population.iloc[:0]
        if rows.empty:
            raise UsageError(f"`unit` must be a unit_id of the population, got {unit!r}")
        explained = explain_unit(loaded, rows.iloc[[0]])
        console.print(explained.summary())
        u = Table(title=f"unit {unit}: every action, as the policy priced it")
        prices = [c for c in explained.actions.columns if c.startswith("price:")]
        for column in ("action", "objective", *prices, "score"):
            u.add_column(column, justify="left" if column == "action" else "right")
        for r in explained.actions[explained.actions["eligible"]].sort_values("score", ascending=False).to_dict("records"):
            u.add_row(str(r["action_id"]) + (" (chosen)" if r["action_id"] == explained.chosen else ""), _fmt(r["objective"]),
                      *(_fmt(r[c]) for c in prices), _fmt(r["score"]))
        console.print(u)


@app.command()
def frontier(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    model: Annotated[Path, typer.Option(help="Directory written by `drivetrain fit` (or a policy).")],
    constraint: Annotated[str, typer.Option(help="The budget, one-sided guardrail (one kept per cohort: every value's bound) or cap whose limit moves.")],
    limits: Annotated[str, typer.Option(help="Limits to plan at, joined by commas (0.2,0.4,0.6).")],
    contexts: Annotated[Path | None, typer.Option(help="Units to plan on: unit_id and the context features.")] = None,
    store: Annotated[Path | None, typer.Option(help="Or the store: the units of its training table as of --as-of.")] = None,
    as_of: Annotated[str | None, typer.Option(help="With --store: the training table as of this UTC time (default: now).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the curve as a self-contained HTML figure (.html) or a table (.csv).")] = None,
) -> None:
    """The objective against one constraint's limit: plan at each limit and print the trade-off with shadow prices."""
    from drivetrain.data import open_store
    from drivetrain.explain import frontier as trade_off
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    fitted = _policy_for(loaded, model, "model")
    try:
        values = [float(v) for v in limits.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"`limits` must be numbers joined by commas such as 0.2,0.4,0.6, got {limits!r}") from None
    population = _population(loaded, contexts, None if store is None else open_store(store, loaded), as_of, "plan on")
    with console.status(f"planning {len(values)} times on {len(population)} units"):
        curve = trade_off(loaded, fitted.model, population, constraint, values)
    t = Table(title=f"predicted {loaded.model.objective.name} per unit as served against the limit of {constraint}")
    uses = [c for c in curve.table.columns if c.startswith("use:")]
    for column in ("limit", "objective", *(c[4:] for c in uses), "shadow price", "binding"):
        t.add_column(column, justify="right")
    for r in curve.table.to_dict("records"):
        t.add_row(f"{r['limit']:g}", _fmt(r["objective"]), *(_fmt(r[c]) for c in uses), _fmt(r["price"]),
                  ("yes" if r["binding"] else "no") if r["feasible"] else "infeasible")
    console.print(t)
    for r in curve.table[~curve.table["feasible"]].to_dict("records"):
        console.print(f"limit {r['limit']:g}: {r['reason']}")
    if out is not None:
        if out.suffix == ".html":
            out.write_text(curve.figure_html(), encoding="utf-8")
        elif out.suffix == ".csv":
            curve.table.to_csv(out, index=False)
        else:
            raise UsageError(f"`out` must end in .html or .csv, got {out.name!r}")
        console.print(f"wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory of the demo (replaced).")] = Path("demo-out"),
    users: Annotated[int, typer.Option(min=100, help="Users in the twin's logged population.")] = 40_000,
    seed: Annotated[int, typer.Option(help="Seed of the twin.")] = 0,
    loop_days: Annotated[int, typer.Option(min=1, help="Simulated days of the adaptation loop (the concept drift starts on day 0).")] = 26,
    loop_users: Annotated[int, typer.Option(min=10, help="New users a day in the adaptation loop.")] = 1000,
) -> None:
    """Run the main job on the embedded default: twin logs -> ingest (with a partner's faulty export) -> summary
    -> fit, optimize, simulate -> serve over HTTP -> the adaptation loop over simulated days."""
    import secrets

    from drivetrain.data import PII_KEY_ENV
    from drivetrain.demo import run_demo

    if not os.environ.get(PII_KEY_ENV):  # the twin's customers are made up: a one-time key for this run
        os.environ[PII_KEY_ENV] = secrets.token_hex(32)
    if out.exists():
        shutil.rmtree(out)
    run_demo(out, users=users, seed=seed, console=console, loop_days=loop_days, loop_users=loop_users)

# ---------------------------------------------------------------------------------------------- adaptation
#: Fault injection of the crash tests: ``trace:PATH`` appends the name of every file-system step of the
#: registry to PATH; ``kill:K`` makes the process SIGKILL itself just before the K-th step (from 1).
REGISTRY_FAULT_ENV = "DRIVETRAIN_REGISTRY_FAULT"


def _registry_fault() -> Callable[[str], None] | None:
    setting = os.environ.get(REGISTRY_FAULT_ENV)
    if not setting:
        return None
    mode, _, arg = setting.partition(":")
    if mode == "trace" and arg:
        def trace(step: str) -> None:
            with open(arg, "a", encoding="utf-8") as handle:
                handle.write(step + "\n")
        return trace
    if mode == "kill" and arg.isdigit() and int(arg) >= 1:
        count = [0]

        def kill(step: str) -> None:
            count[0] += 1
            if count[0] == int(arg):
                os.kill(os.getpid(), signal.SIGKILL)
        return kill
    raise UsageError(f"`{REGISTRY_FAULT_ENV}` must be trace:PATH or kill:K (K >= 1), got {setting!r}")


def _registry(directory: Path, *, create: bool = False) -> EmbeddedRegistry:
    from drivetrain.adapt import EmbeddedRegistry

    if not create and not directory.is_dir():
        raise UsageError(f"`--registry` must be a registry directory (`drivetrain adapt` creates one), got {str(directory)!r}, "
                         f"which {'is a file' if directory.exists() else 'does not exist'}")
    return EmbeddedRegistry(directory, create=create, fault=_registry_fault())


@app.command()
def adapt(
    spec: Annotated[Path, typer.Option(help="The spec file (its `adaptation:` section sets triggers, gates and canary).")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    registry: Annotated[Path, typer.Option(help="The registry directory (created on first use).")],
    as_of: Annotated[str | None, typer.Option(help="Run the step as of this UTC time (default: now).")] = None,
    trees: Annotated[int, typer.Option(min=1, help="Boosting rounds per model of a candidate.")] = 100,
    folds: Annotated[int, typer.Option(min=0, help="A candidate's model is the mean of this many fold models, each fitted on "
                                                   "the other folds' rows (0 or 1: one model on every row).")] = 5,
    threads: Annotated[int, typer.Option(min=1, help="LightGBM threads.")] = 1,
    who: Annotated[str, typer.Option(help="Who runs the step, for the registry's history.")] = "drivetrain adapt",
) -> None:
    """One step of the adaptation loop as of T: triggers, retrain, gates, shadow, canary, promotion. Safe to
    run again for the same T (it answers from the registry's record of the step)."""
    from drivetrain.adapt import adapt as adapt_step
    from drivetrain.data import open_store
    from drivetrain.model import OutcomeModel
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded)
    reg = _registry(registry, create=True)

    def trainer(table: pd.DataFrame, product: Spec) -> OutcomeModel:
        return OutcomeModel(n_folds=folds, refit=False, n_estimators=trees, num_threads=threads, seed=0).fit(table, product)

    with console.status("adaptation step"):
        step = adapt_step(target, reg, _parse_time(as_of, "as_of"), trainer=trainer, who=who)
    console.print(f"as of {step.as_of.isoformat()}" + (" (already run: the recorded step)" if step.replayed else ""))
    if step.trigger is not None:
        reasons = step.trigger.get("reasons") or []
        console.print("triggers: " + ("; ".join(reasons) if reasons else "none fired"))
    for g in step.gates:
        console.print(f"gate {g.gate}: {'passed' if g.passed else 'FAILED'}: {g.reason}")
    for action in step.actions:
        console.print(action)
    console.print(f"champion: {step.champion}")
    if step.price is not None:
        prices = ", ".join(f"{v} at {p:.4g}" for v, p in step.price["prices"].items())
        console.print(f"pacing {step.price['budget']}: target {step.price['target']:.4g} per unit for the next day "
                      f"(budget {step.price['limit']:g}, observed/predicted {step.price['ratio']:.3f}); {prices}")


@app.command("registry")
def registry_command(
    registry: Annotated[Path, typer.Option(help="The registry directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print versions, aliases and history as JSON.")] = False,
    live_at: Annotated[str | None, typer.Option(help="Also say which version was the champion at this UTC time.")] = None,
) -> None:
    """List the registry's versions (lineage and status), aliases and the history of every move."""
    reg = _registry(registry)
    versions, aliases, history = reg.versions(), reg.aliases(), reg.history()
    statuses = {v.version: reg.status(v.version) for v in versions}
    if as_json:
        console.print(json.dumps({"aliases": aliases, "versions": [{**v.to_json(), "status": statuses[v.version]} for v in versions],
                                  "history": [e.to_json() for e in history]}, indent=1), soft_wrap=True)
        return
    t = Table(title="versions")
    for column in ("version", "registered", "status", "rows", "data window", "spec", "model spec"):
        t.add_column(column)
    for v in versions:
        lin = v.lineage
        t.add_row(v.version, v.registered_at.isoformat(), statuses[v.version], str(lin.rows), f"{lin.data_start} .. {lin.data_end}",
                  lin.spec_hash, lin.model_spec_hash)
    console.print(t)
    console.print("aliases: " + ", ".join(f"{k} -> {v}" for k, v in aliases.items()))
    h = Table(title="history")
    for column in ("#", "at", "kind", "who", "why"):
        h.add_column(column)
    for e in history:
        if e.kind != "step":
            h.add_row(str(e.seq), e.at.isoformat(), e.kind, e.who, e.why[:160])
    console.print(h)
    if live_at is not None:
        moment = _parse_time(live_at, "live_at")
        console.print(f"live at {moment.isoformat()}: {reg.live_at(moment)}")


@app.command()
def promote(
    registry: Annotated[Path, typer.Option(help="The registry directory.")],
    version: Annotated[str, typer.Argument(help="The version to make the champion.")],
    why: Annotated[str, typer.Option(help="Why, for the registry's history.")] = "promoted by hand",
    who: Annotated[str, typer.Option(help="Who, for the registry's history.")] = "drivetrain promote",
) -> None:
    """Make VERSION the champion; the one it replaces becomes last-good. One atomic move."""
    from drivetrain.adapt import promote as promote_version

    reg = _registry(registry)
    promote_version(reg, version, at=SystemClock().now(), who=who, why=why)
    console.print(f"champion: {version}; last-good: {reg.alias('last-good')}")


@app.command()
def rollback(
    registry: Annotated[Path, typer.Option(help="The registry directory.")],
    why: Annotated[str, typer.Option(help="Why, for the registry's history.")] = "rolled back by hand",
    who: Annotated[str, typer.Option(help="Who, for the registry's history.")] = "drivetrain rollback",
) -> None:
    """Point the champion back at last-good: a pointer move to a version already registered and checked."""
    from drivetrain.adapt import rollback as rollback_to

    reg = _registry(registry)
    back = rollback_to(reg, at=SystemClock().now(), who=who, why=why)
    console.print(f"champion: {back} (rolled back)")


# ---------------------------------------------------------------------------------------------- contract
contract_app = typer.Typer(help="Contracts that hold: feature versions, parity, backfills, the data and system contracts.",
                           no_args_is_help=True)
app.add_typer(contract_app, name="contract")


@contract_app.command("check")
def contract_check(
    spec: Annotated[Path, typer.Option(help="The spec file as it is now.")],
    against: Annotated[str, typer.Option(help="The other revision: a spec file, or REV:path (path from the git repository's root).")],
    store: Annotated[Path | None, typer.Option(help="The store whose policies use the features (named on failure, listed for retrain).")] = None,
    reference: Annotated[Path | None, typer.Option(help="A store to run the definitions on; default a fixed reference dataset drawn from the spec.")] = None,
) -> None:
    """Fail (exit 1) when a feature changed meaning without a new version; with one, list the policies to retrain."""
    from drivetrain.contract import check_features, load_revision, policies_in_store, reference_store
    from drivetrain.data import open_store
    from drivetrain.spec import load_spec

    current = load_spec(spec)
    previous = load_revision(against, repository=spec.parent)
    derived = any(f.definition for s in (current, previous) for f in s.model.context.features.values())
    ref = open_store(reference, current) if reference is not None else reference_store(current) if derived else None
    users = policies_in_store(open_store(store, current)) if store is not None else None
    result = check_features(current, previous, reference=ref, policies=users)
    console.print(result.summary())
    if store is None and result.changes:
        console.print("(no --store given: the policies that use these features are not known)")
    if not result.ok:
        raise typer.Exit(1)


@contract_app.command("parity")
def contract_parity(
    spec: Annotated[Path, typer.Option(help="The spec file (its derived features and parity alert rules).")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    as_of: Annotated[str | None, typer.Option(help="Check as of this time (ISO 8601, UTC); default now.")] = None,
    window_days: Annotated[float, typer.Option(min=0.01, help="Decisions of the last N days before --as-of.")] = 1.0,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Numeric values differ beyond tolerance x max(1, |rebuilt|).")] = 1e-6,
) -> None:
    """Served against rebuilt context per derived feature; fired parity alerts are stored. Exit code 1 when one fired."""
    from drivetrain.data import measure_parity, open_store
    from drivetrain.evaluate import check_alerts, store_alerts
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded)
    moment = _parse_time(as_of, "as_of")
    report = measure_parity(target, start=moment - timedelta(days=window_days), end=moment, as_of=moment, tolerance=tolerance)
    console.print(report.summary())
    alerts = check_alerts(loaded, parity=report)
    store_alerts(target, alerts, fired_at=SystemClock().now())
    for alert in alerts:
        console.print(f"ALERT {alert.rule} ({alert.kind}): {alert.message}")
    if alerts:
        raise typer.Exit(1)


@contract_app.command("backfill")
def contract_backfill(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    store: Annotated[Path, typer.Option(help="The store directory.")],
    as_of: Annotated[str, typer.Option(help="Rebuild as of this past time (ISO 8601, UTC).")],
    out: Annotated[Path, typer.Option(help="Directory for the files and manifest.json with their sha256.")],
    days: Annotated[int, typer.Option(min=1, help="The training table and drift of the last N days before --as-of.")] = 30,
) -> None:
    """Rebuild the training table, the evaluation and the drift as of T: the same T gives the same bytes."""
    from drivetrain.contract import backfill
    from drivetrain.data import open_store
    from drivetrain.spec import load_spec

    result = backfill(open_store(store, load_spec(spec)), _parse_time(as_of, "as_of"), out, days=days)
    console.print(result.summary())


@contract_app.command("export")
def contract_export(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    out: Annotated[Path, typer.Option(help="The ODCS document to write (YAML).")] = Path("datacontract.odcs.yaml"),
    store: Annotated[Path | None, typer.Option(help="Also check this store's tables against the document (exit 1 on a breach).")] = None,
) -> None:
    """Write the decisions, outcomes and context tables as an Open Data Contract Standard document."""
    import yaml

    from drivetrain.contract import check_data_contract, data_contract, validate_data_contract
    from drivetrain.data import open_store
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    document = data_contract(loaded)
    validate_data_contract(document)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    console.print(f"wrote {out}: {len(document['schema'])} tables, valid against the ODCS {document['apiVersion']} model")
    if store is not None:
        broken = check_data_contract(open_store(store, loaded), document)
        for violation in broken:
            console.print(f"BREACH {violation.message()}")
        console.print(f"{len(broken)} rules broken by the store's tables" if broken else "the store's tables keep every rule")
        if broken:
            raise typer.Exit(1)


@contract_app.command("system")
def contract_system(
    spec: Annotated[Path, typer.Option(help="The spec file.")],
    out: Annotated[Path, typer.Option(help="Directory for system_contract.md, model_card.md and datasheet.md.")] = Path("contract"),
    store: Annotated[Path | None, typer.Option(help="The store: the latest evaluation and the row counts.")] = None,
    policy: Annotated[Path | None, typer.Option(help="The policy directory (its manifest).")] = None,
    as_of: Annotated[str | None, typer.Option(help="Evaluate as of this time (ISO 8601, UTC); default now.")] = None,
) -> None:
    """Write the one-page ML system contract, the model card and the datasheet as Markdown."""
    from drivetrain.contract import policy_facts, system_documents
    from drivetrain.data import open_store
    from drivetrain.evaluate import evaluate as run_evaluation
    from drivetrain.spec import load_spec

    loaded = load_spec(spec)
    target = open_store(store, loaded) if store is not None else None
    evaluation = run_evaluation(target, _parse_time(as_of, "as_of")) if target is not None else None
    facts = policy_facts(policy) if policy is not None else None
    for path in system_documents(loaded, policy=facts, evaluation=evaluation, store=target).write(out):
        console.print(f"wrote {path}")


@functools.cache
def command() -> Callable[..., object]:
    """The command line as Click runs it, built once a process: building it from the functions' signatures
    takes about 0.1 s, which a process that runs several commands (a test, a notebook) would pay each time.
    ``app(...)`` would build it again and only add a traceback hook that ``pretty_exceptions_enable=False``
    turns off."""
    return typer.main.get_command(app)


def main(argv: list[str] | None = None) -> None:
    try:
        command()(args=argv, prog_name="drivetrain")
    except DrivetrainError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
