"""The one-page ML system contract, the model card and the dataset datasheet, as Markdown generated from
the spec, the policy's manifest and the latest evaluation.

The system contract says on one page what a team commits to: purpose and metric, features with their
owners, the label's definition and source, the retrain policy, the SLOs, what triggers a rollback and what
is monitored. The model card follows Mitchell et al. (2019), "Model Cards for Model Reporting"; the
datasheet Gebru et al. (2021), "Datasheets for Datasets". Every statement is read from an artifact; what
an artifact does not say is written as not stated, never filled in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivetrain.data import Store
from drivetrain.errors import ArtifactError
from drivetrain.evaluate import Effect, Evaluation
from drivetrain.spec import Spec, definition_sql, format_duration

__all__ = ["PolicyFacts", "SystemDocuments", "policy_facts", "system_documents"]


@dataclass(frozen=True)
class PolicyFacts:
    """What a policy's ``manifest.json`` states about it."""

    version: str
    created_at: str
    spec_hash: str
    feature_version: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    libraries: Mapping[str, str] = field(default_factory=dict)


def policy_facts(directory: Path) -> PolicyFacts:
    """The facts of the policy saved in ``directory`` (its manifest; the models are not loaded)."""
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        return PolicyFacts(str(manifest["policy_version"]), str(manifest.get("created_at", "")), str(manifest["spec_hash"]),
                           str(manifest.get("feature_version", "")), dict(manifest.get("metadata", {})),
                           dict(manifest.get("libraries", {})))
    except FileNotFoundError:
        raise ArtifactError(f"`--policy` must be a policy directory holding manifest.json, got {str(directory)!r}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path} must be the manifest a policy writes, got unreadable content ({exc!r})") from None


@dataclass(frozen=True)
class SystemDocuments:
    """The three documents, as Markdown."""

    contract: str
    model_card: str
    datasheet: str

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, text in (("system_contract.md", self.contract), ("model_card.md", self.model_card),
                           ("datasheet.md", self.datasheet)):
            (directory / name).write_text(text, encoding="utf-8")
            paths.append(directory / name)
        return paths


def _num(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _effect(e: Effect) -> str:
    return (f"{_num(e.difference)} (interval {_num(e.low)} to {_num(e.high)}; policy arm {_num(e.policy)},"
            f" holdout {_num(e.holdout)})")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in clean)]


def _bounds(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo:g}, {hi:g}]"
    return f" >= {lo:g}" if lo is not None else f" <= {hi:g}" if hi is not None else ""


def _features(spec: Spec) -> list[str]:
    rows = []
    for name, f in spec.model.context.features.items():
        kind = f.type + _bounds(f.min, f.max) + (f" of {', '.join(f.values)}" if f.values else "") \
            + (", nullable" if f.nullable else "")
        note = ("personal: salted hash, never a model input" if f.personal else
                f"derived: `{definition_sql(f.definition)}`" if f.definition else "as sent by the caller")
        rows.append([f"`{name}`", kind, f.owner, f.version, note])
    return _table(["feature", "type", "owner", "version", "source"], rows)


def _labels(spec: Spec) -> list[str]:
    rows = []
    for name, o in spec.model.outcomes.items():
        rows.append([f"`{name}`", o.type + _bounds(o.min, o.max), o.aggregate, o.given or "", o.description])
    return _table(["outcome", "type", "aggregate over the horizon", "zero without", "meaning"], rows)


def _alerts(spec: Spec) -> list[str]:
    rules = spec.model.monitoring.alerts
    if not rules:
        return ["- No alert rule is stated (`monitoring.alerts` is empty): nothing raises an alert automatically."]
    out = []
    for a in rules:
        what = {"metric_drop": f"`{a.figure}` ({a.arm}) more than {a.drop_pct:g}% under its {a.window_days}-day median for {a.for_days} days",
                "latency": f"p{a.percentile:g} latency above {a.above_ms:g} ms for {a.for_minutes} minutes",
                "drift": f"drift of `{a.feature}` flagged with PSI above {a.psi_above:g}",
                "guardrail": "a guardrail crossed in the policy arm beyond chance",
                "sample_ratio": "the holdout split off the spec's share",
                "parity": f"`{a.feature}` as served differs from its definition in more than {a.share_above:.2%} of decisions"}[a.kind]
        out.append(f"- `{a.name}` ({a.kind}): {what}")
    return out


def _rollback(spec: Spec) -> list[str]:
    triggers = [a for a in spec.model.monitoring.alerts if a.kind in ("metric_drop", "guardrail", "parity", "latency")]
    lines = [f"- A fired `{a.name}` alert ({a.kind})" for a in triggers]
    if not lines:
        lines = ["- No rollback trigger is stated: add `metric_drop`, `guardrail` or `parity` rules to `monitoring.alerts`."]
    lines.append("- Rollback moves the `champion` alias back to `last-good` in the policy registry; the service follows the alias.")
    return lines


