"""The service's state without HTTP: reload rules, readiness and liveness, metrics from the start, the
request memory's bound, the OpenAPI document's auth."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import generate_latest

from drivetrain.data import open_store
from drivetrain.errors import ConflictError
from drivetrain.policy import Policy
from drivetrain.serve import Service, ServiceConfig, create_app
from drivetrain.serve._requests import RequestMemory, answer_json, request_digest
from drivetrain.serve._service import LogUnavailable
from drivetrain.spec import load_spec
from tests.serve.service_helpers import SPEC


def _service(policy: Path, work: Path, **extra: Any) -> Service:
    spec = load_spec(SPEC)
    open_store(work / "store", spec, create=True)
    return Service(ServiceConfig(spec=spec, spec_path=SPEC, policy_dir=policy, store_dir=work / "store", log_dir=work / "log",
                                 token="t", **extra))


def _ctx(contexts: list[dict[str, Any]], i: int) -> tuple[str, dict[str, Any]]:
    c = contexts[i]
    return str(c["unit_id"]), {k: v for k, v in c.items() if k != "unit_id"}


def test_reload_stays_in_the_policy_root_and_keeps_the_randomization(policies: tuple[Path, Path], tmp_path: Path) -> None:
    service = _service(policies[0], tmp_path / "w")
    root = policies[0].parent
    outside = tmp_path / "elsewhere" / "b"
    shutil.copytree(policies[1], outside)
    (root / "escape").unlink(missing_ok=True)
    (root / "escape").symlink_to(outside)
    for path in (outside, root / "escape", root / ".." / outside.parent.name / "b", Path("b")):
        r = service.reload(path)
        assert not r["reloaded"] and "inside the policy root" in r["reason"] and r["policy_version"] == "policy-a", (path, r)
    policy = Policy.load(policies[1])
    for change, words in (({"holdout_share": 0.2}, "holdout share"), ({"exploration_rate": 0.3}, "exploration rate")):
        target = root / f"changed-{next(iter(change))}"
        shutil.rmtree(target, ignore_errors=True)
        dataclasses.replace(policy, **change).save(target)
        r = service.reload(target)
        assert not r["reloaded"] and words in r["reason"], r
    assert service.reload(policies[1])["reloaded"] and service.decider.version == "policy-b"


def test_readiness_and_liveness_follow_the_log_and_the_compaction(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(policies[0], tmp_path, backlog_limit_s=60.0)
    unit, ctx = _ctx(contexts, 0)
    assert service.health()["ready"] and service.health()["live"]
    assert service.log is not None
    real = service.log.append

    def full_disk(record: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.log, "append", full_disk)
    with pytest.raises(LogUnavailable):
        service.decide(unit, ctx, "live-1", time.perf_counter())
    health = service.health()
    assert not health["live"] and not health["ready"] and "No space left" in health["log_error"]
    assert service.requests.prior("live-1", request_digest(unit, ctx)) is None  # not answered, so not remembered
    monkeypatch.setattr(service.log, "append", real)
    service.decide(unit, ctx, "live-1", time.perf_counter())
    assert service.health()["live"] and service.health()["ready"]
    # a failing compaction with a closed segment older than the limit: not ready, and why
    service.log.rotate()
    closed = next((tmp_path / "log").glob("*.closed.jsonl"))
    service.compaction_error = "StoreError: disk"
    assert service.health()["ready"]  # the segment is young
    old = time.time() - 120
    os.utime(closed, (old, old))
    health = service.health()
    assert not health["ready"] and health["live"] and health["closed_segments"] == 1 and health["oldest_closed_segment_age_s"] >= 120
    assert any("compaction fails" in p for p in health["problems"])
    service.log.close()


def test_every_documented_series_is_there_before_the_first_request(policies: tuple[Path, Path], tmp_path: Path) -> None:
    service = _service(policies[0], tmp_path)
    text = generate_latest(service.metrics.registry).decode()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    for series in ('drivetrain_decide_seconds_bucket{le="0.001",stage="total"}', 'drivetrain_decisions_total{action="none-0-none",assignment="policy"}',
                   'drivetrain_fallbacks_total{cause="latency"}', 'drivetrain_errors_total{endpoint="compaction",kind="failed"}',
                   'drivetrain_outcome_rows_total{result="quarantined"}', "drivetrain_ready ", 'drivetrain_reloads_total{result="refused"}',
                   "drivetrain_compacted_decisions_total ", "drivetrain_log_closed_segments ", "drivetrain_log_oldest_closed_segment_age_seconds ",
                   "drivetrain_outcomes_pending ", "drivetrain_request_memory_bytes ", "drivetrain_live "):
        assert series in text, series
        assert series.split("{")[0].split("_bucket")[0].removesuffix("_total").strip() in doc, series
    service.log.close()  # type: ignore[union-attr]


def test_the_openapi_document_declares_the_token_and_its_answers(policies: tuple[Path, Path], tmp_path: Path) -> None:
    doc = create_app(_service(policies[0], tmp_path)).openapi()
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {"type": "http", "scheme": "bearer",
                                                                  "description": "`Authorization: Bearer $DRIVETRAIN_TOKEN`"}
    for path in ("/v1/outcomes", "/v1/admin/reload"):
        op = doc["paths"][path]["post"]
        assert op["security"] == [{"HTTPBearer": []}] and {"401", "403", "408", "413", "422"} <= set(op["responses"]), path
    decide = doc["paths"]["/v1/decide"]["post"]
    assert "security" not in decide and {"408", "409", "413", "422", "503"} <= set(decide["responses"])


def test_the_request_memory_is_bounded_in_bytes_and_compares_values() -> None:
    memory = RequestMemory(max_bytes=200_000)
    answer = {"request_id": "", "action_id": "control", "fallback_reason": "x" * 5_000}
    for i in range(1_000):
        memory.remember(f"id-{i}", request_digest("u", {"n": i}), answer_json({**answer, "request_id": f"id-{i}"}))
        assert memory.bytes <= 200_000
    assert 20 <= len(memory) < 40  # about 5 kB each
    assert memory.prior("id-0", request_digest("u", {"n": 0})) is None  # the oldest went first
    assert json.loads(memory.prior("id-999", request_digest("u", {"n": 999.0})) or b"")["request_id"] == "id-999"  # 999.0 is 999
    with pytest.raises(ConflictError, match="another unit or context"):
        memory.prior("id-999", request_digest("u", {"n": "999"}))
    with pytest.raises(ConflictError):
        memory.prior("id-999", request_digest("v", {"n": 999}))


def test_a_version_name_always_means_the_same_content(policies: tuple[Path, Path], tmp_path: Path) -> None:
    """A policy changed and saved again under the served version's name (its manifest recomputed, so it
    loads) is refused on reload, and degrades a restart; the legitimate one still serves."""
    service = _service(policies[0], tmp_path / "w")
    tampered = policies[0].parent / "tampered"
    shutil.rmtree(tampered, ignore_errors=True)
    policy = Policy.load(policies[1])
    dataclasses.replace(policy, version="policy-a").save(tampered)
    r = service.reload(tampered)
    assert not r["reloaded"] and "served before with other content" in r["reason"], r
    assert service.policy_info()["manifest_sha256"] is not None
    service.log.close()  # type: ignore[union-attr]
    again = _service(tampered, tmp_path / "w")
    assert not again.decider.ready and "served before with other content" in str(again.decider.degraded_reason)
    again.log.close()  # type: ignore[union-attr]
    assert _service(policies[0], tmp_path / "w").decider.ready


def test_shadow_decisions_the_registry_refused_are_handed_again_on_the_next_tick(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                                               tmp_path: Path) -> None:
    taken: list[pd.DataFrame] = []
    fail = {"next": True}

    def sink(version: str, rows: pd.DataFrame) -> None:
        if fail["next"]:
            fail["next"] = False
            raise OSError("registry full")
        taken.append(rows.assign(version=version))

    service = _service(policies[0], tmp_path / "w", challenger=lambda: (policies[1], "shadow"), shadow_sink=sink)
    assert service.follow_challenger() == "policy-b in shadow"
    for i in range(12):
        service.decide(*_ctx(contexts, i), f"s-{i}", time.perf_counter())
    assert service.follow_challenger() is None  # the sink failed: said, and the rows kept
    assert "registry full" in (service.challenger_error or "") and taken == []
    service.follow_challenger()
    (batch,) = taken
    assert list(batch["request_id"]) == [f"s-{i}" for i in range(12)] and set(batch["version"]) == {"policy-b"}
    assert (batch["champion_version"] == "policy-a").all() and service.flush_shadow() == 0
