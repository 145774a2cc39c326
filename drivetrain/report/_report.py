"""The figures of the report, built from the evaluation APIs, and the page that holds them.

Every figure is a Plotly figure serialized to JSON with plain lists (no binary arrays), embedded in the
page next to its ``div``; one inline script draws them all. A section without data carries a note that
says why, in place of its figure.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from drivetrain.adapt import Registry
from drivetrain.clock import as_utc
from drivetrain.contract import system_documents
from drivetrain.data import Store
from drivetrain.errors import DrivetrainError, UsageError
from drivetrain.evaluate import DriftReport, Evaluation, Scope, SliceEvaluation, drift_as_of, evaluate
from drivetrain.evaluate import timestamp_sql as _ts
from drivetrain.spec import Spec, format_duration

__all__ = ["Panel", "figure_data", "write_report"]

POLICY, HOLDOUT, ALARM, OK = "#1f77b4", "#8c8c8c", "#d62728", "#2ca02c"
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; font-src data:"


@dataclass(frozen=True)
class Panel:
    """One section of the page: a Plotly figure (JSON text) or, with nothing to draw, None and notes that
    say why; ``table`` is an optional small table (first row: the header)."""

    key: str
    title: str
    figure: str | None
    notes: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()
    text: str = ""  # a preformatted document (the ML system contract's Markdown)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)


def _finish(fig: go.Figure, height: int = 380) -> str:
    fig.update_layout(template="plotly_white", height=height, margin={"l": 70, "r": 30, "t": 40, "b": 50},
                      legend={"orientation": "h", "y": 1.12, "x": 0})
    return str(fig.to_json())


#: Up to this many days every day gets a tick; past it plotly spaces about a dozen ticks itself.
DAILY_TICKS = 21


def _by_day(fig: go.Figure, days: int) -> None:
    """Decision days on the x axis, no hours: a tick a day over up to three weeks, about a dozen beyond."""
    if days <= DAILY_TICKS:
        fig.update_xaxes(type="date", tickformat="%b %d, %Y", dtick=86_400_000)
    else:
        fig.update_xaxes(type="date", tickformat="%b %d, %Y", nticks=12)


def _moment(t: datetime) -> str:
    """A time as a reader wants it in a title: to the second, in UTC, no microseconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _interval(values: Sequence[float | None], lows: Sequence[float | None], highs: Sequence[float | None]) -> dict[str, Any]:
    up = [None if v is None or h is None else h - v for v, h in zip(values, highs, strict=True)]
    down = [None if v is None or lo is None else v - lo for v, lo in zip(values, lows, strict=True)]
    return {"type": "data", "array": up, "arrayminus": down, "visible": True}


# ---------------------------------------------------------------------------------------------- panels
def north_star_panel(evaluation: Evaluation, spec: Spec) -> Panel:
    """Incremental objective per eligible unit (policy arm minus holdout) with its interval, by decision day."""
    days = evaluation.by_day()
    x = [s.day.isoformat() for s in days if s.day is not None]
    effects = [s.north_star for s in days]
    diff = [e.difference for e in effects]
    title = f"North star: incremental {spec.model.objective.name} per eligible unit"
    o = evaluation.overall.north_star
    level = f"{100 * evaluation.confidence:.0f}%"
    adjusted = f", regression-adjusted on {list(evaluation.covariates)}" if evaluation.covariates else ""
    notes = (f"Overall: {_num(o.difference)} [{_num(o.low)}, {_num(o.high)}] ({level} interval{adjusted}); policy arm"
             f" {_num(o.policy)}, holdout {_num(o.holdout)} per unit. A day whose decisions are not mature yet has no point.",)
    if all(d is None for d in diff):
        return Panel("north-star", title, None, (f"No mature decision as of {evaluation.as_of.isoformat()}: the north star"
                                                 " needs decisions whose horizon has passed.",))
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.1,
                        subplot_titles=(f"policy − holdout, {level} interval", "mean per eligible unit, by arm"))
    fig.add_trace(go.Scatter(x=x, y=diff, name="policy − holdout", mode="lines+markers", line={"color": POLICY},
                             error_y=_interval(diff, [e.low for e in effects], [e.high for e in effects])), row=1, col=1)
    fig.add_hline(y=0, line={"color": "#444", "width": 1}, row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=[e.policy for e in effects], name="policy arm", mode="lines+markers",
                             line={"color": POLICY, "dash": "dot"}), row=2, col=1)
    fig.add_trace(go.Scatter(x=x, y=[e.holdout for e in effects], name="holdout", mode="lines+markers",
                             line={"color": HOLDOUT}), row=2, col=1)
    fig.update_xaxes(title_text="decision day (UTC)", row=2, col=1)
    _by_day(fig, len(x))
    return Panel("north-star", title, _finish(fig, 520), notes)