def _evaluation(evaluation: Evaluation | None) -> list[str]:
    if evaluation is None:
        return ["No evaluation was given: the figures below are not stated."]
    o = evaluation.overall
    lines = [f"As of {evaluation.as_of.isoformat()}: {o.counts.mature} mature decisions ({o.counts.immature} immature),"
             f" {o.policy_units} policy-arm and {o.holdout_units} holdout units.",
             f"- North star (incremental objective per unit against the holdout): {_effect(o.north_star)}"]
    lines += [f"- Guardrail `{g.name}`: policy arm {_num(g.effect.policy)} against"
              f" {'max ' + _num(g.max) if g.max is not None else 'min ' + _num(g.min)}"
              f"{' (breached)' if g.breached else ''}" for g in o.guardrails]
    s = o.service
    lines.append(f"- Serving: p95 latency {_num(s.latency_p95)} ms, fallback rate {_num(s.fallback_rate)},"
                 f" error rate {_num(s.error_rate)} over {s.decisions} decisions")
    return lines


def _system(spec: Spec, policy: PolicyFacts | None, evaluation: Evaluation | None) -> str:
    m = spec.model
    exp = m.experimentation
    lines = [f"# ML system contract: {m.name}", "",
             f"Generated from the spec (hash {spec.hash}, features {spec.feature_version})"
             + (f", policy {policy.version}" if policy else "") + (f" and the evaluation as of {evaluation.as_of.isoformat()}" if evaluation else "") + ".",
             "", "## Purpose and metric", "",
             f"{m.description or 'No description is stated.'} One decision per {m.unit}: levers {', '.join(f'`{lv}`' for lv in m.levers)}"
             f" ({len(spec.action_space)} actions), control `{spec.control.id}`, fallback `{spec.fallback.id}`.",
             "",
             f"- Objective `{m.objective.name}`: {m.objective.direction} `{m.objective.formula}` per decision over"
             f" {format_duration(spec.horizon)} (settle {format_duration(spec.settle)}).",
             f"- Measured against a randomized holdout of {exp.holdout_share:.0%} of {m.unit}s (salt-stable), with"
             f" {exp.exploration_rate:.0%} exploration; every decision logs its propensity.",
             *(f"- Guardrail `{g.name}`: mean of `{g.formula}`" + (f" <= {g.max:g}" if g.max is not None else "")
               + (f" >= {g.min:g}" if g.min is not None else "") for g in m.guardrails),
             *(f"- Budget `{b.name}`: mean `{b.formula}` per eligible {m.unit} <= {b.max_per_unit:g}" for b in m.constraints.budgets),
             "", "## Features and owners", "", *_features(spec), "",
             "A change of a feature's meaning needs a new version: `drivetrain contract check --against REV:path` fails"
             " otherwise and names the policies that use it.",
             "", "## Label: definition and source", "", *_labels(spec), "",
             f"Source: the `outcomes` table, one event per row, attributed to its decision by `request_id`, else to the"
             f" {m.unit}'s latest decision whose horizon contains it. A decision is labelled once mature"
             f" ({format_duration(spec.horizon + spec.settle)} after it); immature decisions are never counted as zero.",
             "", "## Retrain policy", "",
             f"- Retrain trigger: {m.adaptation.min_new_decisions} new decisions (`adaptation.min_new_decisions`); a candidate"
             f" must show a lift of at least {m.adaptation.min_lift:g} (`adaptation.min_lift`) to pass the gates.",
             "- Retrain every policy named by `drivetrain contract check` when a feature's version changes.",
             "", "## Service levels", "",
             f"- Decision latency budget {m.serving.latency_budget_ms:g} ms; over it, or on a context the policy cannot"
             " handle, the fallback action is served and flagged, never an error.",
             f"- Outcomes complete {format_duration(spec.horizon + spec.settle)} after the decision.",
             *([f"- Serving cost priced at {m.serving.cost_per_serving_hour:g} per serving hour."] if m.serving.cost_per_serving_hour else []),
             "", "## What triggers a rollback", "", *_rollback(spec),
             "", "## Monitoring", "",
             f"- Drift of every context feature against the fit-time baselines (PSI threshold {m.monitoring.psi_threshold:g},"
             f" alpha {m.monitoring.alpha:g}); sample ratio of the holdout (alpha {m.monitoring.srm_alpha:g}).",
             "- Online/offline parity of derived features: `drivetrain contract parity`.",
             *_alerts(spec),
             "", "## Current figures", "", *_evaluation(evaluation), ""]
    return "\n".join(lines)


