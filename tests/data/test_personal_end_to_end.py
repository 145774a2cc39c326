"""No personal value in clear anywhere: the store, the decision log, the quarantine, the outputs and stderr.

A spec with a personal e-mail (text), postcode (integer), income (float), VIP flag (boolean) and segment
(categorical) goes through `drivetrain ingest` (with rows that break the contract, an imported reason that
quotes an e-mail and a torn line), `drivetrain decide`, the decision service and `drivetrain compact`, all
into one store; then every file they wrote and everything they printed is searched for the clear values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from drivetrain.data import PII_KEY_ENV, PersonalKey
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.serve import ServiceProcess
from drivetrain.spec import parse_spec
from drivetrain.twin import NBOOTwin
from tests.conftest import invoke
from tests.data.personal_helpers import (
    clear_patterns,
    customer,
    found_in_clear,
    personal_columns_are_pseudonyms,
    personal_raw,
)

KEY_TEXT = "end-to-end-key-of-the-personal-hash-0123456789"
KEY = PersonalKey(KEY_TEXT.encode())
WIDE = {"COLUMNS": "1000"}  # rich wraps at 80 columns without a terminal
#: Clear values that break the contract (they are personal too: they must not be quoted either).
BROKEN = {"postcode": "4821-3977", "segment": "seg-gamma-3", "income": "91,873.25"}


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drivetrain", *args], capture_output=True, text=True, env=env, timeout=300, check=False)


def _printed(res: subprocess.CompletedProcess[str]) -> str:
    """What a command printed, also unwrapped: a wrapped line could split a value."""
    text = res.stdout + "\n" + res.stderr
    return text + "\n" + text.replace("\n", "")


def _with_customers(frame: pd.DataFrame, first: int) -> pd.DataFrame:
    frame = frame.reset_index(drop=True).copy()
    for name in customer(0):
        frame[name] = pd.Series([customer(first + i)[name] for i in range(len(frame))], index=frame.index, dtype=object)
    return frame


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Any]:
    """(spec file, policy directory, spec) of the personal product, with a small fitted policy."""
    root = tmp_path_factory.mktemp("personal")
    raw = personal_raw()
    spec_path = root / "drivetrain.yaml"
    spec_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    spec = parse_spec(raw, source=str(spec_path))
    twin = NBOOTwin(seed=5)
    users = twin.population(3000)
    decisions, _ = twin.log(users)
    truth = twin.truth(users)
    action = spec.action_space.indices(decisions["action_id"].to_numpy())
    for c in spec.outcomes:
        decisions[c] = truth.components[c][np.arange(len(users)), action]
    decisions = _with_customers(decisions, 10_000)
    model = OutcomeModel(n_folds=2, n_estimators=20, min_child_samples=50).fit(decisions, spec)
    Policy.from_model(spec, model, {}, version="personal-policy").save(root / "policy")
    return spec_path, root / "policy", spec


def test_no_personal_value_in_clear_in_any_file_or_output(product: tuple[Path, Path, Any], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path, policy, spec = product
    monkeypatch.setenv(PII_KEY_ENV, KEY_TEXT)  # the service's process inherits it
    env = {**os.environ, **WIDE}
    work = tmp_path / "work"
    store = work / "store"
    printed: list[str] = []
    used: list[dict[str, Any]] = []

    # 1. ingest an export with bad rows, an imported reason quoting an e-mail, and a torn line
    twin = NBOOTwin(seed=6)
    logged, _ = twin.log(twin.population(40, offset=500_000))
    logged = _with_customers(logged, 0)
    used += [customer(i) for i in range(40)]
    logged.loc[0, "postcode"] = BROKEN["postcode"]
    logged.loc[1, "segment"] = BROKEN["segment"]
    logged.loc[2, "income"] = BROKEN["income"]
    logged.loc[3, "propensity"] = 7.0  # breaks another rule: the row's personal values go to quarantine with it
    logged["fallback_reason"] = pd.Series([None] * len(logged), dtype=object)
    logged["assignment"] = logged["assignment"].astype(object)
    logged.loc[4, ["assignment", "fallback_reason"]] = ["fallback", f"upstream said {customer(4)['customer_email']} is odd"]
    logged.loc[5, "fallback_reason"] = f"postcode {customer(5)['postcode']} unknown"  # a policy row with a reason is fine
    lines = logged.to_json(orient="records", lines=True, date_format="iso").splitlines()
    lines.append(lines[6][: len(lines[6]) // 2].replace(customer(6)["customer_email"], customer(40)["customer_email"]))
    used.append(customer(40))
    export = tmp_path / "export.jsonl"
    export.write_text("\n".join(lines) + "\n", encoding="utf-8")
    res = _run("ingest", "--spec", str(spec_path), "--store", str(store), "--create", str(export), env=env)
    printed.append(_printed(res))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "41 rows in = 36 accepted + 0 duplicates + 5 quarantined" in res.stdout, res.stdout

    # 2. batch decisions for customers 0-9 (the same people) and 50-59, one with a broken postcode
    contexts = _with_customers(twin.population(10, offset=600_000), 0)
    more = _with_customers(twin.population(10, offset=600_100), 50)
    used += [customer(i) for i in range(50, 60)]
    more.loc[0, "postcode"] = BROKEN["postcode"]
    contexts_path = tmp_path / "contexts.csv"
    pd.concat([contexts, more], ignore_index=True).to_csv(contexts_path, index=False)
    decided = tmp_path / "decided.parquet"
    res = _run("decide", "--policy", str(policy), "--input", str(contexts_path), "--output", str(decided), env=env)
    printed.append(_printed(res))
    assert res.returncode == 0, res.stderr
    assert "1 rows broke the contract" in res.stdout
    res = _run("ingest", "--spec", str(spec_path), "--store", str(store), str(decided), env=env)
    printed.append(_printed(res))
    assert res.returncode == 0 and "20 accepted" in res.stdout, res.stdout + res.stderr

    # 3. the service decides for customers 0-4 again and 70-74, one with a broken postcode, one with an unknown segment
    service = ServiceProcess.start(spec_path, policy, work, "--segment-age", "0.5", deadline_s=60.0)
    try:
        served = _with_customers(twin.population(10, offset=700_000), 0)
        served.loc[5:, list(customer(0))] = _with_customers(served.iloc[5:], 70)[list(customer(0))].to_numpy()
        used += [customer(i) for i in range(70, 75)]
        served.loc[6, "postcode"] = BROKEN["postcode"]
        served.loc[7, "segment"] = BROKEN["segment"]
        answers = []
        with service.client() as client:
            for i, row in enumerate(served.to_dict("records")):
                unit = row.pop("unit_id")
                context = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items() if k in spec.features}
                context = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in context.items()}
                answer = client.post("/v1/decide", json={"unit_id": unit, "context": context, "request_id": f"served-{i}"})
                assert answer.status_code == 200, answer.text
                answers.append(answer.text)
    finally:
        service.stop(signal.SIGTERM)
    printed += answers
    assert sum(json.loads(a)["fallback_reason"] is not None for a in answers) == 2
    res = _run("compact", "--spec", str(spec_path), "--store", str(store), "--log-dir", str(service.log_dir), env=env)
    printed.append(_printed(res))
    assert res.returncode == 0, res.stderr

    # nothing in clear: every file of the store, the log, the decide output, the service's stderr, all output
    clear = clear_patterns([v for c in used for v in c.values()] + list(BROKEN.values()))
    control = tmp_path / "control.parquet"
    logged.astype(str).to_parquet(control)  # the search finds clear values in a (compressed) Parquet file and in text
    assert set(found_in_clear([control, export, contexts_path], clear)) == {str(control), str(export), str(contexts_path)}
    assert found_in_clear([store, service.log_dir, decided, service.stderr], clear) == {}
    assert clear.findall("\n".join(printed)) == []
    decisions = pd.read_parquet(store / "decisions")
    quarantine = pd.read_parquet(store / "quarantine")
    names = list(spec.personal_features)
    assert personal_columns_are_pseudonyms(decisions, names)  # booleans too, which no grep can tell
    assert len(decisions) == 36 + 20 + 10 and len(quarantine) == 5
    assert all(json.loads(p).get("vip", "hmac-sha256:")[:12] == "hmac-sha256:" for p in quarantine["payload"] if p.startswith("{\"request"))

    # one customer, one pseudonym: ingest, batch decisions and the service agree in the store
    email = KEY.pseudonym(customer(4)["customer_email"])
    by_path = decisions[decisions["customer_email"] == email]
    paths = by_path["request_id"].map(lambda r: "service" if r.startswith("served-") else "batch" if r.startswith("personal-policy:") else "ingest")
    assert sorted(paths) == ["batch", "ingest", "service"], by_path["request_id"].tolist()
    assert by_path["postcode"].nunique() == 1 and by_path["postcode"].iloc[0] == KEY.pseudonym(str(customer(4)["postcode"]))


def test_ingest_decide_and_serve_refuse_without_the_key(product: tuple[Path, Path, Any], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path, policy, _ = product
    monkeypatch.delenv(PII_KEY_ENV)
    contexts = tmp_path / "contexts.csv"
    _with_customers(NBOOTwin(seed=6).population(3), 0).to_csv(contexts, index=False)
    store = tmp_path / "store"
    # in this process (the command's exit code and stderr; the process itself is the first test's point)
    for args in (("ingest", "--spec", str(spec_path), "--store", str(store), "--create", str(contexts)),
                 ("decide", "--policy", str(policy), "--input", str(contexts), "--output", str(tmp_path / "out.csv")),
                 ("serve", "--spec", str(spec_path), "--policy", str(policy), "--store", str(store), "--port", "0")):
        res = invoke(*args)
        assert res.returncode == 2, (args[0], res.stdout, res.stderr)
        assert "`DRIVETRAIN_PII_KEY` must hold the secret key" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list(store.rglob("*.parquet")) and not (tmp_path / "out.csv").exists()


def test_validate_rehearses_personal_fields(product: tuple[Path, Path, Any]) -> None:
    spec_path, _, _ = product
    res = _run("validate", str(spec_path), env={**os.environ, PII_KEY_ENV: KEY_TEXT, **WIDE})
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())
    for name, kind in [("postcode", "integer"), ("customer_email", "string"), ("income", "float"), ("vip", "boolean"),
                       ("segment", "categorical")]:
        assert f"personal {name} ({kind}):" in out
    assert out.count("found in clear in the store, quarantine or reasons: nowhere") == 5
    assert out.count("alike: yes") == 5
    assert KEY.pseudonym("jane.doe@example.com") in out.replace(" ", "")