def _cohort_slices(evaluation: Evaluation) -> list[tuple[str, SliceEvaluation]]:
    out = [("overall", evaluation.overall)]
    for cohort in evaluation.cohorts:
        out += [(f"{cohort}={s.value}", s) for s in evaluation.by_cohort(cohort)]
    return out


def guardrail_panels(evaluation: Evaluation) -> list[Panel]:
    """Each guardrail's mean per arm, overall and in every cohort value, against its bound."""
    slices = _cohort_slices(evaluation)
    panels = []
    for g in evaluation.overall.guardrails:
        checks = [next(c for c in s.guardrails if c.name == g.name) for _, s in slices]
        labels = [label for label, _ in slices]
        bounds = [(f"at least {g.min:g}", g.min)] if g.min is not None else []
        bounds += [(f"at most {g.max:g}", g.max)] if g.max is not None else []
        title = f"Guardrail {g.name}: policy arm {' and '.join(text for text, _ in bounds)}, by cohort"
        if all(c.effect.policy is None for c in checks):
            panels.append(Panel(f"guardrail-{_key(g.name)}", title, None, ("No mature decision in any slice yet.",)))
            continue
        fig = go.Figure()
        fig.add_trace(go.Bar(x=labels, y=[c.effect.policy for c in checks], name="policy arm",
                             marker={"color": [ALARM if c.breached else POLICY for c in checks]},
                             customdata=[s.policy_units for _, s in slices],
                             hovertemplate="%{x}: %{y:.4f} (%{customdata} units)<extra>policy arm</extra>"))
        fig.add_trace(go.Bar(x=labels, y=[c.effect.holdout for c in checks], name="holdout", marker={"color": HOLDOUT},
                             customdata=[s.holdout_units for _, s in slices],
                             hovertemplate="%{x}: %{y:.4f} (%{customdata} units)<extra>holdout</extra>"))
        for _, bound in bounds:
            fig.add_hline(y=bound, line={"color": ALARM, "dash": "dash"}, annotation_text=f"bound {bound:g}")
        fig.update_layout(barmode="group", yaxis_title=f"mean {g.name} per eligible unit")
        breached = [label for label, c in zip(labels, checks, strict=True) if c.breached]
        note = (f"Policy arm beyond the bound (red) in: {', '.join(breached)}." if breached
                else "The policy arm's mean is within the bound in every slice.")
        panels.append(Panel(f"guardrail-{_key(g.name)}", title, _finish(fig), (note + " The alert rule also asks that the"
                                                                               " interval lie beyond the bound.",)))
    return panels


def drift_panel(drift: DriftReport | None, reason: str) -> Panel:
    """PSI of every baseline column over the drift window; flagged columns in red."""
    title = "Drift against the fit-time baselines (PSI per column)"
    if drift is None:
        return Panel("drift", title, None, (reason,))
    rows = drift.overall().sort_values(["psi", "column_name"], ascending=[True, True], kind="stable")
    psi = [None if v != v else float(v) for v in rows["psi"].astype(float)]
    flagged = [bool(f) for f in rows["flagged"]]
    fig = go.Figure(go.Bar(x=psi, y=[str(c) for c in rows["column_name"]], orientation="h", name="PSI",
                           marker={"color": [ALARM if f else POLICY for f in flagged]},
                           customdata=[str(r) for r in rows["role"]], hovertemplate="%{y} (%{customdata}): PSI %{x:.3f}<extra></extra>"))
    fig.add_vline(x=drift.psi_threshold, line={"color": ALARM, "dash": "dash"}, annotation_text=f"threshold {drift.psi_threshold:g}",
                  annotation_position="bottom right")
    fig.update_layout(xaxis_title="population stability index (whole window)", showlegend=False)
    fig.update_yaxes(automargin=True, ticksuffix="  ")
    cohort_hits = drift.flagged()
    cohort_hits = cohort_hits[cohort_hits["cohort"].notna()]
    notes = [f"Decisions decided in [{drift.start.isoformat()}, {drift.end.isoformat()}) and received by"
             f" {drift.as_of.isoformat()}: {drift.decisions}, against the baselines of {drift.version}. A column is flagged"
             f" (red) when its {drift.correction}-adjusted p-value is below {drift.alpha:g} and its PSI reaches the threshold."]
    if len(cohort_hits):
        listed = [f"{r['column_name']} [{r['cohort']}={r['cohort_value']}] {r['psi']:.3f}" for r in cohort_hits.head(12).to_dict("records")]
        notes.append(f"Flagged within cohorts ({len(cohort_hits)}): " + ", ".join(listed) + (" ..." if len(cohort_hits) > 12 else ""))
    return Panel("drift", title, _finish(fig, max(320, 26 * len(rows) + 120)), tuple(notes))


