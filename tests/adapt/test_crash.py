"""`kill -9` of `drivetrain adapt` at the file-system steps of the registry, in two steps of the loop:
the first (the registry's creation, a version's artifact and record, the trigger, the gates, the
promotion) and the next one with a champion (a candidate's artifact and record, its gates, the challenger
alias). Each killed run is a real
process that SIGKILLs itself just before step k (``DRIVETRAIN_REGISTRY_FAULT=kill:k``); the registry it
leaves must be consistent (aliases name complete versions, the history numbered, parseable and a prefix of
the uninterrupted run's), and running the command again completes the step as the uninterrupted run did.

The killed runs are forked from one driver process that has imported drivetrain once (no thread runs in
it before a fork): a fresh interpreter per k would spend most of the test starting up. By default the kill
falls before the first and the last write of each kind; with
``DRIVETRAIN_CRASH_EVERY_STEP=1`` before every write."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from drivetrain.adapt import EmbeddedRegistry
from drivetrain.cli import REGISTRY_FAULT_ENV
from drivetrain.data import ParquetStore
from drivetrain.twin import NBOOTwin
from tests.adapt.test_step import small_spec
from tests.conftest import fill, invoke

DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    from drivetrain import adapt, cli, data, model, spec  # what the command imports when it runs

    cli.command()  # the command line built once, before the forks, as the imports are
    for job in json.loads(sys.argv[1]):
        pid = os.fork()
        if pid == 0:
            os.environ[cli.REGISTRY_FAULT_ENV] = f"kill:{job['kill']}"
            code = 0
            try:
                cli.main(job["args"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:
                code = 70
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        died = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        print(json.dumps({"kill": job["kill"], "signal": died, "code": None if died else os.WEXITSTATUS(status)}), flush=True)
""")


def _args(state: Path, as_of: datetime) -> list[str]:
    return ["adapt", "--spec", str(state / "spec.yaml"), "--store", str(state / "store"), "--registry", str(state / "registry"),
            "--as-of", as_of.isoformat(), "--trees", "5", "--folds", "0"]


def _moves(registry: EmbeddedRegistry) -> list[tuple[int, str, dict[str, str | None], dict[str, str]]]:
    """The history without its free text and timings: what a rerun must reproduce."""
    return [(e.seq, e.kind, dict(e.aliases), dict(e.statuses)) for e in registry.history()]


def _traced(state: Path, as_of: datetime, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], EmbeddedRegistry]:
    trace = state / "steps.txt"
    monkeypatch.setenv(REGISTRY_FAULT_ENV, f"trace:{trace}")
    ran = invoke(*_args(state, as_of))
    monkeypatch.delenv(REGISTRY_FAULT_ENV)
    assert ran.returncode == 0, ran.stderr
    return trace.read_text().splitlines(), EmbeddedRegistry(state / "registry")


def _kill_points(steps: list[str]) -> list[int]:
    """Every step (1-based) with ``DRIVETRAIN_CRASH_EVERY_STEP=1``; by default the first and the last step of
    each kind (a write's temporary file, its move into place, its completion, for the marker, the artifact, the
    version record and the events: the first event and the last, the alias move), so that every kind of write is
    cut while the suite stays short."""
    if os.environ.get("DRIVETRAIN_CRASH_EVERY_STEP") == "1":
        return list(range(1, len(steps) + 1))
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for k, step in enumerate(steps, start=1):
        kind = re.sub(r"\d+", "N", step)  # `event 7: move into place` is of the kind `event N: move into place`
        first.setdefault(kind, k)
        last[kind] = k
    return sorted({*first.values(), *last.values()})


@pytest.mark.slow
@pytest.mark.parametrize("which", ["first", "second"])
def test_kill_9_of_adapt_at_every_step_leaves_the_registry_consistent_and_a_rerun_completes(
        which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = small_spec()
    twin = NBOOTwin(horizon_days=7, seed=8)
    before = tmp_path / "before-first"
    before.mkdir()
    (before / "spec.yaml").write_text(yaml.safe_dump(spec.model.model_dump(mode="json"), sort_keys=False))
    at = fill(ParquetStore(before / "store", spec, create=True), twin, 1500)
    shutil.copytree(before, tmp_path / "first")
    steps, done = _traced(tmp_path / "first", at, monkeypatch)
    assert done.aliases()["champion"] is not None
    if which == "second":
        before = tmp_path / "before-second"
        shutil.copytree(tmp_path / "first", before)
        (before / "steps.txt").unlink()
        at = fill(ParquetStore(before / "store", spec), twin, 3500, day=9, offset=10_000_000)
        shutil.copytree(before, tmp_path / "second")
        champion = done.aliases()["champion"]
        steps, done = _traced(tmp_path / "second", at, monkeypatch)
        # the second step's candidate passes the off-line gates and becomes the challenger beside the champion
        assert done.aliases()["challenger"] is not None and done.aliases()["champion"] == champion
        assert sum(s.startswith("event") for s in steps) >= 3 * 8  # trigger, 5 gates, the challenger's move, the step
    else:
        assert steps[:3] == ["marker: write temporary", "marker: move into place", "marker: done"]
    assert {"artifact: write temporary", "artifact: move into place", "version record: move into place"} <= set(steps)
    start = EmbeddedRegistry(before / "registry") if (before / "registry").exists() else None

    jobs = []
    for k in _kill_points(steps):
        state = tmp_path / f"kill-{k}"
        shutil.copytree(before, state)
        jobs.append({"kill": k, "args": _args(state, at)})
    driver = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)], capture_output=True, text=True, check=False, timeout=3600)
    assert driver.returncode == 0, driver.stderr[-3000:]
    outcomes = [json.loads(line) for line in driver.stdout.splitlines()]
    assert len(outcomes) == len(jobs)

    for job, outcome in zip(jobs, outcomes, strict=True):
        k = job["kill"]
        step = steps[k - 1]
        state = tmp_path / f"kill-{k}"
        where = f"killed before {step!r} (step {k} of {len(steps)})"
        assert outcome["signal"] == 9, (where, outcome)
        if not (state / "registry" / "registry.json").exists():  # killed while creating the registry: nothing in it yet
            assert start is None and not [p for p in (state / "registry").rglob("*") if p.is_file() and p.suffix != ".tmp"], where
        else:
            left = EmbeddedRegistry(state / "registry")
            assert left.check() == [], where  # every event parseable, numbered, naming complete versions that load
            moves = _moves(left)
            assert moves == _moves(done)[:len(moves)] and len(moves) >= (len(_moves(start)) if start else 0), where  # append-only
            for alias, version in left.aliases().items():
                assert version is None or left.load(version).version == version, (where, alias)
        rerun = invoke(*_args(state, at))
        assert rerun.returncode == 0, (where, rerun.stderr)
        again = EmbeddedRegistry(state / "registry")
        assert again.check() == [] and again.aliases() == done.aliases(), (where, rerun.stdout)
        assert again.statuses() == done.statuses(), where