def _model_card(spec: Spec, policy: PolicyFacts | None, evaluation: Evaluation | None) -> str:
    m = spec.model
    lines = [f"# Model card: {m.name}", "", "## Model details", ""]
    if policy is None:
        lines.append("No policy was given: version, training window and library versions are not stated.")
    else:
        lines += [f"- Version `{policy.version}`, created {policy.created_at or 'at a time not stated'}, spec hash {policy.spec_hash}.",
                  *(f"- {k}: {v}" for k, v in sorted(policy.metadata.items())),
                  f"- Libraries: {', '.join(f'{k} {v}' for k, v in sorted(policy.libraries.items())) or 'not stated'}."]
    lines += ["- Type: per-outcome-component models of E[outcome | context, action] (gradient boosted trees), combined by"
              " the objective and assigned per unit by an optimizer under the spec's constraints.",
              "", "## Intended use", "",
              f"Choosing {', '.join(m.levers)} per {m.unit} to {m.objective.direction} `{m.objective.name}`. Not intended for units"
              " outside the eligibility rule" + (f" (`{m.eligibility.unit}`)" if m.eligibility.unit else "") + " or for contexts"
              " outside the context contract (they get the fallback action).",
              "", "## Factors", "",
              f"Cohorts evaluated separately: {', '.join(m.cohorts) if m.cohorts else 'none stated'}.",
              "", "## Metrics", "",
              f"The north star: incremental `{m.objective.name}` per {m.unit} against the randomized holdout, with its interval;"
              " guardrails as stated in the spec; off-policy estimates before release.",
              "", "## Evaluation data and quantitative analyses", "", *_evaluation(evaluation)]
    if evaluation is not None:
        for cohort in evaluation.cohorts:
            rows = [[f"{cohort}={s.value}", _num(s.north_star.difference), _num(s.north_star.low), _num(s.north_star.high),
                     str(s.policy_units + s.holdout_units)] for s in evaluation.by_cohort(cohort)]
            lines += ["", *_table([cohort, "north star", "low", "high", "units"], rows)]
    personal = spec.personal_features
    lines += ["", "## Ethical considerations", "",
              f"Personal fields ({', '.join(personal) if personal else 'none declared'}) are stored only as salted hashes and are"
              " never model inputs. Effects are reported per cohort so that a cohort the policy harms is visible.",
              "", "## Caveats and recommendations", "",
              "Figures hold for the population and period evaluated; effects can change with the population (drift alerts)"
              " and with the meaning of features (the contract check and the parity check).", ""]
    return "\n".join(lines)


def _datasheet(spec: Spec, store: Store | None) -> str:
    m = spec.model
    lines = [f"# Datasheet: {m.name} decisions and outcomes", "", "## Motivation", "",
             f"The log of every {m.name} decision with its context and propensity, joined to its outcomes, so that"
             " policies can be trained and evaluated without bias from the policy that logged them.",
             "", "## Composition", ""]
    if store is None:
        lines.append("No store was given: row counts are not stated.")
    else:
        counts = {t: store.count(t) for t in ("decisions", "outcomes", "outcomes_pending", "quarantine")}
        lines.append("Rows: " + ", ".join(f"{t} {n}" for t, n in counts.items()) + ".")
    lines += ["", f"One row per decision (unit: {m.unit}) with {len(m.context.features)} context features, the action and"
              f" {len(m.outcomes)} outcome components as separate events.", "", *_features(spec),
              "", "## Collection process", "",
              f"Decisions are logged by the decision service with the probability of the logged action; a randomized"
              f" {m.experimentation.holdout_share:.0%} holdout gets the control action and {m.experimentation.exploration_rate:.0%}"
              " of decisions explore. Outcomes arrive late, keyed by request or unit, and wait for their decision.",
              "", "## Preprocessing", "",
              "Each row is checked against the context contract at ingest; a row that breaks it goes to quarantine with its"
              " reason (rows in = accepted + duplicates + quarantined). Personal fields are hashed before storage.",
              "", "## Uses", "", "Training the outcome models, off-policy evaluation, the KPI evaluation, drift and parity monitoring.",
              "", "## Distribution", "", "The data contract in the Open Data Contract Standard: `drivetrain contract export`.",
              "", "## Maintenance", "",
              "Feature owners: " + ", ".join(sorted({f.owner for f in m.context.features.values()})) + ". A change of a feature's"
              " meaning comes with a new version (checked in CI with `drivetrain contract check`).", ""]
    return "\n".join(lines)


def system_documents(spec: Spec, *, policy: PolicyFacts | None = None, evaluation: Evaluation | None = None,
                     store: Store | None = None) -> SystemDocuments:
    """The system contract, the model card and the datasheet of ``spec`` (what is not given is said not stated)."""
    return SystemDocuments(_system(spec, policy, evaluation), _model_card(spec, policy, evaluation), _datasheet(spec, store))