def latency_panel(evaluation: Evaluation, spec: Spec) -> Panel:
    """Decision latency percentiles by decision day against the spec's latency budget."""
    budget = spec.model.serving.latency_budget_ms
    title = f"Decision latency by day against the budget of {budget:g} ms"
    days = evaluation.by_day()
    x = [s.day.isoformat() for s in days if s.day is not None]
    v = evaluation.overall.service
    if not v.latency_logged:
        return Panel("latency", title, None, ("No decision logged `latency_ms` (the decision service logs it; an imported"
                                               " log usually does not).",))
    fig = go.Figure()
    for name, dash in (("latency_p50", "dot"), ("latency_p95", "dash"), ("latency_p99", "solid")):
        fig.add_trace(go.Scatter(x=x, y=[getattr(s.service, name) for s in days], name=name.replace("latency_", ""),
                                 mode="lines+markers", line={"color": POLICY, "dash": dash}))
    fig.add_hline(y=budget, line={"color": ALARM, "dash": "dash"}, annotation_text=f"budget {budget:g} ms")
    fig.update_layout(yaxis_title="ms", xaxis_title="decision day (UTC)")
    _by_day(fig, len(x))
    share = "-" if v.over_latency_budget is None else f"{100 * v.over_latency_budget:.2f}%"
    notes = (f"Overall ({v.latency_logged} decisions with a logged latency): p50 {_num(v.latency_p50)}, p95"
             f" {_num(v.latency_p95)}, p99 {_num(v.latency_p99)} ms; {share} over the budget; fallback rate"
             f" {_num(v.fallback_rate)}, error rate {_num(v.error_rate)}.",)
    return Panel("latency", title, _finish(fig), notes)


def budget_panels(evaluation: Evaluation) -> list[Panel]:
    """Each budget's mean use per eligible unit by decision day (both arms, as served) against its limit."""
    days = evaluation.by_day()
    x = [s.day.isoformat() for s in days if s.day is not None]
    panels = []
    for b in evaluation.overall.budgets:
        per_day = [next(u for u in s.budgets if u.name == b.name) for s in days]
        title = (f"Cap {b.name}: share of eligible units on its actions against {b.max_per_unit:g}" if b.kind == "cap" else
                 f"Budget {b.name}: use per eligible unit against {b.max_per_unit:g}")
        if all(u.per_unit is None for u in per_day):
            panels.append(Panel(f"{b.kind}-{_key(b.name)}", title, None, ("No mature decision yet.",)))
            continue
        fig = go.Figure(go.Bar(x=x, y=[u.per_unit for u in per_day], name="use per unit",
                               marker={"color": [POLICY if u.within in (True, None) else ALARM for u in per_day]}))
        fig.add_hline(y=b.max_per_unit, line={"color": ALARM, "dash": "dash"}, annotation_text=f"limit {b.max_per_unit:g}")
        fig.update_layout(yaxis_title="per eligible unit", xaxis_title="decision day (UTC)", showlegend=False)
        _by_day(fig, len(x))
        r, inc = b.per_incremental_objective, b.incremental
        notes = (f"Overall: {_num(b.per_unit)} per unit, total {b.total:.6g} of {b.limit:.6g}; policy arm {_num(inc.policy)}"
                 f" vs holdout {_num(inc.holdout)} per unit; per unit of incremental objective {_num(r.estimate)}"
                 f" [{_num(r.low)}, {_num(r.high)}].",)
        panels.append(Panel(f"{b.kind}-{_key(b.name)}", title, _finish(fig, 340), notes))
    return panels


