from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from filelock import FileLock
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from drivetrain.data import Store
    from drivetrain.twin import NBOOTwin

ROOT = Path(__file__).resolve().parents[1]
# the key of the personal-data hash, which ingest, decide and serve require for the twin's personal postcode
# (child processes inherit it); tests of a missing key remove it for themselves
os.environ.setdefault("DRIVETRAIN_PII_KEY", "test-key-of-the-personal-data-hash-0123456789")
# `make test` runs three processes on two cores: a query's second thread would only wait on the other
# processes' work (docs/decisions.md); commands and services the tests start inherit it
os.environ.setdefault("DRIVETRAIN_DUCKDB_THREADS", "1")
NBOO_SPEC = ROOT / "examples" / "nboo" / "drivetrain.yaml"
# a pytest-xdist worker starts with COLUMNS=80 in its environment where one process has none: the commands'
# output (as wide as $COLUMNS says when it is not a terminal) would wrap there and not here
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)

settings.register_profile(
    "drivetrain", derandomize=True, max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("drivetrain")

#: The modules that take longest (``pytest --durations``), longest first. Under pytest-xdist they are
#: collected first and `make test` passes ``--no-loadscope-reorder``, so the workers start with them and
#: the run does not end on one worker alone in a long module; in one process the order is unchanged.
LONGEST_FIRST = (
    "tests/adapt/test_crash.py", "tests/bench/test_loop_bench.py", "tests/test_demo.py", "tests/test_typing.py", "tests/test_pacing.py",
    "tests/test_cli.py", "tests/bench/test_soak_bench.py", "tests/serve/test_compactor.py", "tests/evaluate/test_alerts.py",
    "tests/serve/test_bounds.py", "tests/adapt/test_gates.py", "tests/test_assembly.py", "tests/test_exploration.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # the xdist controller, before its workers start (one process compiles a kernel once anyway)
    if not os.environ.get("PYTEST_XDIST_WORKER") and (config.getoption("numprocesses", default=None) or 0):
        compile_kernels()


#: The numba kernels in two parts compiled side by side, each kernel in one of them: a tiny model is fitted
#: (which compiles the batch scorer, the fold values and the forest build's kernels) and predicts one row;
#: a forest built from a LightGBM model directly scores one row by leaf masks, and one row and a batch by
#: walking its trees (how trees of more than 64 leaves are scored), then the units' hash runs on a batch.
#: Only the forest build's three small kernels are compiled by both (about 1 s). From a clean clone the two
#: take 10.9 s side by side, where two halves that each fitted a model took 14.7 s (docs/experiments.md).
KERNEL_PARTS = ("fit", "forest-and-hash")


def compile_kernels() -> None:
    """Compile the numba kernels once, before the workers start: numba keeps them in the package's
    ``__pycache__``, which a clean clone lacks, and otherwise every worker and every command the tests start
    compiles them at the same time (about 10 s of CPU each). The two parts compile in two processes side by
    side (numba writes each kernel's cache file whole), so the workers wait for the longer part."""
    import subprocess
    import sys

    parts = [subprocess.Popen([sys.executable, "-c", f"from tests.conftest import compile_part; compile_part({part!r})"], cwd=ROOT)
             for part in KERNEL_PARTS]
    failed = [part for part, process in zip(KERNEL_PARTS, parts, strict=True) if process.wait() != 0]
    assert not failed, f"compiling the numba kernels failed in {failed}"


def compile_part(part: str) -> None:
    """Compile one of :data:`KERNEL_PARTS` with the argument types of production: every forest comes from
    :class:`ForestBuilder`, every context is a C-contiguous float64 array."""
    import lightgbm as lgb
    import numpy as np

    from drivetrain.model._forest import ForestBuilder
    from drivetrain.spec import holdout_draw

    if part == "fit":
        from drivetrain.assembly import fit_model
        from drivetrain.data import MemoryStore
        from drivetrain.model import CompiledModel, OutcomeModel
        from drivetrain.twin import NBOOTwin

        twin = NBOOTwin(horizon_days=7, seed=0)
        store = MemoryStore(twin.spec)
        now = fill(store, twin, 600)
        model = fit_model(store, now, OutcomeModel(n_folds=2, n_estimators=3, num_threads=1, seed=0))[0]
        compiled = CompiledModel.of(model)
        assert compiled is not None and compiled.forest.leaf_masks is not None
        features = model.encoder_.transform(twin.population(4))
        compiled.predict(features)
        compiled.predict_folds(features)
        compiled.predict_row(features[0])
        return
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    booster = lgb.train({"objective": "regression", "num_leaves": 4, "min_data_in_leaf": 5, "num_threads": 1, "verbose": -1},
                        lgb.Dataset(x, x[:, 0] + rng.normal(size=200)), num_boost_round=2)
    builder = ForestBuilder(3, np.array([[0.0], [1.0]]))
    builder.add(booster.model_to_string(), builder.slot())
    forest = builder.build()
    assert forest.leaf_masks is not None
    forest.raw(np.zeros(3))
    walked = dataclasses.replace(forest, leaf_masks=None)
    walked.raw(np.zeros(3))
    walked.raw_batch(np.zeros((4, 3)))
    holdout_draw("compile", range(4096))


def fill(store: Store, twin: NBOOTwin, users: int, *, day: int = 0, offset: int = 0, received: int = 9) -> datetime:
    """Log the twin's day ``day`` for ``users`` users (ids from ``offset``), randomized, into ``store``,
    decisions and outcomes received ``received`` days after that day; returns that time."""
    from drivetrain.clock import SimulatedClock
    from drivetrain.data import RawRows, ingest_decisions, ingest_outcomes

    decisions, outcomes = twin.log(twin.population(users, day=day, offset=offset), day=day)
    clock = SimulatedClock(twin.start + timedelta(days=day + received))
    ingest_decisions(store, RawRows(decisions, (), "log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "log"), clock=clock)
    return clock.now()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection left (modules, libraries, the test items) lives for the whole run: moved out of the
    garbage collector's generations, no full collection walks it again (tests/test_demo.py and
    tests/test_pacing.py in one process: 0.74 s in full collections against 2.04 s)."""
    import gc

    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: a module keeps its order


@pytest.fixture(scope="session")
def nboo_raw() -> dict[str, Any]:
    return yaml.safe_load(NBOO_SPEC.read_text())


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory ``name`` that ``build`` fills once a run, shared by every xdist worker of the run.

    Session fixtures run once per worker under pytest-xdist (``make test`` runs two): an expensive one
    builds its files here instead, under a file lock, and every worker reads them with the project's own
    loaders. The directory is the run's base temporary directory (its parent under xdist, which every
    worker's base shares); a build that fails leaves no completion mark, so the next worker tries again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    directory, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


@pytest.fixture(scope="session")
def policies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small fitted NBOO policies saved as directories (versions policy-a and policy-b), fitted once a run
    (whatever the number of workers): the service tests serve them, the soak benchmark's test serves the first.
    Read only: a test that changes a policy copies it first."""
    from tests.serve.service_helpers import fit_policy

    def build(root: Path) -> None:
        fit_policy(root / "a", version="policy-a", seed=3)
        fit_policy(root / "b", version="policy-b", seed=4)

    root = built_once(tmp_path_factory, "policies", build)
    return root / "a", root / "b"


@pytest.fixture
def raw_spec(nboo_raw: dict[str, Any]) -> dict[str, Any]:
    """A fresh deep copy of the NBOO spec as parsed YAML, to break in a test."""
    return copy.deepcopy(nboo_raw)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def invoke(*args: str | Path, cwd: Path | None = None) -> Ran:
    """Run ``drivetrain ARGS`` in this process and return its exit code and output.

    The same entry point as the installed command (input mistakes exit 2 with a message), without the
    second or so that a fresh interpreter takes to start; a test that is about the process itself (signals,
    a server) runs it as a subprocess instead."""
    from drivetrain import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(cwd or Path.cwd()):
        try:
            cli.main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Ran(code, out.getvalue(), err.getvalue())


def run_bench(script: str, *args: str, fresh: bool = False) -> str:
    """Run ``bench/<script>`` as ``python bench/<script> ARGS`` would and return its output; fail on a
    non-zero exit.

    It runs in this process (``runpy``, as ``__main__``, from the repository's root) rather than a fresh
    interpreter, which would spend about 1.7 s of CPU importing what this one has imported; ``fresh`` runs it
    as a subprocess, for a script whose workers import its ``__main__`` (a spawned pool)."""
    import runpy
    import subprocess
    import sys

    path = ROOT / "bench" / script
    if fresh:
        done = subprocess.run([sys.executable, str(path), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        return done.stdout
    out, err = io.StringIO(), io.StringIO()
    argv, path_before = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))  # as `python bench/<script>` puts the script's directory first
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
        sys.path[:] = path_before
    assert code in (0, None), f"exit {code!r}\nstdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
    return out.getvalue()