def alert_panel(store: Store, as_of: datetime) -> Panel:
    """The alerts stored as of ``as_of`` (by ``drivetrain monitor``), one marker per alert, by rule."""
    title = "Alert timeline"
    alerts = store.query(f"SELECT rule, kind, subject, message, as_of FROM alerts WHERE as_of <= {_ts(as_of)}"
                         " ORDER BY as_of, rule, subject")
    if alerts.empty:
        return Panel("alerts", title, None, (f"No alert stored as of {as_of.isoformat()} (`drivetrain monitor` stores the"
                                             " alerts it fires).",))
    alerts["when"] = [t.strftime("%Y-%m-%d %H:%M:%S") for t in alerts["as_of"]]
    fig = go.Figure()
    for kind, part in alerts.groupby("kind", sort=True):
        fig.add_trace(go.Scatter(x=list(part["when"]), y=list(part["rule"]), mode="markers", name=str(kind),
                                 marker={"size": 12, "symbol": "diamond"}, text=list(part["subject"]),
                                 hovertext=list(part["message"]), hovertemplate="%{x}<br>%{hovertext}<extra>%{y}</extra>"))
    # a day either side at least: one alert (or a burst) would otherwise zoom the axis to sub-millisecond ticks
    first, last = pd.Timestamp(alerts["as_of"].min()), pd.Timestamp(alerts["as_of"].max())
    pad = max(pd.Timedelta(days=1), (last - first) * 0.05)
    fig.update_layout(xaxis_title="as of (UTC)", yaxis={"type": "category"},
                      xaxis={"type": "date", "range": [(first - pad).strftime("%Y-%m-%d %H:%M:%S"), (last + pad).strftime("%Y-%m-%d %H:%M:%S")]})
    latest = alerts.iloc[::-1].head(20)
    table = (("as of", "rule", "kind", "subject", "message"),
             *((r["when"], r["rule"], r["kind"], r["subject"], r["message"]) for r in latest.to_dict("records")))
    return Panel("alerts", title, _finish(fig, 300 + 18 * alerts["rule"].nunique()),
                 (f"{len(alerts)} alerts; the latest {len(latest)} below, newest first.",), table)


def contract_panel(spec: Spec, evaluation: Evaluation, store: Store) -> Panel:
    """The one-page ML system contract of the spec, with the evaluation's figures."""
    document = system_documents(spec, evaluation=evaluation, store=store).contract
    return Panel("system-contract", "ML system contract", None,
                 ("Generated from the spec and this evaluation; `drivetrain contract system` writes it with the model card and"
                  " the datasheet.",), text=document)


def _figures_text(figures: dict[str, Any], limit: int = 8) -> str:
    """A gate's top-level figures, compact (numbers to 4 significant digits; nested figures left out)."""
    plain = [(k, v) for k, v in figures.items() if not isinstance(v, dict | list)]
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in plain[:limit])
    nested = len(figures) - len(plain[:limit])
    return text + (f" (+{nested} more in `drivetrain registry --json`)" if nested else "")


def adaptation_panels(registry: Registry, store: Store, as_of: datetime, confidence: float) -> list[Panel]:
    """What the adaptation loop did as of ``as_of``: which version was the champion when (the registry's
    alias moves), each candidate's gates with their figures, and the north star of each version's own
    decisions (its policy arm against the holdout it served)."""
    events = [e for e in registry.history() if e.at <= as_of]
    periods: list[tuple[str, datetime, datetime | None, str, str]] = []
    for event in events:
        if "champion" in event.aliases:
            if periods:
                version, start, _, who, why = periods[-1]
                periods[-1] = (version, start, event.at, who, why)
            if event.aliases["champion"] is not None:
                periods.append((str(event.aliases["champion"]), event.at, None, event.who, event.why))
    live_title = "Adaptation: which version was live when"
    if not periods:
        live = Panel("live-versions", live_title, None, (f"No version was the champion as of {as_of.isoformat()}.",))
    else:
        fig = go.Figure()
        for version, start, end, _who, why in periods:
            fig.add_trace(go.Scatter(x=[start.strftime("%Y-%m-%d %H:%M:%S"), (end or as_of).strftime("%Y-%m-%d %H:%M:%S")], y=[version, version],
                                     mode="lines+markers", line={"width": 10, "color": POLICY}, name=version, showlegend=False,
                                     hovertext=[why, why], hovertemplate="%{x}<br>%{hovertext}<extra>%{y}</extra>"))
        fig.update_layout(xaxis_title="UTC", yaxis={"type": "category"}, xaxis={"type": "date"})
        table = (("champion", "from", "until", "moved by", "why"),
                 *((v, _moment(a), "as of the report" if b is None else _moment(b), who, why) for v, a, b, who, why in periods))
        live = Panel("live-versions", live_title, _finish(fig, 220 + 28 * len({p[0] for p in periods})),
                     ("Each bar is a period in which the version was the `champion` alias (the registry's history: "
                      "promotions, rollbacks).",), table)
    statuses: dict[str, str] = {}
    rows: list[tuple[str, ...]] = [("version", "at", "gate", "result", "figures", "reason")]
    for event in events:
        statuses.update(event.statuses)
        d = event.details
        if event.kind in ("gate", "rollback", "promote") and "gate" in d:
            rows.append((str(d.get("version", "")), _moment(event.at), str(d["gate"]), "passed" if d.get("passed") else "FAILED",
                         _figures_text(dict(d.get("figures", {}))), str(d.get("reason", ""))))
    gates_title = "Adaptation: each candidate's gates"
    if len(rows) == 1:
        gates = Panel("candidate-gates", gates_title, None, (f"No candidate was gated as of {as_of.isoformat()}.",))
    else:
        listing = "; ".join(f"{v}: {s}" for v, s in statuses.items())
        gates = Panel("candidate-gates", gates_title, None, (f"Status as of the report: {listing}.", "Gates in order, the first "
                      "failure stopping the candidate."), tuple(rows))
    versions = list(dict.fromkeys(p[0] for p in periods))
    found = store.query(f"SELECT DISTINCT policy_version FROM decisions WHERE received_at <= {_ts(as_of)} AND assignment <> 'logged'")
    versions += sorted(set(found["policy_version"].astype(str)) - set(versions))
    effects = [(v, evaluate(store, as_of, confidence=confidence, scope=Scope(policy_versions=(v,))).overall) for v in versions]
    effects = [(v, o) for v, o in effects if o.north_star.difference is not None]
    ns_title = "Adaptation: north star by version"
    if not effects:
        by_version = Panel("north-star-by-version", ns_title, None, ("No version has mature decisions as of the report.",))
    else:
        diff = [o.north_star.difference for _, o in effects]
        fig = go.Figure(go.Scatter(x=[v for v, _ in effects], y=diff, mode="markers", marker={"size": 10, "color": POLICY},
                                   error_y=_interval(diff, [o.north_star.low for _, o in effects], [o.north_star.high for _, o in effects])))
        fig.add_hline(y=0, line={"color": "#444", "width": 1})
        fig.update_layout(xaxis={"type": "category", "title": "policy version (live order)"}, yaxis_title="policy − holdout per unit")
        level = f"{100 * confidence:.0f}%"
        figures_table: tuple[tuple[str, ...], ...] = (("version", "north star", f"{level} interval", "policy arm", "holdout", "mature decisions"),
                 *((v, _num(o.north_star.difference), f"[{_num(o.north_star.low)}, {_num(o.north_star.high)}]", _num(o.north_star.policy),
                    _num(o.north_star.holdout), str(o.counts.mature)) for v, o in effects))
        by_version = Panel("north-star-by-version", ns_title, _finish(fig, 360),
                           ("Each version's own mature decisions: its policy arm against the holdout units of the same"
                            " decisions (a canary arm counts for the version that decided).",), figures_table)
    return [live, gates, by_version]


# ---------------------------------------------------------------------------------------------- assembly
def _drift(store: Store, as_of: datetime, days: float, version: str | None) -> tuple[DriftReport | None, str]:
    """Drift as the monitor measures it (:func:`~drivetrain.evaluate.drift_as_of`); a failure becomes the reason."""
    try:
        return drift_as_of(store, as_of, days=days, version=version)
    except DrivetrainError as exc:
        return None, f"Drift could not be measured: {exc}"


def _script_json(text: str) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' outside escapes."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _section(panel: Panel) -> str:
    e = html.escape
    parts = [f'<section id="{panel.key}"><h2>{e(panel.title)}</h2>']
    if panel.figure is None and not panel.text and not panel.table:
        parts.append(f'<p class="empty">{e(panel.notes[0])}</p>')
        notes = panel.notes[1:]
    elif panel.figure is None:
        notes = panel.notes
    else:
        fid = f"fig-{panel.key}"
        parts.append(f'<div class="dt-figure" id="{fid}"></div>')
        parts.append(f'<script type="application/json" id="{fid}-data">{_script_json(panel.figure)}</script>')
        notes = panel.notes
    parts += [f'<p class="note">{e(n)}</p>' for n in notes]
    if panel.table:
        head, *rows = panel.table
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")
    if panel.text:
        parts.append(f'<pre class="doc">{e(panel.text)}</pre>')
    parts.append("</section>")
    return "\n".join(parts)


_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;
padding:0 24px 48px;color:#222}h1{margin:24px 0 4px}h2{margin:32px 0 4px;font-size:1.2em}p.note{color:#555;margin:4px 0}
p.empty{background:#f6f6f6;border-left:4px solid #bbb;padding:12px;color:#444}table{border-collapse:collapse;margin:8px 0;
font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}.dt-figure{width:100%}
pre.doc{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:12px;font-size:.85em}"""

# Records window errors, rejected promises, blocked loads (the CSP forbids any) and console.error calls;
# once the figures are drawn, __dt.write() puts the status into #dt-status, again at every later error.
_WATCH = """window.__dt={errors:[],done:false,write:function(){var figs=Array.prototype.slice.call(document.querySelectorAll('div.dt-figure'));
var missing=figs.filter(function(d){return !d.querySelector('svg.main-svg')}).map(function(d){return d.id});
var s=document.getElementById('dt-status');s.textContent=JSON.stringify({expected:figs.length,drawn:figs.length-missing.length,missing:missing,errors:__dt.errors});
s.setAttribute('data-state','done')},note:function(text){__dt.errors.push(text);if(__dt.done)__dt.write()}};
window.addEventListener('error',function(e){__dt.note('error: '+(e.message||e.type))});
window.addEventListener('unhandledrejection',function(e){__dt.note('unhandled rejection: '+e.reason)});
document.addEventListener('securitypolicyviolation',function(e){__dt.note('blocked load of '+e.blockedURI+' ('+e.violatedDirective+')')});
(function(){var ce=console.error;console.error=function(){__dt.note('console.error: '+Array.prototype.join.call(arguments,' '));return ce.apply(console,arguments)}})();"""

# Draws every figure; when all have settled and the page has loaded, writes the status (read by `make browser-check`).
_DRAW = """(function(){var jobs=[];document.querySelectorAll('div.dt-figure').forEach(function(div){try{
var spec=JSON.parse(document.getElementById(div.id+'-data').textContent);
jobs.push(Plotly.newPlot(div,spec.data,spec.layout,{displaylogo:false,responsive:true}).catch(function(e){__dt.note('newPlot '+div.id+': '+e)}))}
catch(e){__dt.note('figure '+div.id+': '+e)}});
var loaded=new Promise(function(r){if(document.readyState==='complete')r();else window.addEventListener('load',r)});
Promise.all(jobs).then(function(){return loaded}).then(function(){__dt.done=true;__dt.write()})})();"""


def _page(spec: Spec, evaluation: Evaluation, versions: list[tuple[str, int, str, str]], panels: Sequence[Panel],
          scope: str = "") -> str:
    e = html.escape
    c = evaluation.overall.counts
    s = evaluation.overall
    sr = s.sample_ratio
    rows = [
        *([("scope", f"the figures count decisions {scope}")] if scope else []),
        ("decisions received", f"{c.decisions} = {c.mature} mature + {c.immature} immature (immature ones are not counted)"),
        ("eligible", f"{c.eligible}; mature eligible units: policy arm {s.policy_units}, holdout {s.holdout_units}"),
        ("outcomes", f"joined {c.outcomes_joined}, late {c.outcomes_late}, outside the horizon {c.outcomes_out_of_window},"
                     f" of immature decisions {c.outcomes_of_immature}, waiting {evaluation.outcomes_waiting},"
                     f" unattributed {evaluation.outcomes_unattributed}"),
        ("sample ratio", f"holdout share {_num(sr.observed_share)} vs {sr.expected_share:g} (p = {_num(sr.p_value, 3)})"
                         + (" MISMATCH" if sr.mismatch else "")),
        ("policy versions", "; ".join(f"{v}: {n} decisions, {a} to {b}" for v, n, a, b in versions)),
    ]
    plotly_js = get_plotlyjs()
    if "</script" in plotly_js.lower():
        raise RuntimeError("this plotly.js holds a closing script tag and cannot be inlined")
    head = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>drivetrain report: {e(spec.name)} as of {e(_moment(evaluation.as_of))}</title>",
        f"<style>{_STYLE}</style>", f'<script id="dt-watch">{_WATCH}</script>',
        f'<script id="plotly-js">{plotly_js}</script>', "</head><body>",
        f"<h1>{e(spec.name)}: decisions as of {e(_moment(evaluation.as_of))}</h1>",
        f'<p class="note">{e(spec.model.description)} Horizon {e(format_duration(evaluation.horizon))}, settle'
        f" {e(format_duration(evaluation.settle))}; per-unit figures count mature decisions of eligible units.</p>",
        "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows) + "</table>",
    ]
    tail = ['<pre id="dt-status" data-state="pending" hidden></pre>', f'<script id="dt-draw">{_DRAW}</script>', "</body></html>"]
    return "\n".join([*head, *(_section(p) for p in panels), *tail]) + "\n"


def write_report(store: Store, *, as_of: datetime, out: str | Path, drift_days: float = 1.0,
                 policy_version: str | None = None, confidence: float = 0.95, scope: Scope | None = None,
                 registry: Registry | None = None) -> Path:
    """Write the report of ``store`` as of ``as_of`` to ``out`` (one self-contained HTML file); returns its path.

    ``drift_days``: the drift window, the days before the last decision received by ``as_of``;
    ``policy_version``: whose baselines drift compares with (default: the one with baselines that made
    most decisions in the window); ``confidence``: the level of the intervals; ``scope``: the decisions
    the KPIs count (a window of decision times, policy versions; :class:`~drivetrain.evaluate.Scope`);
    ``registry``: the adaptation loop's registry, for which version was live when, each candidate's gates
    and the north star by version.
    """
    as_of = as_utc(as_of, name="as_of")
    if not drift_days > 0:
        raise UsageError(f"`drift_days` must be > 0, got {drift_days}")
    spec = store.spec
    evaluation = evaluate(store, as_of, confidence=confidence, scope=scope)
    drift, reason = _drift(store, as_of, drift_days, policy_version)
    panels = [north_star_panel(evaluation, spec), *guardrail_panels(evaluation), drift_panel(drift, reason),
              latency_panel(evaluation, spec), *budget_panels(evaluation), alert_panel(store, as_of),
              contract_panel(spec, evaluation, store)]
    if registry is not None:
        panels[1:1] = adaptation_panels(registry, store, as_of, confidence)
    found = store.query(f"SELECT policy_version, COUNT(*) AS n, MIN(decided_at) AS a, MAX(decided_at) AS b FROM decisions"
                        f" WHERE received_at <= {_ts(as_of)} GROUP BY 1 ORDER BY 3, 1")
    versions = [(str(r["policy_version"]), int(r["n"]), f"{r['a']:%Y-%m-%d %H:%M}", f"{r['b']:%Y-%m-%d %H:%M} UTC") for r in found.to_dict("records")]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_page(spec, evaluation, versions, panels, "" if scope is None else scope.describe()), encoding="utf-8")
    return path


def figure_data(page: str) -> dict[str, dict[str, Any]]:
    """The figures embedded in a report page, by section key (for tests and the browser check)."""
    found = re.findall(r'<script type="application/json" id="fig-([A-Za-z0-9_-]+)-data">(.*?)</script>', page, flags=re.S)
    return {key: json.loads(text) for key, text in found}
